// The suite of the DocC article "Testing your UDP code" (AsyncUDPTesting.docc), word for word:
// CI runs it here, so the article's code is known to compile and pass.
import AsyncUDP
import AsyncUDPTesting
import Testing

/// A small request/response client: each request starts with a 4-byte ID, and the server's
/// reply starts with the same ID. It waits `timeout` for the reply, sends again up to
/// `attempts` times, and ignores any datagram whose ID is not the one it waits for.
actor RequestClient {
    let socket: UDPSocket
    let server: SocketAddress
    private var nextID: UInt32 = 1
    /// Requests sent, retries included.
    private(set) var sends = 0
    /// Datagrams ignored: duplicates, late replies, strays.
    private(set) var ignored = 0

    init(socket: UDPSocket, server: SocketAddress) {
        self.socket = socket
        self.server = server
    }

    /// Sends `body` and returns the body of its reply, or `nil` when no reply came.
    func request(_ body: [UInt8], timeout: Duration = .milliseconds(100), attempts: Int = 5) async throws -> [UInt8]? {
        let id = nextID
        nextID += 1
        let header = withUnsafeBytes(of: id.bigEndian) { Array($0) }
        for _ in 0..<attempts {
            try await socket.send(header + body, to: server)
            sends += 1
            let deadline = ContinuousClock.now + timeout
            while deadline > .now, let reply = try await socket.receive(timeout: deadline - .now) {
                if reply.payload.starts(with: header) { return Array(reply.payload.dropFirst(4)) }
                ignored += 1
            }
        }
        return nil
    }
}

@Suite("Testing your UDP code", .timeLimit(.minutes(1)))
struct RequestClientTests {
    @Test("every request is answered through a link that loses 30% of the datagrams each way")
    func retriesUnderLoss() async throws {
        try await withTestPeer(script: .echo) { server in
            // The same seed gives the same losses on every run.
            try await withImpairedLink(to: server.address, seed: 2026, impairments: Impairments(dropRate: 0.3)) { link in
                try await withLoopbackSocket { socket in
                    let client = RequestClient(socket: socket, server: link.address)
                    for number in 0..<50 {
                        let body = Array("request \(number)".utf8)
                        let reply = try await client.request(body, timeout: .milliseconds(50), attempts: 20)
                        #expect(reply == body)
                    }
                    let stats = link.statistics
                    #expect(stats.clientToServer.dropped > 0 && stats.serverToClient.dropped > 0, "\(stats)")
                    #expect(await client.sends > 50, "losses were made up by retries")
                }
            }
        }
    }

    @Test("a duplicate reply is ignored: the next request gets its own reply")
    func duplicateReplyIgnored() async throws {
        try await withTestPeer(script: .echo.duplicated()) { server in
            try await withLoopbackSocket { socket in
                let client = RequestClient(socket: socket, server: server.address)
                let first = try await client.request(Array("first".utf8))
                #expect(first == Array("first".utf8))
                // The second copy of the first reply is waiting; it must not answer this one.
                let second = try await client.request(Array("second".utf8), timeout: .seconds(5))
                #expect(second == Array("second".utf8))
                #expect(await client.ignored == 1)
                #expect(await client.sends == 2)
            }
        }
    }

    @Test("a reply that comes after the timeout is ignored")
    func lateReplyIgnored() async throws {
        // The peer holds its reply to the first request until the second request arrives, so
        // it comes after the client gave up however slow the machine is; then it answers both,
        // the late reply first, while the client waits for the second.
        let script = TestPeer.Script { request in
            guard request.index == 1 else { return [] }
            let lateReply = [0, 0, 0, 1] + Array("first".utf8)  // the first request's ID and body
            return [TestPeer.Reply(lateReply), TestPeer.Reply(request.payload)]
        }
        try await withTestPeer(script: script) { server in
            try await withLoopbackSocket { socket in
                let client = RequestClient(socket: socket, server: server.address)
                let first = try await client.request(Array("first".utf8), timeout: .milliseconds(100), attempts: 1)
                #expect(first == nil)
                let second = try await client.request(Array("second".utf8), timeout: .seconds(5), attempts: 1)
                #expect(second == Array("second".utf8))
                #expect(await client.ignored == 1)
                #expect(server.received.count == 2)
            }
        }
    }
}
