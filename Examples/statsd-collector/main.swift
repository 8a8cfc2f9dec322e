// Placeholder until the example lands (issue 4).
print("statsd-collector: not implemented yet")
