import Synchronization
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
/// Sends are `async` and return once the kernel has the datagram. Received datagrams wait in a
/// bounded queue (``Configuration/receiveQueueLimit``, with an ``OverflowPolicy`` beyond it,
/// every drop counted in ``statistics``) until a consumer takes them: ``receive()``,
/// ``receive(timeout:)``, ``receive(upTo:)`` or an iteration of ``datagrams``, any number of them
/// at once, each datagram to exactly one. The socket starts receiving as soon as it exists.
///
/// ## Cancellation loses nothing
///
/// A receive that is cancelled, or times out, takes nothing from the queue; the socket keeps
/// receiving; the next receive gets the next datagram. An iteration of ``datagrams`` that is
/// cancelled, or left with `break`, puts what it had taken but not handed out back at the head
/// of the queue, in order. So a request with a deadline is simply:
///
/// ```swift
/// try await udp.send(query, to: server)
/// guard let reply = try await udp.receive(timeout: .seconds(2)) else { /* retry */ }
/// ```
///
/// ## Threading
///
/// Every isolated method runs on the loop thread and calls libuv directly. Sends and receives
/// are `nonisolated(nonsending)`: they run where the caller runs. From a task on the loop (started
/// with `Task(executorPreference: loop)`, or an actor whose executor is the loop) they make no
/// thread hop at all; from elsewhere a send goes straight to the kernel from the caller's thread
/// whenever the loop has nothing queued, and only hops to the loop when it must wait.
public actor UDPSocket {
    /// The loop this socket lives on; also the actor's executor.
    public nonisolated let loop: UVLoop
    /// The local address the socket is bound to (with the real port when bound to port 0).
    public nonisolated let localAddress: SocketAddress
    /// The peer of a connected socket; `nil` for an unconnected one.
    public nonisolated let remoteAddress: SocketAddress?
    /// The configuration the socket was opened with.
    public nonisolated let configuration: Configuration

    /// Transient errors as they happen: `ECONNREFUSED`, `EHOSTUNREACH` and `ENETUNREACH` from
    /// ICMP (on a connected socket), and `ENOBUFS`. They never end receiving. Each is also counted
    /// once in ``Statistics/transientErrorCount``. The 64 most recent are kept when nobody
    /// listens. Finishes when the socket closes.
    public nonisolated var transientErrors: AsyncStream<UVError> { transient.stream }

    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    nonisolated let queue: ReceiveQueue
    nonisolated let transient: TransientErrors
    /// The send machine: the descriptor, the gate for sends from other threads, the counters.
    nonisolated let sendPath: SendPath
    /// The destination rules (fixed: a socket's peer and family never change).
    nonisolated let target: SendTarget
    /// The handle; only unwrapped on the loop (a check in debug builds).
    nonisolated let handleBox: LoopBound<UDPHandle>
    var handle: UDPHandle { handleBox.value }
    private nonisolated let fastSends = Atomic<Int>(0)

    /// Opens a socket bound to `address` and starts receiving.
    ///
    /// - Parameters:
    ///   - address: The local address; port 0 picks an ephemeral port (see ``localAddress``).
    ///   - loop: The loop to live on. Default `UVLoop.shared`.
    ///   - flags: `.reuseAddress` to share the port, `.reusePort` to spread it across loops,
    ///     `.ipv6Only` to refuse IPv4 on an IPv6 socket.
    ///   - configuration: Receive queue, overflow policy and buffer sizes.
    /// - Throws: `UVError` from the bind (`UVError.addressInUse`, ...), for a configuration
    ///   out of range (`UVError.invalidArgument`), or at the descriptor limit
    ///   (`UVError.tooManyOpenFiles`); `ClosedHandleError` if the loop has shut down.
    public init(bindingTo address: SocketAddress, loop: UVLoop = .shared, flags: UDPFlags = [],
                configuration: Configuration = Configuration()) async throws {
        try await self.init(loop: loop, configuration: configuration) { handle in
            try handle.bind(address, flags: flags)
        }
    }

    /// Opens a socket connected to `remote`: sends need no address and only `remote`'s
    /// datagrams are received.
    ///
    /// - Parameters:
    ///   - remote: The peer. Port 0 is refused.
    ///   - local: The local address; default: an ephemeral port on the wildcard address of
    ///     `remote`'s family.
    ///   - loop: The loop to live on. Default `UVLoop.shared`.
    ///   - configuration: Receive queue, overflow policy and buffer sizes.
    /// - Throws: `UVError` from the bind or connect; `ClosedHandleError` if the loop has shut
    ///   down.
    public init(connectingTo remote: SocketAddress, bindingTo local: SocketAddress? = nil, loop: UVLoop = .shared,
                configuration: Configuration = Configuration()) async throws {
        let local = local ?? SocketAddress.wildcard(remote.family)
        try await self.init(loop: loop, configuration: configuration) { handle in
            try handle.bind(local)
            try handle.connect(remote)
        }
    }

    /// What the loop hands back from opening a socket.
    private struct Opened: Sendable {
        let handle: LoopBound<UDPHandle>
        let sendPath: SendPath
        let local: SocketAddress
        let remote: SocketAddress?
        let target: SendTarget
    }

    private init(loop: UVLoop, configuration: Configuration,
                 setUp: @escaping @Sendable (UDPHandle) throws -> Void) async throws {
        try configuration.validate()
        if let error = loop.startError { throw error }
        let transient = TransientErrors()
        let queue = ReceiveQueue(loop: loop, configuration: configuration, transient: transient)
        let opened = try await loop.submit { () throws -> Opened in
            let handle = try UDPHandle(loop: loop)
            do {
                try setUp(handle)
                try handle.setMaximumDatagramSize(configuration.maximumDatagramSize)
                if let size = configuration.receiveBufferSize { try handle.setReceiveBufferSize(size) }
                if let size = configuration.sendBufferSize { try handle.setSendBufferSize(size) }
                if !configuration.receiveMetadata.isEmpty { try handle.setReceiveMetadata(configuration.receiveMetadata) }
                guard let sendPath = handle.sendPath else {
                    throw UVError.badFileDescriptor.with(context: "the socket was not created")
                }
                queue.handle = handle
                queue.sendPath = sendPath
                handle.transientHandler = { transient.publish($0) }
                try handle.startReceiving(into: queue)
                handle.addWillCloseObserver {
                    queue.finalKernelDrops = handle.kernelDrops
                }
                handle.addCloseObserver {
                    queue.finish(.closed)
                    transient.finish()
                }
                return Opened(handle: LoopBound(handle, on: loop), sendPath: sendPath,
                              local: try handle.localAddress(), remote: try handle.remoteAddress(),
                              target: handle.sendTarget)
            } catch {
                handle.close()
                throw error
            }
        }
        self.loop = loop
        self.configuration = configuration
        self.queue = queue
        self.transient = transient
        self.handleBox = opened.handle
        self.sendPath = opened.sendPath
        self.localAddress = opened.local
        self.remoteAddress = opened.remote
        self.target = opened.target
    }

    deinit {
        // A socket dropped without close(): close its handle on the loop (the loop keeps open
        // handles alive until they are closed). A closed socket needs nothing from the loop,
        // which may have shut down.
        guard !sendPath.isClosed else { return }
        let handle = handleBox
        loop.execute { handle.value.close() }
    }

    // MARK: Lifetime

    /// Closes the socket. Idempotent; safe to call concurrently.
    ///
    /// Receiving stops; consumers get what was already queued, then the end (``datagrams``
    /// finishes normally, ``receive()`` throws `ClosedHandleError`); every send still waiting
    /// in the queue throws `ClosedHandleError`; the file descriptor is released. Afterwards
    /// every operation throws `ClosedHandleError`.
    public func close() async {
        await withCheckedContinuation { continuation in
            handle.close { _ in continuation.resume() }
        }
    }

    /// Whether ``close()`` has been called.
    public var isClosed: Bool { handle.isClosed }

    /// The socket's counters, read now. `datagramsReceived = datagramsDelivered +
    /// datagramsDroppedByPolicy + datagramsQueued` holds exactly.
    public var statistics: Statistics {
        var stats = Statistics()
        let counters = sendPath.counters
        // Delivered first: a datagram is counted received before it can be delivered, so the
        // difference below never goes negative.
        stats.datagramsDelivered = queue.delivered.load(ordering: .acquiring)
        stats.datagramsReceived = queue.received.load(ordering: .acquiring)
        stats.bytesReceived = queue.bytesReceived.load(ordering: .relaxed)
        stats.wireDatagramsReceived = stats.datagramsReceived + queue.extraSegments.load(ordering: .relaxed)
        stats.datagramsTruncated = queue.truncated.load(ordering: .relaxed)
        stats.datagramsDroppedByPolicy = queue.droppedByPolicy
        stats.readingPauses = queue.readingPauses
        stats.datagramsQueued = stats.datagramsReceived - stats.datagramsDelivered - stats.datagramsDroppedByPolicy
        stats.peakDatagramsQueued = queue.queueDepth.peak
        stats.transientErrorCount = counters.transientErrors.load(ordering: .relaxed)
        stats.datagramsSent = counters.datagramsSent.load(ordering: .relaxed)
        stats.bytesSent = counters.bytesSent.load(ordering: .relaxed)
        stats.sendErrorCount = counters.sendErrors.load(ordering: .relaxed)
        stats.gsoFallbackCount = counters.gsoFallbacks.load(ordering: .relaxed)
        stats.datagramsDroppedByKernel = handle.isClosed ? queue.finalKernelDrops : handle.kernelDrops
        return stats
    }

    /// Counts a send that completed without suspending; true when the caller should yield, so a
    /// tight send loop cannot keep its thread (or, on the loop, libuv's I/O) from everything else.
    nonisolated func shouldYield() -> Bool {
        fastSends.wrappingAdd(1, ordering: .relaxed).newValue % 32 == 0
    }
}
