import Foundation
import Testing

@Suite("udpcat", .timeLimit(.minutes(2)))
struct UDPCatTests {
    @Test("udpcat listen prints what socat sends, as text and as hex",
          .enabled(if: isInstalled("socat"), "socat is not installed (.ci/run installs it)"))
    func listenPrintsWhatSocatSends() async throws {
        let listener = try ExampleProcess(example: "udpcat", ["listen", "--host", "127.0.0.1", "0"])
        defer { listener.terminate() }
        let port = try await listener.waitFor(#"listening on 127\.0\.0\.1:(\d+)"#, in: .stderr)[1]
        let hexListener = try ExampleProcess(example: "udpcat", ["listen", "--host", "127.0.0.1", "--hex", "--count", "1", "0"])
        defer { hexListener.terminate() }
        let hexPort = try await hexListener.waitFor(#"listening on 127\.0\.0\.1:(\d+)"#, in: .stderr)[1]

        let socat = try ExampleProcess(program: "socat", ["-u", "-", "UDP-SENDTO:127.0.0.1:\(port)"])
        defer { socat.terminate() }
        socat.write("hello from socat\n")
        socat.closeInput()
        #expect(try await socat.waitForExit() == 0)
        try await listener.waitFor(#"127\.0\.0\.1:\d+: hello from socat\n"#, in: .stdout)

        let hexSocat = try ExampleProcess(program: "socat", ["-u", "-", "UDP-SENDTO:127.0.0.1:\(hexPort)"])
        defer { hexSocat.terminate() }
        hexSocat.write("AB\n")
        hexSocat.closeInput()
        #expect(try await hexSocat.waitForExit() == 0)
        // --count 1: it exits by itself after the datagram.
        #expect(try await hexListener.waitForExit() == 0)
        #expect(hexListener.text(.stdout).firstMatch(of: /127\.0\.0\.1:\d+: 3 bytes: 41 42 0a\n/) != nil,
                "\(hexListener.text(.stdout))")

        listener.interrupt()
        #expect(try await listener.waitForExit() == 0)
    }

    @Test("udpcat send delivers each stdin line, and a --count/--size load, to a Python receiver")
    func sendReachesPython() async throws {
        let receiver = try python("""
            import json
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", 0))
            print("port", s.getsockname()[1], flush=True)
            lines = [recv(s)[0].decode() for _ in range(4)]
            print(json.dumps(lines), flush=True)
            load = [recv(s)[0] for _ in range(50)]
            print("load", len(load), sorted(set(len(d) for d in load)), load[0][:3], flush=True)
            """)
        defer { receiver.terminate() }
        let port = try await receiver.waitFor(#"port (\d+)"#, in: .stdout)[1]

        let sender = try ExampleProcess(example: "udpcat", ["send", "127.0.0.1", port])
        defer { sender.terminate() }
        sender.write("one\ntwo\n\nthree, the last\n")
        sender.closeInput()
        #expect(try await sender.waitForExit() == 0, "\(sender.text(.stderr))")
        try await receiver.waitFor(#"\["one", "two", "", "three, the last"\]"#, in: .stdout)

        let load = try ExampleProcess(example: "udpcat", ["send", "127.0.0.1", port, "--count", "50", "--size", "200"])
        defer { load.terminate() }
        #expect(try await load.waitForExit() == 0, "\(load.text(.stderr))")
        #expect(load.text(.stderr).contains("sent 50 datagrams of 200 bytes"))
        try await receiver.waitFor(#"load 50 \[200\] b'0 x'"#, in: .stdout)
        #expect(try await receiver.waitForExit() == 0)
    }

    @Test("udpcat send --file sends the file's lines")
    func sendFile() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("udpcat-\(UUID().uuidString).txt")
        try "first line\nsecond line\n".write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let receiver = try python("""
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            print("port", s.getsockname()[1], flush=True)
            print([recv(s)[0] for _ in range(2)], flush=True)
            """)
        defer { receiver.terminate() }
        let port = try await receiver.waitFor(#"port (\d+)"#, in: .stdout)[1]
        let sender = try ExampleProcess(example: "udpcat", ["send", "127.0.0.1", port, "--file", file.path])
        defer { sender.terminate() }
        #expect(try await sender.waitForExit() == 0, "\(sender.text(.stderr))")
        try await receiver.waitFor(#"\[b'first line', b'second line'\]"#, in: .stdout)
    }

    @Test("udpcat listen --join receives what a Python sender sends to the group on 127.0.0.1")
    func listenJoinsGroup() async throws {
        let group = "239.255.\(Int.random(in: 1...254)).\(Int.random(in: 1...254))"
        let listener = try ExampleProcess(example: "udpcat", ["listen", "--join", group, "--interface", "127.0.0.1", "0"])
        defer { listener.terminate() }
        let port = try await listener.waitFor(#"listening on 0\.0\.0\.0:(\d+)"#, in: .stderr)[1]
        #expect(listener.text(.stderr).contains("joined \(group) on 127.0.0.1"))
        // The first datagrams can race the membership: the sender repeats (every 0.1 s) until
        // the test has seen the listener print one and closes the sender's standard input.
        let sender = try python("""
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            for _ in until_stdin_closes(0.1):
                s.sendto(b"hello, group", (sys.argv[1], int(sys.argv[2])))
            """, [group, port])
        defer { sender.terminate() }
        try await listener.waitFor(#"127\.0\.0\.1:\d+: hello, group"#, in: .stdout)
        sender.closeInput()
        #expect(try await sender.waitForExit() == 0, "\(sender.text(.stderr))")
        listener.interrupt()
        #expect(try await listener.waitForExit() == 0)
    }

    @Test("udpcat refuses bad input with a one-line reason and a non-zero status", arguments: [
        (["send", "1.2.3", "9"], "invalid IP address"),
        (["send", "localhost", "9"], "invalid IP address"),
        (["send", "127.0.0.1", "70000"], "invalid port \"70000\""),
        (["send", "127.0.0.1", "http"], "invalid port \"http\""),
        (["send", "127.0.0.1", "0"], "cannot send to port 0"),
        (["send", "127.0.0.1", "9", "--size", "70000"], "out of range"),
        (["send", "::1", "9", "--ttl", "256"], "--ttl 256 is out of range"),
        (["listen", "65536"], "invalid port"),
        (["listen", "--host", "300.1.1.1", "9"], "invalid IP address"),
        (["listen", "--join", "127.0.0.1", "0"], "is not a multicast group"),
    ])
    func badInput(arguments: [String], reason: String) async throws {
        let udpcat = try ExampleProcess(example: "udpcat", arguments)
        defer { udpcat.terminate() }
        udpcat.closeInput()
        #expect(try await udpcat.waitForExit() != 0)
        let errors = udpcat.text(.stderr).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(errors.contains(reason), "\(errors)")
        #expect(!errors.contains("\n"), "expected one line, got: \(errors)")
    }

    @Test("udpcat send refuses a line too long for a datagram")
    func oversizeLine() async throws {
        let port = try freeUDPPort()
        let udpcat = try ExampleProcess(example: "udpcat", ["send", "127.0.0.1", "\(port)"])
        defer { udpcat.terminate() }
        udpcat.write(String(repeating: "x", count: 70_000) + "\n")
        udpcat.closeInput()
        #expect(try await udpcat.waitForExit() != 0)
        let errors = udpcat.text(.stderr).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(errors == "Error: line 1 has 70000 bytes; a UDP datagram over IPv4 carries at most 65507", "\(errors)")
    }
}
