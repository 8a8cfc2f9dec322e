import Glibc
import Logging
import Synchronization
import Testing
import TestSupport
@testable import AsyncUDP
@testable import UVCore

/// Issue 9, defects 9-12: pauseReading, descriptor ownership, adoption, off-thread reads.
extension CoreDefectTests {
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
