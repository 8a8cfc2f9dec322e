import Glibc
import Logging
import Synchronization
import Testing
import TestSupport
@testable import AsyncUDP
@testable import UVCore

/// Issue 9, defects 4-8: loop threads, close, completions, traps, checks.
extension CoreDefectTests {
    // MARK: 4. inLoop on the wrong thread

    @Test("#4 after loop A shuts down, A.inLoop is false on loop B's thread (which glibc may give A's old pthread_t) and on the test's thread; 8 rounds")
    func inLoopAfterThreadReuse() async throws {
        var reused = 0
        var wrong = 0
        for round in 0..<8 {
            let a = UVLoop(name: "inloop-a\(round)")
            let aThread = try await a.submit { UInt(pthread_self()) }
            await a.shutdown()
            #expect(!a.inLoop)
            let b = UVLoop(name: "inloop-b\(round)")
            let (bThread, aOnB, bOnB) = try await b.submit { (UInt(pthread_self()), a.inLoop, b.inLoop) }
            #expect(bOnB)
            if bThread == aThread { reused += 1 }
            if aOnB { wrong += 1 }
            await b.shutdown()
            #expect(!b.inLoop)
        }
        #expect(wrong == 0, "A.inLoop was true on B's thread in \(wrong) of 8 rounds (pthread_t reused in \(reused))")
    }

    // MARK: 5. No busy-wait on close

    @Test("#5 close() while a sender on another thread holds the socket's send gate: the loop keeps running other jobs and sockets, close waits, and completes once the sender leaves")
    func closeDoesNotSpin() async throws {
        let loop = UVLoop(name: "gate-close")
        let socket = try await openSocket(loop: loop)
        let echo = try await openSocket(loop: loop)
        let echoing = Task {
            for try await datagram in echo.datagrams { try await echo.send(datagram.payload, to: datagram.remote) }
        }
        let client = try await openSocket()
        let gate = socket.sendPath
        let entered = await onPlainThread { gate.enter() }
        #expect(entered, "the gate admits a direct sender")
        let closed = Flag()
        let closing = Task {
            await socket.close()
            closed.set()
        }
        try await waitUntil("close to begin", seconds: 30) { gate.isClosed }
        // The loop is free: a job runs, and another socket on it echoes.
        let jobRan = await outcome(within: 10) { try await loop.submit { loop.inLoop } }
        #expect(jobRan?.value == true, "a job on the loop ran while the gate was held")
        let echoed = await outcome(within: 10) { () -> Int? in
            try await client.send(payload(5), to: echo.localAddress)
            return try await client.receive(timeout: .seconds(10)).map(sequence(of:))
        }
        #expect(echoed?.value == 5, "a socket on the same loop echoed while the gate was held")
        #expect(!closed.isSet, "close waits for the sender in flight")
        await onPlainThread { gate.leave() }
        let finished = await outcome(within: 30) { await closing.value }
        #expect(finished != nil, "close completed after the sender left")
        #expect(closed.isSet)
        #expect(await socket.isClosed)
        await echo.close()
        _ = try? await echoing.value
        await client.close()
        await loop.shutdown()
    }

    // MARK: 6. Each completion carries its own context

    @Test("#6 40 sends queued in one read batch with two kinds of failure in the middle (EACCES, kernel EMSGSIZE): each send's callback gets exactly its own outcome, once")
    @TestLoop
    func perSendOutcomes() async throws {
        // Dual-stack sockets: a v4-mapped broadcast fails with EACCES, and a 65,520-byte datagram
        // to a v4-mapped address passes the IPv6 size check but the kernel refuses it (EMSGSIZE).
        let receiver = try boundHandle("::")
        let inbox = try Inbox(receiver)
        let port = try receiver.localAddress().port
        let v6 = try SocketAddress(ip: "::1", port: port)
        let mapped = try SocketAddress("[::ffff:127.0.0.1]:\(port)")
        let mappedBroadcast = try SocketAddress("[::ffff:127.255.255.255]:\(port)")
        var expected: [UVError?] = []
        let sends = (0..<40).map { index -> ([UInt8], SocketAddress) in
            switch index % 7 {
            case 3:
                expected.append(.permissionDenied)
                return (payload(index), mappedBroadcast)
            case 5:
                expected.append(.messageTooLong)
                return (payload(index, size: 65_520), mapped)
            default:
                expected.append(nil)
                return (payload(index), index % 2 == 0 ? v6 : mapped)
            }
        }
        let (relay, log, queued) = try relayQueueing(sends)
        let trigger = try boundHandle("::1")
        #expect(try await sendAndWait(trigger, [[0xFF]], to: relay.localAddress()) == nil)
        await log.done.wait()
        #expect(queued.value == 40)
        #expect(log.outcomes.count == 40)
        for (index, outcomes) in log.outcomes.enumerated() {
            #expect(outcomes == [expected[index]], "send \(index): got \(outcomes), expected \(String(describing: expected[index]))")
        }
        #expect(try await arrivals(at: inbox, after: relay, to: v6) == (0..<40).filter { expected[$0] == nil })
        await closeAll(receiver, relay, trigger)
    }

    // MARK: 7. No traps a user can reach

    @Test("#7 at EMFILE (RLIMIT_NOFILE 64, table full, in a child process): UVLoop.start throws EMFILE, UVLoop(name:) returns with startError and refuses sockets, the first UDPSocket on UVLoop.shared throws; after closing descriptors the shared loop works")
    func emfileThrowsInsteadOfTrapping() async throws {
        let result = try await runTool(["emfile", "--limit", "64"])
        #expect(result.status < 128, "the tool died of a signal: \(result)")
        #expect(result.fields["checks"] == "8", "\(result)")
        let checks = result.checks
        for name in ["loop-start-throws", "loop-init-start-error", "socket-on-stopped-loop-throws",
                     "stopped-loop-shutdown-returns", "shared-first-socket-throws",
                     "shared-works-after-release", "loop-start-after-release"] {
            #expect(checks[name]?.ok == true, "\(name): \(checks[name]?.detail ?? "missing") — \(result)")
        }
    }

    @Test("#7 at EMFILE, SocketAddress(\"[::1%lo]:9\") blames the failed interface lookup (underlyingError EMFILE), not the input")
    func emfileScopeLookup() async throws {
        let result = try await runTool(["emfile", "--limit", "64"])
        let check = try #require(result.checks["scope-lookup"], "\(result)")
        #expect(!check.detail.contains("no such interface"), "the input is not blamed: \(check.detail)")
        #expect(check.detail.contains("underlyingError="), "\(check.detail)")
        #expect(check.ok, "\(check.detail)")
    }

    @Test("#7 UVLoop.shared.shutdown() is refused: it returns, and the shared loop and its sockets keep working; shutdownIfNotShared() throws sharedLoopShutdown")
    func sharedLoopRefusesShutdown() async throws {
        let socket = try await openSocket()
        await UVLoop.shared.shutdown()
        #expect(!UVLoop.shared.isShutDown)
        await #expect(throws: UVLoopError.sharedLoopShutdown) { try await UVLoop.shared.shutdownIfNotShared() }
        try await socket.send(payload(1), to: socket.localAddress)
        #expect(try await socket.receive(timeout: .seconds(30)).map(sequence(of:)) == 1)
        let fresh = try await openSocket()
        try await fresh.send(payload(2), to: socket.localAddress)
        #expect(try await socket.receive(timeout: .seconds(30)).map(sequence(of:)) == 2)
        #expect(!(await socket.isClosed))
        await fresh.close()
        await socket.close()
        // A loop of one's own still shuts down through the throwing variant.
        let own = UVLoop(name: "own-shutdown")
        try await own.shutdownIfNotShared()
        #expect(own.isShutDown)
    }

    // MARK: 8. Checks that existed only in comments

    @Test("#8 the loop thread carries the loop's name (first 15 bytes) in /proc/self/task/*/comm")
    func loopThreadIsNamed() async throws {
        let loop = UVLoop(name: "core-defects-named-loop")
        let own = try await loop.submit { readLine("/proc/thread-self/comm") }
        #expect(own == "core-defects-na")
        #expect(threadNames().contains("core-defects-na"))
        await loop.shutdown()
    }

    @Test("#8 diagnostics go to the loop's Logger: late work after shutdown logs a warning there")
    func lateWorkIsLogged() async throws {
        let sink = LogSink()
        let loop = UVLoop(name: "logged-loop", logger: Logger(label: "core-defects") { _ in CapturingLogHandler(sink: sink) })
        await loop.shutdown()
        #expect(try await loop.submit { 42 } == 42)
        let entries = sink.entries
        #expect(entries.contains { $0.level == .warning && $0.message.contains("after shutdown") }, "\(entries)")
        #expect(UVLoop(name: "default-logger").logger.handler is SwiftLogNoOpLogHandler)
    }

    @Test("#8 with the default logger the library prints nothing: late work, a repeated shutdown and a refused UVLoop.shared.shutdown() leave stdout and stderr empty (child process)")
    func silentByDefault() async throws {
        let result = try await runTool(["late-work"])
        #expect(result.status == 0, "\(result)")
        #expect(result.output == "RESULT ranLate=true sharedStillRuns=true\n", "\(result)")
    }

    #if DEBUG
    @Test("#8 LoopBound.value read off its loop traps (debug builds)")
    func loopBoundChecksItsThread() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let loop = UVLoop(name: "loopbound-trap")
            guard let bound = try? await loop.submit({ LoopBound(7, on: loop) }) else { exit(0) }
            _ = bound.value
        }
        #expect(result.map { String(decoding: $0.standardErrorContent, as: UTF8.self) }?.contains("LoopBound read off") == true)
    }
    #endif

}
