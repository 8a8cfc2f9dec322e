// Placeholder until the example lands (issue 4).
print("udpcat: not implemented yet")
