import Testing

// Reliability suites (issue 6) live in this target.
