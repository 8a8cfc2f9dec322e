import Testing

// Tests that run the example binaries against real peers (issue 4) live in this target.
