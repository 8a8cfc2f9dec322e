import ArgumentParser
import AsyncUDP
import Synchronization

/// Opens and closes many sockets and echoes many datagrams, through every close path, so that
/// valgrind (or LeakSanitizer) can look for leaks at exit. See `make check-leaks`.
struct LeakCheck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "leak-check",
        abstract: "Open/close sockets and echo datagrams (with closes mid-send and cancelled consumers), for valgrind.")

    @Option(help: "Sockets to open and close through the async layer.")
    var sockets = 10_000

    @Option(help: "Callback-layer handles closed with sends queued in libuv.")
    var handles = 1_000

    @Option(help: "Datagrams to echo.")
    var datagrams = 100_000

    @Option(help: "Datagrams in flight during the echo.")
    var window = 64

    @Flag(help: "Leak one 48-byte block on purpose (the leak checker's control run).")
    var leakOnPurpose = false

    func run() async throws {
        if leakOnPurpose { Self.leakOneBlock() }
        let loop = UVLoop(name: "leak-check")
        var failures: [String] = []

        // 1. Sockets through every close path.
        var outcomes: [String: Int] = [:]
        var opened = 0
        while opened < sockets {
            let count = min(50, sockets - opened)
            let first = opened
            let batch = try await withThrowingTaskGroup(of: [String: Int].self) { group in
                for index in first..<(first + count) {
                    group.addTask { try await Self.exercise(socketNumber: index, loop: loop) }
                }
                var merged: [String: Int] = [:]
                for try await result in group { merged.merge(result, uniquingKeysWith: +) }
                return merged
            }
            outcomes.merge(batch, uniquingKeysWith: +)
            opened += count
        }

        progress("sockets done: \(formatCounts(outcomes))")
        // 2. Callback layer: close with sends waiting in libuv's queue (they complete ECANCELED).
        var sendCallbacks = (ok: 0, canceled: 0, other: 0)
        var done = 0
        while done < handles {
            let count = min(100, handles - done)
            let result = try await Self.closeWithQueuedSends(handles: count, loop: loop)
            sendCallbacks.ok += result.ok
            sendCallbacks.canceled += result.canceled
            sendCallbacks.other += result.other
            done += count
        }
        if sendCallbacks.ok + sendCallbacks.canceled + sendCallbacks.other != handles * 6 {
            failures.append("send callbacks \(sendCallbacks) for \(handles * 6) sends")
        }

        progress("queued-send handles done")
        // 3. Echo.
        let (echoed, lost) = try await echo(loop: loop)
        if lost > datagrams / 100 { failures.append("lost \(lost) of \(datagrams) echoes") }

        progress("echo done: \(echoed) echoed")
        // 4. Shutdown with sockets open, consumers iterating and sends in flight.
        let shutdownOutcomes = try await Self.shutdownWithSocketsOpen()

        progress("shutdown phase done")
        await loop.shutdown()
        emit("RESULT sockets=\(opened) sendOutcomes=\(formatCounts(outcomes)) handles=\(handles) "
             + "queuedSends=ok:\(sendCallbacks.ok),canceled:\(sendCallbacks.canceled),other:\(sendCallbacks.other) "
             + "echoed=\(echoed) lost=\(lost) shutdown=\(formatCounts(shutdownOutcomes)) "
             + "failures=\(failures.isEmpty ? "none" : String(failures.joined(separator: ";").map { $0 == " " ? "_" : $0 }))")
        if !failures.isEmpty { throw ExitCode(1) }
    }

    /// Allocates a block and forgets it (LeakSanitizer must report it).
    @inline(never)
    static func leakOneBlock() {
        let block = UnsafeMutableRawPointer.allocate(byteCount: 48, alignment: 16)
        block.initializeMemory(as: UInt8.self, repeating: 0x42, count: 48)
        leakedAddressHash = Int(bitPattern: block) &* 31 &+ 7  // keep only a scrambled copy
    }

    /// One socket, closed in one of four ways.
    static func exercise(socketNumber: Int, loop: UVLoop) async throws -> [String: Int] {
        let socket = try await UDPSocket(bindingTo: SocketAddress(ip: "127.0.0.1", port: 0), loop: loop)
        var outcomes: [String: Int] = [:]
        func sends(_ count: Int) -> [Task<String, Never>] {
            (0..<count).map { index in
                Task {
                    do {
                        try await socket.send(Array(repeating: UInt8(truncatingIfNeeded: index), count: 32), to: socket.localAddress)
                        return "ok"
                    } catch {
                        return errorName(error)
                    }
                }
            }
        }
        switch socketNumber % 4 {
        case 0:
            await socket.close()
        case 1:
            // Closed with sends racing the close.
            let pending = sends(8)
            await socket.close()
            for task in pending { outcomes[await task.value, default: 0] += 1 }
        case 2:
            // A consumer that is cancelled, then the close.
            let consumer = Task { for try await _ in socket.datagrams {} }
            try await socket.send([1, 2, 3], to: socket.localAddress)
            consumer.cancel()
            _ = try? await consumer.value
            await socket.close()
        default:
            // A consumer iterating when the socket closes, with sends racing.
            let consumer = Task { for try await _ in socket.datagrams {} }
            let pending = sends(4)
            await socket.close()
            try await consumer.value
            for task in pending { outcomes[await task.value, default: 0] += 1 }
        }
        await socket.close()  // idempotent
        return outcomes
    }

    static func closeWithQueuedSends(handles: Int, loop: UVLoop) async throws -> (ok: Int, canceled: Int, other: Int) {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<(ok: Int, canceled: Int, other: Int), any Error>) in
            loop.execute {
                var result = (ok: 0, canceled: 0, other: 0)
                var closed = 0
                do {
                    for _ in 0..<handles {
                        let handle = try UDPHandle(loop: loop)
                        try handle.bind(SocketAddress(ip: "127.0.0.1", port: 0))
                        let target = try handle.localAddress()
                        try handle.startReceiving { _, _ in }
                        for _ in 0..<6 {
                            try handle.send([[1, 2], [3]], to: target) { _, error in
                                switch error {
                                case nil: result.ok += 1
                                case UVError.canceled?: result.canceled += 1
                                default: result.other += 1
                                }
                            }
                        }
                        handle.close { _ in
                            closed += 1
                            if closed == handles { continuation.resume(returning: result) }
                        }
                    }
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    func echo(loop: UVLoop) async throws -> (echoed: Int, lost: Int) {
        let server = try await UDPSocket(bindingTo: SocketAddress(ip: "127.0.0.1", port: 0), loop: loop)
        let client = try await UDPSocket(bindingTo: SocketAddress(ip: "127.0.0.1", port: 0), loop: loop)
        let echoer = Task(executorPreference: loop) {
            for try await datagram in server.datagrams {
                try? await server.send(datagram.payload, to: datagram.remote)
            }
        }
        let progress = Atomic<Int>(0)
        // If replies stop coming (a datagram lost), close the client so the loop below ends.
        let watchdog = Task {
            var last = -1
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(3))
                let now = progress.load(ordering: .relaxed)
                if now == last { await client.close(); return }
                last = now
            }
        }
        let total = datagrams
        var sent = 0
        var echoed = 0
        let target = server.localAddress
        for _ in 0..<min(window, total) {
            try await client.send(payload(sent), to: target)
            sent += 1
        }
        for try await _ in client.datagrams {
            echoed += 1
            progress.store(echoed, ordering: .relaxed)
            if echoed == total { break }
            if sent < total {
                try await client.send(payload(sent), to: target)
                sent += 1
            }
        }
        watchdog.cancel()
        await watchdog.value
        await client.close()
        await server.close()
        try await echoer.value
        return (echoed, total - echoed)
    }

    static func shutdownWithSocketsOpen() async throws -> [String: Int] {
        let loop = UVLoop(name: "leak-shutdown")
        var sockets: [UDPSocket] = []
        for _ in 0..<100 {
            sockets.append(try await UDPSocket(bindingTo: SocketAddress(ip: "127.0.0.1", port: 0), loop: loop))
        }
        let consumers = sockets.map { socket in Task { try await socket.datagrams.reduce(0) { n, _ in n + 1 } } }
        let senders = sockets.map { socket in
            Task { () -> String in
                do {
                    while true {
                        try await socket.send([0, 1, 2, 3], to: socket.localAddress)
                        // send() may complete without suspending (the direct path): yield so
                        // that 100 such loops do not starve the other tasks.
                        await Task.yield()
                    }
                } catch {
                    return errorName(error)
                }
            }
        }
        // Let some traffic flow (progress, not time, decides), then shut down under it.
        while await sockets[0].statistics.datagramsReceived < 10 { await Task.yield() }
        progress("shutdown: traffic flowing; shutting down")
        await loop.shutdown()
        progress("shutdown: returned")
        var outcomes: [String: Int] = [:]
        for consumer in consumers { _ = try await consumer.value; outcomes["consumerEnded", default: 0] += 1 }
        progress("shutdown: consumers ended")
        for sender in senders { outcomes[await sender.value, default: 0] += 1 }
        return outcomes
    }
}

nonisolated(unsafe) var leakedAddressHash = 0  // written once, before any task starts

func payload(_ value: Int, size: Int = 16) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: max(size, 8))
    withUnsafeBytes(of: UInt64(value).littleEndian) { bytes.replaceSubrange(0..<8, with: $0) }
    return bytes
}
