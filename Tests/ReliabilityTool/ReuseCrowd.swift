import ArgumentParser
import AsyncUDP
import Glibc

/// 2,500 callback-layer handles bound to one port with REUSEADDR, each receiving with a 1-byte
/// buffer and a tiny kernel buffer, all closed from inside a receive callback while sends are
/// queued and datagrams wait to be read. Prints how many send and close callbacks fired.
struct ReuseCrowd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reuse-crowd",
        abstract: "Close thousands of REUSEADDR handles mid-traffic; count send and close callbacks.")

    @Option var sockets = 2_500
    @Option var sendsEach = 3

    func run() async throws {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        limit.rlim_cur = limit.rlim_max
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        let result = try await Self.run(sockets: sockets, sendsEach: sendsEach)
        emit("RESULT closes=\(result.closes) sendsQueued=\(result.sendsQueued) sendCallbacks=\(result.sendCallbacks) "
             + "duplicateCallbacks=\(result.duplicateCallbacks) canceled=\(result.canceled) openHandlesAfter=\(result.openHandlesAfter)")
    }

    struct Result: Sendable {
        var closes = 0
        var sendsQueued = 0
        var sendCallbacks = 0
        var duplicateCallbacks = 0
        var canceled = 0
        var openHandlesAfter = -1
    }

    static func run(sockets count: Int, sendsEach: Int) async throws -> Result {
        let loop = UVLoop(name: "reuse-crowd")
        let result = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Result, any Error>) in
            loop.execute {
                do {
                    try build(loop: loop, count: count, sendsEach: sendsEach) { continuation.resume(returning: $0) }
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
        var final = result
        final.openHandlesAfter = try await loop.submit { loop.openHandleCount }
        await loop.shutdown()
        return final
    }

    /// Loop thread: binds the crowd, starts traffic, and closes everything from the first
    /// receive callback, while sends are queued and datagrams wait to be read.
    static func build(loop: UVLoop, count: Int, sendsEach: Int, done: @escaping (Result) -> Void) throws {
        var result = Result()
        var fired: [Int] = []
        var handles: [UDPHandle] = []
        let first = try UDPHandle(loop: loop)
        try first.bind(SocketAddress("127.0.0.1:0"), flags: .reuseAddress)
        let port = try first.localAddress()
        handles.append(first)
        for _ in 1..<count {
            let handle = try UDPHandle(loop: loop)
            try handle.bind(port, flags: .reuseAddress)
            handles.append(handle)
        }
        let sender = try UDPHandle(loop: loop)
        try sender.bind(SocketAddress("127.0.0.1:0"))
        func queueSend(_ handle: UDPHandle) {
            let id = fired.count
            fired.append(0)
            do {
                try handle.send([UInt8](repeating: 1, count: 64), to: port) { _, error in
                    fired[id] += 1
                    if fired[id] == 1 { result.sendCallbacks += 1 } else { result.duplicateCallbacks += 1 }
                    if error == .canceled { result.canceled += 1 }
                }
                result.sendsQueued += 1
            } catch {
                fired.removeLast()
            }
        }
        func closeEverything() {
            for handle in handles + [sender] {
                handle.close { _ in
                    result.closes += 1
                    if result.closes == count + 1 { done(result) }
                }
            }
        }
        var closing = false
        for handle in handles {
            try handle.setMaximumDatagramSize(1)
            try handle.setReceiveBufferSize(1)  // the kernel rounds up to its minimum
            try handle.startReceiving { _, _ in
                guard !closing else { return }
                closing = true
                // Inside a receive callback: more sends queued everywhere, then every close.
                for other in handles { for _ in 0..<sendsEach { queueSend(other) } }
                for _ in 0..<200 { queueSend(sender) }
                closeEverything()
            }
        }
        for _ in 0..<200 { queueSend(sender) }
    }
}
