internal import CLibUV
internal import Glibc
import Synchronization
import UVCore

/// Lets tasks that are not on the loop send a datagram with `sendto` on their own thread, instead
/// of hopping to the loop thread and back (two thread hops, about 10-30 µs, per datagram).
///
/// Safety rests on two atomics:
/// - `state` counts direct sends in flight and carries a `closed` bit. `close()` (loop thread,
///   before libuv closes the fd) sets the bit and waits for in-flight sends to finish, so no
///   thread ever calls `sendto` on a closed (and possibly reused) descriptor.
/// - `queued` counts sends waiting in libuv's queue. A direct send happens only when it is zero,
///   so it never overtakes a datagram libuv holds.
///
/// Anything unusual (the kernel's buffer is full, a transient ICMP error surfaced, the socket is
/// closing) falls back to the loop, which has the full logic.
final class DirectSender: Sendable {
    private static let closedBit = 1 << 62

    private let state = Atomic<Int>(0)
    private let queued = Atomic<Int>(0)
    let fd: Int32
    let peer: SocketAddress?
    let family: AddressFamily
    let ipv6Only: Bool
    let sent = Atomic<Int>(0)
    let bytesSent = Atomic<Int>(0)
    let errors = Atomic<Int>(0)
    private let fastSends = Atomic<Int>(0)
    /// A fast send completes without suspending; a caller sending in a tight loop must still give
    /// other tasks (and, on the loop thread, libuv's I/O) a turn. Every this-many fast sends, the
    /// caller yields.
    static let yieldInterval = 32

    init(fd: Int32, peer: SocketAddress?, family: AddressFamily, ipv6Only: Bool) {
        self.fd = fd
        self.peer = peer
        self.family = family
        self.ipv6Only = ipv6Only
    }

    enum Outcome {
        case sent
        /// Not sent: let the loop handle it.
        case fallBack
    }

    /// Sends now on the calling thread, or reports that the loop must handle it. Throws the
    /// datagram's own error (a failed check, or a kernel refusal such as EACCES).
    func send(_ bytes: [UInt8], to address: SocketAddress?) throws -> Outcome {
        guard queued.load(ordering: .acquiring) == 0 else { return .fallBack }
        let previous = state.wrappingAdd(1, ordering: .acquiring).oldValue
        defer { state.wrappingSubtract(1, ordering: .releasing) }
        guard previous & Self.closedBit == 0 else { return .fallBack }
        do {
            try UDPHandle.validateSend(to: address, size: bytes.count, peer: peer, socketFamily: family, ipv6Only: ipv6Only)
        } catch {
            errors.add(1, ordering: .relaxed)
            throw error
        }
        let result: Int = bytes.withUnsafeBytes { buffer in
            if let address {
                return address.withSockAddr { sa, length in sendto(fd, buffer.baseAddress, buffer.count, 0, sa, length) }
            }
            return Glibc.send(fd, buffer.baseAddress, buffer.count, 0)
        }
        if result >= 0 {
            sent.add(1, ordering: .relaxed)
            bytesSent.add(bytes.count, ordering: .relaxed)
            return .sent
        }
        let error = UVError(code: -errno)
        if error == .wouldBlock || error.isTransient || errno == EINTR { return .fallBack }
        errors.add(1, ordering: .relaxed)
        throw error.with(context: "send")
    }

    /// Loop thread, before libuv closes the descriptor: refuse new direct sends and wait for the
    /// ones in flight (each is one non-blocking system call).
    func close() {
        state.bitwiseOr(Self.closedBit, ordering: .acquiringAndReleasing)
        while state.load(ordering: .acquiring) & ~Self.closedBit != 0 {
            sched_yield()
        }
    }

    /// Counts a send that completed without suspending; true when the caller should yield.
    func shouldYield() -> Bool {
        fastSends.wrappingAdd(1, ordering: .relaxed).newValue % Self.yieldInterval == 0
    }

    /// Whether close has begun (any thread).
    var isClosed: Bool { state.load(ordering: .acquiring) & Self.closedBit != 0 }

    /// Loop thread: a send is about to join libuv's queue / has left it.
    func willQueue() { queued.add(1, ordering: .releasing) }
    func didDequeue() { queued.subtract(1, ordering: .releasing) }
}
