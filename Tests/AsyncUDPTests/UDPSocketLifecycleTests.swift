import AsyncUDP
import Testing
import TestSupport

@Suite("UDPSocket: flow control, cancellation, close", .timeLimit(.minutes(2)))
struct UDPSocketLifecycleTests {
    @Test("a flood at a consumer that does not read: the queue stays within its limit and every datagram is accounted for")
    func floodWithoutReading() async throws {
        let senderLoop = UVLoop(name: "flood-sender")
        let limit = 256
        let receiver = try await openSocket(configuration: .init(receiveQueueLimit: limit, receiveBufferSize: 1 << 20))
        let sender = try await openSocket(loop: senderLoop)
        let total = 100_000
        try await withTaskExecutorPreference(senderLoop) {
            for index in 0..<total {
                try await sender.send(payload(index, size: 64), to: receiver.localAddress)
            }
        }
        // Every datagram was either read by the library or dropped by the kernel.
        try await waitUntil("all datagrams read or dropped by the kernel") {
            let stats = await receiver.statistics
            return stats.datagramsReceived + (stats.datagramsDroppedByKernel ?? 0) == total
        }
        let stats = await receiver.statistics
        #expect(stats.datagramsDroppedByKernel != nil)
        #expect(stats.peakDatagramsQueued <= limit)
        #expect(stats.datagramsQueued == limit)
        #expect(stats.datagramsDelivered == 0)
        #expect(stats.datagramsDelivered + stats.datagramsDroppedByPolicy + stats.datagramsQueued == stats.datagramsReceived)
        #expect(stats.datagramsDroppedByPolicy > 0)
        // The queued ones are the oldest (drop newest): the first datagrams sent.
        let first = try await receive(limit, from: receiver)
        #expect(first.map(sequence(of:)) == Array(first.map(sequence(of:)).sorted()))
        await receiver.close()
        await sender.close()
        await senderLoop.shutdown()
    }

    @Test("drop oldest keeps the newest datagrams")
    func dropOldest() async throws {
        let receiver = try await openSocket(configuration: .init(receiveQueueLimit: 10, overflowPolicy: .dropOldest, receiveBufferSize: 1 << 20))
        let sender = try await openSocket()
        for index in 0..<200 { try await sender.send(payload(index), to: receiver.localAddress) }
        try await waitUntil("all read") {
            let stats = await receiver.statistics
            return stats.datagramsReceived + (stats.datagramsDroppedByKernel ?? 0) == 200
        }
        let stats = await receiver.statistics
        #expect(stats.datagramsDroppedByKernel == 0)
        #expect(stats.datagramsDroppedByPolicy == 190)
        let kept = try await receive(10, from: receiver).map(sequence(of:))
        #expect(kept == Array(190..<200))
        await receiver.close()
        await sender.close()
    }

    @Test("pause reading stops at the high watermark and resumes at the low one, dropping nothing")
    func pauseReading() async throws {
        let senderLoop = UVLoop(name: "pause-sender")
        let receiver = try await openSocket(configuration: .init(
            receiveQueueLimit: 100, overflowPolicy: .pauseReading(highWatermark: 60, lowWatermark: 10),
            receiveBufferSize: 1 << 20))
        let sender = try await openSocket(loop: senderLoop)
        let total = 500
        try await withTaskExecutorPreference(senderLoop) {
            for index in 0..<total { try await sender.send(payload(index, size: 100), to: receiver.localAddress) }
        }
        try await waitUntil("reading paused") { await receiver.statistics.readingPauses == 1 }
        let paused = await receiver.statistics
        #expect(paused.datagramsQueued >= 60 && paused.datagramsQueued <= 100)
        #expect(paused.datagramsReceived < total, "reading stopped: the rest waits in the kernel")
        // Now consume everything: reading resumes each time the queue falls to 10.
        let all = try await receive(total, from: receiver)
        #expect(all.map(sequence(of:)) == Array(0..<total))
        let stats = await receiver.statistics
        #expect(stats.datagramsDroppedByPolicy == 0)
        #expect(stats.datagramsDroppedByKernel == 0)
        #expect(stats.peakDatagramsQueued <= 100)
        #expect(stats.readingPauses >= 1)
        await receiver.close()
        await sender.close()
        await senderLoop.shutdown()
    }

    @Test("cancelling the consuming task ends that loop only: the socket keeps receiving and the next loop continues")
    func cancelConsumer() async throws {
        let socket = try await openSocket()
        let sender = try await openSocket()
        try await sender.send(Array("one"), to: socket.localAddress)
        let consumer = Task {
            var seen = 0
            for try await _ in socket.datagrams { seen += 1 }
            return seen
        }
        try await waitUntil("first delivered") { await socket.statistics.datagramsDelivered == 1 }
        consumer.cancel()
        #expect(try await consumer.value == 1)
        // The socket still receives, and a new iteration gets what came after.
        try await sender.send(Array("two"), to: socket.localAddress)
        var iterator = socket.datagrams.makeAsyncIterator()
        #expect(try await iterator.next()?.payload == Array("two"))
        await socket.close()
        await #expect(throws: ClosedHandleError.self) { try await socket.send(Array("x"), to: sender.localAddress) }
        await sender.close()
    }

    @Test("a send cancelled before it is queued throws CancellationError and nothing arrives")
    func cancelledSend() async throws {
        let receiver = try await openSocket()
        let sender = try await openSocket()
        let attempt = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await sender.send(Array("cancelled"), to: receiver.localAddress)
        }
        await #expect(throws: CancellationError.self) { try await attempt.value }
        try await sender.send(Array("marker"), to: receiver.localAddress)
        let first = try #require(try await receive(1, from: receiver).first)
        #expect(first.payload == Array("marker"))
        #expect(await sender.statistics.datagramsSent == 1)
        await receiver.close()
        await sender.close()
    }

    @Test("close() while a consumer iterates ends its loop normally; sends racing close each finish exactly once")
    func closeWhileIterating() async throws {
        let socket = try await openSocket()
        let peer = try await openSocket(configuration: .init(receiveQueueLimit: 1000))
        try await peer.send(Array("hello"), to: socket.localAddress)
        let consumer = Task {
            var seen: [[UInt8]] = []
            for try await datagram in socket.datagrams { seen.append(datagram.payload) }
            return seen
        }
        try await waitUntil("delivered") { await socket.statistics.datagramsDelivered == 1 }
        let outcomes = try await withThrowingTaskGroup(of: Int?.self) { group in
            for index in 0..<50 {
                group.addTask {
                    do {
                        try await socket.send(payload(index), to: peer.localAddress)
                        return index
                    } catch is ClosedHandleError {
                        return nil
                    }
                }
            }
            group.addTask { await socket.close(); return -1 }
            var results: [Int?] = []
            for try await result in group { results.append(result) }
            return results
        }
        #expect(outcomes.count == 51)
        #expect(try await consumer.value == [Array("hello")])
        let succeeded = Set(outcomes.compactMap { $0 }.filter { $0 >= 0 })
        let arrived = try await receive(succeeded.count, from: peer).map(sequence(of:))
        #expect(Set(arrived) == succeeded)
        #expect(await socket.isClosed)
        await socket.close()  // idempotent
        await peer.close()
    }

    @Test("connected: ECONNREFUSED is a transient error; the stream goes on and later datagrams arrive")
    func connectedRefused() async throws {
        let probe = try await openSocket()
        let port = probe.localAddress
        await probe.close()
        let client = try await UDPSocket(connectingTo: port)
        #expect(client.remoteAddress == port)
        var errors = client.transientErrors.makeAsyncIterator()
        try await client.send(Array("nobody"))
        #expect(await errors.next() == .connectionRefused)
        #expect(await client.statistics.transientErrorCount >= 1)
        let server = try await UDPSocket(bindingTo: port)
        try await client.send(Array("later"))
        let got = try #require(try await receive(1, from: server).first)
        #expect(got.payload == Array("later"))
        try await server.send(Array("reply"), to: got.remote)
        #expect(try await receive(1, from: client).first?.payload == Array("reply"))
        await #expect(throws: UVError.alreadyConnected) { try await client.send(Array("x"), to: port) }
        await client.close()
        await server.close()
    }

    @Test("withUDPSocket closes when the body throws")
    func scopedThrow() async throws {
        struct Boom: Error {}
        var captured: UDPSocket?
        await #expect(throws: Boom.self) {
            try await withUDPSocket(bindingTo: SocketAddress("127.0.0.1:0")) { udp in
                captured = udp
                throw Boom()
            }
        }
        let socket = try #require(captured)
        #expect(await socket.isClosed)
        await #expect(throws: ClosedHandleError.self) { try await socket.send(Array("x"), to: socket.localAddress) }
        await #expect(throws: ClosedHandleError.self) { try await socket.setTTL(3) }
    }

    @Test("withUDPSocket(connectingTo:) sends to its peer and closes afterwards")
    func scopedConnected() async throws {
        let server = try await openSocket()
        var captured: UDPSocket?
        let reply = try await withUDPSocket(connectingTo: server.localAddress) { udp in
            captured = udp
            try await udp.send(Array("query"))
            let query = try #require(try await receive(1, from: server).first)
            try await server.send(Array("answer"), to: query.remote)
            var replies = udp.datagrams.makeAsyncIterator()
            return try await replies.next()?.payload
        }
        #expect(reply == Array("answer"))
        let socket = try #require(captured)
        #expect(await socket.isClosed)
        #expect(await socket.statistics.datagramsDroppedByKernel == 0, "the kernel's count survives close")
        await server.close()
    }

    @Test("withUDPSocket closes when its task is cancelled")
    func scopedCancel() async throws {
        let (stream, continuation) = AsyncStream<UDPSocket>.makeStream()
        let task = Task {
            try await withUDPSocket(bindingTo: SocketAddress("127.0.0.1:0")) { udp in
                continuation.yield(udp)
                for try await _ in udp.datagrams {}
                try Task.checkCancellation()
            }
        }
        var sockets = stream.makeAsyncIterator()
        let socket = try #require(await sockets.next())
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(await socket.isClosed)
        await #expect(throws: ClosedHandleError.self) { try await socket.send(Array("x"), to: socket.localAddress) }
    }

    @Test("the loop-affine path runs on the loop thread and echoes with no hop")
    func loopAffine() async throws {
        let loop = UVLoop(name: "affine")
        let server = try await openSocket(loop: loop)
        let client = try await openSocket()
        let serverTask = Task(executorPreference: loop) {
            var echoed = 0
            for try await datagram in server.datagrams {
                #expect(loop.inLoop)
                try await server.send(datagram.payload, to: datagram.remote)
                #expect(loop.inLoop)
                echoed += 1
            }
            return echoed
        }
        var replies = client.datagrams.makeAsyncIterator()
        for round in 0..<200 {
            try await client.send(payload(round), to: server.localAddress)
            #expect(try await replies.next().map(sequence(of:)) == round)
        }
        await server.close()
        #expect(try await serverTask.value == 200)
        await client.close()
        await loop.shutdown()
    }

    @Test("tight send loops cannot starve other tasks or the loop's I/O")
    func sendLoopsYield() async throws {
        let loop = UVLoop(name: "spin")
        let socket = try await openSocket(loop: loop)
        let sink = try await openSocket()
        // More spinning senders than the cooperative pool has threads, plus one on the loop.
        var spinners: [Task<Void, any Error>] = []
        for _ in 0..<(UVLoopGroup.coreCount * 2) {
            spinners.append(Task.detached {
                while true { try await socket.send([1, 2, 3, 4], to: sink.localAddress) }
            })
        }
        spinners.append(Task(executorPreference: loop) {
            while true { try await socket.send([5, 6, 7, 8], to: sink.localAddress) }
        })
        // The spinners run, and both the loop (actor calls) and the cooperative pool (this test)
        // still get turns: without the yield, this wait never returns.
        try await waitUntil("spinners sent") { await socket.statistics.datagramsSent > 1000 }
        try await loop.submit { }
        _ = try await receive(1, from: sink)
        for spinner in spinners { spinner.cancel() }
        for spinner in spinners {
            await #expect(throws: CancellationError.self) { try await spinner.value }
        }
        await socket.close()
        await sink.close()
        await loop.shutdown()
    }

    @Test("UVLoop.shutdown() with sockets open, a consumer iterating and sends in flight: everything returns")
    func shutdownWithSockets() async throws {
        let loop = UVLoop(name: "shutdown-sockets")
        let socket = try await openSocket(loop: loop)
        let consumer = Task { for try await _ in socket.datagrams {} }
        let senders = Task {
            await withTaskGroup(of: Void.self) { group in
                for index in 0..<100 {
                    group.addTask { try? await socket.send(payload(index), to: socket.localAddress) }
                }
            }
        }
        await loop.shutdown()
        try await consumer.value
        await senders.value
        #expect(await socket.isClosed)
        await #expect(throws: ClosedHandleError.self) { try await socket.send(Array("x"), to: socket.localAddress) }
        await #expect(throws: ClosedHandleError.self) { try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), loop: loop) }
    }
}
