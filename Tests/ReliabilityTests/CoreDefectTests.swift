// Issue 9, "Socket core": one test or more per defect 1-12, each named after the defect it
// covers. Real sockets on 127.0.0.1 and ::1; every wait is bounded; no sleep stands in for a
// notification.
import Glibc
import Logging
import Synchronization
import Testing
import TestSupport
@testable import AsyncUDP
@testable import UVCore

@Suite("Issue 9: the socket core's defects 1-12", .timeLimit(.minutes(2)))
struct CoreDefectTests {
    // MARK: 1. A failed send fails alone

    @Test("#1 three UDPHandle sends queued in one read batch (good, 127.255.255.255 without setBroadcast, good): the middle fails with EACCES alone; both others complete nil and arrive, in order")
    @TestLoop
    func oneReadBatchGoodBadGood() async throws {
        let receiver = try boundHandle()
        let inbox = try Inbox(receiver)
        let target = try receiver.localAddress()
        let broadcast = try SocketAddress(ip: "127.255.255.255", port: target.port)
        let (relay, log, queued) = try relayQueueing([target, broadcast, target].enumerated().map { index, destination in
            (payload(index), destination)
        })
        let trigger = try boundHandle()
        #expect(try await sendAndWait(trigger, [[0xFF]], to: relay.localAddress()) == nil)
        await log.done.wait()
        #expect(queued.value == 3, "all three were queued in the read batch")
        #expect(log.outcomes == [[nil], [.permissionDenied], [nil]])
        #expect(try await arrivals(at: inbox, after: relay, to: target) == [0, 2])
        await closeAll(receiver, relay, trigger)
    }

    @Test("#1 three UDPHandle sends in one loop job (good, broadcast without setBroadcast, good): the middle fails with EACCES alone; both others complete nil and arrive, in order")
    @TestLoop
    func oneJobGoodBadGood() async throws {
        let receiver = try boundHandle()
        let inbox = try Inbox(receiver)
        let target = try receiver.localAddress()
        let broadcast = try SocketAddress(ip: "127.255.255.255", port: target.port)
        let sender = try boundHandle()
        let log = SendLog(expected: 3)
        for (index, destination) in [target, broadcast, target].enumerated() {
            try sender.send(payload(index), to: destination) { _, error in log.record(index, error) }
        }
        await log.done.wait()
        #expect(log.outcomes == [[nil], [.permissionDenied], [nil]])
        #expect(try await arrivals(at: inbox, after: sender, to: target) == [0, 2])
        await closeAll(receiver, sender)
    }

    @Test("#1 UDPHandle.send(contentsOf:) of good, broadcast without setBroadcast, good: failures are exactly [(1, EACCES)]; both others arrive, in order")
    @TestLoop
    func handleBatchGoodBadGood() async throws {
        let receiver = try boundHandle()
        let inbox = try Inbox(receiver)
        let target = try receiver.localAddress()
        let broadcast = try SocketAddress(ip: "127.255.255.255", port: target.port)
        let sender = try boundHandle()
        let failures = try await sendBatch(sender, [target, broadcast, target].enumerated().map { index, destination in
            Datagram(payload: payload(index), remote: destination)
        })
        #expect(failures.map(\.index) == [1])
        #expect(failures.map(\.error) == [.permissionDenied])
        #expect(try await arrivals(at: inbox, after: sender, to: target) == [0, 2])
        await closeAll(receiver, sender)
    }

    @Test("#1 UDPSocket.send(contentsOf:) of good, broadcast without setBroadcast, good, from a task off the loop: BatchSendError lists exactly index 1 (EACCES); both others arrive, in order")
    func socketBatchGoodBadGoodOffLoop() async throws {
        let receiver = try await openSocket()
        let sender = try await openSocket()
        let error = try await socketBatch(sender, to: receiver, bad: [1], count: 3)
        #expect(error?.failures.map(\.index) == [1])
        #expect(error?.failures.map(\.error) == [.permissionDenied])
        #expect(error?.count == 3)
        #expect(try await arrivals(at: receiver, after: sender) == [0, 2])
        #expect(await sender.statistics.sendErrorCount == 1)
        await sender.close()
        await receiver.close()
    }

    @Test("#1 UDPSocket.send(contentsOf:) of good, broadcast without setBroadcast, good, from a task on the socket's loop: BatchSendError lists exactly index 1; both others arrive, in order")
    func socketBatchGoodBadGoodOnLoop() async throws {
        let loop = UVLoop(name: "batch-on-loop")
        let receiver = try await openSocket()
        let sender = try await openSocket(loop: loop)
        let error = try await withTaskExecutorPreference(loop) {
            #expect(loop.inLoop)
            return try await socketBatch(sender, to: receiver, bad: [1], count: 3)
        }
        #expect(error?.failures.map(\.index) == [1])
        #expect(error?.failures.map(\.error) == [.permissionDenied])
        #expect(try await arrivals(at: receiver, after: sender) == [0, 2])
        await sender.close()
        await receiver.close()
        await loop.shutdown()
    }

    @Test("#1 100 sends queued in one read batch with 9 bad ones spread across the 32-datagram sendmmsg chunks: each bad one fails alone, the 91 others arrive in order")
    @TestLoop
    func largeReadBatch() async throws {
        let receiver = try boundHandle()
        let inbox = try Inbox(receiver)
        let target = try receiver.localAddress()
        let broadcast = try SocketAddress(ip: "127.255.255.255", port: target.port)
        let (relay, log, queued) = try relayQueueing((0..<100).map { index in
            (payload(index), largeBatchBad.contains(index) ? broadcast : target)
        })
        let trigger = try boundHandle()
        #expect(try await sendAndWait(trigger, [[0xFF]], to: relay.localAddress()) == nil)
        await log.done.wait()
        #expect(queued.value == 100)
        #expect(log.outcomes == (0..<100).map { largeBatchBad.contains($0) ? [.permissionDenied] : [nil] })
        #expect(try await arrivals(at: inbox, after: relay, to: target) == (0..<100).filter { !largeBatchBad.contains($0) })
        await closeAll(receiver, relay, trigger)
    }

    @Test("#1 UDPHandle.send(contentsOf:) of 100 datagrams with 9 bad ones across the 32-datagram chunks: exactly those fail, with EACCES; the 91 others arrive in order")
    @TestLoop
    func largeHandleBatch() async throws {
        let receiver = try boundHandle()
        let inbox = try Inbox(receiver)
        let target = try receiver.localAddress()
        let broadcast = try SocketAddress(ip: "127.255.255.255", port: target.port)
        let sender = try boundHandle()
        let failures = try await sendBatch(sender, (0..<100).map { index in
            Datagram(payload: payload(index), remote: largeBatchBad.contains(index) ? broadcast : target)
        })
        #expect(failures.map(\.index) == largeBatchBad)
        #expect(failures.allSatisfy { $0.error == .permissionDenied })
        #expect(try await arrivals(at: inbox, after: sender, to: target) == (0..<100).filter { !largeBatchBad.contains($0) })
        await closeAll(receiver, sender)
    }

    @Test("#1 UDPSocket.send(contentsOf:) of 100 datagrams with 9 bad ones across the 32-datagram chunks: BatchSendError lists exactly those; the 91 others arrive in order")
    func largeSocketBatch() async throws {
        let receiver = try await openSocket(configuration: .init(receiveBufferSize: 1 << 20))
        let sender = try await openSocket()
        let error = try await socketBatch(sender, to: receiver, bad: largeBatchBad, count: 100)
        #expect(error?.failures.map(\.index) == largeBatchBad)
        #expect(error?.failures.allSatisfy { $0.error == .permissionDenied } == true)
        #expect(try await arrivals(at: receiver, after: sender) == (0..<100).filter { !largeBatchBad.contains($0) })
        let stats = await sender.statistics
        #expect(stats.sendErrorCount == largeBatchBad.count)
        #expect(stats.datagramsSent == 100 - largeBatchBad.count + 1, "the 91 and the end marker")
        await sender.close()
        await receiver.close()
    }

    // MARK: 2. A cancelled consumer loses nothing

    @Test("#2 a datagrams iteration cancelled while it holds a batch: delivered == what it was handed; the rest arrive exactly once, in order, through receive() and a new iteration; received == delivered + droppedByPolicy + queued at every read")
    func cancelledIterationGivesBack() async throws {
        let total = 200
        let handed = 10
        let receiver = try await openSocket(configuration: .init(receiveBufferSize: 1 << 21))
        let sender = try await openSocket()
        for index in 0..<total { try await sender.send(payload(index), to: receiver.localAddress) }
        try await waitUntil("the receiver read all \(total)", seconds: 30) {
            try await checkedStatistics(receiver).datagramsReceived == total
        }
        let (tookTen, tookTenSignal) = AsyncStream.makeStream(of: Void.self)
        let consumer = Task { () -> [Int] in
            var got: [Int] = []
            for try await datagram in receiver.datagrams {
                got.append(sequence(of: datagram))
                if got.count == handed {
                    tookTenSignal.yield()
                    // Holds its batch until cancelled (Task.sleep ends at once on cancellation).
                    try? await Task.sleep(for: .seconds(120))
                }
            }
            return got
        }
        var signals = tookTen.makeAsyncIterator()
        _ = await signals.next()
        let holding = try await checkedStatistics(receiver)
        #expect(holding.datagramsDelivered == handed, "\(holding)")
        #expect(holding.datagramsQueued == total - handed, "\(holding)")
        consumer.cancel()
        let got = try await withDeadline("the cancelled consumer to end", seconds: 30) { try await consumer.value }
        #expect(got == Array(0..<handed))
        let afterCancel = try await checkedStatistics(receiver)
        #expect(afterCancel.datagramsDelivered == handed, "delivered counts only what user code was handed: \(afterCancel)")
        #expect(afterCancel.datagramsQueued == total - handed, "\(afterCancel)")
        #expect(afterCancel.datagramsDroppedByPolicy == 0)

        // The next receive gets the next datagram; a new iteration the rest.
        let next = try await withDeadline("receive()", seconds: 30) { try await receiver.receive() }
        #expect(sequence(of: next) == handed)
        #expect(try await checkedStatistics(receiver).datagramsDelivered == handed + 1)
        let rest = try await withDeadline("a new iteration", seconds: 30) { () -> [Int] in
            var rest: [Int] = []
            for try await datagram in receiver.datagrams {
                rest.append(sequence(of: datagram))
                if rest.count % 50 == 0 {
                    let stats = try await checkedStatistics(receiver)
                    #expect(stats.datagramsDelivered == handed + 1 + rest.count, "\(stats)")
                }
                if rest.count == total - handed - 1 { break }
            }
            return rest
        }
        #expect(rest == Array((handed + 1)..<total))
        let end = try await checkedStatistics(receiver)
        #expect(end.datagramsReceived == total)
        #expect(end.datagramsDelivered == total)
        #expect(end.datagramsQueued == 0)
        await sender.close()
        await receiver.close()
    }

    // MARK: 3. Send errors belong to the datagram that caused them

    @Test("#3 from a socket bound to [::1] with .ipv6Only, a send to [::ffff:127.0.0.1] (off the loop) fails with ENETUNREACH, counted once: sendErrorCount 1, transientErrorCount 0")
    func ipv6OnlyToMappedOffLoop() async throws {
        let target = try await openSocket()
        let socket = try await UDPSocket(bindingTo: SocketAddress("[::1]:0"), flags: .ipv6Only)
        let mapped = try SocketAddress("[::ffff:127.0.0.1]:\(target.localAddress.port)")
        await #expect(throws: UVError.networkUnreachable) { try await socket.send(payload(1), to: mapped) }
        let stats = await socket.statistics
        #expect(stats.sendErrorCount == 1, "\(stats)")
        #expect(stats.transientErrorCount == 0, "\(stats)")
        await socket.close()
        await target.close()
    }

    @Test("#3 the same ENETUNREACH sent from a task on the socket's loop: sendErrorCount 1, transientErrorCount 0")
    func ipv6OnlyToMappedOnLoop() async throws {
        let loop = UVLoop(name: "v6only-on-loop")
        let target = try await openSocket()
        let socket = try await UDPSocket(bindingTo: SocketAddress("[::1]:0"), loop: loop, flags: .ipv6Only)
        let mapped = try SocketAddress("[::ffff:127.0.0.1]:\(target.localAddress.port)")
        await withTaskExecutorPreference(loop) {
            #expect(loop.inLoop)
            await #expect(throws: UVError.networkUnreachable) { try await socket.send(payload(1), to: mapped) }
        }
        let stats = await socket.statistics
        #expect(stats.sendErrorCount == 1, "\(stats)")
        #expect(stats.transientErrorCount == 0, "\(stats)")
        await socket.close()
        await target.close()
        await loop.shutdown()
    }

    @Test("#3 a connected socket whose peer port is closed: a tight send loop off the loop meets ECONNREFUSED; it is transient (counted, published on transientErrors), no send throws, sendErrorCount 0")
    func refusedPeerTightLoop() async throws {
        let closed = try await closedPort()
        let socket = try await UDPSocket(connectingTo: closed)
        let run = try await tightSends(socket)
        #expect(run.thrown == [], "no send throws an earlier datagram's error")
        let stats = await socket.statistics
        #expect(stats.transientErrorCount >= 1, "after \(run.sent) sends: \(stats)")
        #expect(stats.sendErrorCount == 0, "\(stats)")
        let first = try await withDeadline("a transient error", seconds: 10) { await firstTransientError(socket) }
        #expect(first == .connectionRefused)
        await socket.close()
    }

    @Test("#3 the same with reading paused (so only the send path can see the ICMP error): the direct path reports ECONNREFUSED as transient, no send throws, sendErrorCount 0")
    func refusedPeerSendPathOnly() async throws {
        let peer = try await openSocket()
        let socket = try await UDPSocket(connectingTo: peer.localAddress, configuration: .init(
            receiveQueueLimit: 2, overflowPolicy: .pauseReading(highWatermark: 1, lowWatermark: 0)))
        // Fill the queue to its high watermark, so the socket stops watching its descriptor.
        let local = try SocketAddress(ip: "127.0.0.1", port: socket.localAddress.port)
        try await peer.send(payload(1), to: local)
        try await peer.send(payload(2), to: local)
        try await waitUntil("reading paused", seconds: 30) {
            await socket.statistics.readingPauses >= 1
        }
        await peer.close()
        let run = try await tightSends(socket)
        #expect(run.thrown == [])
        let stats = await socket.statistics
        #expect(stats.transientErrorCount >= 1, "after \(run.sent) sends: \(stats)")
        #expect(stats.sendErrorCount == 0, "\(stats)")
        let first = try await withDeadline("a transient error", seconds: 10) { await firstTransientError(socket) }
        #expect(first == .connectionRefused)
        await socket.close()
    }

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

    // MARK: 9. pauseReading never drops

    @Test("#9 pauseReading: 3,000 datagrams at a late, slow consumer, the queue one short of the high watermark when a burst lands: none dropped by policy; each delivered (in order) or dropped by the kernel", arguments: [
        PauseCase(limit: 8, high: 2, low: 1),
        PauseCase(limit: 1024, high: 1024, low: 512),
        PauseCase(limit: 64, high: 60, low: 30),
    ])
    func pauseReadingNeverDrops(_ setting: PauseCase) async throws {
        let total = 3_000
        let loop = UVLoop(name: "pause-\(setting.limit)")
        let receiver = try await openSocket(loop: loop, configuration: .init(
            receiveQueueLimit: setting.limit,
            overflowPolicy: .pauseReading(highWatermark: setting.high, lowWatermark: setting.low),
            receiveBufferSize: 1 << 20))
        let sender = try await openSocket()
        let target = receiver.localAddress
        // First the queue fills to one short of the high watermark (nobody consumes yet) ...
        let first = setting.high - 1
        for index in 0..<first { try await sender.send(payload(index), to: target) }
        try await waitUntil("the first \(first) read", seconds: 30) { await receiver.statistics.datagramsReceived == first }
        // ... then the rest arrives in bursts while the receiver's loop is held, so that its next
        // read finds far more waiting than the queue has room for.
        let held = Semaphore()
        let holding = OneShot<Void>()
        loop.execute {
            holding.resolve(())
            held.wait()
        }
        await holding.wait()
        let sending = Task.detached {
            defer { held.signal() }
            for burst in stride(from: first, to: total, by: 100) {
                for index in burst..<min(total, burst + 100) { try await sender.send(payload(index), to: target) }
                await Task.yield()
            }
        }
        try await withDeadline("the sender", seconds: 60) { try await sending.value }
        // The consumer is late (it starts once everything is sent) and slow (it yields every few
        // datagrams).
        let received = LockedInts()
        let consumer = Task {
            for try await datagram in receiver.datagrams {
                received.append(sequence(of: datagram))
                if received.count % 4 == 0 { await Task.yield() }
            }
        }
        // Poll the counters (they have no notification) until every datagram sent is accounted
        // for: read by the library (delivered, dropped by policy, or queued) or dropped by the
        // kernel, with nothing left in the queue and the consumer holding all it was handed.
        var last = UDPSocket.Statistics()
        var worstPolicyDrops = 0
        var worstPeak = 0
        var broken: UDPSocket.Statistics?
        try await waitUntil("every datagram accounted for", seconds: 60) {
            let stats = await receiver.statistics
            worstPolicyDrops = max(worstPolicyDrops, stats.datagramsDroppedByPolicy)
            worstPeak = max(worstPeak, stats.peakDatagramsQueued)
            if stats.datagramsReceived != stats.datagramsDelivered + stats.datagramsDroppedByPolicy + stats.datagramsQueued {
                broken = broken ?? stats
            }
            last = stats
            return stats.datagramsReceived + (stats.datagramsDroppedByKernel ?? 0) == total
                && stats.datagramsQueued == 0 && received.count == stats.datagramsDelivered
        }
        #expect(worstPolicyDrops == 0, "pauseReading dropped datagrams: \(last)")
        #expect(worstPeak <= setting.limit, "\(last)")
        #expect(last.readingPauses >= 1, "the queue reached the high watermark: \(last)")
        #expect(broken == nil, "received == delivered + droppedByPolicy + queued broke: \(String(describing: broken))")
        consumer.cancel()
        _ = try? await consumer.value
        let got = received.values
        #expect(got.count == last.datagramsDelivered)
        #expect(got.count + (last.datagramsDroppedByKernel ?? 0) == total, "\(last)")
        #expect(zip(got, got.dropFirst()).allSatisfy { $0 < $1 }, "delivered in order, each once")
        #expect(await sender.statistics.datagramsSent == total)
        await sender.close()
        await receiver.close()
        await loop.shutdown()
    }

    // MARK: 10. One descriptor, one handle, process-wide

    @Test("#10 a descriptor adopted by a handle on loop A: a handle on loop B cannot open it (EEXIST)")
    func descriptorOwnedAcrossLoops() async throws {
        let a = UVLoop(name: "fd-owner-a")
        let b = UVLoop(name: "fd-owner-b")
        let fd = try highUDPSocket()
        let handleA = try await a.submit { () -> Smuggled<UDPHandle> in
            let handle = try UDPHandle(loop: a)
            try handle.open(fd)
            return Smuggled(handle)
        }
        let onB = try await b.submit { () -> String in
            let handle = try UDPHandle(loop: b)
            defer { handle.close() }
            do {
                try handle.open(fd)
                return "adopted"
            } catch let error as UVError {
                return error.name
            }
        }
        #expect(onB == "EEXIST")
        try await a.submit { handleA.value.close() }
        await a.shutdown()
        await b.shutdown()
    }

    @Test("#10 after loop A's handle closes its descriptor, an unrelated socket that reuses the number survives loop B's shutdown, and may then be adopted")
    func reusedNumberSurvivesOtherLoop() async throws {
        let a = UVLoop(name: "fd-reuse-a")
        let b = UVLoop(name: "fd-reuse-b")
        let fd = try highUDPSocket()
        let handleA = try await a.submit { () -> Smuggled<UDPHandle> in
            let handle = try UDPHandle(loop: a)
            try handle.open(fd)
            return Smuggled(handle)
        }
        // Loop B tries to adopt the same descriptor (refused now; accepted by the old core).
        _ = try await b.submit { () -> Bool in
            let handle = try UDPHandle(loop: b)
            return (try? handle.open(fd)) != nil
        }
        try await a.submit { handleA.value.close() }
        // An unrelated socket takes the number.
        let unrelated = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        try #require(unrelated >= 0)
        let reused = fcntl(unrelated, F_DUPFD_CLOEXEC, fd)
        close(unrelated)
        try #require(reused == fd, "the number \(fd) was free again")
        await b.shutdown()
        #expect(fcntl(fd, F_GETFD) != -1, "loop B's shutdown left the unrelated socket \(fd) open")
        let adopted = try await a.submit { () -> Smuggled<UDPHandle> in
            let handle = try UDPHandle(loop: a)
            try handle.open(fd)
            return Smuggled(handle)
        }
        #expect(try await a.submit { adopted.value.family } == .ipv4)
        try await a.submit { adopted.value.close() }
        await a.shutdown()
    }

    // MARK: 11. Only UDP sockets are adopted

    @Test("#11 open(fd) refuses one end of an AF_UNIX SOCK_DGRAM socketpair with EAFNOSUPPORT, and leaves the descriptor open")
    func unixSocketRefused() async throws {
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &pair) == 0)
        defer { close(pair[1]) }
        let outcome = try await adopt(pair[0])
        if outcome == "adopted" {
            Issue.record("a Unix-domain socket was adopted as UDP")  // the handle closed it
        } else {
            #expect(outcome == "EAFNOSUPPORT")
            #expect(fcntl(pair[0], F_GETFD) != -1)
            var byte: UInt8 = 7
            #expect(write(pair[0], &byte, 1) == 1)
            var back: UInt8 = 0
            #expect(read(pair[1], &back, 1) == 1 && back == 7, "the descriptor still works")
            close(pair[0])
        }
    }

    @Test("#11 open(fd) refuses a UDP-Lite datagram socket (IPPROTO_UDPLITE) with EPROTONOSUPPORT, and leaves the descriptor open",
          .enabled(if: canOpen(protocol: udpLiteProtocol), "UDP-Lite sockets cannot be created here"))
    func udpLiteRefused() async throws {
        try await refusesProtocol(udpLiteProtocol)
    }

    @Test("#11 open(fd) refuses an ICMP datagram socket with EPROTONOSUPPORT, and leaves the descriptor open",
          .enabled(if: canOpen(protocol: Int32(IPPROTO_ICMP)), "ICMP datagram sockets need net.ipv4.ping_group_range"))
    func icmpRefused() async throws {
        try await refusesProtocol(Int32(IPPROTO_ICMP))
    }

    // MARK: 12. Off-thread reads trap

    @Test("#12 UDPHandle.family read off the loop thread traps")
    func familyOffLoopTraps() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            guard let handle = await handleOffItsLoop(receiving: false) else { exit(0) }
            _ = handle.value.family
        }
        expectTrapMessage(result, "UDPHandle.family")
    }

    @Test("#12 UDPHandle.isClosed read off the loop thread traps")
    func isClosedOffLoopTraps() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            guard let handle = await handleOffItsLoop(receiving: false) else { exit(0) }
            _ = handle.value.isClosed
        }
        expectTrapMessage(result, "UDPHandle.isClosed")
    }

    @Test("#12 UDPHandle.isReceiving read off the loop thread traps")
    func isReceivingOffLoopTraps() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            guard let handle = await handleOffItsLoop(receiving: true) else { exit(0) }
            _ = handle.value.isReceiving
        }
        expectTrapMessage(result, "UDPHandle.isReceiving")
    }

    @Test("#12 on the loop thread the same three read fine")
    @TestLoop
    func readsOnLoop() async throws {
        let handle = try boundHandle()
        try handle.startReceiving { _, _ in }
        #expect(handle.family == .ipv4)
        #expect(!handle.isClosed)
        #expect(handle.isReceiving)
        await closeAll(handle)
        #expect(handle.isClosed)
        #expect(handle.family == nil)
    }
}

// MARK: - Helpers

/// The bad indices of the 100-datagram batches: first, last, and both sides of each 32-datagram
/// `sendmmsg` chunk boundary.
private let largeBatchBad = [0, 5, 31, 32, 33, 63, 64, 65, 99]

/// One `.pauseReading` setting.
struct PauseCase: Sendable, CustomTestStringConvertible {
    let limit: Int
    let high: Int
    let low: Int
    var testDescription: String { "limit \(limit) / high \(high) / low \(low)" }
}

/// Carries a value out of the loop it belongs to, on purpose: the exit tests read a handle off
/// its loop, and other tests hand a handle from one loop job to the next.
struct Smuggled<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// A flag any thread may set and read.
final class Flag: Sendable {
    private let state = Atomic<Bool>(false)
    func set() { state.store(true, ordering: .releasing) }
    var isSet: Bool { state.load(ordering: .acquiring) }
}

/// A counting semaphore over `sem_t` (a plain thread, or a loop job, may block on it).
final class Semaphore: @unchecked Sendable {
    // Safe to share: `semaphore` is only used through sem_wait and sem_post.
    private let semaphore: UnsafeMutablePointer<sem_t>
    init() {
        semaphore = .allocate(capacity: 1)
        sem_init(semaphore, 0, 0)
    }
    deinit {
        sem_destroy(semaphore)
        semaphore.deallocate()
    }
    func signal() { sem_post(semaphore) }
    func wait() { while sem_wait(semaphore) != 0 && errno == EINTR {} }
}

/// Integers appended by one task and read by another.
final class LockedInts: @unchecked Sendable {
    // Safe to share: `items` is only touched under `lock`.
    private let lock = PosixLock()
    private var items: [Int] = []
    func append(_ value: Int) { lock.withLock { items.append(value) } }
    var count: Int { lock.withLock { items.count } }
    var values: [Int] { lock.withLock { items } }
}

/// The first value handed to `resolve`, for any number of waiters.
final class OneShot<Value: Sendable>: @unchecked Sendable {
    // Safe to share: every member is touched only under `lock`.
    private let lock = PosixLock()
    private var value: Value?
    private var resolved = false
    private var waiters: [CheckedContinuation<Value, Never>] = []

    func resolve(_ newValue: Value) {
        let toResume: [CheckedContinuation<Value, Never>] = lock.withLock {
            guard !resolved else { return [] }
            resolved = true
            value = newValue
            defer { waiters.removeAll() }
            return waiters
        }
        for waiter in toResume { waiter.resume(returning: newValue) }
    }

    func wait() async -> Value {
        await withCheckedContinuation { continuation in
            let ready: Value?? = lock.withLock {
                if resolved { return .some(value) }
                waiters.append(continuation)
                return .none
            }
            if case .some(let value) = ready { continuation.resume(returning: value!) }
        }
    }
}

/// The outcome of `body`, run in a task of its own, if it finishes within `seconds`; `nil` if
/// not. Unlike `withDeadline` it never waits for a body that cannot be cancelled (a job queued
/// behind a loop that does not run), so a test fails instead of hanging.
func outcome<T: Sendable>(within seconds: Double, _ body: @escaping @Sendable () async throws -> T) async -> Result<T, any Error>? {
    let shot = OneShot<Result<T, any Error>?>()
    Task {
        do { shot.resolve(.success(try await body())) } catch { shot.resolve(.failure(error)) }
    }
    let timer = Task {
        try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
        shot.resolve(nil)
    }
    let result = await shot.wait()
    timer.cancel()
    return result
}

extension Result {
    /// The success value, or nil.
    var value: Success? { try? get() }
}

/// Runs `work` on a thread of its own (not a Swift concurrency thread, not a loop) and returns
/// its result.
func onPlainThread<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        startPlainThread { continuation.resume(returning: work()) }
    }
}

/// Starts a detached pthread that runs `work`.
func startPlainThread(_ work: @escaping @Sendable () -> Void) {
    let context = Unmanaged.passRetained(PlainThreadWork(work)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        Unmanaged<PlainThreadWork>.fromOpaque(raw!).takeRetainedValue().work()
        return nil
    }, context)
    precondition(rc == 0, "pthread_create: \(rc)")
    pthread_detach(thread)
}

/// What ``startPlainThread(_:)`` hands its thread.
final class PlainThreadWork: Sendable {
    let work: @Sendable () -> Void
    init(_ work: @escaping @Sendable () -> Void) { self.work = work }
}

/// What each send of a test reported: its index's outcomes, in the order they came.
@TestLoop
final class SendLog {
    private(set) var outcomes: [[UVError?]]
    private var count = 0
    let done = Confirmation()

    init(expected: Int) {
        outcomes = Array(repeating: [], count: expected)
        if expected == 0 { done.signal() }
    }

    func record(_ index: Int, _ error: UVError?) {
        outcomes[index].append(error)
        count += 1
        if count == outcomes.count { done.signal() }
    }
}

/// A value written inside a callback and read by the test afterwards.
@TestLoop
final class Box<Value> {
    var value: Value
    init(_ value: Value) { self.value = value }
}

/// A handle that, on the first datagram it receives, queues `sends` from inside its receive
/// callback (so they are flushed together after that read batch), each with a callback that
/// records its outcome under its own index; and the send queue's length right after queueing.
@TestLoop
func relayQueueing(_ sends: [([UInt8], SocketAddress)]) throws -> (UDPHandle, SendLog, Box<Int>) {
    let relay = try boundHandle(sends.first.map { $0.1.family == .ipv6 ? "::" : "127.0.0.1" } ?? "127.0.0.1")
    let log = SendLog(expected: sends.count)
    let queued = Box(-1)
    try relay.startReceiving { handle, result in
        guard case .success = result, queued.value < 0 else { return }
        for (index, (bytes, destination)) in sends.enumerated() {
            do {
                try handle.send(bytes, to: destination) { _, error in log.record(index, error) }
            } catch {
                log.record(index, error as? UVError ?? .invalidArgument)
            }
        }
        queued.value = handle.sendQueueCount
    }
    return (relay, log, queued)
}

/// `UDPHandle.send(contentsOf:)` and waits for its failures.
@TestLoop
func sendBatch(_ sender: UDPHandle, _ datagrams: [Datagram]) async throws -> [(index: Int, error: UVError)] {
    let failures = Box<[(index: Int, error: UVError)]>([])
    let done = Confirmation()
    try sender.send(contentsOf: datagrams) { _, reported in
        failures.value = reported
        done.signal()
    }
    await done.wait()
    return failures.value
}

/// Sends an end marker from `sender` to `target` and returns the sequence numbers `inbox` gets
/// before it: everything `sender` had sent there.
@TestLoop
func arrivals(at inbox: Inbox, after sender: UDPHandle, to target: SocketAddress) async throws -> [Int] {
    let marker = 1_000_000
    #expect(try await sendAndWait(sender, [payload(marker)], to: target) == nil)
    var seen: [Int] = []
    while true {
        let value = sequence(of: try await inbox.datagram())
        if value == marker { return seen }
        seen.append(value)
    }
}

/// Sends an end marker from `sender` to `receiver` and returns the sequence numbers `receiver`
/// gets before it.
func arrivals(at receiver: UDPSocket, after sender: UDPSocket) async throws -> [Int] {
    let marker = 1_000_000
    try await sender.send(payload(marker), to: receiver.localAddress)
    return try await withDeadline("the end marker", seconds: 30) {
        var seen: [Int] = []
        while true {
            let value = sequence(of: try await receiver.receive())
            if value == marker { return seen }
            seen.append(value)
        }
    }
}

/// `UDPSocket.send(contentsOf:)` of `count` datagrams to `receiver`, those at `bad` to
/// 127.255.255.255 (EACCES without broadcast); the `BatchSendError` it throws, if any.
func socketBatch(_ sender: UDPSocket, to receiver: UDPSocket, bad: [Int], count: Int) async throws -> BatchSendError? {
    let broadcast = try SocketAddress(ip: "127.255.255.255", port: receiver.localAddress.port)
    let batch = (0..<count).map { index in
        Datagram(payload: payload(index), remote: bad.contains(index) ? broadcast : receiver.localAddress)
    }
    do {
        try await sender.send(contentsOf: batch)
        return nil
    } catch let error as BatchSendError {
        return error
    }
}

/// The socket's statistics, after checking `received == delivered + droppedByPolicy + queued`.
func checkedStatistics(_ socket: UDPSocket) async throws -> UDPSocket.Statistics {
    let stats = await socket.statistics
    #expect(stats.datagramsReceived == stats.datagramsDelivered + stats.datagramsDroppedByPolicy + stats.datagramsQueued, "\(stats)")
    #expect(stats.datagramsQueued >= 0, "\(stats)")
    return stats
}

/// Sends from a detached task (off the loop) on a connected socket, as fast as it can, until a
/// transient error has been counted (or 5,000 sends); returns how many went and what was thrown.
func tightSends(_ socket: UDPSocket) async throws -> (sent: Int, thrown: [String]) {
    try await withDeadline("the tight send loop", seconds: 60) {
        await Task.detached { () -> (Int, [String]) in
            var sent = 0
            var thrown: [String] = []
            while sent < 5_000 {
                do {
                    try await socket.send(payload(sent))
                } catch {
                    thrown.append("\(error)")
                }
                sent += 1
                if sent % 8 == 0, await socket.statistics.transientErrorCount > 0 { break }
            }
            return (sent, thrown)
        }.value
    }
}

/// The first error published on the socket's `transientErrors`.
func firstTransientError(_ socket: UDPSocket) async -> UVError? {
    for await error in socket.transientErrors { return error }
    return nil
}

/// A new IPv4 UDP socket at a descriptor number of 700 or more, away from the numbers the
/// process's other tests use, so a number can be freed and taken again without a race.
func highUDPSocket() throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    try #require(fd >= 0)
    defer { close(fd) }
    let high = fcntl(fd, F_DUPFD_CLOEXEC, 700)
    try #require(high >= 700)
    return high
}

/// Offers `fd` to a new handle on the test loop: "adopted" (the handle is closed again, which
/// closes the descriptor), or the name of the error.
func adopt(_ fd: Int32) async throws -> String {
    try await testLoop.submit { () -> String in
        let handle = try UDPHandle(loop: testLoop)
        defer { handle.close() }
        do {
            try handle.open(fd)
            return "adopted"
        } catch let error as UVError {
            return error.name
        }
    }
}

/// IPPROTO_UDPLITE (not exported by Swift's Glibc module).
let udpLiteProtocol: Int32 = 136

/// Whether an IPv4 datagram socket of `proto` can be created here.
func canOpen(protocol proto: Int32) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), proto)
    guard fd >= 0 else { return false }
    close(fd)
    return true
}

/// `open(fd)` refuses a datagram socket of `proto` with EPROTONOSUPPORT and leaves it open.
func refusesProtocol(_ proto: Int32) async throws {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), proto)
    try #require(fd >= 0)
    let outcome = try await adopt(fd)
    if outcome == "adopted" {
        Issue.record("a datagram socket of protocol \(proto) was adopted as UDP")  // the handle closed it
        return
    }
    #expect(outcome == "EPROTONOSUPPORT")
    #expect(fcntl(fd, F_GETFD) != -1, "the refused descriptor is still open")
    #expect(socketOption(fd, SOL_SOCKET, SO_PROTOCOL) == proto)
    close(fd)
}

/// For the exit tests: a handle bound to 127.0.0.1 on a loop of its own (receiving, if asked),
/// carried off that loop; nil if it cannot be made.
func handleOffItsLoop(receiving: Bool) async -> Smuggled<UDPHandle>? {
    let loop = UVLoop(name: "off-loop-read")
    return try? await loop.submit { () -> Smuggled<UDPHandle> in
        let handle = try UDPHandle(loop: loop, family: .ipv4)
        try handle.bind(SocketAddress("127.0.0.1:0"))
        if receiving { try handle.startReceiving { _, _ in } }
        return Smuggled(handle)
    }
}

/// In debug builds, the exit test's standard error names what was read off the loop.
func expectTrapMessage(_ result: ExitTest.Result?, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #if DEBUG
    let text = result.map { String(decoding: $0.standardErrorContent, as: UTF8.self) } ?? ""
    #expect(text.contains("\(what) must run on UVLoop"), "standard error: \(text)", sourceLocation: sourceLocation)
    #endif
}

/// The first line of a small file, without its newline.
func readLine(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var buffer = [CChar](repeating: 0, count: 256)
    guard fgets(&buffer, Int32(buffer.count), file) != nil else { return nil }
    let bytes = buffer.prefix { $0 != 0 && $0 != 10 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

/// The names of this process's threads (/proc/self/task/*/comm).
func threadNames() -> [String] {
    guard let directory = opendir("/proc/self/task") else { return [] }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        let id = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        guard id.first?.isNumber == true, let name = readLine("/proc/self/task/\(id)/comm") else { continue }
        names.append(name)
    }
    return names
}

/// Runs `reliability-tool` with `arguments`, with a generous deadline (then it is terminated).
func runTool(_ arguments: [String]) async throws -> ChildResult {
    let child = try Child([reliabilityTool] + arguments)
    guard let result = await outcome(within: 90, { await child.wait() })?.value else {
        child.terminate()
        throw ToolTimedOut(arguments: arguments)
    }
    return result
}

/// `reliability-tool` did not finish within its deadline.
struct ToolTimedOut: Error, CustomStringConvertible {
    let arguments: [String]
    var description: String { "reliability-tool \(arguments.joined(separator: " ")) did not finish in time" }
}

extension ChildResult {
    /// The tool's `CHECK <name> ok|FAIL <detail>` lines, by name.
    var checks: [String: (ok: Bool, detail: String)] {
        var checks: [String: (ok: Bool, detail: String)] = [:]
        for line in output.split(separator: "\n") where line.hasPrefix("CHECK ") {
            let parts = line.split(separator: " ", maxSplits: 3).map(String.init)
            guard parts.count >= 3 else { continue }
            checks[parts[1]] = (parts[2] == "ok", parts.count > 3 ? parts[3] : "")
        }
        return checks
    }
}

/// Log entries captured by ``CapturingLogHandler``.
final class LogSink: @unchecked Sendable {
    // Safe to share: `stored` is only touched under `lock`.
    private let lock = PosixLock()
    private var stored: [(level: Logger.Level, message: String)] = []
    func add(_ level: Logger.Level, _ message: String) { lock.withLock { stored.append((level, message)) } }
    var entries: [(level: Logger.Level, message: String)] { lock.withLock { stored } }
}

/// A swift-log handler that keeps every entry in a ``LogSink``.
struct CapturingLogHandler: LogHandler {
    let sink: LogSink
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    var logLevel: Logger.Level = .trace

    func log(event: LogEvent) {
        sink.add(event.level, "\(event.message)")
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
}
