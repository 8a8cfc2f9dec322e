internal import CLibUV
internal import Glibc

// Binding, adopting a descriptor, connecting.
extension UDPHandle {
    /// Binds the handle to a local address.
    ///
    /// - Parameters:
    ///   - address: The local address; port 0 asks the kernel for an ephemeral port (read it back
    ///     with ``localAddress()``).
    ///   - flags: `.reuseAddress` to share the port (every socket on it must set it),
    ///     `.reusePort` to share it with the kernel spreading datagrams across the sockets,
    ///     `.ipv6Only` to refuse IPv4 traffic on an IPv6 socket. Without `.ipv6Only` an IPv6
    ///     socket is made dual-stack explicitly, whatever the system default.
    /// - Throws: ``ClosedHandleError``; ``UVError/invalidArgument`` if the handle is already bound
    ///   (explicitly or by an earlier send or receive), if `.ipv6Only` comes with an IPv4 address,
    ///   if `.partial` or an unknown flag bit is passed, or if the address family differs from
    ///   the socket's;
    ///   ``UVError/addressInUse``, ``UVError/addressNotAvailable``, ``UVError/permissionDenied``
    ///   from the kernel; ``UVError/tooManyOpenFiles`` when no descriptor is left.
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
                fd = try makeSocket(address.family, reuseAddress: flags.contains(.reuseAddress))
            }
            if address.family == .ipv6 {
                try Syscall.setSocketOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, flags.contains(.ipv6Only) ? 1 : 0, "IPV6_V6ONLY")
            }
            if flags.contains(.reusePort) {
                try Syscall.setSocketOption(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT")
            }
        }
        let uvFlags = flags.intersection([.ipv6Only, .reuseAddress]).rawValue
        let status = address.withSockAddr { sa, _ in uv_udp_bind(udp, sa, uvFlags) }
        // libuv may have created the socket even if the bind failed.
        adoptDescriptor(fresh: true)
        try UVError.check(status, "bind \(address)")
        isBound = true
        isIPv6Only = flags.contains(.ipv6Only)
        knownFamily = address.family
    }

    /// Creates a socket of `family` and gives it to libuv (which sets `SO_REUSEADDR` on adopted
    /// sockets; that is undone unless asked for).
    private func makeSocket(_ family: AddressFamily, reuseAddress: Bool) throws(UVError) -> Int32 {
        let type = Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd = try Syscall.call("socket(\(family))") { socket(family.rawValue, type, 0) }
        let status = uv_udp_open(udp, fd)
        if status < 0 {
            Glibc.close(fd)
            throw UVError(code: status, context: "uv_udp_open")
        }
        knownFamily = family
        adoptDescriptor(fresh: true)
        try Syscall.setSocketOption(fd, SOL_SOCKET, SO_REUSEADDR, reuseAddress ? 1 : 0, "SO_REUSEADDR")
        return fd
    }

    /// Binds an unbound handle to the wildcard address of `family`, port 0, as libuv does
    /// before a send or receive on an unbound handle.
    func bindIfNeeded(_ family: AddressFamily?) throws {
        if isBound { return }
        try bind(.wildcard(self.family ?? family ?? .ipv4))
    }

    /// Adopts an existing UDP socket (libuv's `uv_udp_open`).
    ///
    /// The socket may be unbound, bound or connected; the handle learns which. libuv 1.44 sets
    /// `SO_REUSEADDR` on every adopted socket: this method restores the socket's own setting.
    ///
    /// - Parameter fd: An IPv4 or IPv6 UDP socket's file descriptor. The handle owns it from now
    ///   on and closes it in ``close(_:)``.
    /// - Throws: ``UVError/alreadyExists`` if an open handle (on any loop) owns `fd`;
    ///   ``UVError/busy`` if this handle already has a socket; ``UVError/notASocket`` if `fd` is
    ///   not a socket; ``UVError/invalidArgument`` if it is not a datagram socket;
    ///   ``UVError/addressFamilyNotSupported`` if it is not IPv4 or IPv6 (a Unix-domain socket);
    ///   ``UVError/protocolNotSupported`` if it is not UDP.
    public func open(_ fd: Int32) throws {
        try checkOpen("open")
        if descriptor() != nil { throw UVError.busy.with(context: "the handle already has a socket") }
        if DescriptorRegistry.isOwned(fd) {
            throw UVError.alreadyExists.with(context: "fd \(fd) is already owned by an open handle")
        }
        let type: Int32
        switch Result(catching: { () throws(UVError) in try Syscall.socketOption(fd, SOL_SOCKET, SO_TYPE, "SO_TYPE of fd \(fd)", foreign: true) }) {
        case .success(let value): type = value
        case .failure(let error): throw error == .notASocket ? error.with(context: "fd \(fd) is not a socket") : error
        }
        guard type == Int32(SOCK_DGRAM.rawValue) else {
            throw UVError.invalidArgument.with(context: "fd \(fd) is not a datagram socket")
        }
        let (rawFamily, _) = try Syscall.localAddress(fd, foreign: true)
        guard rawFamily == AF_INET || rawFamily == AF_INET6 else {
            throw UVError.addressFamilyNotSupported.with(context: "fd \(fd) is not an IPv4 or IPv6 socket (address family \(rawFamily)); UDPHandle adopts UDP sockets only")
        }
        let proto = try Syscall.socketOption(fd, SOL_SOCKET, SO_PROTOCOL, "SO_PROTOCOL", foreign: true)
        guard proto == Int32(IPPROTO_UDP) else {
            throw UVError.protocolNotSupported.with(context: "fd \(fd) is a datagram socket of protocol \(proto), not UDP")
        }
        guard DescriptorRegistry.claim(fd) else {
            throw UVError.alreadyExists.with(context: "fd \(fd) is already owned by an open handle")
        }
        let reuse: Int32
        do {
            reuse = try Syscall.socketOption(fd, SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR")
            try UVError.check(uv_udp_open(udp, fd), "uv_udp_open(\(fd))")
            try Syscall.setSocketOption(fd, SOL_SOCKET, SO_REUSEADDR, reuse, "SO_REUSEADDR")
        } catch {
            DescriptorRegistry.release(fd)
            throw error
        }
        claimedDescriptor = fd
        knownFamily = rawFamily == AF_INET6 ? .ipv6 : .ipv4
        if let (_, local) = try? Syscall.localAddress(fd), let local, local.port != 0 { isBound = true }
        if let remote = try? remoteAddress() {
            peer = remote
            isBound = true
        }
        if knownFamily == .ipv6, (try? Syscall.socketOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, "IPV6_V6ONLY")) == 1 {
            isIPv6Only = true
        }
        adoptDescriptor(fresh: false)
    }

    /// Connects the handle to a peer: sends without an address go there, and only its datagrams
    /// are received. An unbound handle is bound to an ephemeral port first.
    ///
    /// - Throws: ``UVError/alreadyConnected`` if connected (call ``disconnect()`` first);
    ///   ``UVError/invalidArgument`` for port 0; ``UVError/addressFamilyNotSupported`` for an
    ///   address of the other family; ``ClosedHandleError``.
    public func connect(_ address: SocketAddress) throws {
        try checkOpen("connect")
        if let peer { throw UVError.alreadyConnected.with(context: "already connected to \(peer)") }
        if address.port == 0 { throw UVError.invalidArgument.with(context: "cannot connect to port 0") }
        try SendTarget.checkFamily(of: address, socketFamily: family, ipv6Only: isIPv6Only)
        let status = address.withSockAddr { sa, _ in uv_udp_connect(udp, sa) }
        adoptDescriptor(fresh: true)
        try UVError.check(status, "connect \(address)")
        peer = address
        isBound = true
        knownFamily = knownFamily ?? address.family
        sendPath?.setConnected(true)
    }

    /// Removes the peer set by ``connect(_:)``.
    ///
    /// - Throws: ``UVError/notConnected`` if the handle is not connected; ``ClosedHandleError``.
    public func disconnect() throws {
        try checkOpen("disconnect")
        guard peer != nil else { throw UVError.notConnected.with(context: "disconnect") }
        try UVError.check(uv_udp_connect(udp, nil), "disconnect")
        peer = nil
        sendPath?.setConnected(false)
    }
}
