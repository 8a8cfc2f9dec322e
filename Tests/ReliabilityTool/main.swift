// Placeholder until the reliability tool lands (issue 6): leak check, soak, namespace peers.
print("reliability-tool: not implemented yet")
