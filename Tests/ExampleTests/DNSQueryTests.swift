import AsyncUDP
import Foundation
import Glibc
import Testing
@testable import dns_query

/// dns-query against dnsmasq, against a server that never answers, and against a scripted peer
/// that loses a query and sends strays. Every DNS query in these tests goes to 127.0.0.1 or ::1.
@Suite("dns-query", .timeLimit(.minutes(1)))
struct DNSQueryTests {
    @Test("dns-query prints dnsmasq's local answers, one per line, and exits 0", .enabled(if: Dnsmasq.path != nil, Dnsmasq.skipReason),
          arguments: [
              (["a.test"], "a.test. 0 IN A 192.0.2.1\n"),
              (["--type", "AAAA", "a.test"], "a.test. 0 IN AAAA 2001:db8::1\n"),
              (["--type", "txt", "t.test"], "t.test. 0 IN TXT \"hello world\" \"second\"\n"),
              // The A record's name is a compression pointer into the CNAME's data.
              (["c.test"], "c.test. 0 IN CNAME h.test.\nh.test. 0 IN A 192.0.2.7\n"),
              (["--short", "C.Test."], "h.test.\n192.0.2.7\n"),
          ])
    func answers(arguments: [String], expected: String) async throws {
        try await Dnsmasq.with { port in
            let query = try ExampleProcess(example: "dns-query", ["--server", "127.0.0.1", "--port", "\(port)"] + arguments)
            defer { query.terminate() }
            #expect(try await query.waitForExit() == 0, "\(query.text(.stderr))")
            #expect(query.text(.stdout) == expected)
        }
    }

    @Test("an error reply exits 1 with a one-line reason (dnsmasq forwards nothing: names outside test. are REFUSED)",
          .enabled(if: Dnsmasq.path != nil, Dnsmasq.skipReason),
          arguments: [("nope.test", "nope.test. A: NXDOMAIN (no such name) from 127.0.0.1:"),
                      ("outside.invalid", "outside.invalid. A: REFUSED (the server refused to answer) from 127.0.0.1:")])
    func errorReply(name: String, reason: String) async throws {
        try await Dnsmasq.with { port in
            let query = try ExampleProcess(example: "dns-query", ["--server", "127.0.0.1", "--port", "\(port)", name])
            defer { query.terminate() }
            #expect(try await query.waitForExit() == 1)
            let errors = query.text(.stderr).trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(errors == "Error: \(reason)\(port)", "\(errors)")
            #expect(query.text(.stdout).isEmpty)
        }
    }

    @Test("--server localhost is resolved (from /etc/hosts) and asked", .enabled(if: Dnsmasq.path != nil, Dnsmasq.skipReason))
    func serverByName() async throws {
        // dnsmasq listens on both loopback addresses: whichever "localhost" gives first answers.
        try await Dnsmasq.with(listenOnIPv6: true) { port in
            let query = try ExampleProcess(example: "dns-query", ["--server", "localhost", "--port", "\(port)", "--short", "a.test"])
            defer { query.terminate() }
            #expect(try await query.waitForExit() == 0, "\(query.text(.stderr))")
            #expect(query.text(.stdout) == "192.0.2.1\n")
        }
    }

    @Test("a silent server gets the same query 1 + --retries times, with growing waits, then dns-query exits 3")
    func silentServer() async throws {
        // Bound, so no ICMP "port unreachable" comes back; it never answers.
        try await withUDPSocket(bindingTo: SocketAddress("127.0.0.1:0")) { silent in
            let start = ContinuousClock.now
            let query = try ExampleProcess(example: "dns-query", ["--server", "127.0.0.1", "--port", "\(silent.localAddress.port)",
                                                                   "--timeout", "0.2", "--retries", "2", "silent.test"])
            defer { query.terminate() }
            #expect(try await query.waitForExit(timeout: .seconds(20)) == 3)
            let elapsed = ContinuousClock.now - start
            // Waits of 0.2, 0.4 and 0.8 s.
            #expect(elapsed >= .milliseconds(1400), "exited after \(elapsed)")
            #expect(elapsed < .seconds(10), "exited after \(elapsed)")
            let errors = query.text(.stderr)
            #expect(errors.contains("Error: no reply from 127.0.0.1:\(silent.localAddress.port) after 3 tries (1.4 s)"), "\(errors)")
            #expect(errors.contains("within 0.2 s (try 1 of 3)") && errors.contains("within 0.4 s (try 2 of 3)")
                    && errors.contains("within 0.8 s (try 3 of 3)"), "\(errors)")

            var queries: [[UInt8]] = []
            while let datagram = try await silent.receive(timeout: .milliseconds(200)) { queries.append(datagram.payload) }
            #expect(queries.count == 3)
            #expect(Set(queries).count == 1, "every try sends the same bytes, ID included")
            let message = try DNSMessage(parsing: try #require(queries.first))
            #expect(!message.isResponse)
            #expect(message.questions == [DNSQuestion(name: try DNSName("silent.test"), type: .a)])
        }
    }

    @Test("a lost query is sent again with the same ID; a stray and a reply to another question are ignored")
    func retryAfterLoss() async throws {
        try await withUDPSocket(bindingTo: SocketAddress("127.0.0.1:0")) { peer in
            let query = try ExampleProcess(example: "dns-query", ["--server", "127.0.0.1", "--port", "\(peer.localAddress.port)",
                                                                   "--timeout", "0.3", "--retries", "3", "peer.test"])
            defer { query.terminate() }
            // The first try is lost: read and dropped.
            let first = try #require(try await peer.receive(timeout: .seconds(10)), "no first query")
            let second = try #require(try await peer.receive(timeout: .seconds(10)), "no second query")
            #expect(second.payload == first.payload, "the retry has the same ID and question")
            let id = UInt16(first.payload[0]) << 8 | UInt16(first.payload[1])

            // A stray with another ID, a reply with this ID to another question, then the reply.
            try await peer.send(reply(to: first.payload, id: id &+ 1, address: [203, 0, 113, 1]), to: second.remote)
            let otherQuestion = DNSMessage.query(id: id, question: DNSQuestion(name: try DNSName("other.test"), type: .a))
            try await peer.send(reply(to: otherQuestion, address: [203, 0, 113, 2]), to: second.remote)
            try await peer.send(reply(to: first.payload, address: [192, 0, 2, 55]), to: second.remote)

            #expect(try await query.waitForExit() == 0, "\(query.text(.stderr))")
            #expect(query.text(.stdout) == "peer.test. 3600 IN A 192.0.2.55\n")
            let errors = query.text(.stderr)
            #expect(errors.contains("no reply from 127.0.0.1:\(peer.localAddress.port) within 0.3 s (try 1 of 4)"), "\(errors)")
            #expect(errors.matches(of: /ignoring a reply that does not match/).count == 2, "\(errors)")
            #expect(errors.contains("ID \(id &+ 1), question peer.test. IN A"), "\(errors)")
            #expect(errors.contains("ID \(id), question other.test. IN A"), "\(errors)")
        }
    }

    @Test("usage errors exit 2 with the reason first", arguments: [
        (["--type", "BOGUS", "a.test"], "Error: The value 'BOGUS' is invalid for '--type <type>'"),
        (["--port", "70000", "a.test"], "Error: --port must be 1...65535, not 70000"),
        (["--timeout", "0", "a.test"], "Error: --timeout must be more than 0"),
        (["--retries", "11", "a.test"], "Error: --retries must be 0...10, not 11"),
        ([String(repeating: "x", count: 64) + ".test"], "has 64 bytes; a label has at most 63"),
        (["a..test"], "an empty label in \"a..test\""),
        // A label over 63 bytes fails in the resolver before any query is sent.
        (["--server", String(repeating: "s", count: 64) + ".invalid", "a.test"], "Error: cannot resolve the server"),
    ])
    func usageErrors(arguments: [String], reason: String) async throws {
        let query = try ExampleProcess(example: "dns-query", ["--port", "9"] + arguments)
        defer { query.terminate() }
        #expect(try await query.waitForExit() == 2)
        let firstLine = query.text(.stderr).split(separator: "\n").first.map(String.init) ?? ""
        #expect(firstLine.contains(reason), "\(query.text(.stderr))")
        #expect(query.text(.stdout).isEmpty)
    }
}

/// A reply to `query`: its header and question, flagged as a response (QR, RA), with `id` if
/// given, and one A record for `address` whose name points at the question's (offset 12).
private func reply(to query: [UInt8], id: UInt16? = nil, address: [UInt8]) -> [UInt8] {
    var bytes = query
    if let id {
        bytes[0] = UInt8(id >> 8)
        bytes[1] = UInt8(id & 0xFF)
    }
    bytes[2] |= 0x80
    bytes[3] |= 0x80
    bytes[7] = 1  // one answer
    bytes += [0xC0, 12, 0, 1, 0, 1, 0, 0, 0x0E, 0x10, 0, 4] + address  // TTL 3600
    return bytes
}

/// dnsmasq as a child process on 127.0.0.1 (and ::1 if asked), on a free port, answering only
/// the records on its command line: no upstream servers (`--no-resolv`, no `--server`), no
/// /etc/hosts, no configuration file, so no query can leave the machine. Names under `test.`
/// are local (`--local`): unknown ones get NXDOMAIN; any other name gets REFUSED.
enum Dnsmasq {
    static let skipReason: Comment = "dnsmasq is not installed (.ci/install-deps installs it)"

    /// The dnsmasq executable: on `PATH`, or in an sbin directory (not always on a user's `PATH`).
    static let path: String? = {
        let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
            + ["/usr/sbin", "/sbin", "/usr/local/sbin"]
        return directories.map { "\($0)/dnsmasq" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    static func arguments(port: Int, listenOnIPv6: Bool) -> [String] {
        [
            "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=", "--user=nobody",
            "--no-resolv", "--no-poll", "--no-hosts",
            "--listen-address=127.0.0.1" + (listenOnIPv6 ? ",::1" : ""), "--bind-interfaces", "--port=\(port)",
            "--log-facility=-", "--log-queries",
            "--local=/test/",
            "--address=/a.test/192.0.2.1", "--address=/a.test/2001:db8::1",
            "--txt-record=t.test,hello world,second",
            "--host-record=h.test,192.0.2.7", "--cname=c.test,h.test",
        ]
    }

    /// Starts dnsmasq, waits until it answers (bounded), runs `body` with its port, and kills it
    /// on every path. Tries another port if the first one was taken meanwhile.
    static func with(listenOnIPv6: Bool = false, _ body: (Int) async throws -> Void) async throws {
        let executable = try #require(path)
        var attempt = 0
        while true {
            attempt += 1
            let port = try freeUDPPort()
            let dnsmasq = try SpawnedProcess([executable] + arguments(port: port, listenOnIPv6: listenOnIPv6))
            defer { dnsmasq.terminate() }
            do {
                try await dnsmasq.waitForLog("started, version")
            } catch where attempt < 3 && dnsmasq.log.contains("in use") {
                continue  // the UDP or TCP port was taken between freeUDPPort() and dnsmasq's bind
            }
            try await waitUntilAnswering(port: port, dnsmasq: dnsmasq)
            try await body(port)
            return
        }
    }

    /// Asks for a.test every 100 ms until dnsmasq answers; at most 10 s.
    private static func waitUntilAnswering(port: Int, dnsmasq: SpawnedProcess) async throws {
        let question = DNSQuestion(name: try DNSName("a.test"), type: .a)
        try await withUDPSocket(connectingTo: SocketAddress(ip: "127.0.0.1", port: port)) { udp in
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline {
                try await udp.send(DNSMessage.query(id: 1, question: question))
                if try await udp.receive(timeout: .milliseconds(100)) != nil { return }
            }
            throw ProcessTimeout(description: "dnsmasq did not answer on port \(port) within 10 s\n\(dnsmasq.log)")
        }
    }
}

/// A child process started with `posix_spawn`, its standard output and error in a log file.
///
/// Not Foundation's `Process` (`ExampleProcess`): dnsmasq closes every descriptor it inherits,
/// among them the socket through which Foundation learns that a child has exited; Foundation
/// then blocks its monitor thread in `waitpid` on the still running dnsmasq, and no other
/// child's exit is noticed again in this test process.
final class SpawnedProcess {
    let pid: pid_t
    private let logPath: String
    private var reaped = false

    /// Starts `arguments[0]` (a path) with standard input from /dev/null.
    init(_ arguments: [String]) throws {
        logPath = FileManager.default.temporaryDirectory.appendingPathComponent("dnsmasq-\(UUID().uuidString).log").path
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = [strdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, arguments[0], &actions, nil, argv, envp)
        guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EIO) }
        self.pid = pid
    }

    /// What the process has written so far.
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Whether the process has exited (and then reaps it).
    var hasExited: Bool {
        if reaped { return true }
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        if result == pid || (result < 0 && errno == ECHILD) { reaped = true }
        return reaped
    }

    /// Polls the log until it contains `text`; throws if the process exits first or 10 s pass.
    func waitForLog(_ text: String, timeout: Duration = .seconds(10)) async throws {
        let deadline = ContinuousClock.now + timeout
        while !log.contains(text) {
            guard !hasExited, ContinuousClock.now < deadline else {
                throw ProcessTimeout(description: "no \"\(text)\" \(hasExited ? "before it exited" : "within \(timeout)"):\n\(log)")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Kills the process (SIGKILL) if it still runs, reaps it, and removes the log. Idempotent.
    func terminate() {
        if !hasExited {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            reaped = true
        }
        unlink(logPath)
    }

    deinit { terminate() }
}

/// The DNS wire format on its own (DNSMessage.swift), without a socket.
@Suite("DNS message builder and parser", .timeLimit(.minutes(1)))
struct DNSMessageTests {
    /// Replies captured from dnsmasq 2.90 (ID 0x1234).
    static let dnsmasqA = bytes("123485800001000100000000016104746573740000010001c00c00010001000000000004c0000201")
    static let dnsmasqAAAA = bytes("1234858000010001000000000161047465737400001c0001c00c001c000100000000001020010db8000000000000000000000001")
    static let dnsmasqTXT = bytes("123485800001000100000000017404746573740000100001c00c001000010000000000130b68656c6c6f20776f726c64067365636f6e64")
    static let dnsmasqCNAME = bytes("123485800001000200000000016304746573740000010001c00c000500010000000000080168047465737400c02400010001000000000004c0000207")
    static let dnsmasqNXDOMAIN = bytes("123481830001000000000000046e6f706504746573740000010001")

    @Test("a query is the 12-byte header (ID, RD, one question) and the question")
    func query() throws {
        let question = DNSQuestion(name: try DNSName("a.test"), type: .a)
        #expect(DNSMessage.query(id: 0x1234, question: question) == Self.bytes("123401000001000000000000016104746573740000010001"))
        #expect(DNSMessage.query(id: 7, question: DNSQuestion(name: try DNSName("."), type: .ns), recursionDesired: false)
                == Self.bytes("000700000001000000000000" + "00" + "00020001"))
    }

    @Test("names: a final dot is optional, case does not matter, bad names are refused")
    func names() throws {
        #expect(try DNSName("a.test") == DNSName("A.TEST."))
        #expect(try DNSName("a.test").labels == [Array("a".utf8), Array("test".utf8)])
        #expect(try DNSName(".").labels.isEmpty)
        #expect(try DNSName(".").description == ".")
        #expect(try DNSName("Mixed.Case").description == "Mixed.Case.")
        #expect(DNSName(labels: [Array("a.b".utf8), [0x07, 0x5C]]).description == "a\\.b.\\007\\\\.")
        #expect(try DNSName(String(repeating: "x", count: 63)).wireLength == 65)
        let longest = Array(repeating: String(repeating: "x", count: 63), count: 3).joined(separator: ".") + "." + String(repeating: "y", count: 61)
        #expect(try DNSName(longest).wireLength == 255)
        for bad in ["", "a..b", ".a", String(repeating: "x", count: 64), longest + "y"] {
            #expect(throws: DNSError.self, "\(bad)") { try DNSName(bad) }
        }
    }

    @Test("types by name in any case, or as TYPE<number>", arguments: [
        ("A", 1), ("aaaa", 28), ("Txt", 16), ("CNAME", 5), ("MX", 15), ("TYPE65", 65), ("type99", 99),
    ])
    func types(text: String, number: UInt16) throws {
        let type = try #require(DNSType(text))
        #expect(type.rawValue == number)
        #expect(DNSType(type.description) == type)
    }

    @Test("unknown type names are refused")
    func unknownTypes() {
        for text in ["", "BOGUS", "TYPE", "TYPE70000", "TYPE-1"] { #expect(DNSType(text) == nil, "\(text)") }
    }

    @Test("dnsmasq's replies parse: A, AAAA, TXT, CNAME with a pointer into record data, NXDOMAIN")
    func dnsmasqReplies() throws {
        let a = try DNSMessage(parsing: Self.dnsmasqA)
        #expect(a.id == 0x1234 && a.isResponse && a.responseCode == .noError && !a.isTruncated)
        #expect(a.questions == [DNSQuestion(name: try DNSName("a.test"), type: .a)])
        #expect(a.answers.map(\.description) == ["a.test. 0 IN A 192.0.2.1"])
        #expect(a.answers.first?.data == .address("192.0.2.1"))

        #expect(try DNSMessage(parsing: Self.dnsmasqAAAA).answers.map(\.description) == ["a.test. 0 IN AAAA 2001:db8::1"])
        let txt = try DNSMessage(parsing: Self.dnsmasqTXT)
        #expect(txt.answers.first?.data == .text([Array("hello world".utf8), Array("second".utf8)]))
        #expect(txt.answers.map(\.description) == ["t.test. 0 IN TXT \"hello world\" \"second\""])
        #expect(try DNSMessage(parsing: Self.dnsmasqCNAME).answers.map(\.description)
                == ["c.test. 0 IN CNAME h.test.", "h.test. 0 IN A 192.0.2.7"])

        let nx = try DNSMessage(parsing: Self.dnsmasqNXDOMAIN)
        #expect(nx.responseCode.rawValue == 3)
        #expect(nx.responseCode.description == "NXDOMAIN (no such name)")
        #expect(nx.answers.isEmpty)
    }

    @Test("MX, SOA and unknown types; TXT escapes; TTLs up to 2^32-1")
    func otherRecords() throws {
        var message = Self.bytes("abcd8180000100030000000002" + "6d78" + "00" + "000f0001")  // mx. MX
        // MX 10 mail.mx. (the name "mx." by pointer to the question, offset 12)
        message += Self.bytes("c00c000f0001ffffffff0009000a046d61696cc00c")
        // SOA ns.mx. admin.mx. 1 2 3 4 5
        message += Self.bytes("c00c00060001000000010021" + "026e73c00c" + "0561646d696ec00c" + "00000001000000020000000300000004" + "00000005")
        // TYPE99 with three bytes, and a TXT string with a quote, a backslash and a BEL
        message[7] = 4
        message += Self.bytes("c00c00630001000000000003010203")
        message += Self.bytes("c00c00100001000000000007" + "05" + "61225c6307" + "00")
        let parsed = try DNSMessage(parsing: message)
        #expect(parsed.answers.map(\.description) == [
            "mx. 4294967295 IN MX 10 mail.mx.",
            "mx. 1 IN SOA ns.mx. admin.mx. 1 2 3 4 5",
            "mx. 0 IN TYPE99 \\# 3 010203",
            "mx. 0 IN TXT \"a\\\"\\\\c\\007\" \"\"",
        ])
    }

    @Test("a reply matches only its query: response flag, ID, and the same question in any case")
    func matching() throws {
        let question = DNSQuestion(name: try DNSName("A.Test"), type: .a)
        let reply = try DNSMessage(parsing: Self.dnsmasqA)
        #expect(reply.isReply(toID: 0x1234, question: question))
        #expect(!reply.isReply(toID: 0x1235, question: question))
        #expect(!reply.isReply(toID: 0x1234, question: DNSQuestion(name: question.name, type: .aaaa)))
        #expect(!reply.isReply(toID: 0x1234, question: DNSQuestion(name: try DNSName("b.test"), type: .a)))
        // The query itself (QR clear), as a socket that hears its own datagram would see it.
        let ownQuery = try DNSMessage(parsing: DNSMessage.query(id: 0x1234, question: question))
        #expect(!ownQuery.isReply(toID: 0x1234, question: question))
    }

    @Test("every truncation of a reply is refused with an error, never a crash")
    func truncations() {
        for message in [Self.dnsmasqA, Self.dnsmasqAAAA, Self.dnsmasqTXT, Self.dnsmasqCNAME, Self.dnsmasqNXDOMAIN] {
            for length in 0..<message.count {
                #expect(throws: DNSError.self, "\(length) of \(message.count) bytes") {
                    try DNSMessage(parsing: Array(message.prefix(length)))
                }
            }
        }
    }

    @Test("malformed replies are refused", arguments: [
        // A pointer to itself, and a pointer forwards: loops are impossible.
        ("a pointer to itself", "123481800001000000000000" + "c00c" + "00010001"),
        ("a label, then a pointer to its own start", "123481800001000000000000" + "0161c00c" + "00010001"),
        ("forward pointer", "123481800001000000000000" + "c00e" + "0000010001"),
        ("two pointers to each other", "123481800001000100000000" + "016100" + "00010001" + "c015" + "c013" + "000100010000000000040a000001"),
        ("label type 01", "123481800001000000000000" + "4061" + "00" + "00010001"),
        ("A with 5 bytes", "123481800001000100000000" + "016100" + "00010001" + "c00c000100010000000000050a00000101"),
        ("AAAA with 4 bytes", "123481800001000100000000" + "016100" + "001c0001" + "c00c001c00010000000000040a000001"),
        ("CNAME shorter than its name", "123481800001000100000000" + "016100" + "00050001" + "c00c000500010000000000020162" + "00"),
        ("TXT string past its data", "123481800001000100000000" + "016100" + "00100001" + "c00c0010000100000000000205616263"),
    ])
    func malformed(what: String, hex: String) {
        #expect(throws: DNSError.self, "\(what)") { try DNSMessage(parsing: Self.bytes(hex)) }
    }

    @Test("a name over 255 bytes built from pointers is refused")
    func longCompressedName() throws {
        // Four labels of 63 bytes, each later name one more label in front of the previous one by
        // pointer: the question is fine (255 bytes), the answer's name one label more is not.
        var message = Self.bytes("123481800001000000000000")
        var labels = ""
        for _ in 0..<3 { labels += "3f" + String(repeating: "78", count: 63) }
        message += Self.bytes(labels + "3d" + String(repeating: "79", count: 61) + "00" + "00010001")
        #expect(try DNSMessage(parsing: message).questions.first?.name.wireLength == 255)
        message[7] = 1
        message += Self.bytes("017a" + "c00c" + "000100010000000000040a000001")
        #expect(throws: DNSError("a name longer than 255 bytes")) { try DNSMessage(parsing: message) }
    }

    static func bytes(_ hex: String) -> [UInt8] {
        var result: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            result.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        return result
    }
}
