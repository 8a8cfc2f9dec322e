/// Seconds after which a Python peer gives up on its own: far beyond any test's wait
/// (`childWait`), so that it only ever ends an orphan, never a test.
let peerDeadlineSeconds = 600

/// Helpers every Python peer gets. Peers never end on a short fixed timeout: a receiver waits
/// for its datagrams until the test closes its standard input (which also happens when the test
/// process dies), and the test's own bounded wait is the one that fails.
let pythonPeerPrelude = """
    import os, select, socket, sys, time
    PEER_DEADLINE = \(peerDeadlineSeconds)

    def recv(s):
        \"\"\"s.recvfrom(65536); exits when standard input closes, or after PEER_DEADLINE s.\"\"\"
        end = time.monotonic() + PEER_DEADLINE
        while True:
            left = end - time.monotonic()
            if left <= 0:
                sys.exit(f"peer: nothing received in {PEER_DEADLINE} s")
            readable, _, _ = select.select([s, 0], [], [], left)
            if s in readable:
                return s.recvfrom(65536)
            if 0 in readable and not os.read(0, 4096):
                sys.exit("peer: standard input closed")

    def until_stdin_closes(every):
        \"\"\"Yields every `every` seconds until standard input closes (or PEER_DEADLINE s pass).\"\"\"
        end = time.monotonic() + PEER_DEADLINE
        while time.monotonic() < end:
            yield
            readable, _, _ = select.select([0], [], [], every)
            if readable and not os.read(0, 4096):
                return

    """

/// Runs a Python 3 script (`python3 -c`, after `pythonPeerPrelude`) with `arguments` and
/// returns it, started.
func python(_ script: String, _ arguments: [String] = []) throws -> ExampleProcess {
    try ExampleProcess(program: "python3", ["-c", pythonPeerPrelude + script] + arguments)
}
