import Foundation
import Testing

/// udp-echo's own clocks, set far beyond the tests' waits: a ping counts as lost only after a
/// minute (the default is 200 ms, and a client that hears nothing for 5 timeouts gives up), and
/// a run stops at its deadline after 10 minutes. A slow run is then a slow pass, and a stuck one
/// fails at the test's own `waitForExit`, with the output so far.
private let patientPings = ["--timeout", "60000", "--deadline", "600"]

@Suite("udp-echo", .timeLimit(.minutes(2)))
struct UDPEchoTests {
    @Test("udp-echo server echoes a Python socket client's datagrams, then exits cleanly on SIGINT")
    func serverEchoesPython() async throws {
        let server = try ExampleProcess(example: "udp-echo", ["server", "--port", "0"])
        defer { server.terminate() }
        let port = try await server.waitFor(#"listening on 127\.0\.0\.1:(\d+)"#, in: .stdout)[1]

        let client = try python("""
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            payloads = [b"hello", b"", b"x" * 1400, bytes(range(256)), b"y" * 60000]
            for p in payloads:
                s.sendto(p, ("127.0.0.1", int(sys.argv[1])))
                data, peer = recv(s)
                assert data == p, (len(data), len(p))
                assert peer == ("127.0.0.1", int(sys.argv[1])), peer
            print("echoed", len(payloads))
            """, [port])
        defer { client.terminate() }
        #expect(try await client.waitForExit() == 0, "\(client.text(.stderr))")
        #expect(client.text(.stdout).contains("echoed 5"))

        server.interrupt()
        #expect(try await server.waitForExit() == 0)
        #expect(server.text(.stderr).contains("received 5"))
    }

    @Test("udp-echo demo with a small count prints the rate, percentiles and histogram, and exits 0")
    func demoPrintsHistogram() async throws {
        let demo = try ExampleProcess(example: "udp-echo", ["demo", "--count", "2000", "--window", "8"] + patientPings)
        defer { demo.terminate() }
        #expect(try await demo.waitForExit() == 0, "\(demo.text(.stderr))")
        let output = demo.text(.stdout)
        #expect(output.contains("2000 round trips in "))
        #expect(output.firstMatch(of: /\d+ round trips\/s, 0 lost/) != nil, "\(output)")
        #expect(output.firstMatch(of: /latency µs: p50 [\d.]+  p90 [\d.]+  p99 [\d.]+  max [\d.]+/) != nil, "\(output)")
        #expect(output.contains("latency histogram:"))
        #expect(output.firstMatch(of: /µs \| #+ +\d+ \(\d+\.\d%\)/) != nil, "\(output)")
        // Not a terminal: plain progress lines, no carriage returns.
        #expect(output.contains("2000/2000 round trips (100%)"))
        #expect(!output.contains("\r"))
    }

    @Test("on a terminal, udp-echo demo rewrites one progress line in place",
          .enabled(if: isInstalled("script"), "script(1) is not installed"))
    func demoProgressOnTerminal() async throws {
        // script(1) runs the demo with a pseudo-terminal as its standard output.
        let binary = examplesDirectory.appendingPathComponent("udp-echo").path
        let command = ([binary, "demo", "--count", "3000", "--window", "8"] + patientPings).joined(separator: " ")
        let demo = try ExampleProcess(program: "script", ["-qfec", command, "/dev/null"])
        defer { demo.terminate() }
        #expect(try await demo.waitForExit() == 0, "\(demo.text(.stdout))")
        let output = demo.text(.stdout)
        #expect(output.contains("\r  3000/3000 round trips (100%)"), "\(output)")
        #expect(output.contains("p99"))
    }

    @Test("udp-echo client measures round trips against a Python echo server")
    func clientAgainstPython() async throws {
        let echo = try python("""
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            print("port", s.getsockname()[1], flush=True)
            while True:
                data, peer = recv(s)
                s.sendto(data, peer)
            """)
        defer { echo.terminate() }
        let port = try await echo.waitFor(#"port (\d+)"#, in: .stdout)[1]
        let client = try ExampleProcess(example: "udp-echo", ["client", "127.0.0.1", port, "--count", "500", "--window", "4",
                                                               "--size", "100"] + patientPings)
        defer { client.terminate() }
        #expect(try await client.waitForExit() == 0, "\(client.text(.stderr))")
        let output = client.text(.stdout)
        #expect(output.contains("500 round trips in "), "\(output)")
        #expect(output.contains("p99"))
    }

    @Test("udp-echo client measures round trips against socat as the echo server",
          .enabled(if: isInstalled("socat"), "socat is not installed (.ci/run installs it)"))
    func clientAgainstSocat() async throws {
        // Without `fork`, socat's UDP-LISTEN takes the first peer and echoes its datagrams (PIPE).
        // PIPE is a byte stream: two pings that meet in it come back as one datagram, and the
        // second is lost. So lost pings are expected here, and a 2 s ping timeout replaces them
        // (the client gives up only after 10 s with no answer at all).
        let port = try freeUDPPort()
        let echo = try ExampleProcess(program: "socat", ["-d", "-d", "UDP4-LISTEN:\(port),bind=127.0.0.1", "PIPE"])
        defer { echo.terminate() }
        try await echo.waitFor("listening on", in: .stderr)
        let client = try ExampleProcess(example: "udp-echo", ["client", "127.0.0.1", "\(port)", "--count", "500",
                                                               "--window", "4", "--timeout", "2000", "--deadline", "600"])
        defer { client.terminate() }
        #expect(try await client.waitForExit() == 0, "\(client.text(.stderr))")
        #expect(client.text(.stdout).contains("p99"), "\(client.text(.stdout))")
    }

    @Test("udp-echo client fails with a one-line reason when nobody answers")
    func clientWithoutServerFails() async throws {
        let port = try freeUDPPort()
        let client = try ExampleProcess(example: "udp-echo", ["client", "127.0.0.1", "\(port)", "--count", "5", "--timeout", "50"])
        defer { client.terminate() }
        #expect(try await client.waitForExit() != 0)
        #expect(client.text(.stderr).contains("no reply from 127.0.0.1:\(port)"))
    }
}

/// A UDP port that was free a moment ago on 127.0.0.1 (the kernel picks it; nothing else here
/// binds explicit ports, so it stays free for the test that asked).
func freeUDPPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EMFILE) }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}
