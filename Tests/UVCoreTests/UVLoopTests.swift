import Glibc
import Testing
import TestSupport
@testable import UVCore

/// An actor whose executor is a loop, as UDPSocket's is.
actor LoopBound {
    let loop: UVLoop
    var touched = 0
    init(loop: UVLoop) { self.loop = loop }
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }
    func touch() { touched += 1 }
}

/// Thread-safe counter for tests.
final class Counter: Sendable {
    private let box = LockedBox(0)
    func increment() { box.withLock { $0 += 1 } }
    var count: Int { box.withLock { $0 } }
}

@Suite("UVLoop", .timeLimit(.minutes(1)))
struct UVLoopTests {
    @Test("execute runs on the loop thread, in order")
    func executeOnLoop() async throws {
        let loop = UVLoop(name: "execute-test")
        #expect(!loop.inLoop)
        let value = try await loop.submit { () -> Int in
            #expect(loop.inLoop)
            return 1
        }
        #expect(value == 1)
        let counter = Counter()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            for index in 0..<1000 {
                loop.execute {
                    precondition(loop.inLoop)
                    counter.increment()
                    if index == 999 { continuation.resume() }
                }
            }
        }
        #expect(counter.count == 1000)
        await loop.shutdown()
    }

    @Test("an actor on the loop runs there; assumeIsolated works inside a libuv callback")
    func actorAndAssumeIsolated() async throws {
        let loop = UVLoop(name: "actor-test")
        let actor = LoopBound(loop: loop)
        await actor.touch()
        let result: Int = try await withCheckedThrowingContinuation { continuation in
            loop.execute {
                do {
                    let receiver = try UDPHandle(loop: loop)
                    try receiver.bind(SocketAddress("127.0.0.1:0"))
                    try receiver.startReceiving { handle, _ in
                        // We are inside libuv's receive callback, not a Swift job.
                        let touched = actor.assumeIsolated { actor in
                            actor.touch()
                            return actor.touched
                        }
                        handle.close()
                        continuation.resume(returning: touched)
                    }
                    let sender = try UDPHandle(loop: loop)
                    try sender.send([1], to: receiver.localAddress()) { handle, _ in handle.close() }
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
        #expect(result == 2)
        await loop.shutdown()
    }

    @Test("a task with the loop as executor preference runs on the loop thread")
    func taskExecutorPreference() async throws {
        let loop = UVLoop(name: "preference-test")
        let onLoop = await withTaskExecutorPreference(loop) { () async -> Bool in
            await Task.yield()
            return loop.inLoop
        }
        #expect(onLoop)
        await loop.shutdown()
    }

    @Test("shutdown() with handles open returns, closes them and completes their sends; it is idempotent")
    func shutdownWithOpenHandles() async throws {
        let loop = UVLoop(name: "shutdown-test")
        let outcomes = LockedList()
        try await loop.submit {
            let receiver = try UDPHandle(loop: loop)
            try receiver.bind(SocketAddress("127.0.0.1:0"))
            try receiver.startReceiving { _, _ in }
            receiver.addCloseObserver { outcomes.append("receiver closed") }
            let sender = try UDPHandle(loop: loop)
            for _ in 0..<4 {
                try sender.send([1, 2, 3], to: receiver.localAddress()) { _, error in
                    outcomes.append(error.map { $0.name } ?? "sent")
                }
            }
            sender.addCloseObserver { outcomes.append("sender closed") }
            #expect(loop.openHandleCount == 2)
        }
        async let first: Void = loop.shutdown()
        async let second: Void = loop.shutdown()
        _ = await (first, second)
        await loop.shutdown()
        #expect(loop.isShutDown)
        let seen = outcomes.items
        #expect(seen.contains("receiver closed"))
        #expect(seen.contains("sender closed"))
        // Each send finished exactly once: sent before the shutdown job ran, or canceled by it.
        #expect(seen.filter { $0 == "ECANCELED" || $0 == "sent" }.count == 4)
        #expect(seen.count == 6)
    }

    @Test("work submitted after shutdown still runs (with a diagnostic), and new handles are refused")
    func workAfterShutdown() async throws {
        let loop = UVLoop(name: "late-test")
        await loop.shutdown()
        let value = try await loop.submit { () -> Int in
            #expect(loop.inLoop)
            return 42
        }
        #expect(value == 42)
        await #expect(throws: ClosedHandleError.self) {
            try await loop.submit { _ = try UDPHandle(loop: loop) }
        }
        let actor = LoopBound(loop: loop)
        await actor.touch()
        #expect(await actor.touched == 1)
    }
}

final class LockedList: Sendable {
    private let box = LockedBox([String]())
    func append(_ item: String) { box.withLock { $0.append(item) } }
    var items: [String] { box.withLock { $0 } }
}

@Suite("UVLoopGroup and SO_REUSEPORT", .timeLimit(.minutes(1)))
struct UVLoopGroupTests {
    @Test("one socket per loop on one port with .reusePort; the kernel spreads flows across them")
    func reusePort() async throws {
        let group = UVLoopGroup(count: 2, name: "reuseport-test")
        #expect(group.loops.count == 2)
        #expect(group.next() !== group.next())
        let (arrivals, arrived) = AsyncStream<Int>.makeStream()
        var port = 0
        for (index, loop) in group.loops.enumerated() {
            let bound = port
            port = try await loop.submit { () -> Int in
                let handle = try UDPHandle(loop: loop)
                try handle.bind(SocketAddress(ip: "127.0.0.1", port: bound), flags: .reusePort)
                var value: Int32 = 0
                var length = socklen_t(4)
                getsockopt(try handle.fileDescriptor(), SOL_SOCKET, SO_REUSEPORT, &value, &length)
                #expect(value == 1)
                try handle.startReceiving { _, result in if case .success = result { arrived.yield(index) } }
                return try handle.localAddress().port
            }
        }
        // A socket without the flag cannot join them.
        let sharedPort = port
        try await group.loops[0].submit {
            let intruder = try UDPHandle(loop: group.loops[0])
            defer { intruder.close() }
            #expect(throws: UVError.addressInUse) { try intruder.bind(SocketAddress(ip: "127.0.0.1", port: sharedPort)) }
        }
        // 32 flows (32 source ports): every datagram arrives, and both sockets get some.
        let target = try SocketAddress(ip: "127.0.0.1", port: port)
        try await testLoop.submit {
            for _ in 0..<32 {
                let client = try UDPHandle(loop: testLoop)
                try client.bind(SocketAddress("127.0.0.1:0"))
                try client.send([1], to: target) { handle, _ in handle.close() }
            }
        }
        var perSocket = [0, 0]
        var iterator = arrivals.makeAsyncIterator()
        for _ in 0..<32 { perSocket[try #require(await iterator.next())] += 1 }
        #expect(perSocket[0] > 0 && perSocket[1] > 0, "spread: \(perSocket)")
        await group.shutdown()
        #expect(group.loops.allSatisfy { $0.isShutDown })
    }
}
