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

}
