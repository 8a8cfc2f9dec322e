internal import CLibUV
internal import DequeModule
internal import Glibc

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

    let raw: UnsafeMutablePointer<uv_udp_t>
    private enum State { case open, closing, closed }
    private var state = State.open
    private var explicitFamily: AddressFamily?
    private var isBound = false
    private var isIPv6Only = false
    private var peer: SocketAddress?
    private let defaultFlags: UDPFlags
    private var onReceive: ReceiveHandler?
    private var sendCallbacks = Deque<SendHandler?>()
    private var closeHandlers: [CloseHandler] = []
    private var closeObservers: [() -> Void] = []
    private var willCloseObservers: [() -> Void] = []
    private var callbackDepth = 0

    /// Whether the handle reads with `recvmmsg` (see ``init(loop:family:flags:batchedReceive:onReceive:)``).
    public let batchedReceive: Bool

    /// Whether ``startReceiving(_:)`` is in effect.
    public private(set) var isReceiving = false

    /// The size of the buffer each datagram is read into, 1...65536 (default 65536, which holds
    /// any UDP datagram). A longer datagram is delivered truncated, with
    /// ``Datagram/isTruncated`` set. Change it with ``setMaximumDatagramSize(_:)``.
    public private(set) var maximumDatagramSize = UVLoop.receiveScratchSize

    /// Creates a UDP handle on `loop`.
    ///
    /// - Parameters:
    ///   - loop: The loop that will own the handle; this must be called on its thread.
    ///   - family: If given, the socket is created now for this family (libuv's
    ///     `uv_udp_init_ex`), so options can be set before binding. If `nil`, the socket is created
    ///     by ``bind(_:flags:)``, ``open(_:)``, or the first send or receive.
    ///   - flags: Flags added to every ``bind(_:flags:)`` call (`.ipv6Only`, `.reuseAddress`).
    ///   - onReceive: A receive callback that ``startReceiving(_:)`` uses when given none.
    ///   - batchedReceive: Read with `recvmmsg`, up to 20 datagrams per system call (libuv's
    ///     `UV_UDP_RECVMMSG`), into a buffer the loop owns (20 x 64 KiB, so libuv's hang on a
    ///     smaller one cannot happen). Datagrams and truncation are reported exactly as without it.
    /// - Throws: ``ClosedHandleError`` if the loop has shut down; ``UVError`` if libuv cannot create
    ///   the socket.
    public init(loop: UVLoop = .shared, family: AddressFamily? = nil, flags: UDPFlags = [],
                batchedReceive: Bool = false, onReceive: ReceiveHandler? = nil) throws {
        loop.preconditionInLoop("UDPHandle.init")
        guard !loop.isShuttingDown else { throw ClosedHandleError(operation: "UDPHandle.init (loop shut down)") }
        self.loop = loop
        self.defaultFlags = flags
        self.onReceive = onReceive
        self.explicitFamily = family
        raw = .allocate(capacity: 1)
        self.batchedReceive = batchedReceive
        let mmsg = batchedReceive ? UInt32(UV_UDP_RECVMMSG.rawValue) : 0
        let status = uv_udp_init_ex(loop.uvLoop, raw, UInt32(family?.rawValue ?? AF_UNSPEC) | mmsg)
        if status < 0 {
            raw.deallocate()
            throw UVError(code: status, context: "uv_udp_init_ex")
        }
        raw.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        // The loop's registry holds the strong reference that keeps this object alive until the
        // close callback (or the loop's shutdown) releases it; `data` is unretained.
        loop.register(self)
    }

    private var handlePointer: UnsafeMutablePointer<uv_handle_t> {
        UnsafeMutableRawPointer(raw).assumingMemoryBound(to: uv_handle_t.self)
    }

    // MARK: State checks

    /// Whether ``close(_:)`` has been called (the handle may still be finishing its close).
    public var isClosed: Bool { state != .open }

    private func checkOpen(_ operation: String) throws(ClosedHandleError) {
        loop.preconditionInLoop("UDPHandle.\(operation)")
        if state != .open { throw ClosedHandleError(operation: operation) }
    }

    private func descriptor() -> Int32? {
        var fd: uv_os_fd_t = -1
        return uv_fileno(handlePointer, &fd) == 0 ? fd : nil
    }

    private func requireDescriptor(_ operation: String) throws -> Int32 {
        guard let fd = descriptor() else {
            throw UVError.badFileDescriptor.with(context: "\(operation): the handle has no socket yet; bind it, or create it with a family")
        }
        return fd
    }

    /// The socket's address family: known once the handle has a socket (created with a family,
    /// bound, opened, connected, or used to send or receive); `nil` before that.
    public var family: AddressFamily? {
        guard state == .open else { return nil }
        if let explicitFamily { return explicitFamily }
        guard let fd = descriptor() else { return nil }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { return nil }
        switch Int32(storage.ss_family) {
        case AF_INET: explicitFamily = .ipv4
        case AF_INET6: explicitFamily = .ipv6
        default: return nil
        }
        return explicitFamily
    }

    // MARK: Bind, open, connect

    /// Binds the handle to a local address.
    ///
    /// - Parameters:
    ///   - address: The local address; port 0 asks the kernel for an ephemeral port (read it back
    ///     with ``localAddress()``).
    ///   - flags: `.reuseAddress` to share the port (every socket on it must set it),
    ///     `.reusePort` to share it with the kernel spreading datagrams across the sockets,
    ///     `.ipv6Only` to refuse IPv4 traffic on an IPv6 socket. Without `.ipv6Only` an IPv6 socket is made
    ///     dual-stack explicitly, whatever the system default.
    /// - Throws: ``ClosedHandleError``; ``UVError/invalidArgument`` if the handle is already bound
    ///   (explicitly or by an earlier send or receive), if `.ipv6Only` comes with an IPv4 address,
    ///   if `.partial` or an unknown flag bit is passed, or if the address family differs from
    ///   the socket's;
    ///   ``UVError/addressInUse``, ``UVError/addressNotAvailable``, ``UVError/permissionDenied``
    ///   from the kernel.
    public func bind(_ address: SocketAddress, flags: UDPFlags = []) throws {
        try checkOpen("bind")
        let flags = flags.union(defaultFlags)
        let unknown = flags.subtracting([.ipv6Only, .partial, .reuseAddress, .reusePort])
        if !unknown.isEmpty {
            throw UVError.invalidArgument.with(context: "unknown bind flag bits 0x\(String(unknown.rawValue, radix: 16))")
        }
        if flags.contains(.partial) {
            throw UVError.invalidArgument.with(context: ".partial is reported on receive, not a bind flag")
        }
        if flags.contains(.ipv6Only) && address.family == .ipv4 {
            throw UVError.invalidArgument.with(context: ".ipv6Only needs an IPv6 address, not \(address)")
        }
        if isBound { throw UVError.invalidArgument.with(context: "the handle is already bound") }
        if let family, family != address.family {
            throw UVError.invalidArgument.with(context: "cannot bind \(address) on an \(family) socket")
        }
        if address.family == .ipv6 || flags.contains(.reusePort) {
            // Options libuv cannot set before its bind: IPV6_V6ONLY one way or the other (libuv
            // only ever sets it to 1, else dual-stack depends on the system default), and
            // SO_REUSEPORT (no libuv flag in 1.44). Make the socket here if there is none yet.
            let fd: Int32
            if let existing = descriptor() {
                fd = existing
            } else {
                let type = Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
                fd = socket(address.family.rawValue, type, 0)
                if fd < 0 { throw UVError(code: -errno, context: "socket(\(address.family))") }
                let status = uv_udp_open(raw, fd)
                if status < 0 {
                    Glibc.close(fd)
                    throw UVError(code: status, context: "uv_udp_open")
                }
                // uv_udp_open sets SO_REUSEADDR; undo that unless it was asked for.
                try setSocketOption(fd, SOL_SOCKET, SO_REUSEADDR, flags.contains(.reuseAddress) ? 1 : 0)
                explicitFamily = address.family
            }
            if address.family == .ipv6 {
                try setSocketOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, flags.contains(.ipv6Only) ? 1 : 0)
            }
            if flags.contains(.reusePort) {
                try setSocketOption(fd, SOL_SOCKET, SO_REUSEPORT, 1)
            }
        }
        let uvFlags = flags.intersection([.ipv6Only, .reuseAddress]).rawValue
        _ = try address.withSockAddr { (sa, _) throws(UVError) in
            try UVError.check(uv_udp_bind(raw, sa, uvFlags), "bind \(address)")
        }
        isBound = true
        isIPv6Only = flags.contains(.ipv6Only)
        explicitFamily = address.family
    }

    /// Adopts an existing UDP socket (libuv's `uv_udp_open`).
    ///
    /// The socket may be unbound, bound or connected; the handle learns which. libuv 1.44 sets
    /// `SO_REUSEADDR` on every adopted socket: this method restores the socket's own setting.
    ///
    /// - Parameter fd: A datagram socket's file descriptor. The handle owns it from now on and
    ///   closes it in ``close(_:)``.
    /// - Throws: ``UVError/alreadyExists`` if another open handle on this loop owns `fd`;
    ///   ``UVError/busy`` if this handle already has a socket; ``UVError/invalidArgument`` if
    ///   `fd` is not a datagram socket; the kernel's error if `fd` is not a socket at all.
    public func open(_ fd: Int32) throws {
        try checkOpen("open")
        if loop.ownsDescriptor(fd) {
            throw UVError.alreadyExists.with(context: "fd \(fd) is already owned by another handle on this loop")
        }
        if descriptor() != nil { throw UVError.busy.with(context: "the handle already has a socket") }
        let type = try socketOption(fd, SOL_SOCKET, SO_TYPE)
        guard type == Int32(SOCK_DGRAM.rawValue) else {
            throw UVError.invalidArgument.with(context: "fd \(fd) is not a datagram socket")
        }
        let reuse = try socketOption(fd, SOL_SOCKET, SO_REUSEADDR)
        try UVError.check(uv_udp_open(raw, fd), "uv_udp_open(\(fd))")
        try setSocketOption(fd, SOL_SOCKET, SO_REUSEADDR, reuse)
        explicitFamily = nil
        _ = family
        if let local = try? localAddress(), local.port != 0 { isBound = true }
        if let remote = try? remoteAddress() {
            peer = remote
            isBound = true
        }
        if explicitFamily == .ipv6, (try? socketOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY)) == 1 {
            isIPv6Only = true
        }
    }

    /// Connects the handle to a peer: sends without an address go there, and only its datagrams
    /// are received. An unbound handle is bound to an ephemeral port first.
    ///
    /// - Throws: ``UVError/alreadyConnected`` if connected (call ``disconnect()`` first);
    ///   ``UVError/invalidArgument`` for port 0; ``UVError/addressFamilyNotSupported`` for an
    ///   address of the other family; ``ClosedHandleError``.
    public func connect(_ address: SocketAddress) throws {
        try checkOpen("connect")
        if peer != nil { throw UVError.alreadyConnected.with(context: "already connected to \(peer!)") }
        if address.port == 0 { throw UVError.invalidArgument.with(context: "cannot connect to port 0") }
        try checkFamily(of: address)
        _ = try address.withSockAddr { (sa, _) throws(UVError) in
            try UVError.check(uv_udp_connect(raw, sa), "connect \(address)")
        }
        peer = address
        isBound = true
        explicitFamily = explicitFamily ?? address.family
    }

    /// Removes the peer set by ``connect(_:)``.
    ///
    /// - Throws: ``UVError/notConnected`` if the handle is not connected; ``ClosedHandleError``.
    public func disconnect() throws {
        try checkOpen("disconnect")
        guard peer != nil else { throw UVError.notConnected.with(context: "disconnect") }
        try UVError.check(uv_udp_connect(raw, nil), "disconnect")
        peer = nil
    }

    // MARK: Sending

    /// Queues one datagram made of `buffers`, concatenated, for sending.
    ///
    /// The datagram is copied, so the arrays may change once this returns. `onSend` is called
    /// exactly once, on the loop thread: with `nil` once the kernel has taken the datagram, or
    /// with its error (``UVError/canceled`` if the handle closes first). A failed send never
    /// affects the sends queued around it.
    ///
    /// - Parameters:
    ///   - buffers: At least one buffer; empty buffers are fine (all empty: a zero-length
    ///     datagram).
    ///   - address: The destination; `nil` for a connected handle.
    ///   - onSend: Called once with the outcome.
    /// - Throws: Synchronously, with nothing queued: ``UVError/invalidArgument`` for an empty
    ///   buffer list or destination port 0; ``UVError/messageTooLong`` above 65,507 bytes (IPv4)
    ///   or 65,527 (IPv6); ``UVError/destinationAddressRequired`` without an address on an
    ///   unconnected handle; ``UVError/alreadyConnected`` with one on a connected handle;
    ///   ``UVError/addressFamilyNotSupported`` for an IPv6 destination on an IPv4 socket;
    ///   ``UVError/networkUnreachable`` for an IPv4 destination on an IPv6-only socket;
    ///   ``ClosedHandleError``.
    public func send(_ buffers: [[UInt8]], to address: SocketAddress? = nil, onSend: SendHandler? = nil) throws {
        try checkOpen("send")
        guard !buffers.isEmpty else {
            throw UVError.invalidArgument.with(context: "send needs at least one buffer (an empty buffer is fine)")
        }
        var total = 0
        for buffer in buffers { total += buffer.count }
        try validateSend(to: address, size: total)
        let request = SendRequest.allocate(payloadSize: total)
        var offset = 0
        for buffer in buffers {
            buffer.withUnsafeBytes { bytes in
                if let base = bytes.baseAddress {
                    (request.payload + offset).copyMemory(from: base, byteCount: bytes.count)
                }
            }
            offset += buffer.count
        }
        try enqueue(request, size: total, to: address, onSend: onSend)
    }

    /// Queues one datagram for sending; see ``send(_:to:onSend:)-([[UInt8]],_,_)``.
    public func send(_ bytes: [UInt8], to address: SocketAddress? = nil, onSend: SendHandler? = nil) throws {
        try checkOpen("send")
        try validateSend(to: address, size: bytes.count)
        let request = SendRequest.allocate(payloadSize: bytes.count)
        bytes.withUnsafeBytes { source in
            if let base = source.baseAddress { request.payload.copyMemory(from: base, byteCount: source.count) }
        }
        try enqueue(request, size: bytes.count, to: address, onSend: onSend)
    }

    private func enqueue(_ request: SendRequest, size: Int, to address: SocketAddress?, onSend: SendHandler?) throws {
        var buffer = uv_buf_init(request.payload.assumingMemoryBound(to: CChar.self), UInt32(size))
        sendCallbacks.append(onSend)
        let status: Int32
        if let address {
            status = address.withSockAddr { sa, _ in uv_udp_send(request.request, raw, &buffer, 1, sa, udpSendCallback) }
        } else {
            status = uv_udp_send(request.request, raw, &buffer, 1, nil, udpSendCallback)
        }
        if status < 0 {
            sendCallbacks.removeLast()
            request.free()
            throw UVError(code: status, context: "send")
        }
        isBound = true
    }

    fileprivate func sendCompleted(_ request: UnsafeMutablePointer<uv_udp_send_t>, status: Int32) {
        SendRequest(request: request).free()
        // libuv completes sends in the order they were queued (FIFO write queue, and ECANCELED in
        // queue order on close), so the front callback is this request's.
        guard let callback = sendCallbacks.popFirst() else {
            preconditionFailure("UDPHandle: a send completed with no callback queued")
        }
        guard let callback else { return }
        callbackDepth += 1
        defer { callbackDepth -= 1 }
        callback(self, status < 0 ? UVError(code: status) : nil)
    }

    /// Sends one datagram now if the kernel will take it without waiting (libuv's
    /// `uv_udp_try_send`).
    ///
    /// - Returns: The number of bytes sent (the whole datagram).
    /// - Throws: ``UVError/wouldBlock`` while queued sends are pending or the socket buffer is
    ///   full; the kernel's error (``UVError/permissionDenied`` for a broadcast without broadcast
    ///   enabled, for example); the same synchronous checks as ``send(_:to:onSend:)-([[UInt8]],_,_)``.
    @discardableResult
    public func trySend(_ bytes: [UInt8], to address: SocketAddress? = nil) throws -> Int {
        try checkOpen("trySend")
        try validateSend(to: address, size: bytes.count)
        var zero: CChar = 0
        let sent = bytes.withUnsafeBytes { source -> Int32 in
            withUnsafeMutablePointer(to: &zero) { zeroByte -> Int32 in
                // uv_buf_t wants a mutable pointer; libuv only reads it. An empty array may have
                // no storage, so a zero-length buffer points at a local byte.
                let base = source.baseAddress.map { UnsafeMutablePointer(mutating: $0.assumingMemoryBound(to: CChar.self)) }
                var buffer = uv_buf_init(base ?? zeroByte, UInt32(source.count))
                if let address {
                    return address.withSockAddr { sa, _ in uv_udp_try_send(raw, &buffer, 1, sa) }
                }
                return uv_udp_try_send(raw, &buffer, 1, nil)
            }
        }
        isBound = true
        return Int(try UVError.check(sent, "trySend"))
    }

    /// Sends one datagram made of `buffers` now if possible; see ``trySend(_:to:)-([UInt8],_)``.
    @discardableResult
    public func trySend(_ buffers: [[UInt8]], to address: SocketAddress? = nil) throws -> Int {
        try checkOpen("trySend")
        guard !buffers.isEmpty else {
            throw UVError.invalidArgument.with(context: "trySend needs at least one buffer (an empty buffer is fine)")
        }
        return try trySend(buffers.count == 1 ? buffers[0] : Array(buffers.joined()), to: address)
    }

    private func checkFamily(of address: SocketAddress) throws(UVError) {
        try Self.checkFamily(of: address, socketFamily: family, ipv6Only: isIPv6Only)
    }

    private func validateSend(to address: SocketAddress?, size: Int) throws(UVError) {
        try Self.validateSend(to: address, size: size, peer: peer, socketFamily: family, ipv6Only: isIPv6Only)
    }

    static func checkFamily(of address: SocketAddress, socketFamily: AddressFamily?, ipv6Only: Bool) throws(UVError) {
        if socketFamily == .ipv4 && address.family == .ipv6 {
            throw UVError.addressFamilyNotSupported.with(context: "an IPv4 socket cannot reach \(address)")
        }
        if ipv6Only && address.family == .ipv4 {
            throw UVError.networkUnreachable.with(context: "an IPv6-only socket cannot reach \(address)")
        }
    }

    /// The checks every send makes before anything reaches libuv or the kernel: the destination
    /// (or its absence on a connected socket), its family and port, and the size limit.
    package static func validateSend(to address: SocketAddress?, size: Int, peer: SocketAddress?,
                                     socketFamily: AddressFamily?, ipv6Only: Bool) throws(UVError) {
        let destinationFamily: AddressFamily
        if let address {
            if let peer { throw UVError.alreadyConnected.with(context: "connected to \(peer); send without an address") }
            if address.port == 0 { throw UVError.invalidArgument.with(context: "destination port 0") }
            try checkFamily(of: address, socketFamily: socketFamily, ipv6Only: ipv6Only)
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

    // MARK: Receiving

    /// Starts receiving; `onReceive` (or the one given to ``init(loop:family:flags:onReceive:)``)
    /// is called on the loop thread with each datagram or receive error.
    ///
    /// Zero-length datagrams are delivered; libuv's "nothing more to read" notice is not.
    /// Receive errors such as ``UVError/connectionRefused`` (after a send to a closed port on a
    /// connected handle) are reported and receiving goes on. An unbound handle is first bound to
    /// the wildcard address of its family (`0.0.0.0` if it has none yet), port 0.
    ///
    /// - Throws: ``UVError/alreadyInProgress`` if already receiving; ``UVError/invalidArgument`` if
    ///   there is no callback; ``ClosedHandleError``.
    public func startReceiving(_ onReceive: ReceiveHandler? = nil) throws {
        try checkOpen("startReceiving")
        if isReceiving { throw UVError.alreadyInProgress.with(context: "already receiving") }
        guard let handler = onReceive ?? self.onReceive else {
            throw UVError.invalidArgument.with(context: "startReceiving needs a callback")
        }
        if !isBound && descriptor() != nil {
            // The socket exists (created with a family) but libuv would not bind it: do it here so
            // there is a port to receive on.
            try bind(family == .ipv6 ? SocketAddress(storage: .v6(high: 0, low: 0, port: 0, flowInfo: 0, scopeID: 0))
                                     : SocketAddress(storage: .v4(address: 0, port: 0)))
        }
        try UVError.check(uv_udp_recv_start(raw, udpAllocCallback, udpReceiveCallback), "startReceiving")
        self.onReceive = handler
        isReceiving = true
        isBound = true
    }

    /// Stops receiving. Harmless when not receiving or closed.
    public func stopReceiving() {
        loop.preconditionInLoop("UDPHandle.stopReceiving")
        guard isReceiving else { return }
        isReceiving = false
        if state == .open || state == .closing { uv_udp_recv_stop(raw) }
    }

    /// Sets the size of the buffer each datagram is read into.
    ///
    /// - Parameter size: 1...65536 bytes. Longer datagrams are delivered truncated.
    /// - Throws: ``UVError/invalidArgument`` outside that range.
    public func setMaximumDatagramSize(_ size: Int) throws {
        loop.preconditionInLoop("UDPHandle.setMaximumDatagramSize")
        guard (1...UVLoop.receiveScratchSize).contains(size) else {
            throw UVError.invalidArgument.with(context: "maximum datagram size must be 1...\(UVLoop.receiveScratchSize), not \(size)")
        }
        maximumDatagramSize = size
    }

    fileprivate func allocate(_ buffer: UnsafeMutablePointer<uv_buf_t>) {
        // Batched: the whole buffer, 20 chunks of 64 KiB (libuv splits it; never less than 64 KiB,
        // or libuv 1.44 spins forever). Otherwise exactly the maximum datagram size, so the kernel
        // truncates and reports it.
        let length = batchedReceive ? UVLoop.receiveScratchSize * UVLoop.receiveChunks : maximumDatagramSize
        buffer.pointee = uv_buf_init(loop.receiveScratch.assumingMemoryBound(to: CChar.self), UInt32(length))
    }

    fileprivate func received(_ count: Int, bytes: UnsafeRawPointer?, from address: UnsafePointer<sockaddr>?, flags: UInt32) {
        let result: Result<Datagram, UVError>
        if count < 0 {
            result = .failure(UVError(code: Int32(count)))
        } else {
            // nread 0 with no address is libuv's "nothing more to read" (or, batched, "the buffer
            // is free again": it is the loop's, so nothing to do): not a datagram.
            guard let address, let bytes, let remote = SocketAddress(address) else { return }
            // A batched chunk is 64 KiB, so libuv never truncates it: apply the maximum here.
            let kept = min(count, maximumDatagramSize)
            let payload = [UInt8](UnsafeRawBufferPointer(start: bytes, count: kept))
            result = .success(Datagram(payload: payload, remote: remote,
                                       isTruncated: kept < count || flags & UInt32(UV_UDP_PARTIAL.rawValue) != 0))
        }
        guard let onReceive else { return }
        callbackDepth += 1
        defer { callbackDepth -= 1 }
        onReceive(self, result)
    }

    // MARK: Close

    /// Closes the handle. Idempotent.
    ///
    /// Receiving stops at once; every queued send's callback is called exactly once with
    /// ``UVError/canceled``; then `onClose` runs. Every later operation throws
    /// ``ClosedHandleError``. Called from inside one of this handle's own callbacks, the libuv
    /// close is deferred to the next loop turn (closing there is a use-after-free in libuv
    /// 1.44.2); the handle counts as closed immediately.
    ///
    /// - Parameter onClose: Called on the loop thread once the handle has closed; at once if it
    ///   already has.
    public func close(_ onClose: CloseHandler? = nil) {
        loop.preconditionInLoop("UDPHandle.close")
        switch state {
        case .closed:
            onClose?(self)
        case .closing:
            if let onClose { closeHandlers.append(onClose) }
        case .open:
            if let onClose { closeHandlers.append(onClose) }
            state = .closing
            let willClose = willCloseObservers
            willCloseObservers = []
            for observer in willClose { observer() }
            if isReceiving {
                isReceiving = false
                uv_udp_recv_stop(raw)
            }
            if callbackDepth > 0 {
                loop.executeOnLoop { [self] in performClose() }
            } else {
                performClose()
            }
        }
    }

    private func performClose() {
        uv_close(handlePointer, udpCloseCallback)
    }

    fileprivate func closed() {
        state = .closed
        raw.deallocate()
        let handlers = closeHandlers
        let observers = closeObservers
        closeHandlers = []
        closeObservers = []
        onReceive = nil
        for observer in observers { observer() }
        for handler in handlers { handler(self) }
        loop.unregister(self)
    }

    /// For the async layer: runs `observer` when close begins, before libuv closes the socket
    /// (whoever closes it, including the loop's shutdown).
    package func addWillCloseObserver(_ observer: @escaping () -> Void) {
        if state == .open { willCloseObservers.append(observer) } else { observer() }
    }

    /// For the async layer: runs `observer` once the handle has closed (whoever closed it).
    package func addCloseObserver(_ observer: @escaping () -> Void) {
        if state == .closed { observer() } else { closeObservers.append(observer) }
    }

    // MARK: Addresses and descriptors

    /// The address the handle is bound to.
    ///
    /// - Throws: ``UVError/badFileDescriptor`` if the handle has no socket yet;
    ///   ``ClosedHandleError``.
    public func localAddress() throws -> SocketAddress {
        try checkOpen("localAddress")
        return try readAddress { sa, length throws(UVError) in
            try UVError.check(uv_udp_getsockname(raw, sa, length), "localAddress")
        }
    }

    /// The peer set by ``connect(_:)`` (or found on an adopted socket); `nil` when not connected.
    ///
    /// - Throws: ``ClosedHandleError``.
    public func remoteAddress() throws -> SocketAddress? {
        try checkOpen("remoteAddress")
        return try? readAddress { sa, length throws(UVError) in
            try UVError.check(uv_udp_getpeername(raw, sa, length), "remoteAddress")
        }
    }

    private func readAddress(_ read: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<Int32>) throws(UVError) -> Void) throws -> SocketAddress {
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        return try withUnsafeMutablePointer(to: &storage) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                try read(sa, &length)
                guard let address = SocketAddress(UnsafePointer(sa)) else {
                    throw UVError.addressFamilyNotSupported.with(context: "socket has a non-IP address")
                }
                return address
            }
        }
    }

    /// The socket's file descriptor (libuv's `uv_fileno`). It stays owned by the handle.
    ///
    /// - Throws: ``UVError/badFileDescriptor`` if the handle has no socket yet;
    ///   ``ClosedHandleError``.
    public func fileDescriptor() throws -> Int32 {
        try checkOpen("fileDescriptor")
        return try requireDescriptor("fileDescriptor")
    }

    /// The number of bytes waiting in libuv's send queue; 0 once closed.
    public var sendQueueSize: Int {
        loop.preconditionInLoop("UDPHandle.sendQueueSize")
        return state == .closed ? 0 : uv_udp_get_send_queue_size(raw)
    }

    /// The number of sends waiting in libuv's send queue; 0 once closed.
    public var sendQueueCount: Int {
        loop.preconditionInLoop("UDPHandle.sendQueueCount")
        return state == .closed ? 0 : uv_udp_get_send_queue_count(raw)
    }
}

@available(*, unavailable, message: "UDPHandle lives on its loop's thread; use UDPSocket across tasks")
extension UDPHandle: Sendable {}

extension UDPHandle: LoopResource {
    func closeForShutdown() { close() }
    /// The socket while the handle is open; libuv closes it inside `uv_close`.
    var descriptorIfOpen: Int32? { state == .closed ? nil : descriptor() }
}

// MARK: - Options

extension UDPHandle {
    fileprivate var isIPv6Socket: Bool { family == .ipv6 }

    func socketOption(_ fd: Int32, _ level: Int32, _ name: Int32) throws(UVError) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, level, name, &value, &length) != 0 {
            throw UVError(code: -errno, context: "getsockopt")
        }
        return value
    }

    func setSocketOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) throws(UVError) {
        var value = value
        if setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            throw UVError(code: -errno, context: "setsockopt")
        }
    }

    /// Sets an option at the IPv4 or IPv6 level according to the socket's real family (libuv
    /// 1.44 uses the IPv4 level for adopted IPv6 sockets, which silently does the wrong thing).
    private func setIPOption(_ operation: String, v4: Int32, v6: Int32, _ value: Int32) throws {
        try checkOpen(operation)
        let fd = try requireDescriptor(operation)
        if isIPv6Socket {
            try setSocketOption(fd, Int32(IPPROTO_IPV6), v6, value)
        } else {
            try setSocketOption(fd, Int32(IPPROTO_IP), v4, value)
        }
    }

    /// Sets the unicast time-to-live (IPv6: hop limit).
    ///
    /// - Parameter ttl: 1...255.
    /// - Throws: ``UVError/invalidArgument`` outside 1...255; ``UVError/badFileDescriptor`` if the
    ///   handle has no socket yet; ``ClosedHandleError``.
    public func setTTL(_ ttl: Int) throws {
        guard (1...255).contains(ttl) else { throw UVError.invalidArgument.with(context: "TTL must be 1...255, not \(ttl)") }
        try setIPOption("setTTL", v4: IP_TTL, v6: IPV6_UNICAST_HOPS, Int32(ttl))
    }

    /// Sets the multicast time-to-live (IPv6: hop limit); 0 keeps datagrams on this host.
    ///
    /// - Parameter ttl: 0...255.
    /// - Throws: ``UVError/invalidArgument`` outside 0...255; ``UVError/badFileDescriptor``;
    ///   ``ClosedHandleError``.
    public func setMulticastTTL(_ ttl: Int) throws {
        guard (0...255).contains(ttl) else { throw UVError.invalidArgument.with(context: "multicast TTL must be 0...255, not \(ttl)") }
        try setIPOption("setMulticastTTL", v4: IP_MULTICAST_TTL, v6: IPV6_MULTICAST_HOPS, Int32(ttl))
    }

    /// Sets whether multicast datagrams this socket sends are looped back to this host.
    ///
    /// - Throws: ``UVError/badFileDescriptor``; ``ClosedHandleError``.
    public func setMulticastLoop(_ enabled: Bool) throws {
        try setIPOption("setMulticastLoop", v4: IP_MULTICAST_LOOP, v6: IPV6_MULTICAST_LOOP, enabled ? 1 : 0)
    }

    /// Sets whether the socket may send to broadcast addresses (`SO_BROADCAST`).
    ///
    /// - Throws: ``UVError/badFileDescriptor``; ``ClosedHandleError``.
    public func setBroadcast(_ enabled: Bool) throws {
        try checkOpen("setBroadcast")
        try setSocketOption(try requireDescriptor("setBroadcast"), SOL_SOCKET, SO_BROADCAST, enabled ? 1 : 0)
    }

    /// Chooses the interface outgoing multicast datagrams leave by.
    ///
    /// - Parameter interface: For IPv4, the interface's address (`"127.0.0.1"`); for IPv6, an
    ///   interface name (`"eth0"`) or a scoped address (`"fe80::1%eth0"`); `nil` for the system's
    ///   choice.
    /// - Throws: ``SocketAddressError`` if `interface` does not parse;
    ///   ``UVError/addressFamilyNotSupported`` for an interface of the other family;
    ///   ``UVError/addressNotAvailable`` if no interface has that address; ``ClosedHandleError``.
    public func setMulticastInterface(_ interface: String?) throws {
        try checkOpen("setMulticastInterface")
        let fd = try requireDescriptor("setMulticastInterface")
        if isIPv6Socket {
            var index: UInt32 = 0
            if let interface {
                index = try Self.interfaceIndex(interface)
            }
            var value = Int32(bitPattern: index)
            if setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_MULTICAST_IF, &value, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                throw UVError(code: -errno, context: "setMulticastInterface \(interface ?? "default")")
            }
        } else {
            var address = in_addr(s_addr: 0)
            if let interface {
                let parsed = try SocketAddress(ip: interface, port: 0)
                guard case .v4(let raw, _) = parsed.storage else {
                    throw UVError.addressFamilyNotSupported.with(context: "IPv6 interface \(interface) on an IPv4 socket")
                }
                address.s_addr = raw.bigEndian
            }
            if setsockopt(fd, Int32(IPPROTO_IP), IP_MULTICAST_IF, &address, socklen_t(MemoryLayout<in_addr>.size)) != 0 {
                throw UVError(code: -errno, context: "setMulticastInterface \(interface ?? "default")")
            }
        }
    }

    /// An IPv6 interface by name ("lo"), by scoped address ("fe80::1%lo") or by number ("1").
    static func interfaceIndex(_ text: String) throws -> UInt32 {
        if let index = SocketAddress.resolveScope(Substring(text)) { return index }
        let address = try SocketAddress(ip: text, port: 0)
        guard address.family == .ipv6 else {
            throw UVError.addressFamilyNotSupported.with(context: "IPv4 interface \(text) on an IPv6 socket")
        }
        return address.scopeID
    }

    /// An interface address for a membership call: it must parse and match the group's family.
    private func membershipInterface(_ text: String?, for group: SocketAddress) throws {
        guard let text else { return }
        let interface = try SocketAddress(ip: text, port: 0)
        guard interface.family == group.family else {
            throw UVError.addressFamilyNotSupported.with(context: "\(interface.family) interface \(text) for \(group.family) group \(group.ip)")
        }
    }

    private func multicastGroup(_ text: String) throws -> SocketAddress {
        let group = try SocketAddress(ip: text, port: 0)
        guard group.isMulticast else {
            throw UVError.invalidArgument.with(context: "\(text) is not a multicast group")
        }
        if let family, family != group.family,
           !(family == .ipv6 && group.family == .ipv4 && !isIPv6Only) {
            throw UVError.addressFamilyNotSupported.with(context: "\(group.family) group \(text) on an \(family) socket")
        }
        return group
    }

    /// Joins or leaves a multicast group (any source).
    ///
    /// - Parameters:
    ///   - group: The group address, such as `"239.255.0.1"` or `"ff02::1:3"`.
    ///   - membership: `.join` or `.leave`.
    ///   - interface: The local interface address to join on; `nil` lets the kernel choose (which
    ///     fails with ``UVError/noSuchDevice`` on a host with no multicast route).
    /// - Throws: ``SocketAddressError`` if `group` or `interface` does not parse;
    ///   ``UVError/invalidArgument`` if `group` is not a multicast address;
    ///   ``UVError/addressFamilyNotSupported`` for a group of the other family, or an interface of
    ///   another family than the group;
    ///   ``UVError/addressInUse`` when joining twice; ``UVError/addressNotAvailable`` when leaving
    ///   a group never joined; ``UVError/noSuchDevice`` for an interface that is not on this host.
    public func setMembership(_ group: String, _ membership: UDPMembership, interface: String? = nil) throws {
        try checkOpen("setMembership")
        try membershipInterface(interface, for: try multicastGroup(group))
        if descriptor() == nil { _ = try requireDescriptor("setMembership") }
        let status = uv_udp_set_membership(raw, group, interface, membership == .join ? UV_JOIN_GROUP : UV_LEAVE_GROUP)
        try UVError.check(status, "\(membership == .join ? "join" : "leave") \(group)\(interface.map { " on \($0)" } ?? "")")
    }

    /// Joins or leaves a source-specific multicast group: only datagrams from `source` are
    /// received.
    ///
    /// - Parameters:
    ///   - group: The group address.
    ///   - source: The only sender whose datagrams to the group are wanted.
    ///   - membership: `.join` or `.leave`.
    ///   - interface: The local interface address; `nil` lets the kernel choose.
    /// - Throws: As ``setMembership(_:_:interface:)``, and ``UVError/invalidArgument`` if `source`
    ///   is of another family than `group`.
    public func setSourceMembership(group: String, source: String, _ membership: UDPMembership, interface: String? = nil) throws {
        try checkOpen("setSourceMembership")
        let groupAddress = try multicastGroup(group)
        let sourceAddress = try SocketAddress(ip: source, port: 0)
        guard sourceAddress.family == groupAddress.family else {
            throw UVError.invalidArgument.with(context: "source \(source) and group \(group) are of different families")
        }
        try membershipInterface(interface, for: groupAddress)
        if descriptor() == nil { _ = try requireDescriptor("setSourceMembership") }
        let status = uv_udp_set_source_membership(raw, group, interface, source, membership == .join ? UV_JOIN_GROUP : UV_LEAVE_GROUP)
        try UVError.check(status, "\(membership == .join ? "join" : "leave") \(group) from \(source)")
    }

    /// The socket's send buffer size (`SO_SNDBUF`), as the kernel reports it.
    ///
    /// - Throws: ``UVError/badFileDescriptor``; ``ClosedHandleError``.
    public func sendBufferSize() throws -> Int {
        try checkOpen("sendBufferSize")
        var value: Int32 = 0
        try UVError.check(uv_send_buffer_size(handlePointer, &value), "sendBufferSize")
        return Int(value)
    }

    /// Asks for a send buffer of `size` bytes (`SO_SNDBUF`). Linux doubles the value it stores,
    /// so ``sendBufferSize()`` then reports `2 * size`.
    ///
    /// - Throws: ``UVError/invalidArgument`` unless `size` is positive and fits an `Int32`;
    ///   ``UVError/badFileDescriptor``; ``ClosedHandleError``.
    public func setSendBufferSize(_ size: Int) throws {
        try checkOpen("setSendBufferSize")
        guard size > 0, size <= Int(Int32.max) else { throw UVError.invalidArgument.with(context: "buffer size must be positive, not \(size)") }
        var value = Int32(size)
        try UVError.check(uv_send_buffer_size(handlePointer, &value), "setSendBufferSize")
    }

    /// The socket's receive buffer size (`SO_RCVBUF`), as the kernel reports it.
    ///
    /// - Throws: ``UVError/badFileDescriptor``; ``ClosedHandleError``.
    public func receiveBufferSize() throws -> Int {
        try checkOpen("receiveBufferSize")
        var value: Int32 = 0
        try UVError.check(uv_recv_buffer_size(handlePointer, &value), "receiveBufferSize")
        return Int(value)
    }

    /// Asks for a receive buffer of `size` bytes (`SO_RCVBUF`). Linux doubles the value it
    /// stores.
    ///
    /// - Throws: ``UVError/invalidArgument`` unless `size` is positive and fits an `Int32`;
    ///   ``UVError/badFileDescriptor``; ``ClosedHandleError``.
    public func setReceiveBufferSize(_ size: Int) throws {
        try checkOpen("setReceiveBufferSize")
        guard size > 0, size <= Int(Int32.max) else { throw UVError.invalidArgument.with(context: "buffer size must be positive, not \(size)") }
        var value = Int32(size)
        try UVError.check(uv_recv_buffer_size(handlePointer, &value), "setReceiveBufferSize")
    }
}

// MARK: - C callbacks (capture nothing; context travels in handle->data)

private func handleObject(_ handle: UnsafeRawPointer) -> UDPHandle {
    let data = handle.assumingMemoryBound(to: uv_handle_t.self).pointee.data!
    return Unmanaged<UDPHandle>.fromOpaque(data).takeUnretainedValue()
}

private let udpSendCallback: uv_udp_send_cb = { request, status in
    guard let request else { return }
    handleObject(request.pointee.handle).sendCompleted(request, status: status)
}

private let udpAllocCallback: uv_alloc_cb = { handle, _, buffer in
    guard let handle, let buffer else { return }
    handleObject(handle).allocate(buffer)
}

private let udpReceiveCallback: uv_udp_recv_cb = { handle, nread, buffer, address, flags in
    guard let handle else { return }
    handleObject(handle).received(nread, bytes: buffer.flatMap { UnsafeRawPointer($0.pointee.base) }, from: address, flags: flags)
}

private let udpCloseCallback: uv_close_cb = { handle in
    guard let handle else { return }
    handleObject(handle).closed()
}

/// One `malloc` block: a `uv_udp_send_t` followed by the datagram's bytes, freed in the send
/// callback (or at once if libuv refuses the send).
struct SendRequest {
    let request: UnsafeMutablePointer<uv_udp_send_t>

    static let headerSize = (MemoryLayout<uv_udp_send_t>.size + 15) & ~15

    static func allocate(payloadSize: Int) -> SendRequest {
        guard let block = malloc(headerSize + max(payloadSize, 1)) else {
            fatalError("AsyncUDP: out of memory allocating a send request")
        }
        return SendRequest(request: block.assumingMemoryBound(to: uv_udp_send_t.self))
    }

    var payload: UnsafeMutableRawPointer { UnsafeMutableRawPointer(request) + Self.headerSize }

    func free() { Glibc.free(request) }
}

extension UVLoop {
    /// Runs a loop-thread closure on a later turn of the loop. Must be called on the loop thread.
    func executeOnLoop(_ work: @escaping () -> Void) {
        let box = LoopBound(work)
        execute { box.value() }
    }
}

/// Carries a non-Sendable value from the loop thread back to the loop thread.
package struct LoopBound<Value>: @unchecked Sendable {
    // Safe: created on the loop thread and only unwrapped by a job the same loop runs, which is
    // the same thread (or, after shutdown, the loop's single late-work drainer).
    package let value: Value
    package init(_ value: Value) { self.value = value }
}
