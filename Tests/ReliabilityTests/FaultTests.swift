import AsyncUDP
import Glibc
import Synchronization
import Testing
import TestSupport

@Suite("Faults: floods, closes, shutdowns and vanishing peers", .timeLimit(.minutes(3)))
struct FaultTests {
    @Test("close during a flood from another task: the flood ends with ClosedHandleError, the consumer ends normally, the counts add up")
    func closeDuringFlood() async throws {
        let senderLoop = UVLoop(name: "flood-close")
        let receiver = try await openSocket(configuration: .init(receiveQueueLimit: 512, receiveBufferSize: 1 << 20))
        let sender = try await openSocket(loop: senderLoop)
        let consumer = Task { () -> Int in
            var seen = 0
            for try await _ in receiver.datagrams { seen += 1 }
            return seen
        }
        let target = receiver.localAddress
        let flood = Task { () -> (sent: Int, ending: String) in
            var sent = 0
            do {
                while true {
                    try await sender.send(payload(sent, size: 200), to: target)
                    sent += 1
                    if sent % 16 == 0 { await Task.yield() }  // send() may not suspend
                }
            } catch {
                return (sent, "\(type(of: error))")
            }
        }
        try await waitUntil("the flood is under way", seconds: 30) { await receiver.statistics.datagramsReceived >= 2_000 }
        // Close both ends from this task while the flood runs.
        async let closeSender: Void = sender.close()
        async let closeReceiver: Void = receiver.close()
        _ = await (closeSender, closeReceiver)
        let (sent, ending) = try await withDeadline("the flood to end", seconds: 30) { await flood.value }
        #expect(ending == "ClosedHandleError")
        #expect(sent >= 2_000)
        let seen = try await withDeadline("the consumer to end", seconds: 30) { try await consumer.value }
        let stats = await receiver.statistics
        #expect(stats.datagramsDelivered == seen)
        #expect(stats.datagramsDelivered + stats.datagramsDroppedByPolicy + stats.datagramsQueued == stats.datagramsReceived)
        #expect(await sender.statistics.datagramsSent == sent)
        await senderLoop.shutdown()
    }

    @Test("UVLoop.shutdown() with 20 sockets open, consumers iterating and 80 senders in flight: every call returns or throws")
    func shutdownUnderLoad() async throws {
        let loop = UVLoop(name: "shutdown-load")
        var sockets: [UDPSocket] = []
        for _ in 0..<20 { sockets.append(try await openSocket(loop: loop)) }
        let consumers = sockets.map { socket in
            Task { () -> String in
                do { for try await _ in socket.datagrams {}; return "ended" } catch { return "\(type(of: error))" }
            }
        }
        let all = sockets
        let senders = all.indices.flatMap { index in
            (0..<4).map { lane in
                Task { () -> String in
                    let socket = all[index]
                    let target = all[(index + lane + 1) % all.count].localAddress
                    do {
                        var count = 0
                        while true {
                            try await socket.send(payload(count), to: target)
                            count += 1
                            if count % 8 == 0 { await Task.yield() }
                        }
                    } catch {
                        return "\(type(of: error))"
                    }
                }
            }
        }
        try await waitUntil("traffic on every socket", seconds: 30) {
            for socket in sockets where await socket.statistics.datagramsReceived == 0 { return false }
            return true
        }
        await loop.shutdown()
        let consumerEnds = try await withDeadline("consumers to end", seconds: 30) {
            var ends: [String] = []
            for consumer in consumers { ends.append(await consumer.value) }
            return ends
        }
        #expect(consumerEnds.allSatisfy { $0 == "ended" }, "\(consumerEnds)")
        let senderEnds = try await withDeadline("senders to end", seconds: 30) {
            var ends: [String] = []
            for sender in senders { ends.append(await sender.value) }
            return ends
        }
        #expect(senderEnds.count == 80)
        #expect(senderEnds.allSatisfy { $0 == "ClosedHandleError" }, "\(Set(senderEnds))")
        for socket in sockets {
            #expect(await socket.isClosed)
            await socket.close()
        }
        await #expect(throws: ClosedHandleError.self) { try await openSocket(loop: loop) }
        await loop.shutdown()  // idempotent
    }

    @Test("2,500 sockets on one port with REUSEADDR and tiny buffers, closed from a receive callback while sends and reads are pending: every send and close callback fires once")
    func reuseAddressCrowd() async throws {
        // In a child process: with 2,500 descriptors open, Foundation's Process.run() (which
        // the example tests use, in this same process) overreads a readdir buffer and crashes.
        let result = try await run([reliabilityTool, "reuse-crowd", "--sockets", "2500", "--sends-each", "3"])
        #expect(result.status == 0, "\(result)")
        #expect(result.int("closes") == 2_501)
        let queued = try #require(result.int("sendsQueued"))
        #expect(queued >= 2_500 * 3)
        #expect(result.int("sendCallbacks") == queued, "every send callback fired: \(result)")
        #expect(result.int("duplicateCallbacks") == 0)
        #expect((result.int("canceled") ?? 0) > 0, "some sends were still queued when their handles closed")
        #expect(result.int("openHandlesAfter") == 0)
    }

    @Test("a peer that disappears on a connected socket: ECONNREFUSED is reported, the stream goes on, and the peer's return is seen")
    func peerDisappears() async throws {
        let server = try await openSocket()
        let port = server.localAddress
        let echo = Task {
            for try await datagram in server.datagrams { try await server.send(datagram.payload, to: datagram.remote) }
        }
        let client = try await UDPSocket(connectingTo: port)
        var replies = client.datagrams.makeAsyncIterator()
        for round in 0..<10 {
            try await client.send(payload(round))
            #expect(try await replies.next().map(sequence(of:)) == round)
        }
        await server.close()
        try await echo.value
        // The peer is gone: the kernel answers with ICMP port unreachable.
        var errors = client.transientErrors.makeAsyncIterator()
        try await client.send(payload(100))
        #expect(await errors.next() == .connectionRefused)
        try await client.send(payload(101))  // still accepted
        #expect(await client.statistics.transientErrorCount >= 1)
        #expect(!(await client.isClosed))
        // The peer comes back on the same port: the same stream receives its replies.
        let returned = try await UDPSocket(bindingTo: port)
        let echo2 = Task {
            for try await datagram in returned.datagrams { try await returned.send(datagram.payload, to: datagram.remote) }
        }
        try await client.send(payload(200))
        var next = try await replies.next()
        while let datagram = next, sequence(of: datagram) != 200 { next = try await replies.next() }
        #expect(next.map(sequence(of:)) == 200)
        await returned.close()
        try await echo2.value
        await client.close()
        #expect(try await replies.next() == nil)
    }

    @Test("unroutable destination in a namespace with no routes: ENETUNREACH counted, loop responsive",
          .enabled(if: namespacesAvailable, namespaceSkipReason))
    func unroutable() async throws {
        try await withNamespaces { network in
            let ns = try await network.addNamespace("noroute")
            let result = try await run(network.tool(in: ns, ["send", "--to", "10.255.0.1:9", "--count", "5000"]))
            #expect(result.status == 0, "\(result)")
            #expect(result.int("attempted") == 5_000)
            #expect(result.int("sent") == 0)
            #expect(result.fields["errors"] == "ENETUNREACH:5000", "\(result)")
            #expect(result.int("sendErrors") == 5_000)
            #expect(result.fields["loopbackEcho"] == "ok")
            #expect((result.int("maxLoopLatencyMs") ?? .max) < 2_000, "\(result)")
        }
    }
}

