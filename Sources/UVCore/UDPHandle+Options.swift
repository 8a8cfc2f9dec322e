internal import CLibUV
internal import Glibc

// Socket options: TTLs, broadcast, multicast, buffer sizes.
extension UDPHandle {
    fileprivate var isIPv6Socket: Bool { family == .ipv6 }

    /// Sets an option at the IPv4 or IPv6 level according to the socket's real family (libuv
    /// 1.44 uses the IPv4 level for adopted IPv6 sockets, which silently does the wrong thing).
    private func setIPOption(_ operation: String, v4: Int32, v6: Int32, _ value: Int32) throws {
        try checkOpen(operation)
        let fd = try requireDescriptor(operation)
        if isIPv6Socket {
            try Syscall.setSocketOption(fd, Int32(IPPROTO_IPV6), v6, value, operation)
        } else {
            try Syscall.setSocketOption(fd, Int32(IPPROTO_IP), v4, value, operation)
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
        try Syscall.setSocketOption(try requireDescriptor("setBroadcast"), SOL_SOCKET, SO_BROADCAST, enabled ? 1 : 0, "SO_BROADCAST")
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
            try Syscall.setSocketOption(fd, Int32(IPPROTO_IPV6), IPV6_MULTICAST_IF, Int32(bitPattern: index),
                                        "setMulticastInterface \(interface ?? "default")")
        } else {
            var address = in_addr(s_addr: 0)
            if let interface {
                let parsed = try SocketAddress(ip: interface, port: 0)
                guard case .v4(let raw, _) = parsed.storage else {
                    throw UVError.addressFamilyNotSupported.with(context: "IPv6 interface \(interface) on an IPv4 socket")
                }
                address.s_addr = raw.bigEndian
            }
            try Syscall.setSocketOption(fd, Int32(IPPROTO_IP), IP_MULTICAST_IF, value: address,
                                        "setMulticastInterface \(interface ?? "default")")
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
        _ = try requireDescriptor("setMembership")
        let status = uv_udp_set_membership(udp, group, interface, membership == .join ? UV_JOIN_GROUP : UV_LEAVE_GROUP)
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
        _ = try requireDescriptor("setSourceMembership")
        let status = uv_udp_set_source_membership(udp, group, interface, source, membership == .join ? UV_JOIN_GROUP : UV_LEAVE_GROUP)
        try UVError.check(status, "\(membership == .join ? "join" : "leave") \(group) from \(source)")
    }

    /// The socket's send buffer size (`SO_SNDBUF`), as the kernel reports it.
    ///
    /// - Throws: ``UVError/badFileDescriptor``; ``ClosedHandleError``.
    public func sendBufferSize() throws -> Int {
        try checkOpen("sendBufferSize")
        var value: Int32 = 0
        try UVError.check(uv_send_buffer_size(handle(udp), &value), "sendBufferSize")
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
        try UVError.check(uv_send_buffer_size(handle(udp), &value), "setSendBufferSize")
    }

    /// The socket's receive buffer size (`SO_RCVBUF`), as the kernel reports it.
    ///
    /// - Throws: ``UVError/badFileDescriptor``; ``ClosedHandleError``.
    public func receiveBufferSize() throws -> Int {
        try checkOpen("receiveBufferSize")
        var value: Int32 = 0
        try UVError.check(uv_recv_buffer_size(handle(udp), &value), "receiveBufferSize")
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
        try UVError.check(uv_recv_buffer_size(handle(udp), &value), "setReceiveBufferSize")
    }
}
