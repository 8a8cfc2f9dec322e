// A scripted peer on loopback: records what it receives and answers by a script.
public import AsyncUDP

/// A UDP peer on loopback that a test talks to: it records every datagram it receives and
/// answers each one as its ``Script`` says.
///
/// Create one with ``withTestPeer(_:loop:script:isolation:_:)``, which binds an ephemeral port
/// on 127.0.0.1 or ::1, runs the test's body, and closes the peer on every exit path.
///
/// ```swift
/// try await withTestPeer(script: .echo.ignoringFirst(1)) { peer in
///     try await withLoopbackSocket { client in
///         try await client.send("hello".utf8, to: peer.address)   // not answered
///         try await client.send("hello".utf8, to: peer.address)   // echoed
///         let reply = try await client.expectDatagram(within: .seconds(1))
///         let requests = try await peer.expectDatagrams(2, within: .seconds(1))
///     }
/// }
/// ```
///
/// Every wait has a deadline and throws ``TestTimeoutError`` when it passes, so a test fails
/// with a message instead of hanging.
public final class TestPeer: Sendable {
    /// The address the peer is bound to: send requests here.
    public let address: SocketAddress
    /// The peer's socket, to send unsolicited datagrams (strays, late replies) from the peer's
    /// address. Do not receive from it: the peer itself reads it.
    public let socket: UDPSocket
    /// The script that answers each datagram.
    public let script: Script
    private let log = Watched(Log())

    private struct Log: Sendable {
        var received: [ReceivedDatagram] = []
        var taken = 0
        var repliesSent = 0
        var replyErrors: [String] = []
    }

    init(socket: UDPSocket, script: Script) {
        self.socket = socket
        self.address = socket.localAddress
        self.script = script
    }

    /// Every datagram the peer has received so far, in arrival order.
    public var received: [ReceivedDatagram] { log.read(\.received) }

    /// How many replies the peer has sent (each copy counts).
    public var repliesSent: Int { log.read(\.repliesSent) }

    /// Errors from sending replies (for example to a client that has gone), as text.
    public var replyErrors: [String] { log.read(\.replyErrors) }

    /// Waits for the next datagram that no earlier `expectDatagram` or `expectDatagrams`
    /// returned, and returns it.
    ///
    /// Each call returns the next datagram in arrival order; a call that times out takes
    /// nothing, so the next call still gets it.
    ///
    /// - Parameter duration: How long to wait.
    /// - Returns: The datagram, with its sender and arrival time.
    /// - Throws: ``TestTimeoutError`` at the deadline; `CancellationError`.
    public func expectDatagram(within duration: Duration) async throws -> ReceivedDatagram {
        try await expectDatagrams(1, within: duration)[0]
    }

    /// Waits until `count` datagrams that no earlier `expectDatagram` or `expectDatagrams`
    /// returned have arrived, and returns them in arrival order.
    ///
    /// - Parameters:
    ///   - count: How many datagrams; at least 1.
    ///   - duration: How long to wait for all of them.
    /// - Returns: `count` datagrams.
    /// - Throws: ``TestTimeoutError`` at the deadline (nothing is taken then);
    ///   ``TestPeerError/invalidCount(_:)`` for a count below 1; `CancellationError`.
    public func expectDatagrams(_ count: Int, within duration: Duration) async throws -> [ReceivedDatagram] {
        guard count >= 1 else { throw TestPeerError.invalidCount(count) }
        let address = self.address
        while true {
            let start = log.read(\.taken)
            try await log.wait(until: { $0.received.count >= start + count }, within: duration) { log in
                "\(count) datagram\(count == 1 ? "" : "s") at the test peer \(address) (\(log.received.count) received so far, \(log.taken) already taken)"
            }
            let taken: [ReceivedDatagram]? = log.update { log in
                // Another waiter may have taken some meanwhile: then wait again.
                guard log.received.count >= log.taken + count else { return nil }
                defer { log.taken += count }
                return Array(log.received[log.taken..<log.taken + count])
            }
            if let taken { return taken }
        }
    }

    /// Waits until the peer has received `count` datagrams in all (whether or not they were
    /// taken by ``expectDatagram(within:)``), and returns all it has received.
    ///
    /// - Parameters:
    ///   - count: How many datagrams in all.
    ///   - duration: How long to wait.
    /// - Throws: ``TestTimeoutError`` at the deadline; `CancellationError`.
    @discardableResult
    public func waitForReceived(_ count: Int, within duration: Duration) async throws -> [ReceivedDatagram] {
        let address = self.address
        try await log.wait(until: { $0.received.count >= count }, within: duration) { log in
            "\(count) datagrams in all at the test peer \(address) (\(log.received.count) received so far)"
        }
        return received
    }

    /// Waits until the peer has sent `count` replies in all (each copy counts).
    ///
    /// - Throws: ``TestTimeoutError`` at the deadline; `CancellationError`.
    public func waitForReplies(_ count: Int, within duration: Duration) async throws {
        let address = self.address
        try await log.wait(until: { $0.repliesSent >= count }, within: duration) { log in
            "\(count) replies from the test peer \(address) (\(log.repliesSent) sent so far)"
        }
    }

    /// Sends `payload` from the peer's address to `destination`, outside the script: a stray,
    /// a forged reply, a late reply.
    ///
    /// - Throws: What `UDPSocket.send(_:to:)` throws.
    public func send(_ payload: [UInt8], to destination: SocketAddress) async throws {
        try await socket.send(payload, to: destination)
    }

    /// Reads the socket and answers each datagram until the socket closes or the task is
    /// cancelled. Delayed replies run in child tasks, so they never hold up later datagrams.
    func run() async {
        await withTaskGroup(of: Void.self) { group in
            while let batch = try? await socket.receive(upTo: 64) {
                for datagram in batch {
                    let request = log.update { log in
                        let request = ReceivedDatagram(index: log.received.count, payload: datagram.payload,
                                                       sender: datagram.remote, time: .now)
                        log.received.append(request)
                        return request
                    }
                    let replies: [Reply]
                    do {
                        replies = try await script.replies(request)
                    } catch {
                        log.update { $0.replyErrors.append("script failed for datagram \(request.index): \(error)") }
                        continue
                    }
                    for reply in replies {
                        let destination = reply.destination ?? request.sender
                        if reply.delay <= .zero {
                            await sendReply(reply.payload, to: destination)
                        } else {
                            group.addTask {
                                // A cancelled delay (the peer is closing) sends nothing.
                                guard (try? await Task.sleep(for: reply.delay)) != nil else { return }
                                await self.sendReply(reply.payload, to: destination)
                            }
                        }
                    }
                }
            }
            group.cancelAll()
        }
    }

    private func sendReply(_ payload: [UInt8], to destination: SocketAddress) async {
        do {
            try await socket.send(payload, to: destination)
            log.update { $0.repliesSent += 1 }
        } catch {
            log.update { $0.replyErrors.append("reply to \(destination): \(error)") }
        }
    }
}

/// Errors from ``TestPeer`` for bad arguments.
public enum TestPeerError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A count below 1 was asked for.
    case invalidCount(Int)

    public var description: String {
        switch self {
        case .invalidCount(let count): "a count of datagrams must be at least 1, not \(count)"
        }
    }
}

extension TestPeer {
    /// One datagram the peer received: what, from whom, when, and its place in arrival order.
    public struct ReceivedDatagram: Sendable, Hashable {
        /// Its place in arrival order, from 0.
        public let index: Int
        /// The payload.
        public let payload: [UInt8]
        /// Who sent it.
        public let sender: SocketAddress
        /// When the peer read it.
        public let time: ContinuousClock.Instant

        /// Creates a record (for scripts under test of their own).
        public init(index: Int, payload: [UInt8], sender: SocketAddress, time: ContinuousClock.Instant) {
            self.index = index
            self.payload = payload
            self.sender = sender
            self.time = time
        }
    }

    /// One datagram the peer sends in answer to a request.
    public struct Reply: Sendable, Hashable {
        /// The payload.
        public var payload: [UInt8]
        /// How long after the request it goes out; zero for at once.
        public var delay: Duration
        /// Where it goes; `nil` for the request's sender.
        public var destination: SocketAddress?

        /// Creates a reply of `payload`, sent after `delay` to `destination` (default: the
        /// request's sender).
        public init(_ payload: [UInt8], after delay: Duration = .zero, to destination: SocketAddress? = nil) {
            self.payload = payload
            self.delay = delay
            self.destination = destination
        }
    }

    /// How the peer answers each datagram it receives: a function from the request to the
    /// replies, with ready-made scripts and modifiers that combine.
    ///
    /// ```swift
    /// .echo                                   // every datagram straight back
    /// .reply(Array("pong".utf8))              // the same reply to everything
    /// .silent                                 // records, never answers
    /// .echo.ignoringFirst(2)                  // no reply to the first two requests
    /// .echo.delayed(by: .milliseconds(300))   // each reply 300 ms late
    /// .echo.duplicated()                      // each reply twice
    /// .replying { request in request.payload.reversed() }   // computed; nil for no reply
    /// ```
    public struct Script: Sendable {
        /// The replies to one request, in order.
        public let replies: @Sendable (ReceivedDatagram) async throws -> [Reply]

        /// A script from a closure that gives the replies to each request (none for silence).
        /// If it throws, the request gets no reply and the error is kept in
        /// ``TestPeer/replyErrors``.
        public init(_ replies: @escaping @Sendable (ReceivedDatagram) async throws -> [Reply]) {
            self.replies = replies
        }

        /// Sends every datagram straight back to its sender.
        public static var echo: Script { Script { [Reply($0.payload)] } }

        /// Never answers.
        public static var silent: Script { Script { _ in [] } }

        /// Answers every datagram with `payload`.
        public static func reply(_ payload: [UInt8]) -> Script { Script { _ in [Reply(payload)] } }

        /// Answers with what `respond` returns for each request, or not at all when it returns
        /// `nil`.
        public static func replying(_ respond: @escaping @Sendable (ReceivedDatagram) async throws -> [UInt8]?) -> Script {
            Script { request in try await respond(request).map { [Reply($0)] } ?? [] }
        }

        /// This script, except that the first `count` requests get no reply (as if they were lost).
        public func ignoringFirst(_ count: Int) -> Script {
            let replies = self.replies
            return Script { request in request.index < count ? [] : try await replies(request) }
        }

        /// This script, with every reply sent `delay` later.
        public func delayed(by delay: Duration) -> Script {
            let replies = self.replies
            return Script { request in
                try await replies(request).map { reply in
                    var reply = reply
                    reply.delay += delay
                    return reply
                }
            }
        }

        /// This script, with every reply sent `copies` times (default twice), one after another.
        public func duplicated(_ copies: Int = 2) -> Script {
            let replies = self.replies
            return Script { request in
                try await replies(request).flatMap { Array(repeating: $0, count: max(copies, 0)) }
            }
        }
    }
}

/// Opens a ``TestPeer`` on an ephemeral loopback port, runs `body` with it, and closes it on
/// every exit path.
///
/// ```swift
/// try await withTestPeer(script: .echo) { peer in
///     try await withLoopbackSocket { client in
///         try await client.send("ping".utf8, to: peer.address)
///         #expect(try await client.expectDatagram(within: .seconds(1)).string == "ping")
///     }
/// }
/// ```
///
/// - Parameters:
///   - family: `.ipv4` for 127.0.0.1 (default), `.ipv6` for ::1.
///   - loop: The loop the peer's socket lives on. Default `UVLoop.shared`.
///   - script: How the peer answers. Default ``TestPeer/Script/echo``.
///   - isolation: The actor `body` runs on: the caller's, by default.
///   - body: The test, with the running peer.
/// - Returns: What `body` returns.
/// - Throws: What opening the socket or `body` throws.
@discardableResult
public func withTestPeer<Result>(
    _ family: AddressFamily = .ipv4,
    loop: UVLoop = .shared,
    script: TestPeer.Script = .echo,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (TestPeer) async throws -> Result
) async throws -> Result {
    let socket = try await loopbackSocket(family: family, loop: loop)
    let peer = TestPeer(socket: socket, script: script)
    let runner = Task { await peer.run() }
    defer { runner.cancel() }
    do {
        let result = try await body(peer)
        await socket.close()
        await runner.value
        return result
    } catch {
        await socket.close()
        runner.cancel()
        await runner.value
        throw error
    }
}
