/// One received UDP datagram.
public struct Datagram: Sendable, Hashable {
    /// The bytes of the datagram. May be empty: a zero-length datagram is a datagram.
    public var payload: [UInt8]
    /// The address of the sender.
    public var remote: SocketAddress
    /// Whether the datagram was larger than the receive buffer and lost its tail (libuv's
    /// `UV_UDP_PARTIAL`). The default receive buffer holds any datagram, so this is only `true`
    /// when a smaller maximum size was asked for.
    public var isTruncated: Bool
    /// Kept out of line: a datagram without metadata pays one word for it.
    private var metadataBox: DatagramMetadataBox?

    /// What the kernel reported with the datagram (destination address, interface, ECN,
    /// receive time), for a socket that asked for it with ``ReceiveMetadataOptions``; `nil`
    /// otherwise.
    public var metadata: Metadata? {
        get { metadataBox?.value }
        set { metadataBox = newValue.map(DatagramMetadataBox.init) }
    }

    /// The datagrams this buffer carries: with ``ReceiveMetadataOptions/gro`` the kernel may
    /// coalesce several same-size datagrams of one sender into one buffer
    /// (``Metadata/segmentSize``); these are its pieces, as slices of ``payload`` (no copy).
    /// Without GRO, the whole payload.
    public var segments: [ArraySlice<UInt8>] {
        guard let size = metadataBox?.value.segmentSize, size > 0, payload.count > size else { return [payload[...]] }
        return stride(from: 0, to: payload.count, by: size).map { payload[$0..<min(payload.count, $0 + size)] }
    }

    /// How many datagrams this buffer carries: 1, or more for a GRO buffer (see ``segments``).
    public var segmentCount: Int {
        guard let size = metadataBox?.value.segmentSize, size > 0, payload.count > size else { return 1 }
        return (payload.count + size - 1) / size
    }

    /// Creates a datagram value.
    ///
    /// - Parameters:
    ///   - payload: The bytes.
    ///   - remote: The sender of a received datagram; the destination of one to send.
    ///   - isTruncated: Whether the payload lost its tail on receipt.
    ///   - metadata: What the kernel reported with a received datagram.
    public init(payload: [UInt8], remote: SocketAddress, isTruncated: Bool = false, metadata: Metadata? = nil) {
        self.payload = payload
        self.remote = remote
        self.isTruncated = isTruncated
        self.metadataBox = metadata.map(DatagramMetadataBox.init)
    }

    /// Creates a datagram whose payload is the UTF-8 bytes of `string`.
    ///
    /// - Parameters:
    ///   - string: The text.
    ///   - remote: The destination (or, for a received datagram, the sender).
    public init(string: String, remote: SocketAddress) {
        self.init(payload: Array(string.utf8), remote: remote)
    }

    /// The payload as UTF-8 text; invalid sequences become U+FFFD (see ``validatedString``).
    public var string: String { String(decoding: payload, as: UTF8.self) }

    /// The payload as UTF-8 text, or `nil` if it is not valid UTF-8.
    public var validatedString: String? { String(validating: payload, as: UTF8.self) }
}

extension String {
    /// The payload of `datagram` as UTF-8 text; invalid sequences become U+FFFD.
    ///
    /// - Parameter datagram: A received datagram.
    public init(_ datagram: Datagram) {
        self = datagram.string
    }
}

/// Flags for binding a UDP handle, and the truncation flag libuv reports on receive.
public struct UDPFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Bind an IPv6 socket for IPv6 only (`IPV6_V6ONLY`, libuv's `UV_UDP_IPV6ONLY`): it will not
    /// receive IPv4 traffic as `::ffff:a.b.c.d`. Only valid with an IPv6 bind address.
    public static let ipv6Only = UDPFlags(rawValue: 1)
    /// Reported, not requested: the datagram was truncated (libuv's `UV_UDP_PARTIAL`). Passing it
    /// to `bind` is refused with `EINVAL`; ``Datagram/isTruncated`` carries it on receive.
    public static let partial = UDPFlags(rawValue: 2)
    /// Let several sockets bind the same address and port (`SO_REUSEADDR`, libuv's
    /// `UV_UDP_REUSEADDR`). On Linux every socket involved must set it.
    public static let reuseAddress = UDPFlags(rawValue: 4)
    /// Let several sockets bind the same address and port and have the kernel spread incoming
    /// datagrams across them by flow (`SO_REUSEPORT`): one socket per ``UVLoop`` of a
    /// ``UVLoopGroup`` uses several cores. libuv 1.44 has no flag for it, so AsyncUDP sets it on
    /// the socket before handing it to libuv. Every socket on the port must set it.
    public static let reusePort = UDPFlags(rawValue: 1 << 16)
}

/// Whether to join or leave a multicast group.
public enum UDPMembership: Sendable, Hashable {
    /// Join the group (`UV_JOIN_GROUP`).
    case join
    /// Leave the group (`UV_LEAVE_GROUP`).
    case leave
}
