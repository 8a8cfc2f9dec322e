import UVCore

extension UDPSocket {
    /// What to do with a datagram that arrives while the receive queue is full.
    public enum OverflowPolicy: Sendable, Hashable {
        /// Keep the queue as it is and drop the datagram that just arrived.
        case dropNewest
        /// Drop the oldest queued datagram to make room for the new one.
        case dropOldest
        /// Stop reading from the socket once `highWatermark` datagrams are queued, and start
        /// again once the consumer has brought the queue down to `lowWatermark`. While reading is
        /// paused the kernel's socket buffer fills and the kernel drops what does not fit (see
        /// ``Statistics/kernelDrops``).
        case pauseReading(highWatermark: Int, lowWatermark: Int)
    }

    /// How a socket receives: queue bound, overflow policy and buffer sizes.
    public struct Configuration: Sendable, Hashable {
        /// The most datagrams that wait for the consumer of ``UDPSocket/datagrams``. Default 1024.
        ///
        /// Memory stays bounded whatever a sender does: at most this many datagrams wait, plus
        /// one batch (at most 128) the consumer is iterating, each at most
        /// ``maximumDatagramSize`` bytes.
        public var receiveQueueLimit: Int
        /// What happens to datagrams that arrive while the queue is full. Default `.dropNewest`.
        public var overflowPolicy: OverflowPolicy
        /// The size of the buffer each datagram is read into, 1...65536. Default 65536, which
        /// holds any UDP datagram; a smaller value truncates longer datagrams (they arrive with
        /// `Datagram.isTruncated` set).
        public var maximumDatagramSize: Int
        /// If set, the socket's kernel receive buffer (`SO_RCVBUF`; Linux doubles it).
        public var receiveBufferSize: Int?
        /// If set, the socket's kernel send buffer (`SO_SNDBUF`; Linux doubles it).
        public var sendBufferSize: Int?
        /// The metadata reported with each received datagram (`Datagram.metadata`): packet
        /// info (destination address and interface), ECN codepoint, kernel receive time. Default
        /// `[]`: none, and no per-datagram cost. See `ReceiveMetadataOptions` for what each
        /// costs.
        public var receiveMetadata: ReceiveMetadataOptions = []
        /// Earlier switch for batched reads: every socket now reads with `recvmmsg`, up to 32
        /// datagrams per system call, so this has no effect.
        @available(*, deprecated, message: "every socket reads with recvmmsg now; this has no effect")
        public var batchedReceive: Bool {
            get { true }
            set {}
        }

        /// Creates a configuration; every parameter has a sensible default.
        public init(receiveQueueLimit: Int = 1024,
                    overflowPolicy: OverflowPolicy = .dropNewest,
                    maximumDatagramSize: Int = 65_536,
                    receiveBufferSize: Int? = nil,
                    sendBufferSize: Int? = nil) {
            self.receiveQueueLimit = receiveQueueLimit
            self.overflowPolicy = overflowPolicy
            self.maximumDatagramSize = maximumDatagramSize
            self.receiveBufferSize = receiveBufferSize
            self.sendBufferSize = sendBufferSize
        }

        /// Creates a configuration that reports `receiveMetadata` with each datagram; the other
        /// parameters as ``init(receiveQueueLimit:overflowPolicy:maximumDatagramSize:receiveBufferSize:sendBufferSize:)``.
        public init(receiveQueueLimit: Int = 1024,
                    overflowPolicy: OverflowPolicy = .dropNewest,
                    maximumDatagramSize: Int = 65_536,
                    receiveBufferSize: Int? = nil,
                    sendBufferSize: Int? = nil,
                    receiveMetadata: ReceiveMetadataOptions) {
            self.init(receiveQueueLimit: receiveQueueLimit, overflowPolicy: overflowPolicy,
                      maximumDatagramSize: maximumDatagramSize, receiveBufferSize: receiveBufferSize,
                      sendBufferSize: sendBufferSize)
            self.receiveMetadata = receiveMetadata
        }

        /// Creates a configuration; `batchedReceive` is ignored (every socket reads with
        /// `recvmmsg` now).
        @available(*, deprecated, message: "every socket reads with recvmmsg now; drop batchedReceive")
        public init(receiveQueueLimit: Int = 1024,
                    overflowPolicy: OverflowPolicy = .dropNewest,
                    maximumDatagramSize: Int = 65_536,
                    receiveBufferSize: Int? = nil,
                    sendBufferSize: Int? = nil,
                    batchedReceive: Bool) {
            self.init(receiveQueueLimit: receiveQueueLimit, overflowPolicy: overflowPolicy,
                      maximumDatagramSize: maximumDatagramSize, receiveBufferSize: receiveBufferSize,
                      sendBufferSize: sendBufferSize)
        }

        /// Throws `UVError.invalidArgument` for a setting out of range.
        func validate() throws {
            guard receiveQueueLimit >= 1 else {
                throw UVError.invalidArgument.with(context: "receiveQueueLimit must be at least 1, not \(receiveQueueLimit)")
            }
            if case .pauseReading(let high, let low) = overflowPolicy {
                guard 0 <= low, low < high, high <= receiveQueueLimit else {
                    throw UVError.invalidArgument.with(context: "watermarks must satisfy 0 <= low < high <= receiveQueueLimit (\(low), \(high), \(receiveQueueLimit))")
                }
            }
            guard (1...65_536).contains(maximumDatagramSize) else {
                throw UVError.invalidArgument.with(context: "maximumDatagramSize must be 1...65536, not \(maximumDatagramSize)")
            }
        }
    }

    /// Counters for one socket: `datagramsReceived = datagramsDelivered +
    /// datagramsDroppedByPolicy + datagramsQueued` holds exactly at every moment.
    ///
    /// Names read as one family: `datagrams...` count datagrams, `bytes...` count payload
    /// bytes, `...Count` count events.
    public struct Statistics: Sendable, Hashable, CustomStringConvertible {
        /// Datagrams the library read from the socket.
        public var datagramsReceived = 0
        /// Datagrams as their senders sent them: ``datagramsReceived``, except that a GRO buffer
        /// (`ReceiveMetadataOptions.gro`) counts as the datagrams it carries
        /// (`Datagram.segmentCount`).
        public var wireDatagramsReceived = 0
        /// Payload bytes the library read from the socket.
        public var bytesReceived = 0
        /// Datagrams handed to user code (by a receive call or an iteration of
        /// ``UDPSocket/datagrams``). A datagram an iteration took but had not handed out when it
        /// ended goes back to the queue and is not counted.
        public var datagramsDelivered = 0
        /// Datagrams waiting for a consumer now (in the queue, or taken by an iteration of
        /// ``UDPSocket/datagrams`` and not yet handed out).
        public var datagramsQueued = 0
        /// The most datagrams that ever waited in the queue at once.
        public var peakDatagramsQueued = 0
        /// Datagrams dropped by the overflow policy.
        public var datagramsDroppedByPolicy = 0
        /// Datagrams that arrived truncated (longer than ``Configuration/maximumDatagramSize``).
        public var datagramsTruncated = 0
        /// The kernel's own count of datagrams it dropped for this socket because its receive
        /// buffer was full (`SO_MEMINFO`); `nil` where the kernel does not report it. After
        /// ``UDPSocket/close()`` it keeps the count read just before the socket closed.
        public var datagramsDroppedByKernel: Int?
        /// How many times the `.pauseReading` policy stopped reading at its high watermark.
        public var readingPauses = 0
        /// Transient errors seen, each counted once: ICMP-driven `ECONNREFUSED`, `EHOSTUNREACH`,
        /// `ENETUNREACH` (left by an earlier datagram), and `ENOBUFS`, from receives and sends.
        /// Each is also published on ``UDPSocket/transientErrors``.
        public var transientErrorCount = 0
        /// Datagrams the kernel took; a GSO send (`SendOptions.segmentSize`) counts as the
        /// datagrams it makes, whether the kernel or the library cut it.
        public var datagramsSent = 0
        /// Payload bytes the kernel took.
        public var bytesSent = 0
        /// Sends that failed with their own error: refused by a check (too large, wrong family,
        /// port 0) or by the kernel. A closed socket and cancellation are not counted.
        public var sendErrorCount = 0
        /// GSO sends (`SendOptions.segmentSize`) that AsyncUDP cut into datagrams itself
        /// because the kernel or the route refused GSO on this socket; after the first refusal,
        /// every GSO send is.
        public var gsoFallbackCount = 0

        /// Creates zeroed statistics.
        public init() {}

        public var description: String {
            "received \(datagramsReceived) (\(wireDatagramsReceived) on the wire, \(bytesReceived) B), delivered \(datagramsDelivered), queued \(datagramsQueued) (peak \(peakDatagramsQueued)), dropped by policy \(datagramsDroppedByPolicy), reading pauses \(readingPauses), truncated \(datagramsTruncated), transient errors \(transientErrorCount), sent \(datagramsSent) (\(bytesSent) B), send errors \(sendErrorCount), GSO fallbacks \(gsoFallbackCount), dropped by kernel \(datagramsDroppedByKernel.map(String.init) ?? "n/a")"
        }

        // MARK: Earlier names

        /// Renamed ``peakDatagramsQueued``.
        @available(*, deprecated, renamed: "peakDatagramsQueued")
        public var peakQueued: Int { get { peakDatagramsQueued } set { peakDatagramsQueued = newValue } }
        /// Renamed ``datagramsDroppedByPolicy``.
        @available(*, deprecated, renamed: "datagramsDroppedByPolicy")
        public var droppedByPolicy: Int { get { datagramsDroppedByPolicy } set { datagramsDroppedByPolicy = newValue } }
        /// Renamed ``datagramsTruncated``.
        @available(*, deprecated, renamed: "datagramsTruncated")
        public var truncated: Int { get { datagramsTruncated } set { datagramsTruncated = newValue } }
        /// Renamed ``datagramsDroppedByKernel``.
        @available(*, deprecated, renamed: "datagramsDroppedByKernel")
        public var kernelDrops: Int? { get { datagramsDroppedByKernel } set { datagramsDroppedByKernel = newValue } }
        /// Renamed ``transientErrorCount``.
        @available(*, deprecated, renamed: "transientErrorCount")
        public var transientErrors: Int { get { transientErrorCount } set { transientErrorCount = newValue } }
        /// Renamed ``sendErrorCount``.
        @available(*, deprecated, renamed: "sendErrorCount")
        public var sendErrors: Int { get { sendErrorCount } set { sendErrorCount = newValue } }
    }
}

/// Errors that belong to the async layer itself.
public struct UDPSocketError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A stable identifier for the kind of error.
    public struct Code: Hashable, Sendable {
        let rawValue: String
        /// No longer thrown: ``UDPSocket/datagrams`` serves any number of consumers.
        @available(*, deprecated, message: "datagrams serves any number of consumers; this is never thrown")
        public static let concurrentIteration = Code(rawValue: "concurrentIteration")
    }

    /// The kind of error.
    public let code: Code
    /// What happened.
    public let message: String

    /// No longer thrown: ``UDPSocket/datagrams`` serves any number of consumers.
    @available(*, deprecated, message: "datagrams serves any number of consumers; this is never thrown")
    public static let concurrentIteration = UDPSocketError(
        code: Code(rawValue: "concurrentIteration"),
        message: "datagrams was iterated by two tasks at once; it supports one consumer at a time")

    public var description: String { message }
    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
}
