internal import Glibc
internal import Synchronization
import UVCore

/// A UDP socket whose methods run on its libuv loop's thread: an actor with the loop as its
/// executor.
///
/// ```swift
/// try await withUDPSocket(bindingTo: SocketAddress("0.0.0.0:9000")) { udp in
///     for try await datagram in udp.datagrams {
///         try await udp.send(datagram.payload, to: datagram.remote)
///     }
/// }
/// ```
///
/// Received datagrams arrive in ``datagrams``; sends are `async` and return once the kernel has
/// the datagram. The socket starts receiving as soon as it exists; up to
/// ``Configuration/receiveQueueLimit`` datagrams wait for a consumer, and the
/// ``OverflowPolicy`` decides what happens beyond that. Every drop is counted in
/// ``statistics``.
///
/// ## Threading
///
/// Every isolated method runs on the loop thread and calls libuv directly. Code that already runs
/// there, in a task started with `withTaskExecutorPreference(loop)` or in an actor whose executor
/// is the loop, sends and receives with no thread hop at all:
///
/// ```swift
/// let udp = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:9000"), loop: loop)
/// try await withTaskExecutorPreference(loop) {
///     for try await datagram in udp.datagrams {          // no hop: pulled on the loop thread
///         try await udp.send(datagram.payload, to: datagram.remote)  // no hop: try-send
///     }
/// }
/// ```
public actor UDPSocket {
    /// The loop this socket lives on; also the actor's executor.
    public nonisolated let loop: UVLoop
    /// The local address the socket is bound to (with the real port when bound to port 0).
    public nonisolated let localAddress: SocketAddress
    /// The peer of a connected socket; `nil` for an unconnected one.
    public nonisolated let remoteAddress: SocketAddress?
    /// The configuration the socket was opened with.
    public nonisolated let configuration: Configuration

    /// The datagrams the socket receives, for one consumer at a time.
    ///
    /// Iteration ends normally after ``close()`` (datagrams already queued are delivered
    /// first) and throws on a fatal receive error. Transient errors (see
    /// ``transientErrors``) never end it. Cancelling the task that iterates ends the iteration
    /// and stops receiving; the socket stays open for sending and closes as usual.
    ///
    /// A burst of datagrams costs the consumer one wakeup, not one each.
    public nonisolated let datagrams: AsyncThrowingStream<Datagram, any Error>

    /// Transient errors as they happen: `ECONNREFUSED`, `EHOSTUNREACH` and `ENETUNREACH` from ICMP,
    /// and `ENOBUFS`. They are also counted in ``Statistics/transientErrors``. The 64 most recent
    /// are kept when nobody listens. Finishes when the socket closes.
    public nonisolated let transientErrors: AsyncStream<UVError>

    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    nonisolated let receiver: ReceiveQueue
    nonisolated let direct: DirectSender
    /// The handle; only unwrapped on the loop (isolated methods, or a job `deinit` queues).
    private nonisolated let handleBox: LoopBound<UDPHandle>
    private var handle: UDPHandle { handleBox.value }
    private var sent = 0
    private var bytesSent = 0
    private var sendErrors = 0

    /// Opens a socket bound to `address` and starts receiving.
    ///
    /// - Parameters:
    ///   - address: The local address; port 0 picks an ephemeral port (see ``localAddress``).
    ///   - loop: The loop to live on. Default ``UVLoop/shared``.
    ///   - flags: `.reuseAddress` to share the port, `.ipv6Only` to refuse IPv4 on an IPv6 socket.
    ///   - configuration: Receive queue, overflow policy and buffer sizes.
    /// - Throws: ``UVError`` from the bind (``UVError/addressInUse``, ...) or for a configuration
    ///   out of range (``UVError/invalidArgument``); ``ClosedHandleError`` if the loop has shut
    ///   down.
    public init(bindingTo address: SocketAddress, loop: UVLoop = .shared, flags: UDPFlags = [],
                configuration: Configuration = Configuration()) async throws {
        try await self.init(loop: loop, configuration: configuration, ipv6Only: flags.contains(.ipv6Only)) { handle in
            try handle.bind(address, flags: flags)
        }
    }

    /// Opens a socket connected to `remote`: ``send(_:)`` needs no address and only `remote`'s
    /// datagrams are received.
    ///
    /// - Parameters:
    ///   - remote: The peer. Port 0 is refused.
    ///   - local: The local address; default: an ephemeral port on the wildcard address of
    ///     `remote`'s family.
    ///   - loop: The loop to live on. Default ``UVLoop/shared``.
    ///   - configuration: Receive queue, overflow policy and buffer sizes.
    /// - Throws: ``UVError`` from the bind or connect; ``ClosedHandleError`` if the loop has shut
    ///   down.
    public init(connectingTo remote: SocketAddress, bindingTo local: SocketAddress? = nil, loop: UVLoop = .shared,
                configuration: Configuration = Configuration()) async throws {
        let local = try local ?? SocketAddress(ip: remote.family == .ipv4 ? "0.0.0.0" : "::", port: 0)
        try await self.init(loop: loop, configuration: configuration, ipv6Only: false) { handle in
            try handle.bind(local)
            try handle.connect(remote)
        }
    }

    private init(loop: UVLoop, configuration: Configuration, ipv6Only: Bool,
                 setUp: @escaping @Sendable (UDPHandle) throws -> Void) async throws {
        try configuration.validate()
        let (transientErrors, transientContinuation) = AsyncStream<UVError>.makeStream(bufferingPolicy: .bufferingNewest(64))
        let receiver = ReceiveQueue(loop: loop, configuration: configuration, transientErrors: transientContinuation)
        let opened = try await loop.submit { () throws -> LoopBound<(UDPHandle, DirectSender, SocketAddress)> in
            let handle = try UDPHandle(loop: loop, batchedReceive: configuration.batchedReceive)
            do {
                try setUp(handle)
                try handle.setMaximumDatagramSize(configuration.maximumDatagramSize)
                if let size = configuration.receiveBufferSize { try handle.setReceiveBufferSize(size) }
                if let size = configuration.sendBufferSize { try handle.setSendBufferSize(size) }
                receiver.handle = handle
                try handle.startReceiving { _, result in receiver.receive(result) }
                handle.addCloseObserver { receiver.finish(.closed) }
                let local = try handle.localAddress()
                let direct = DirectSender(fd: try handle.fileDescriptor(), peer: try handle.remoteAddress(),
                                          family: local.family, ipv6Only: ipv6Only)
                handle.addWillCloseObserver {
                    direct.close()
                    receiver.finalKernelDrops = UDPSocket.kernelDrops(fd: direct.fd)
                }
                return LoopBound((handle, direct, local))
            } catch {
                handle.close()
                throw error
            }
        }
        self.loop = loop
        self.configuration = configuration
        self.receiver = receiver
        self.handleBox = LoopBound(opened.value.0)
        self.direct = opened.value.1
        self.localAddress = opened.value.2
        self.remoteAddress = opened.value.1.peer
        self.transientErrors = transientErrors
        self.datagrams = AsyncThrowingStream(unfolding: { try await receiver.next() })
    }

    deinit {
        // A socket dropped without close(): close its handle on the loop (the loop keeps open
        // handles alive until they are closed). A closed socket needs nothing from the loop,
        // which may have shut down.
        guard !direct.isClosed else { return }
        let handle = handleBox
        loop.execute { handle.value.close() }
    }

    // MARK: Sending

    /// Sends one datagram to `address`.
    ///
    /// Returns once libuv reports the datagram handed to the kernel; throws that datagram's own
    /// error. When nothing is queued the datagram goes out at once with a try-send (no request
    /// is allocated); otherwise it joins libuv's queue, which keeps datagrams in order. A failed
    /// send never fails the sends around it.
    ///
    /// On a connected socket, an ICMP error caused by an *earlier* datagram (such as
    /// `ECONNREFUSED`) can surface on this send: it is reported on ``transientErrors`` and this
    /// datagram is sent once more, so the error never fails the wrong send.
    ///
    /// Cancellation: if the task is cancelled before the datagram is queued, nothing is sent and
    /// this throws `CancellationError`. Once queued, a datagram cannot be taken back: the call
    /// waits for the kernel's answer whatever happens to the task.
    ///
    /// - Parameters:
    ///   - bytes: The payload; empty is a zero-length datagram. At most 65,507 bytes over IPv4
    ///     and 65,527 over IPv6.
    ///   - address: The destination.
    /// - Throws: ``UVError/messageTooLong``, ``UVError/permissionDenied`` (broadcast without
    ///   ``setBroadcast(_:)``), ``UVError/addressFamilyNotSupported``, ``UVError/invalidArgument``
    ///   (port 0), ``UVError/alreadyConnected`` (a connected socket takes no address),
    ///   ``ClosedHandleError`` (closed before or while queued), `CancellationError`.
    public nonisolated func send(_ bytes: [UInt8], to address: SocketAddress) async throws {
        try await sendDatagram(bytes, to: address)
    }

    /// Sends one datagram made of several buffers, concatenated; see ``send(_:to:)-(_,SocketAddress)``.
    ///
    /// - Throws: As ``send(_:to:)-(_,SocketAddress)``, and ``UVError/invalidArgument`` for an
    ///   empty list (an empty *buffer* is fine).
    public nonisolated func send(_ buffers: [[UInt8]], to address: SocketAddress) async throws {
        guard !buffers.isEmpty else {
            throw UVError.invalidArgument.with(context: "send needs at least one buffer (an empty buffer is fine)")
        }
        try await sendDatagram(buffers.count == 1 ? buffers[0] : Array(buffers.joined()), to: address)
    }

    /// Sends one datagram to the peer of a connected socket; see ``send(_:to:)-(_,SocketAddress)``.
    ///
    /// - Throws: ``UVError/destinationAddressRequired`` on an unconnected socket, and as
    ///   ``send(_:to:)-(_,SocketAddress)``.
    public nonisolated func send(_ bytes: [UInt8]) async throws {
        try await sendDatagram(bytes, to: nil)
    }

    private nonisolated func sendDatagram(_ bytes: [UInt8], to address: SocketAddress?) async throws {
        try Task.checkCancellation()
        let sentNow: Bool
        if loop.inLoop {
            sentNow = try trySendOnLoopThread(bytes, to: address)
        } else {
            // Sent from this thread with no hop; see DirectSender.
            sentNow = try direct.send(bytes, to: address) == .sent
        }
        guard sentNow else {
            try await sendIsolated(bytes, to: address)
            return
        }
        // The fast paths never suspend: a tight send loop would keep its thread (or, on the loop
        // thread, libuv's I/O) from everything else. Give others a turn now and then.
        if direct.shouldYield() { await Task.yield() }
    }

    /// Loop-affine caller: try-send with no hop. `assumeIsolated` is sound here because the
    /// loop thread runs one job at a time, and the actor's executor is that thread.
    private nonisolated func trySendOnLoopThread(_ bytes: [UInt8], to address: SocketAddress?) throws -> Bool {
        try assumeIsolated { socket in try socket.trySendNow(bytes, to: address) }
    }

    private func sendIsolated(_ bytes: [UInt8], to address: SocketAddress?) async throws {
        try Task.checkCancellation()
        if try trySendNow(bytes, to: address) { return }
        try await queueSend(bytes, to: address, retryOnTransient: true)
    }

    /// Sends with a try-send when libuv's queue is empty; returns false when the datagram must
    /// be queued instead. Throws this datagram's synchronous error.
    private func trySendNow(_ bytes: [UInt8], to address: SocketAddress?) throws -> Bool {
        guard !handle.isClosed else { throw ClosedHandleError(operation: "send") }
        guard handle.sendQueueCount == 0 else { return false }
        do {
            try handle.trySend(bytes, to: address)
        } catch let error as UVError where error == .wouldBlock {
            return false
        } catch let error as UVError where error.isTransient {
            // An earlier datagram's ICMP error surfaced on this send and this datagram did not
            // go out: report the error, then send once more.
            noteTransient(error)
            do {
                try handle.trySend(bytes, to: address)
            } catch let error as UVError where error == .wouldBlock || error.isTransient {
                return false
            } catch {
                sendErrors += 1
                throw error
            }
        } catch {
            sendErrors += 1
            throw error
        }
        sent += 1
        bytesSent += bytes.count
        return true
    }

    private func queueSend(_ bytes: [UInt8], to address: SocketAddress?, retryOnTransient: Bool) async throws {
        direct.willQueue()
        let outcome: UVError? = try await withCheckedThrowingContinuation { continuation in
            do {
                try handle.send(bytes, to: address) { [direct] _, error in
                    direct.didDequeue()
                    continuation.resume(returning: error)
                }
            } catch {
                direct.didDequeue()
                continuation.resume(throwing: error)
            }
        }
        switch outcome {
        case nil:
            sent += 1
            bytesSent += bytes.count
        case let error? where error == .canceled:
            sendErrors += 1
            throw ClosedHandleError(operation: "send")
        case let error? where error.isTransient && retryOnTransient:
            noteTransient(error)
            try await queueSend(bytes, to: address, retryOnTransient: false)
        case let error?:
            sendErrors += 1
            throw error
        }
    }

    private func noteTransient(_ error: UVError) {
        receiver.transientErrors += 1
        receiver.transientContinuation.yield(error)
    }

    // MARK: Lifetime

    /// Closes the socket. Idempotent; safe to call concurrently.
    ///
    /// Receiving stops; ``datagrams`` finishes normally once the consumer has taken what was
    /// already queued; every send still waiting in libuv's queue throws ``ClosedHandleError``;
    /// the file descriptor is released. Afterwards every operation throws ``ClosedHandleError``.
    public func close() async {
        await withCheckedContinuation { continuation in
            handle.close { _ in continuation.resume() }
        }
    }

    /// Whether ``close()`` has been called.
    public var isClosed: Bool { handle.isClosed }

    /// The socket's counters, read now.
    public var statistics: Statistics {
        var stats = Statistics()
        let counters = receiver.sharedCounters()  // first: it settles this turn's arrivals
        stats.datagramsReceived = receiver.received
        stats.bytesReceived = receiver.bytesReceived
        stats.truncated = receiver.truncated
        stats.droppedByPolicy = receiver.droppedByPolicy
        stats.transientErrors = receiver.transientErrors
        stats.readingPauses = receiver.readingPauses
        stats.datagramsDelivered = counters.delivered
        stats.datagramsQueued = counters.queued
        stats.peakQueued = counters.peak
        stats.datagramsSent = sent + direct.sent.load(ordering: .relaxed)
        stats.bytesSent = bytesSent + direct.bytesSent.load(ordering: .relaxed)
        stats.sendErrors = sendErrors + direct.errors.load(ordering: .relaxed)
        stats.kernelDrops = handle.isClosed ? receiver.finalKernelDrops : Self.kernelDrops(fd: direct.fd)
        return stats
    }

    /// `SO_MEMINFO`'s drop counter (`SK_MEMINFO_DROPS`), if the kernel reports it.
    static func kernelDrops(fd: Int32) -> Int? {
        var info = [UInt32](repeating: 0, count: 16)
        var length = socklen_t(info.count * 4)
        let soMemInfo: Int32 = 55  // SO_MEMINFO
        let dropsIndex = 8  // SK_MEMINFO_DROPS
        let status = info.withUnsafeMutableBytes { getsockopt(fd, SOL_SOCKET, soMemInfo, $0.baseAddress, &length) }
        guard status == 0, Int(length) > dropsIndex * 4 else { return nil }
        return Int(info[dropsIndex])
    }

    // MARK: Options

    private func checkOpen(_ operation: String) throws {
        if handle.isClosed { throw ClosedHandleError(operation: operation) }
    }

    /// Allows or forbids sending to broadcast addresses (`SO_BROADCAST`).
    ///
    /// - Throws: ``ClosedHandleError``.
    public func setBroadcast(_ enabled: Bool) throws { try handle.setBroadcast(enabled) }

    /// Sets the unicast TTL (IPv6: hop limit), 1...255.
    ///
    /// - Throws: ``UVError/invalidArgument`` out of range; ``ClosedHandleError``.
    public func setTTL(_ ttl: Int) throws { try handle.setTTL(ttl) }

    /// Sets the multicast TTL (IPv6: hop limit), 0...255.
    ///
    /// - Throws: ``UVError/invalidArgument`` out of range; ``ClosedHandleError``.
    public func setMulticastTTL(_ ttl: Int) throws { try handle.setMulticastTTL(ttl) }

    /// Sets whether this socket's multicast datagrams loop back to this host.
    ///
    /// - Throws: ``ClosedHandleError``.
    public func setMulticastLoop(_ enabled: Bool) throws { try handle.setMulticastLoop(enabled) }

    /// Chooses the interface for outgoing multicast: an IPv4 address, or for IPv6 an interface
    /// name or scoped address; `nil` for the system's choice.
    ///
    /// - Throws: ``SocketAddressError``, ``UVError/addressNotAvailable``, ``ClosedHandleError``.
    public func setMulticastInterface(_ interface: String?) throws { try handle.setMulticastInterface(interface) }

    /// Asks for a kernel send buffer of `size` bytes (Linux doubles it).
    ///
    /// - Throws: ``UVError/invalidArgument`` unless positive; ``ClosedHandleError``.
    public func setSendBufferSize(_ size: Int) throws { try handle.setSendBufferSize(size) }

    /// Asks for a kernel receive buffer of `size` bytes (Linux doubles it).
    ///
    /// - Throws: ``UVError/invalidArgument`` unless positive; ``ClosedHandleError``.
    public func setReceiveBufferSize(_ size: Int) throws { try handle.setReceiveBufferSize(size) }

    /// The kernel send buffer size.
    ///
    /// - Throws: ``ClosedHandleError``.
    public func sendBufferSize() throws -> Int { try handle.sendBufferSize() }

    /// The kernel receive buffer size.
    ///
    /// - Throws: ``ClosedHandleError``.
    public func receiveBufferSize() throws -> Int { try handle.receiveBufferSize() }

    /// Joins a multicast group (any source).
    ///
    /// - Parameters:
    ///   - group: The group, such as `"239.255.0.1"`.
    ///   - interface: The local interface address to join on; `nil` lets the kernel choose.
    /// - Throws: ``SocketAddressError``; ``UVError/invalidArgument`` (not a group);
    ///   ``UVError/addressInUse`` (already joined); ``UVError/noSuchDevice``; ``ClosedHandleError``.
    public func joinGroup(_ group: String, interface: String? = nil) throws {
        try handle.setMembership(group, .join, interface: interface)
    }

    /// Leaves a multicast group.
    ///
    /// - Throws: ``UVError/addressNotAvailable`` if not joined; as ``joinGroup(_:interface:)``.
    public func leaveGroup(_ group: String, interface: String? = nil) throws {
        try handle.setMembership(group, .leave, interface: interface)
    }

    /// Joins a source-specific group: only `source`'s datagrams to `group` are received.
    ///
    /// - Throws: As ``joinGroup(_:interface:)``.
    public func joinGroup(_ group: String, source: String, interface: String? = nil) throws {
        try handle.setSourceMembership(group: group, source: source, .join, interface: interface)
    }

    /// Leaves a source-specific group.
    ///
    /// - Throws: As ``leaveGroup(_:interface:)``.
    public func leaveGroup(_ group: String, source: String, interface: String? = nil) throws {
        try handle.setSourceMembership(group: group, source: source, .leave, interface: interface)
    }
}

/// Opens a socket connected to `remote`, runs `body` with it, and closes it on every exit path:
/// return, throw and cancellation. See ``UDPSocket/init(connectingTo:bindingTo:loop:configuration:)``.
///
/// ```swift
/// let reply = try await withUDPSocket(connectingTo: SocketAddress("127.0.0.1:53")) { udp in
///     try await udp.send(query)
///     var replies = udp.datagrams.makeAsyncIterator()
///     return try await replies.next()
/// }
/// ```
///
/// - Parameters:
///   - remote: The peer.
///   - local: The local address; default, an ephemeral port on the wildcard address.
///   - loop: The loop to live on. Default ``UVLoop/shared``.
///   - configuration: Receive queue, overflow policy and buffer sizes.
///   - body: Runs with the open socket; it is closed when `body` returns or throws.
/// - Returns: What `body` returns.
/// - Throws: What opening the socket or `body` throws.
public func withUDPSocket<Result>(
    connectingTo remote: SocketAddress,
    bindingTo local: SocketAddress? = nil,
    loop: UVLoop = .shared,
    configuration: UDPSocket.Configuration = UDPSocket.Configuration(),
    isolation: isolated (any Actor)? = #isolation,
    _ body: (UDPSocket) async throws -> Result
) async throws -> Result {
    let socket = try await UDPSocket(connectingTo: remote, bindingTo: local, loop: loop, configuration: configuration)
    return try await closing(socket, after: body)
}

/// Runs `body`, then closes `socket` whether `body` returned or threw.
private func closing<Result>(
    _ socket: UDPSocket,
    isolation: isolated (any Actor)? = #isolation,
    after body: (UDPSocket) async throws -> Result
) async throws -> Result {
    let result: Result
    do {
        result = try await body(socket)
    } catch {
        await socket.close()
        throw error
    }
    await socket.close()
    return result
}

/// Opens a socket bound to `address`, runs `body` with it, and closes it on every exit path:
/// return, throw and cancellation.
///
/// ```swift
/// try await withUDPSocket(bindingTo: SocketAddress("0.0.0.0:9000")) { udp in
///     for try await datagram in udp.datagrams {
///         try await udp.send(datagram.payload, to: datagram.remote)
///     }
/// }
/// ```
///
/// - Parameters:
///   - address: The local address.
///   - loop: The loop to live on. Default ``UVLoop/shared``.
///   - flags: Bind flags.
///   - configuration: Receive queue, overflow policy and buffer sizes.
///   - body: Runs with the open socket; it is closed when `body` returns or throws.
/// - Returns: What `body` returns.
/// - Throws: What opening the socket or `body` throws.
public func withUDPSocket<Result>(
    bindingTo address: SocketAddress,
    loop: UVLoop = .shared,
    flags: UDPFlags = [],
    configuration: UDPSocket.Configuration = UDPSocket.Configuration(),
    isolation: isolated (any Actor)? = #isolation,
    _ body: (UDPSocket) async throws -> Result
) async throws -> Result {
    let socket = try await UDPSocket(bindingTo: address, loop: loop, flags: flags, configuration: configuration)
    return try await closing(socket, after: body)
}
