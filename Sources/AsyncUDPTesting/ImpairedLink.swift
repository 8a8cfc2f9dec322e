// A UDP relay on loopback that drops, duplicates, reorders, delays and truncates datagrams,
// deterministically under a seed.
public import AsyncUDP

/// A UDP relay on loopback between a client and a server that impairs the traffic of each
/// direction as its ``Impairments`` say, deterministically under a seed.
///
/// Point the client at ``address`` instead of the server: the link forwards what the client
/// sends to the server, and what the server sends back to the client (to the address the client
/// last sent from). Create one with
/// ``withImpairedLink(to:seed:clientToServer:serverToClient:loop:isolation:_:)``.
///
/// ```swift
/// try await withTestPeer(script: .echo) { server in
///     try await withImpairedLink(to: server.address, seed: 7,
///                                clientToServer: Impairments(dropRate: 0.3)) { link in
///         // The client sends to link.address; about 30% of its datagrams are lost.
///         print(link.statistics)
///     }
/// }
/// ```
///
/// ## Determinism
///
/// What happens to a datagram depends only on the seed, its direction and its place in that
/// direction (see ``Impairments/decision(forDatagram:of:seed:)``), never on timing: the same
/// seed and the same traffic give the same decisions, so a failing test fails again the same
/// way. ``decisions(_:)`` lists what was decided.
public final class ImpairedLink: Sendable {
    /// Where clients send: the link's own address on loopback.
    public let address: SocketAddress
    /// The server the link forwards to.
    public let server: SocketAddress
    /// The seed of every decision.
    public let seed: UInt64
    /// What happens to datagrams from the client to the server.
    public let clientToServer: Impairments
    /// What happens to datagrams from the server to the client.
    public let serverToClient: Impairments

    /// Faces the client: bound at ``address``.
    let front: UDPSocket
    /// Faces the server: sends to ``server`` and reads its replies.
    let back: UDPSocket
    private let state = Watched(State())

    struct State: Sendable {
        var counters: [LinkDirection: Counters] = [.clientToServer: Counters(), .serverToClient: Counters()]
        var decisions: [LinkDirection: [ImpairmentDecision]] = [.clientToServer: [], .serverToClient: []]
        var idle: [LinkDirection: Bool] = [.clientToServer: true, .serverToClient: true]
        var client: SocketAddress?
    }

    init(front: UDPSocket, back: UDPSocket, server: SocketAddress, seed: UInt64,
         clientToServer: Impairments, serverToClient: Impairments) {
        self.front = front
        self.back = back
        self.address = front.localAddress
        self.server = server
        self.seed = seed
        self.clientToServer = clientToServer
        self.serverToClient = serverToClient
    }

    /// What the link has done so far, per direction.
    public var statistics: Statistics {
        state.read { Statistics(clientToServer: $0.counters[.clientToServer]!, serverToClient: $0.counters[.serverToClient]!) }
    }

    /// Every decision made so far for `direction`, in datagram order.
    public func decisions(_ direction: LinkDirection) -> [ImpairmentDecision] {
        state.read { $0.decisions[direction]! }
    }

    /// The address the client last sent from: where replies go. `nil` before the first datagram.
    public var clientAddress: SocketAddress? { state.read(\.client) }

    /// Waits until the link has read at least `count` datagrams in `direction` and has sent on
    /// all of them that it will send (nothing delayed or held back is left).
    ///
    /// Use it to pace a test: send a window, wait for the link, then read what reached the
    /// other side (``Counters/forwarded`` says how many).
    ///
    /// - Parameters:
    ///   - direction: The direction.
    ///   - count: How many datagrams the link must have read in that direction, in all.
    ///   - duration: How long to wait.
    /// - Returns: The direction's counters at that moment.
    /// - Throws: ``TestTimeoutError`` at the deadline; `CancellationError`.
    @discardableResult
    public func waitUntilForwarded(_ direction: LinkDirection, received count: Int,
                                   within duration: Duration) async throws -> Counters {
        try await state.wait(until: { $0.counters[direction]!.received >= count && $0.idle[direction]! },
                             within: duration) { state in
            "the link to pass on \(count) datagrams \(direction) (\(state.counters[direction]!))"
        }
        return state.read { $0.counters[direction]! }
    }

    /// A datagram on its way out.
    private struct Outgoing {
        var due: ContinuousClock.Instant
        var order: Int
        var payload: [UInt8]
    }

    /// The datagrams of one held-back datagram (two if duplicated).
    private struct Held {
        var copies: [Outgoing]
        var deadline: ContinuousClock.Instant
    }

    /// Relays one direction until its input socket closes or the task is cancelled. One task
    /// per direction does everything for it (reads, decides, holds, sends), so its state needs
    /// no lock; only what tests read goes through `state`.
    func forward(_ direction: LinkDirection) async {
        let input = direction == .clientToServer ? front : back
        let output = direction == .clientToServer ? back : front
        let impairments = direction == .clientToServer ? clientToServer : serverToClient
        var counters = Counters()
        var newDecisions: [ImpairmentDecision] = []
        var pending: [Outgoing] = []    // sorted by (due, order)
        var held: [Held] = []
        var order = 0
        var index = 0
        var lastClient: SocketAddress?

        func enqueue(_ item: Outgoing) {
            var position = pending.endIndex
            while position > pending.startIndex,
                  (pending[position - 1].due, pending[position - 1].order) > (item.due, item.order) {
                position -= 1
            }
            pending.insert(item, at: position)
        }

        while true {
            // Send what is due.
            let now = ContinuousClock.now
            let dueCount = pending.prefix { $0.due <= now }.count
            if dueCount > 0 {
                let due = pending.prefix(dueCount)
                pending.removeFirst(dueCount)
                // Replies go to where the client last sent from (set before its datagram went on).
                if let destination = direction == .clientToServer ? server : state.read(\.client) {
                    do {
                        try await output.send(contentsOf: due.map { Datagram(payload: $0.payload, remote: destination) })
                        counters.forwarded += due.count
                    } catch let error as BatchSendError {
                        counters.forwarded += error.count - error.failures.count
                        counters.sendErrors += error.failures.count
                    } catch {
                        return  // closed
                    }
                } else {
                    counters.unroutable += due.count
                }
            }
            let snapshot = counters
            let decided = newDecisions
            newDecisions.removeAll(keepingCapacity: true)
            let idle = pending.isEmpty && held.isEmpty
            state.update { state in
                state.counters[direction] = snapshot
                state.decisions[direction]!.append(contentsOf: decided)
                state.idle[direction] = idle
            }

            // Wait for traffic, or until the next datagram is due.
            let wake = [pending.first?.due, held.first?.deadline].compactMap { $0 }.min()
            let batch: [Datagram]
            do {
                if let wake {
                    let now = ContinuousClock.now
                    if let due = pending.first?.due, due <= now { continue }
                    // Returns at once with a datagram already read (even when the hold has run out),
                    // so whether a held datagram is overtaken depends on the traffic, not on timing.
                    guard let datagram = try await input.receive(timeout: max(wake - now, .zero)) else {
                        // Nothing came: a hold that has run out ends, and its datagrams go on
                        // unovertaken (not counted as reordered).
                        if let first = held.first, first.deadline <= ContinuousClock.now {
                            for item in held.flatMap(\.copies) { enqueue(item) }
                            held.removeAll()
                        }
                        continue
                    }
                    // And what else is already queued (answered at once, without a timer).
                    var more = [datagram]
                    while more.count < 128, let next = try await input.receive(timeout: .zero) { more.append(next) }
                    batch = more
                } else {
                    batch = try await input.receive(upTo: 128)
                }
            } catch {
                return  // closed or cancelled
            }

            for datagram in batch {
                let arrival = ContinuousClock.now
                if direction == .clientToServer {
                    if lastClient != datagram.remote {
                        lastClient = datagram.remote
                        state.update { $0.client = datagram.remote }
                    }
                } else if datagram.remote != server {
                    counters.ignored += 1
                    continue
                }
                let decision = impairments.decision(forDatagram: index, of: direction, seed: seed)
                index += 1
                newDecisions.append(decision)
                counters.received += 1
                if decision.drop {
                    counters.dropped += 1
                    continue
                }
                var payload = datagram.payload
                if let length = decision.truncateTo, payload.count > length {
                    payload.removeSubrange(length...)
                    counters.truncated += 1
                }
                if decision.delay > .zero { counters.delayed += 1 }
                let due = arrival + decision.delay
                var copies = [Outgoing(due: due, order: order, payload: payload)]
                order += 1
                if decision.duplicate {
                    counters.duplicated += 1
                    copies.append(Outgoing(due: due, order: order, payload: payload))
                    order += 1
                }
                if decision.reorder {
                    // Held until a later datagram has gone out ahead of it.
                    held.append(Held(copies: copies, deadline: (held.first?.deadline ?? due + impairments.reorderHold)))
                    continue
                }
                for item in copies { enqueue(item) }
                // What was held goes out right behind this datagram: overtaken, so reordered.
                for var item in held.flatMap(\.copies) {
                    item.due = max(item.due, due)
                    item.order = order
                    order += 1
                    enqueue(item)
                }
                counters.reordered += held.count
                held.removeAll()
            }
        }
    }
}

extension ImpairedLink {
    /// What the link did to the datagrams of one direction.
    public struct Counters: Sendable, Hashable, CustomStringConvertible {
        /// Datagrams the link read.
        public var received = 0
        /// Datagrams the link sent on (a duplicated datagram counts twice).
        public var forwarded = 0
        /// Datagrams dropped on purpose.
        public var dropped = 0
        /// Datagrams sent twice.
        public var duplicated = 0
        /// Datagrams held back and sent after a later datagram of the same direction.
        public var reordered = 0
        /// Datagrams held for a delay (``Impairments/delay`` plus jitter) above zero.
        public var delayed = 0
        /// Datagrams cut short.
        public var truncated = 0
        /// Datagrams from anyone but the server, read on the server side and ignored.
        public var ignored = 0
        /// Replies with nowhere to go (no client had sent anything yet).
        public var unroutable = 0
        /// Datagrams the kernel refused to send on.
        public var sendErrors = 0

        /// Zero counters.
        public init() {}

        public var description: String {
            "received \(received), forwarded \(forwarded), dropped \(dropped), duplicated \(duplicated), reordered \(reordered), delayed \(delayed), truncated \(truncated), ignored \(ignored), unroutable \(unroutable), send errors \(sendErrors)"
        }
    }

    /// The counters of both directions.
    public struct Statistics: Sendable, Hashable, CustomStringConvertible {
        /// From the client to the server.
        public var clientToServer: Counters
        /// From the server to the client.
        public var serverToClient: Counters

        /// Creates statistics from the counters of each direction.
        public init(clientToServer: Counters = Counters(), serverToClient: Counters = Counters()) {
            self.clientToServer = clientToServer
            self.serverToClient = serverToClient
        }

        /// The counters of `direction`.
        public subscript(direction: LinkDirection) -> Counters {
            direction == .clientToServer ? clientToServer : serverToClient
        }

        public var description: String {
            "client to server: \(clientToServer); server to client: \(serverToClient)"
        }
    }
}

/// Opens an ``ImpairedLink`` to `server` on loopback, runs `body` with it, and closes it on
/// every exit path.
///
/// ```swift
/// try await withImpairedLink(to: server.address, seed: 42,
///                            clientToServer: Impairments(dropRate: 0.3),
///                            serverToClient: Impairments(duplicateRate: 0.2)) { link in
///     try await client.send(request, to: link.address)
/// }
/// ```
///
/// - Parameters:
///   - server: The server to forward to (on loopback).
///   - seed: The seed of every decision; the same seed and traffic give the same decisions.
///   - clientToServer: What happens to datagrams on their way to the server.
///   - serverToClient: What happens to datagrams on their way back.
///   - loop: The loop the link's sockets live on. Default `UVLoop.shared`.
///   - isolation: The actor `body` runs on: the caller's, by default.
///   - body: The test, with the running link.
/// - Returns: What `body` returns.
/// - Throws: ``ImpairmentError`` for bad impairments or a server that is not on loopback; what
///   opening a socket or `body` throws.
@discardableResult
public func withImpairedLink<Result>(
    to server: SocketAddress,
    seed: UInt64 = 0,
    clientToServer: Impairments = .none,
    serverToClient: Impairments = .none,
    loop: UVLoop = .shared,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (ImpairedLink) async throws -> Result
) async throws -> Result {
    try clientToServer.validate()
    try serverToClient.validate()
    // The link's sockets are on loopback: a server anywhere else could not be reached from them.
    guard server.ip.hasPrefix("127.") || server.ip == "::1" || server.ip.hasPrefix("::ffff:127."), server.port != 0 else {
        throw ImpairmentError("the server must be on loopback (127.0.0.0/8 or ::1) with a port, not \(server)")
    }
    // Room for bursts: a test that sends windows of hundreds must not lose any to the queue.
    let configuration = UDPSocket.Configuration(receiveQueueLimit: 16_384, receiveBufferSize: 4 << 20)
    let front = try await loopbackSocket(family: server.family, loop: loop, configuration: configuration)
    let back: UDPSocket
    do {
        back = try await loopbackSocket(family: server.family, loop: loop, configuration: configuration)
    } catch {
        await front.close()
        throw error
    }
    let link = ImpairedLink(front: front, back: back, server: server, seed: seed,
                            clientToServer: clientToServer, serverToClient: serverToClient)
    let runners = LinkDirection.allCases.map { direction in Task { await link.forward(direction) } }
    func stop() async {
        await front.close()
        await back.close()
        for runner in runners {
            runner.cancel()
            await runner.value
        }
    }
    do {
        let result = try await body(link)
        await stop()
        return result
    } catch {
        await stop()
        throw error
    }
}

/// Opens an ``ImpairedLink`` to `server` with the same impairments in both directions; see
/// ``withImpairedLink(to:seed:clientToServer:serverToClient:loop:isolation:_:)``.
///
/// - Parameters:
///   - server: The server to forward to (on loopback).
///   - seed: The seed of every decision.
///   - impairments: What happens to datagrams in each direction (drawn separately for each).
///   - loop: The loop the link's sockets live on. Default `UVLoop.shared`.
///   - isolation: The actor `body` runs on: the caller's, by default.
///   - body: The test, with the running link.
/// - Returns: What `body` returns.
/// - Throws: ``ImpairmentError`` for bad impairments; what opening a socket or `body` throws.
@discardableResult
public func withImpairedLink<Result>(
    to server: SocketAddress,
    seed: UInt64 = 0,
    impairments: Impairments,
    loop: UVLoop = .shared,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (ImpairedLink) async throws -> Result
) async throws -> Result {
    try await withImpairedLink(to: server, seed: seed, clientToServer: impairments, serverToClient: impairments,
                               loop: loop, body)
}
