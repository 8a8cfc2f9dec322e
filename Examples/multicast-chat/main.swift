// Placeholder until the example lands (issue 4).
print("multicast-chat: not implemented yet")
