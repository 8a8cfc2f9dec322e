internal import CLibUV
internal import DequeModule
internal import Glibc
import Synchronization

/// A libuv UDP handle: the callback layer, with the whole UDP API of the Python bindings.
///
/// A `UDPHandle` belongs to one ``UVLoop`` and must be created and used on that loop's thread
/// (inside ``UVLoop/execute(_:)``, or from an actor whose executor is the loop). Calling it from
/// another thread traps: that is a programming error, not bad input. Every other misuse throws:
/// ``ClosedHandleError`` after ``close(_:)``, ``UVError`` for what libuv (or the kernel) refuses.
///
/// ```swift
/// loop.execute {
///     let handle = try! UDPHandle(loop: loop)
///     try! handle.bind(SocketAddress("127.0.0.1:9000"))
///     try! handle.startReceiving { handle, result in
///         guard case .success(let datagram) = result else { return }
///         try? handle.send(datagram.payload, to: datagram.remote)
///     }
/// }
/// ```
///
/// A handle stays open (and alive) until ``close(_:)`` is called or its loop shuts down, even if
/// you drop every reference to it: like a file descriptor, it must be closed.
///
/// ## How it works
///
/// libuv's `uv_udp_t` owns the socket and does what libuv does well: creating and binding it,
/// connecting, multicast membership. Reading and writing the socket is done here, under a
/// `uv_poll_t` on the same descriptor (libuv's own UDP I/O is never started, so the two never
/// watch it at once): `recvmmsg` reads up to 32 datagrams per system call into a buffer the loop
/// owns, and the send queue is flushed with `sendmmsg`, where each datagram keeps its own error
/// (libuv 1.44 fails a whole batch when one datagram of it fails).
///
/// Guards over libuv 1.44.2: an empty buffer list, a send or option on a closed handle, a double
/// close and a close from inside one of the handle's own callbacks are all harmless here (an
/// error, a no-op, or a close deferred to the next loop turn), where raw libuv aborts or
/// corrupts memory.
public final class UDPHandle {
    /// Called with each received datagram, or with a receive error.
    public typealias ReceiveHandler = (UDPHandle, Result<Datagram, UVError>) -> Void
    /// Called once per queued send: `nil` when the datagram went to the kernel, else its error.
    public typealias SendHandler = (UDPHandle, UVError?) -> Void
    /// Called once the handle has closed.
    public typealias CloseHandler = (UDPHandle) -> Void

    /// The loop this handle lives on.
    public let loop: UVLoop

    let udp: UnsafeMutablePointer<uv_udp_t>
    /// The watcher for reading and writing, made when I/O first starts.
    var poll: UnsafeMutablePointer<uv_poll_t>?
    /// The events `poll` watches now (`UV_READABLE`, `UV_WRITABLE`).
    var pollEvents: Int32 = 0
    let scratch: IOScratch

    enum State { case open, closing, closed }
    var state = State.open
    var knownFamily: AddressFamily?
    var isBound = false
    var isIPv6Only = false
    var peer: SocketAddress?
    let defaultFlags: UDPFlags
    /// The descriptor this handle claimed in the process-wide registry.
    var claimedDescriptor: Int32?
    /// The send machine, once the handle has a socket.
    package private(set) var sendPath: SendPath?
    /// Counters, shared with ``sendPath`` and read by the async layer.
    package let counters = SocketCounters()

    // Receiving.
    var onReceive: ReceiveHandler?
    /// Set by the async layer: gets datagrams instead of `onReceive`, and sets a read budget.
    package weak var receiver: (any DatagramReceiver)?
    /// Reading stopped because ``receiver`` had no room (`.pauseReading`).
    var readStarved = false
    /// The loop does not watch for reads: a consumer reads the socket from its own thread.
    var readLeftToConsumer = false
    /// While reading is left to a consumer, checks every few milliseconds that it still reads.
    var consumerWatch: UnsafeMutablePointer<uv_timer_t>?
    /// Datagrams already read when receiving stopped mid-batch; delivered first on restart.
    var held = Deque<Result<Datagram, UVError>>()
    var deliveringHeld = false

    // Sending.
    var sendQueue = Deque<QueuedSend>()
    var sendQueueBytes = 0
    /// While a read batch is being delivered, sends are queued and flushed together after it.
    var deliveringBatch = false
    var flushScheduled = false
    /// Send callbacks due at the end of this loop turn.
    var finishedCallbacks: [() -> Void] = []
    var endOfTurnScheduled = false
    /// Set by the async layer: publishes transient errors that sends find; without it they go
    /// to the receive callback.
    package var transientHandler: ((UVError) -> Void)?

    // Closing.
    var closeHandlers: [CloseHandler] = []
    var closeObservers: [() -> Void] = []
    var willCloseObservers: [() -> Void] = []
    var callbackDepth = 0
    var pendingCloseCallbacks = 0

    /// Whether ``startReceiving(_:)`` is in effect.
    public var isReceiving: Bool {
        loop.preconditionInLoop("UDPHandle.isReceiving")
        return receiving
    }
    var receiving = false

    /// The size of the buffer each datagram is read into, 1...65536 (default 65536, which holds
    /// any UDP datagram). A longer datagram is delivered truncated, with
    /// ``Datagram/isTruncated`` set. Change it with ``setMaximumDatagramSize(_:)``.
    public internal(set) var maximumDatagramSize = IOScratch.chunkSize

    /// Creates a UDP handle on `loop`.
    ///
    /// - Parameters:
    ///   - loop: The loop that will own the handle; this must be called on its thread.
    ///   - family: If given, the socket is created now for this family (libuv's
    ///     `uv_udp_init_ex`), so options can be set before binding. If `nil`, the socket is created
    ///     by ``bind(_:flags:)``, ``open(_:)``, or the first send or receive.
    ///   - flags: Flags added to every ``bind(_:flags:)`` call (`.ipv6Only`, `.reuseAddress`).
    ///   - onReceive: A receive callback that ``startReceiving(_:)`` uses when given none.
    /// - Throws: ``ClosedHandleError`` if the loop has shut down; the loop's
    ///   ``UVLoop/startError`` if it could not start; ``UVError`` if libuv cannot create the
    ///   socket (``UVError/tooManyOpenFiles`` at the descriptor limit).
    public init(loop: UVLoop = .shared, family: AddressFamily? = nil, flags: UDPFlags = [],
                onReceive: ReceiveHandler? = nil) throws {
        loop.preconditionInLoop("UDPHandle.init")
        if let error = loop.startError { throw error }
        guard !loop.isShuttingDown, !loop.retired.load(ordering: .acquiring) else {
            throw ClosedHandleError(operation: "UDPHandle.init (loop shut down)")
        }
        self.loop = loop
        self.defaultFlags = flags
        self.onReceive = onReceive
        self.knownFamily = family
        scratch = IOScratch.of(loop)
        udp = .allocate(capacity: 1)
        let status = uv_udp_init_ex(loop.uvLoop, udp, UInt32(family?.rawValue ?? AF_UNSPEC))
        if status < 0 {
            udp.deallocate()
            throw UVError(code: status, context: "uv_udp_init_ex")
        }
        udp.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        // The loop's registry holds the strong reference that keeps this object alive until the
        // close callbacks (or the loop's shutdown) release it; `data` is unretained.
        loop.register(self)
        if family != nil { adoptDescriptor(fresh: true) }
    }

    /// Creates a UDP handle; `batchedReceive` is ignored (every handle reads with `recvmmsg`).
    @available(*, deprecated, message: "every handle reads with recvmmsg now; drop batchedReceive")
    public convenience init(loop: UVLoop = .shared, family: AddressFamily? = nil, flags: UDPFlags = [],
                            batchedReceive: Bool, onReceive: ReceiveHandler? = nil) throws {
        try self.init(loop: loop, family: family, flags: flags, onReceive: onReceive)
    }

    /// Always true: every handle reads with `recvmmsg`, up to 32 datagrams per system call.
    @available(*, deprecated, message: "every handle reads with recvmmsg now")
    public var batchedReceive: Bool { true }

    // MARK: State

    /// Whether ``close(_:)`` has been called (the handle may still be finishing its close).
    public var isClosed: Bool {
        loop.preconditionInLoop("UDPHandle.isClosed")
        return state != .open
    }

    func checkOpen(_ operation: String) throws(ClosedHandleError) {
        loop.preconditionInLoop("UDPHandle.\(operation)")
        if state != .open { throw ClosedHandleError(operation: operation) }
    }

    /// The socket, if the handle has one (libuv creates it lazily).
    func descriptor() -> Int32? {
        guard state != .closed else { return nil }
        var fd: uv_os_fd_t = -1
        return uv_fileno(handle(udp), &fd) == 0 ? fd : nil
    }

    func requireDescriptor(_ operation: String) throws(UVError) -> Int32 {
        guard let fd = descriptor() else {
            throw UVError.badFileDescriptor.with(context: "\(operation): the handle has no socket yet; bind it, or create it with a family")
        }
        return fd
    }

    /// Records the socket libuv now has: claims it process-wide and makes the send path.
    func adoptDescriptor(fresh: Bool) {
        guard sendPath == nil, let fd = descriptor() else { return }
        let claimed = DescriptorRegistry.claim(fd)
        assert(claimed || !fresh, "AsyncUDP bug: a new socket's descriptor \(fd) is already registered")
        if claimed { claimedDescriptor = fd }
        sendPath = SendPath(fd: fd, counters: counters)
        sendPath?.setConnected(peer != nil)
    }

    /// The socket's address family: known once the handle has a socket (created with a family,
    /// bound, opened, connected, or used to send or receive); `nil` before that and after close.
    public var family: AddressFamily? {
        loop.preconditionInLoop("UDPHandle.family")
        guard state == .open else { return nil }
        if let knownFamily { return knownFamily }
        guard let fd = descriptor(), let (raw, _) = try? Syscall.localAddress(fd) else { return nil }
        switch raw {
        case AF_INET: knownFamily = .ipv4
        case AF_INET6: knownFamily = .ipv6
        default: return nil
        }
        return knownFamily
    }

    /// The checks every send makes, from this handle's current state.
    package var sendTarget: SendTarget {
        SendTarget(peer: peer, family: family, ipv6Only: isIPv6Only)
    }
}

@available(*, unavailable, message: "UDPHandle lives on its loop's thread; use UDPSocket across tasks")
extension UDPHandle: Sendable {}

/// The destination rules every send follows, whichever path it takes.
package struct SendTarget: Sendable {
    /// The peer of a connected socket.
    package var peer: SocketAddress?
    /// The socket's family, once known.
    package var family: AddressFamily?
    /// Whether the socket refuses IPv4.
    package var ipv6Only: Bool

    /// Checks a destination's family against the socket's.
    package static func checkFamily(of address: SocketAddress, socketFamily: AddressFamily?, ipv6Only: Bool) throws(UVError) {
        if socketFamily == .ipv4 && address.family == .ipv6 {
            throw UVError.addressFamilyNotSupported.with(context: "an IPv4 socket cannot reach \(address)")
        }
        if ipv6Only && address.family == .ipv4 {
            throw UVError.networkUnreachable.with(context: "an IPv6-only socket cannot reach \(address)")
        }
    }

    /// Where one datagram of a batch goes: its ``Datagram/remote``, or no address on a connected
    /// socket when `remote` is the peer.
    package func destination(for datagram: Datagram) -> SocketAddress? {
        if let peer, datagram.remote == peer { return nil }
        return datagram.remote
    }

    /// The checks of ``validate(to:size:)``, and those of the send options.
    package func validate(to address: SocketAddress?, size: Int, options: SendOptions?) throws(UVError) {
        try validate(to: address, size: size)
        if let options { try options.validate(destinationFamily: destinationFamily(address), size: size) }
    }

    /// The family of a datagram's destination: `address`'s, or the peer's (IPv4 when neither is
    /// known; a send without either is refused first).
    package func destinationFamily(_ address: SocketAddress?) -> AddressFamily {
        address?.family ?? peer?.family ?? family ?? .ipv4
    }

    /// The checks every send makes before anything reaches the kernel: the destination (or its
    /// absence on a connected socket), its family and port, and the size limit.
    package func validate(to address: SocketAddress?, size: Int) throws(UVError) {
        let destinationFamily: AddressFamily
        if let address {
            if let peer { throw UVError.alreadyConnected.with(context: "connected to \(peer); send without an address") }
            if address.port == 0 { throw UVError.invalidArgument.with(context: "destination port 0") }
            try Self.checkFamily(of: address, socketFamily: family, ipv6Only: ipv6Only)
            destinationFamily = address.family
        } else {
            guard let peer else {
                throw UVError.destinationAddressRequired.with(context: "the handle is not connected; give an address")
            }
            destinationFamily = peer.family
        }
        if size > destinationFamily.maximumPayloadSize {
            throw UVError.messageTooLong.with(context: "\(size) bytes; \(destinationFamily) carries at most \(destinationFamily.maximumPayloadSize)")
        }
    }
}

/// Takes what a handle reads, in place of a receive callback (the async layer's queue).
package protocol DatagramReceiver: AnyObject {
    /// How many more datagrams may be read now; 0 stops reading until
    /// ``UDPHandle/receiverHasRoom()``.
    func receiveBudget() -> Int
    /// One datagram.
    func receive(_ datagram: Datagram)
    /// A receive error; `fatal` when receiving has stopped because of it.
    func receiveFailed(_ error: UVError, fatal: Bool)
    /// The end of one read batch: hand what arrived to consumers.
    func receiveBatchEnded()
    /// The loop is about to read: may it? A consumer may be reading the socket itself.
    func beginLoopRead() -> LoopReadPermission
    /// The loop's read batch (and ``receiveBatchEnded()``) is done.
    func endLoopRead()
    /// Called every few milliseconds while the loop leaves reading to a consumer: true when the
    /// loop should read again (the consumer stopped coming back).
    func loopShouldResumeReading() -> Bool
}

/// Whether the loop may read the socket now.
package enum LoopReadPermission {
    /// Read.
    case read
    /// Not now: a consumer is in the middle of reading it.
    case skip
    /// Stop watching the socket for reads: a consumer reads it from its own thread and will
    /// ask the loop (``UDPHandle/resumeLoopReading()``) when it needs the loop to watch again.
    case leaveToConsumer
}
