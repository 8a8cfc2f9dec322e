import UVCore

// Socket options and multicast membership.
extension UDPSocket {
    /// Allows or forbids sending to broadcast addresses (`SO_BROADCAST`).
    ///
    /// - Throws: `ClosedHandleError`.
    public func setBroadcast(_ enabled: Bool) throws { try handle.setBroadcast(enabled) }

    /// Sets the unicast TTL (IPv6: hop limit), 1...255.
    ///
    /// - Throws: `UVError.invalidArgument` out of range; `ClosedHandleError`.
    public func setTTL(_ ttl: Int) throws { try handle.setTTL(ttl) }

    /// Sets the multicast TTL (IPv6: hop limit), 0...255.
    ///
    /// - Throws: `UVError.invalidArgument` out of range; `ClosedHandleError`.
    public func setMulticastTTL(_ ttl: Int) throws { try handle.setMulticastTTL(ttl) }

    /// Sets whether this socket's multicast datagrams loop back to this host.
    ///
    /// - Throws: `ClosedHandleError`.
    public func setMulticastLoop(_ enabled: Bool) throws { try handle.setMulticastLoop(enabled) }

    /// Chooses the interface for outgoing multicast: an IPv4 address, or for IPv6 an interface
    /// name or scoped address; `nil` for the system's choice.
    ///
    /// - Throws: `SocketAddressError`, `UVError.addressNotAvailable`, `ClosedHandleError`.
    public func setMulticastInterface(_ interface: String?) throws { try handle.setMulticastInterface(interface) }

    /// Asks for a kernel send buffer of `size` bytes (Linux doubles it).
    ///
    /// - Throws: `UVError.invalidArgument` unless positive; `ClosedHandleError`.
    public func setSendBufferSize(_ size: Int) throws { try handle.setSendBufferSize(size) }

    /// Asks for a kernel receive buffer of `size` bytes (Linux doubles it).
    ///
    /// - Throws: `UVError.invalidArgument` unless positive; `ClosedHandleError`.
    public func setReceiveBufferSize(_ size: Int) throws { try handle.setReceiveBufferSize(size) }

    /// The kernel send buffer size.
    ///
    /// - Throws: `ClosedHandleError`.
    public func sendBufferSize() throws -> Int { try handle.sendBufferSize() }

    /// The kernel receive buffer size.
    ///
    /// - Throws: `ClosedHandleError`.
    public func receiveBufferSize() throws -> Int { try handle.receiveBufferSize() }

    /// Joins a multicast group (any source).
    ///
    /// - Parameters:
    ///   - group: The group, such as `"239.255.0.1"`.
    ///   - interface: The local interface address to join on; `nil` lets the kernel choose.
    /// - Throws: `SocketAddressError`; `UVError.invalidArgument` (not a group);
    ///   `UVError.addressInUse` (already joined); `UVError.noSuchDevice`; `ClosedHandleError`.
    public func joinGroup(_ group: String, interface: String? = nil) throws {
        try handle.setMembership(group, .join, interface: interface)
    }

    /// Leaves a multicast group.
    ///
    /// - Throws: `UVError.addressNotAvailable` if not joined; as ``joinGroup(_:interface:)``.
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
