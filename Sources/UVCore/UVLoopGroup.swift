internal import Glibc
import Synchronization

/// Several ``UVLoop``s, one thread each, to spread sockets across cores.
///
/// A UDP socket lives on one loop, so one socket uses at most one core for its libuv work. To
/// receive on one port with several cores, open one socket per loop on the same address with
/// ``UDPFlags/reusePort``; the kernel spreads incoming flows across them:
///
/// ```swift
/// let group = UVLoopGroup(count: 2)
/// var sockets: [UDPSocket] = []
/// for loop in group.loops {
///     sockets.append(try await UDPSocket(bindingTo: SocketAddress("0.0.0.0:9000"), loop: loop, flags: .reusePort))
/// }
/// ```
///
/// The kernel picks a socket by hashing each datagram's addresses and ports, so one sender's
/// flow always reaches the same socket: the spread needs many flows.
public final class UVLoopGroup: Sendable {
    /// The loops, each with a thread of its own.
    public let loops: [UVLoop]
    private let cursor = Atomic<Int>(0)

    /// Starts `count` loops.
    ///
    /// - Parameters:
    ///   - count: How many loops; default, one per online core. At least 1.
    ///   - name: A prefix for the loops' names.
    public init(count: Int = UVLoopGroup.coreCount, name: String = "AsyncUDP.group") {
        loops = (0..<max(1, count)).map { UVLoop(name: "\(name).\($0)") }
    }

    /// The number of online cores.
    public static var coreCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// The next loop, round robin. Safe to call from any thread.
    public func next() -> UVLoop {
        loops[cursor.wrappingAdd(1, ordering: .relaxed).oldValue % loops.count]
    }

    /// Shuts every loop down (see ``UVLoop/shutdown()``).
    public func shutdown() async {
        await withTaskGroup(of: Void.self) { group in
            for loop in loops { group.addTask { await loop.shutdown() } }
        }
    }
}
