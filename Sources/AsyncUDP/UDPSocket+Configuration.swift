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
        /// ``Datagram/isTruncated`` set).
        public var maximumDatagramSize: Int
        /// If set, the socket's kernel receive buffer (`SO_RCVBUF`; Linux doubles it).
        public var receiveBufferSize: Int?
        /// If set, the socket's kernel send buffer (`SO_SNDBUF`; Linux doubles it).
        public var sendBufferSize: Int?
        /// Read with `recvmmsg`, up to 20 datagrams per system call, into a buffer the loop owns.
        /// Datagrams, senders and truncation are reported exactly as without it.
        public var batchedReceive: Bool

        /// Creates a configuration; every parameter has a sensible default.
        public init(receiveQueueLimit: Int = 1024,
                    overflowPolicy: OverflowPolicy = .dropNewest,
                    maximumDatagramSize: Int = 65_536,
                    receiveBufferSize: Int? = nil,
                    sendBufferSize: Int? = nil,
                    batchedReceive: Bool = false) {
            self.receiveQueueLimit = receiveQueueLimit
            self.overflowPolicy = overflowPolicy
            self.maximumDatagramSize = maximumDatagramSize
            self.receiveBufferSize = receiveBufferSize
            self.sendBufferSize = sendBufferSize
            self.batchedReceive = batchedReceive
        }

        /// Throws ``UVError/invalidArgument`` for a setting out of range.
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

    /// Counters for one socket. Received = delivered + dropped by policy + queued.
    public struct Statistics: Sendable, Hashable, CustomStringConvertible {
        /// Datagrams the library read from the socket.
        public var datagramsReceived = 0
        /// Payload bytes the library read from the socket.
        public var bytesReceived = 0
        /// Datagrams handed to the consumer of ``UDPSocket/datagrams``.
        public var datagramsDelivered = 0
        /// Datagrams waiting for the consumer now.
        public var datagramsQueued = 0
        /// The most datagrams that ever waited at once (never more than the queue limit).
        public var peakQueued = 0
        /// Datagrams dropped by the overflow policy (or read after the stream ended).
        public var droppedByPolicy = 0
        /// How many times the `.pauseReading` policy stopped reading at its high watermark.
        public var readingPauses = 0
        /// Datagrams that arrived truncated.
        public var truncated = 0
        /// Transient errors seen: ICMP-driven `ECONNREFUSED`, `EHOSTUNREACH`, `ENETUNREACH`, and
        /// `ENOBUFS`, from receives and sends.
        public var transientErrors = 0
        /// Datagrams the kernel took from ``UDPSocket/send(_:to:)``.
        public var datagramsSent = 0
        /// Payload bytes the kernel took.
        public var bytesSent = 0
        /// Sends refused on the loop: by the kernel, by libuv, or by a check such as the size limit
        /// (an empty buffer list, a closed socket and cancellation are not counted).
        public var sendErrors = 0
        /// The kernel's own count of datagrams it dropped for this socket because its receive
        /// buffer was full (`SO_MEMINFO`); `nil` where the kernel does not report it. After
        /// ``UDPSocket/close()`` it keeps the count read just before the socket closed.
        public var kernelDrops: Int?

        /// Creates zeroed statistics.
        public init() {}

        public var description: String {
            "received \(datagramsReceived) (\(bytesReceived) B), delivered \(datagramsDelivered), queued \(datagramsQueued) (peak \(peakQueued)), dropped \(droppedByPolicy), reading pauses \(readingPauses), truncated \(truncated), transient errors \(transientErrors), sent \(datagramsSent) (\(bytesSent) B), send errors \(sendErrors), kernel drops \(kernelDrops.map(String.init) ?? "n/a")"
        }
    }
}

/// Errors that belong to the async layer itself.
public struct UDPSocketError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A stable identifier for the kind of error.
    public struct Code: Hashable, Sendable {
        let rawValue: String
        /// Two tasks iterated ``UDPSocket/datagrams`` at the same time; it has one consumer.
        public static let concurrentIteration = Code(rawValue: "concurrentIteration")
    }

    /// The kind of error.
    public let code: Code
    /// What happened.
    public let message: String

    /// Two tasks iterated ``UDPSocket/datagrams`` at the same time.
    public static let concurrentIteration = UDPSocketError(
        code: .concurrentIteration,
        message: "datagrams was iterated by two tasks at once; it supports one consumer at a time")

    public var description: String { message }
    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }
}
