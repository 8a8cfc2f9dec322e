internal import CUVShims
internal import Glibc

/// The Explicit Congestion Notification codepoint of a datagram: the low two bits of the IPv4
/// TOS byte or the IPv6 traffic class (RFC 3168).
public enum ECNCodepoint: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Not ECN-capable transport (`00`).
    case notECT = 0
    /// ECN-capable transport, ECT(1) (`01`; L4S uses it).
    case ect1 = 1
    /// ECN-capable transport, ECT(0) (`10`).
    case ect0 = 2
    /// Congestion experienced (`11`): set by a router instead of dropping the datagram.
    case congestionExperienced = 3

    /// The codepoint in the low two bits of a TOS byte or traffic class.
    ///
    /// - Parameter trafficClass: The IPv4 TOS byte or IPv6 traffic class.
    public init(trafficClass: UInt8) {
        self = ECNCodepoint(rawValue: trafficClass & 0b11)!
    }

    /// The RFC 3168 name: "Not-ECT", "ECT(1)", "ECT(0)" or "CE".
    public var description: String {
        switch self {
        case .notECT: "Not-ECT"
        case .ect1: "ECT(1)"
        case .ect0: "ECT(0)"
        case .congestionExperienced: "CE"
        }
    }
}

/// Which metadata a socket reports with each received datagram (``Datagram/metadata``).
///
/// Each option costs a little: the kernel writes a control message per datagram and AsyncUDP
/// decodes it and allocates one small object per datagram. With none set (the default) receiving
/// does no per-datagram work for metadata.
public struct ReceiveMetadataOptions: OptionSet, Sendable, Hashable {
    /// The option bits.
    public let rawValue: Int
    /// Creates options from their raw bits.
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// The local address each datagram was sent to and the interface it arrived on
    /// (`IP_PKTINFO`, `IPV6_RECVPKTINFO`): what a server bound to a wildcard address needs to
    /// reply from the address the client used.
    public static let packetInfo = ReceiveMetadataOptions(rawValue: 1)
    /// The ECN codepoint of each datagram (`IP_RECVTOS`, `IPV6_RECVTCLASS`).
    public static let ecn = ReceiveMetadataOptions(rawValue: 2)
    /// The kernel's receive time of each datagram (`SO_TIMESTAMPNS`), wall-clock.
    public static let timestamp = ReceiveMetadataOptions(rawValue: 4)

    /// Generic receive offload (`UDP_GRO`): the kernel may hand over several same-size
    /// datagrams of one sender as one buffer, with its segment size in
    /// ``Datagram/Metadata/segmentSize``; ``Datagram/segments`` cuts it (without copying). Far
    /// fewer buffers for a bulk transfer, especially one sent with GSO
    /// (``SendOptions/segmentSize``). Not part of ``all``: a consumer must expect such buffers.
    public static let gro = ReceiveMetadataOptions(rawValue: 8)

    /// Every option this version knows.
    static let known: ReceiveMetadataOptions = [.packetInfo, .ecn, .timestamp, .gro]

    /// Packet info, ECN and timestamps (GRO is asked for separately: see ``gro``).
    public static let all: ReceiveMetadataOptions = [.packetInfo, .ecn, .timestamp]
}

/// A point in wall-clock time (`CLOCK_REALTIME`), with nanosecond resolution: the clock the
/// kernel stamps received datagrams with.
///
/// Compare two of them, or take the `Duration` between them with ``duration(to:)``. Wall-clock
/// time can jump (NTP, an administrator), so use it for timestamps, not for timeouts.
public struct WallClockTime: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Whole seconds since 1970-01-01 00:00:00 UTC.
    public private(set) var seconds: Int64
    /// Nanoseconds past ``seconds``, 0..<1,000,000,000 (read-only, so it stays normalized).
    public private(set) var nanoseconds: Int64

    /// Creates a time from seconds and nanoseconds since the Unix epoch (nanoseconds are
    /// normalized into 0..<1,000,000,000).
    ///
    /// - Parameters:
    ///   - seconds: Seconds since 1970-01-01 00:00:00 UTC.
    ///   - nanoseconds: Nanoseconds to add.
    public init(seconds: Int64, nanoseconds: Int64) {
        let (carry, rest) = nanoseconds.quotientAndRemainder(dividingBy: 1_000_000_000)
        // Saturating: a time near the ends of Int64 clamps instead of trapping.
        let (sum, overflow) = seconds.addingReportingOverflow(carry - (rest < 0 ? 1 : 0))
        self.seconds = overflow ? (seconds < 0 ? .min : .max) : sum
        self.nanoseconds = rest < 0 ? rest + 1_000_000_000 : rest
    }

    /// The current wall-clock time (`clock_gettime(CLOCK_REALTIME)`).
    public static var now: WallClockTime {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return WallClockTime(seconds: Int64(time.tv_sec), nanoseconds: Int64(time.tv_nsec))
    }

    /// The time from this instant to `other` (negative if `other` is earlier).
    ///
    /// - Parameter other: Another wall-clock time.
    public func duration(to other: WallClockTime) -> Duration {
        let (delta, overflow) = other.seconds.subtractingReportingOverflow(seconds)
        if overflow { return .seconds(other.seconds > seconds ? Int64.max : Int64.min) }  // saturate
        return .seconds(delta) + .nanoseconds(other.nanoseconds - nanoseconds)
    }

    /// Whether `lhs` is earlier than `rhs`.
    public static func < (lhs: WallClockTime, rhs: WallClockTime) -> Bool {
        (lhs.seconds, lhs.nanoseconds) < (rhs.seconds, rhs.nanoseconds)
    }

    /// Seconds since the epoch with nine decimals, such as `1764979200.000000042`.
    public var description: String {
        let fraction = String(nanoseconds)
        return "\(seconds).\(String(repeating: "0", count: 9 - fraction.count))\(fraction)"
    }
}

extension Datagram {
    /// What the kernel reported about a received datagram besides its bytes and sender: the
    /// metadata asked for with ``ReceiveMetadataOptions``. A field is `nil` when it was not asked
    /// for, or when the kernel did not report it for this datagram.
    public struct Metadata: Sendable, Hashable {
        /// The local address the datagram was sent to (its IP destination), with the socket's
        /// port: on a socket bound to `0.0.0.0` or `[::]`, the address the client used. Pass it
        /// as ``SendOptions/source`` to reply from it. From ``ReceiveMetadataOptions/packetInfo``.
        public var destination: SocketAddress?
        /// The index of the interface the datagram arrived on (as `if_nametoindex` numbers it).
        /// From ``ReceiveMetadataOptions/packetInfo``.
        public var interfaceIndex: UInt32?
        /// The datagram's ECN codepoint. From ``ReceiveMetadataOptions/ecn``.
        public var ecn: ECNCodepoint?
        /// When the kernel received the datagram, wall-clock. From
        /// ``ReceiveMetadataOptions/timestamp``.
        public var receiveTime: WallClockTime?
        /// With ``ReceiveMetadataOptions/gro``: the size of each datagram the kernel coalesced
        /// into this buffer (the last may be shorter); `nil` when the buffer is one datagram.
        public var segmentSize: Int?

        /// Creates metadata; every field defaults to `nil`.
        public init(destination: SocketAddress? = nil, interfaceIndex: UInt32? = nil,
                    ecn: ECNCodepoint? = nil, receiveTime: WallClockTime? = nil, segmentSize: Int? = nil) {
            self.destination = destination
            self.interfaceIndex = interfaceIndex
            self.ecn = ecn
            self.receiveTime = receiveTime
            self.segmentSize = segmentSize
        }

        /// Decodes the control messages of a received message; `nil` when it carries none.
        /// `localPort` becomes the port of ``destination``.
        /// With `mapIPv4` (an IPv6 socket), an IPv4 destination becomes `::ffff:a.b.c.d`, as the
        /// kernel writes the sender of IPv4 traffic on such a socket.
        init?(parsing message: UnsafeMutablePointer<msghdr>, localPort: UInt16, mapIPv4: Bool) {
            var raw = cuv_receive_metadata()
            guard cuv_parse_receive_cmsgs(message, &raw) != 0 else { return nil }
            self.init()
            if raw.destination_family != 0 {
                destination = withUnsafeBytes(of: raw.destination) { bytes in
                    if raw.destination_family == AF_INET {
                        let address = UInt32(bigEndian: bytes.loadUnaligned(as: UInt32.self))
                        if mapIPv4 { return SocketAddress.ipv4Mapped(address, port: localPort) }
                        return SocketAddress(storage: .v4(address: address, port: localPort))
                    }
                    return SocketAddress(storage: .v6(high: bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self),
                                                      low: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
                                                      port: localPort, flowInfo: 0, scopeID: 0))
                }
                interfaceIndex = raw.interface_index
            }
            if raw.has_traffic_class != 0 { ecn = ECNCodepoint(trafficClass: UInt8(truncatingIfNeeded: raw.traffic_class)) }
            if raw.has_timestamp != 0 { receiveTime = WallClockTime(seconds: raw.seconds, nanoseconds: raw.nanoseconds) }
            if raw.gro_segment_size > 0 { segmentSize = Int(raw.gro_segment_size) }
        }
    }
}

/// Holds a datagram's metadata out of line, so a ``Datagram`` without metadata stays small.
final class DatagramMetadataBox: Sendable, Hashable {
    let value: Datagram.Metadata

    init(_ value: Datagram.Metadata) { self.value = value }

    static func == (lhs: DatagramMetadataBox, rhs: DatagramMetadataBox) -> Bool { lhs.value == rhs.value }
    func hash(into hasher: inout Hasher) { hasher.combine(value) }
}

/// Per-send options: the source address and the ECN codepoint of one datagram.
///
/// ```swift
/// // A server bound to 0.0.0.0 replies from the address the client used:
/// try await udp.send(reply, to: query.remote,
///                    options: SendOptions(source: query.metadata?.destination))
/// ```
public struct SendOptions: Sendable, Hashable {
    /// The source IP of the datagram (`IP_PKTINFO` / `IPV6_PKTINFO`): one of this host's
    /// addresses, for a socket bound to a wildcard address. Only the IP is used: the datagram
    /// always leaves from the socket's port. It must be of the destination's family. `nil`: the
    /// kernel chooses, as usual.
    public var source: SocketAddress?
    /// The ECN codepoint to mark the datagram with (`IP_TOS` / `IPV6_TCLASS`; the other six bits
    /// of the byte are 0). `nil`: the socket's default.
    public var ecn: ECNCodepoint?
    /// Generic segmentation offload (GSO, `UDP_SEGMENT`): the payload is cut into datagrams of
    /// this many bytes (the last may be shorter), all sent in one system call. At most
    /// ``maximumSegments`` segments, and the whole payload within the family's datagram limit.
    /// When the kernel or the route refuses GSO (`EIO`, `EINVAL`, `ENOPROTOOPT`), AsyncUDP cuts
    /// the payload itself, sends the pieces as ordinary datagrams, remembers the refusal for the
    /// socket and counts it (``UDPHandle/gsoFallbackCount``). `nil`: one datagram.
    public var segmentSize: Int?

    /// The most segments one GSO send may carry.
    public static let maximumSegments = 64

    /// Creates send options; all default to `nil` (a plain send).
    ///
    /// - Parameters:
    ///   - source: The source IP (see ``source``).
    ///   - ecn: The ECN codepoint (see ``ecn``).
    ///   - segmentSize: The GSO segment size (see ``segmentSize``).
    public init(source: SocketAddress? = nil, ecn: ECNCodepoint? = nil, segmentSize: Int? = nil) {
        self.source = source
        self.ecn = ecn
        self.segmentSize = segmentSize
    }

    /// Whether these options add nothing to a plain send.
    package var isEmpty: Bool { source == nil && ecn == nil && segmentSize == nil }

    /// Checks the options against a datagram's destination family.
    ///
    /// - Throws: ``UVError/addressFamilyNotSupported`` for a source of another family than the
    ///   destination; ``UVError/invalidArgument`` for a multicast or wildcard source.
    func validate(destinationFamily: AddressFamily, size: Int) throws(UVError) {
        if let segmentSize {
            guard (1...destinationFamily.maximumPayloadSize).contains(segmentSize) else {
                throw UVError.invalidArgument.with(context: "GSO segment size must be 1...\(destinationFamily.maximumPayloadSize), not \(segmentSize)")
            }
            let segments = (size + segmentSize - 1) / segmentSize
            guard segments <= Self.maximumSegments else {
                throw UVError.invalidArgument.with(
                    context: "GSO: \(size) bytes in segments of \(segmentSize) make \(segments) segments; at most \(Self.maximumSegments)")
            }
        }
        guard let source else { return }
        guard source.family == destinationFamily else {
            throw UVError.addressFamilyNotSupported.with(
                context: "source \(source.ip) is \(source.family) but the destination is \(destinationFamily)")
        }
        if source.isMulticast {
            throw UVError.invalidArgument.with(context: "source \(source.ip) is a multicast address")
        }
    }

    /// Control bytes a send needs at most (checked against ``IOScratch/controlSize``).
    static let controlCapacity = 96

    /// Writes these options' control messages for a datagram to a `family` destination at
    /// `buffer` (``controlCapacity`` bytes, aligned); returns their length (0 for none).
    func writeControl(to buffer: UnsafeMutableRawPointer, destination: SocketAddress?, family: AddressFamily) -> Int {
        let tc: Int32 = ecn.map { Int32($0.rawValue) } ?? -1
        // The kernel sends to an IPv4-mapped address as IPv4, reading only IPv4-level options.
        let tosFamily = destination?.isIPv4Mapped == true ? AF_INET : family.rawValue
        let segment = Int32(segmentSize ?? 0)
        guard let source else {
            return cuv_build_send_cmsgs(buffer, Self.controlCapacity, family.rawValue, nil, tc, tosFamily, segment)
        }
        return withUnsafeTemporaryAllocation(byteCount: 16, alignment: 8) { raw in
            switch source.storage {
            case .v4(let address, _):
                raw.storeBytes(of: address.bigEndian, as: UInt32.self)
            case .v6(let high, let low, _, _, _):
                raw.storeBytes(of: high, toByteOffset: 0, as: UInt64.self)
                raw.storeBytes(of: low, toByteOffset: 8, as: UInt64.self)
            }
            return cuv_build_send_cmsgs(buffer, Self.controlCapacity, family.rawValue,
                                        raw.baseAddress!.assumingMemoryBound(to: UInt8.self), tc, tosFamily, segment)
        }
    }
}

extension SocketAddress {
    /// Whether this is an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
    public var isIPv4Mapped: Bool {
        guard case .v6(let high, let low, _, _, _) = storage else { return false }
        // The halves hold the bytes in wire order: 0...0 ffff a.b.c.d.
        return high == 0 && UInt32(truncatingIfNeeded: low.bigEndian >> 32) == 0x0000_FFFF
    }

    /// `::ffff:a.b.c.d` for IPv4 address `address` (host order).
    static func ipv4Mapped(_ address: UInt32, port: UInt16) -> SocketAddress {
        let low = (UInt64(0xFFFF) << 32 | UInt64(address)).bigEndian
        return SocketAddress(storage: .v6(high: 0, low: low, port: port, flowInfo: 0, scopeID: 0))
    }
}
