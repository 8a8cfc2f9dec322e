internal import CUVShims
internal import Glibc
import Synchronization

// Receive metadata: the socket options that make the kernel report it, and its decoding on
// both read paths (the loop's and a consumer's).
extension UDPHandle {
    /// Chooses which metadata to report with each received datagram (``Datagram/metadata``).
    ///
    /// Turns the matching socket options on (and the others off): `IP_PKTINFO` /
    /// `IPV6_RECVPKTINFO` for ``ReceiveMetadataOptions/packetInfo``, `IP_RECVTOS` /
    /// `IPV6_RECVTCLASS` for ``ReceiveMetadataOptions/ecn``, `SO_TIMESTAMPNS` for
    /// ``ReceiveMetadataOptions/timestamp``, `UDP_GRO` for ``ReceiveMetadataOptions/gro``. On an IPv6 socket that is not IPv6-only, the IPv4
    /// options are set too, so its IPv4 traffic reports the same. Datagrams already read keep
    /// what they had. With `[]` (the default) receiving does no per-datagram work for metadata.
    ///
    /// - Parameter options: The metadata wanted.
    /// - Throws: ``UVError/badFileDescriptor`` if the handle has no socket yet (bind it first, or
    ///   create it with a family); the kernel's error from `setsockopt`; ``ClosedHandleError``.
    public func setReceiveMetadata(_ options: ReceiveMetadataOptions) throws {
        try checkOpen("setReceiveMetadata")
        let fd = try requireDescriptor("setReceiveMetadata")
        guard let sendPath, let family else {
            throw UVError.badFileDescriptor.with(context: "setReceiveMetadata: the handle has no socket yet")
        }
        let status = cuv_set_receive_metadata(fd, family == .ipv6 ? 1 : 0, isIPv6Only ? 1 : 0,
                                              Int32(truncatingIfNeeded: options.rawValue & ReceiveMetadataOptions.known.rawValue))
        if status < 0 { throw Syscall.error(-status, "setReceiveMetadata") }
        sendPath.setReceiveMetadata(options, ipv6: family == .ipv6)
    }

    /// The metadata reported with each received datagram; see ``setReceiveMetadata(_:)``.
    public var receiveMetadata: ReceiveMetadataOptions {
        loop.preconditionInLoop("UDPHandle.receiveMetadata")
        return sendPath?.receiveMetadataOptions ?? []
    }
}

extension SendPath {
    private static let optionMask = 0xFF
    private static let portKnownBit = 1 << 8
    private static let ipv6Bit = 1 << 9

    /// The metadata options in effect (any thread).
    @inline(__always)
    var receiveMetadataOptions: ReceiveMetadataOptions {
        ReceiveMetadataOptions(rawValue: receiveMetadataWord.load(ordering: .relaxed) & Self.optionMask)
    }

    /// Records the options and the socket's family; the local port is looked up again at the
    /// next read.
    func setReceiveMetadata(_ options: ReceiveMetadataOptions, ipv6: Bool) {
        receiveMetadataWord.store(options.rawValue & ReceiveMetadataOptions.known.rawValue | (ipv6 ? Self.ipv6Bit : 0),
                                  ordering: .relaxed)
    }

    /// The socket's local port, for ``Datagram/Metadata/destination``: looked up once (the
    /// socket is bound by the time it receives) and kept with the options.
    func localPortForMetadata() -> UInt16 {
        let word = receiveMetadataWord.load(ordering: .relaxed)
        if word & Self.portKnownBit != 0 { return UInt16(truncatingIfNeeded: word >> 16) }
        guard let port = (try? Syscall.localAddress(fd))?.address?.port, port != 0 else { return 0 }
        _ = receiveMetadataWord.compareExchange(expected: word, desired: word | Self.portKnownBit | (port << 16),
                                                successOrdering: .relaxed, failureOrdering: .relaxed)
        return UInt16(truncatingIfNeeded: port)
    }

    /// Decodes the metadata of received message `message`.
    @inline(__always)
    func metadata(of message: UnsafeMutablePointer<cuv_mmsghdr>, localPort: UInt16) -> Datagram.Metadata? {
        let mapIPv4 = receiveMetadataWord.load(ordering: .relaxed) & Self.ipv6Bit != 0
        return withUnsafeMutablePointer(to: &message.pointee.msg_hdr) {
            Datagram.Metadata(parsing: $0, localPort: localPort, mapIPv4: mapIPv4)
        }
    }
}
