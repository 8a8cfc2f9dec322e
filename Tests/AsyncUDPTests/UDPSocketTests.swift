import AsyncUDP
import Testing
import TestSupport

@Suite("UDPSocket", .timeLimit(.minutes(1)))
struct UDPSocketTests {
    @Test("the DESIGN.md echo loop, as written, answers a client")
    func designEchoLoop() async throws {
        let server = Task {
            try await withUDPSocket(bindingTo: SocketAddress("0.0.0.0:9000")) { udp in
                for try await datagram in udp.datagrams {
                    try await udp.send(datagram.payload, to: datagram.remote)
                }
            }
        }
        let client = try await openSocket()
        // The server may not be bound yet when the first ping goes: ping until a reply arrives.
        let target = try SocketAddress("127.0.0.1:9000")
        let pinger = Task {
            for round in 0..<2000 where !Task.isCancelled {
                try await client.send(payload(round), to: target)
                try await Task.sleep(for: .milliseconds(5))
            }
        }
        var replies = client.datagrams.makeAsyncIterator()
        let echo = try #require(try await replies.next())
        pinger.cancel()
        #expect(echo.remote == target)
        #expect(echo.payload.count == 8)
        server.cancel()
        // Cancelled, the loop ends normally, or a send it was making throws CancellationError.
        if case .failure(let error) = await server.result {
            #expect(error is CancellationError)
        }
        await client.close()
    }

    @Test("ping-pong over IPv4 and IPv6; addresses are the peers'", arguments: ["127.0.0.1", "::1"])
    func pingPong(ip: String) async throws {
        let a = try await openSocket(ip), b = try await openSocket(ip)
        var aIn = a.datagrams.makeAsyncIterator()
        var bIn = b.datagrams.makeAsyncIterator()
        for round in 0..<100 {
            try await a.send(payload(round), to: b.localAddress)
            let ping = try #require(try await bIn.next())
            #expect(ping.remote == a.localAddress)
            try await b.send(ping.payload, to: ping.remote)
            let pong = try #require(try await aIn.next())
            #expect(sequence(of: pong) == round)
        }
        let stats = await a.statistics
        #expect(stats.datagramsSent == 100 && stats.datagramsReceived == 100 && stats.datagramsDelivered == 100)
        await a.close()
        await b.close()
    }

    @Test("1,000 concurrent send tasks: every payload arrives exactly once")
    func concurrentSends() async throws {
        let receiver = try await openSocket(configuration: .init(receiveQueueLimit: 2000, receiveBufferSize: 4 << 20))
        let sender = try await openSocket()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<1000 {
                group.addTask { try await sender.send(payload(index, size: 32), to: receiver.localAddress) }
            }
            try await group.waitForAll()
        }
        let got = try await receive(1000, from: receiver)
        #expect(Set(got.map(sequence(of:))) == Set(0..<1000))
        #expect(got.count == 1000)
        let stats = await sender.statistics
        #expect(stats.datagramsSent == 1000)
        #expect(stats.sendErrorCount == 0)
        await receiver.close()
        await sender.close()
    }

    @Test("several buffers make one datagram; sizes, zero-length and errors are per send")
    func sendShapes() async throws {
        let a = try await openSocket(), b = try await openSocket()
        var inbox = b.datagrams.makeAsyncIterator()
        try await a.send([Array("ab"), [], Array("cd")], to: b.localAddress)
        #expect(try await inbox.next()?.payload == Array("abcd"))
        try await a.send([UInt8](), to: b.localAddress)
        let empty = try #require(try await inbox.next())
        #expect(empty.payload.isEmpty && empty.remote == a.localAddress)
        await #expect(throws: UVError.invalidArgument) { try await a.send([[UInt8]](), to: b.localAddress) }
        await #expect(throws: UVError.messageTooLong) { try await a.send([UInt8](repeating: 0, count: 65_508), to: b.localAddress) }
        try await a.send([UInt8](repeating: 7, count: 65_507), to: b.localAddress)
        #expect(try await inbox.next()?.payload.count == 65_507)
        await #expect(throws: UVError.permissionDenied) { try await a.send(Array("x"), to: SocketAddress("127.255.255.255:9")) }
        await #expect(throws: UVError.destinationAddressRequired) { try await a.send(Array("x")) }
        try await a.send(Array("still fine"), to: b.localAddress)
        #expect(try await inbox.next()?.payload == Array("still fine"))
        #expect(await a.statistics.sendErrorCount == 3)  // the empty list is refused before reaching the loop
        await a.close()
        await b.close()
    }

    @Test("a datagram larger than maximumDatagramSize arrives truncated and is counted")
    func truncation() async throws {
        let a = try await openSocket()
        let b = try await openSocket(configuration: .init(maximumDatagramSize: 4))
        try await a.send(Array("truncated"), to: b.localAddress)
        let datagram = try #require(try await receive(1, from: b).first)
        #expect(datagram.isTruncated && datagram.payload == Array("trun"))
        #expect(await b.statistics.datagramsTruncated == 1)
        await a.close()
        await b.close()
    }

    @Test("bad configurations are refused", arguments: [
        UDPSocket.Configuration(receiveQueueLimit: 0),
        UDPSocket.Configuration(receiveQueueLimit: 10, overflowPolicy: .pauseReading(highWatermark: 20, lowWatermark: 5)),
        UDPSocket.Configuration(overflowPolicy: .pauseReading(highWatermark: 5, lowWatermark: 5)),
        UDPSocket.Configuration(maximumDatagramSize: 0),
        UDPSocket.Configuration(maximumDatagramSize: 70_000),
    ])
    func badConfiguration(configuration: UDPSocket.Configuration) async {
        await #expect(throws: UVError.invalidArgument) { try await openSocket(configuration: configuration) }
    }

    @Test("binding a port in use throws EADDRINUSE; .reuseAddress shares it")
    func bindErrors() async throws {
        let a = try await openSocket()
        await #expect(throws: UVError.addressInUse) { try await UDPSocket(bindingTo: a.localAddress) }
        let b = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), flags: .reuseAddress)
        let c = try await UDPSocket(bindingTo: b.localAddress, flags: .reuseAddress)
        #expect(c.localAddress == b.localAddress)
        for socket in [a, b, c] { await socket.close() }
    }

    @Test("options and multicast membership through the actor")
    func options() async throws {
        let socket = try await UDPSocket(bindingTo: SocketAddress("0.0.0.0:0"), flags: .reuseAddress)
        try await socket.setTTL(32)
        await #expect(throws: UVError.invalidArgument) { try await socket.setTTL(0) }
        try await socket.setMulticastTTL(0)
        try await socket.setMulticastLoop(true)
        try await socket.setBroadcast(true)
        try await socket.setMulticastInterface("127.0.0.1")
        try await socket.setSendBufferSize(10_000)
        #expect([10_000, 20_000].contains(try await socket.sendBufferSize()))
        try await socket.setReceiveBufferSize(10_000)
        #expect([10_000, 20_000].contains(try await socket.receiveBufferSize()))
        let group = "239.255.\(Int.random(in: 1...254)).\(Int.random(in: 1...254))"
        try await socket.joinGroup(group, interface: "127.0.0.1")
        try await socket.send(Array("to group"), to: SocketAddress(ip: group, port: socket.localAddress.port))
        #expect(try await receive(1, from: socket).first?.payload == Array("to group"))
        try await socket.leaveGroup(group, interface: "127.0.0.1")
        await #expect(throws: UVError.addressNotAvailable) { try await socket.leaveGroup(group, interface: "127.0.0.1") }
        let ssm = "232.9.\(Int.random(in: 1...254)).\(Int.random(in: 1...254))"
        try await socket.joinGroup(ssm, source: "127.0.0.1", interface: "127.0.0.1")
        try await socket.leaveGroup(ssm, source: "127.0.0.1", interface: "127.0.0.1")
        await socket.close()
    }
}
