import AsyncUDP
import Glibc
import Testing
import TestSupport

/// Whether ::1 can be bound here (IPv6 tests skip without it).
private let ipv6Available: Bool = {
    let fd = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in6()
    address.sin6_family = sa_family_t(AF_INET6)
    address.sin6_addr = in6addr_loopback
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) == 0 }
    }
}()

private let loopback = UInt32(if_nametoindex("lo"))

/// `Configuration.receiveMetadata` and `send(_:to:options:)` on the async layer, on real
/// loopback sockets.
@Suite("UDPSocket: receive metadata and send options", .timeLimit(.minutes(1)))
struct SocketMetadataTests {
    static let all = UDPSocket.Configuration(receiveMetadata: .all)

    @Test("a server on 0.0.0.0 sees 127.0.0.1 and 127.0.0.2 as destinations; replies from the matching source reach the client from it")
    func destinationsIPv4() async throws {
        let server = try await UDPSocket(bindingTo: SocketAddress("0.0.0.0:0"), configuration: Self.all)
        let client = try await openSocket("127.0.0.1")
        let port = server.localAddress.port
        for ip in ["127.0.0.2", "127.0.0.1", "127.0.0.2"] {
            let target = try SocketAddress(ip: ip, port: port)
            try await client.send(Array(ip.utf8), to: target)
            let query = try await server.receive()
            let metadata = try #require(query.metadata)
            #expect(metadata.destination == target)
            #expect(metadata.interfaceIndex == loopback)
            try await server.send(query.payload, to: query.remote, options: SendOptions(source: metadata.destination))
            let reply = try await client.receive()
            #expect(reply.payload == Array(ip.utf8))
            #expect(reply.remote == target, "the client sees the source it sent to")
        }
        await client.close()
        await server.close()
    }

    @Test("IPv6: a server on [::] sees ::1 and replies from it", .enabled(if: ipv6Available))
    func destinationsIPv6() async throws {
        let server = try await UDPSocket(bindingTo: SocketAddress("[::]:0"), flags: .ipv6Only, configuration: Self.all)
        let client = try await openSocket("::1")
        let target = try SocketAddress(ip: "::1", port: server.localAddress.port)
        try await client.send(Array("q".utf8), to: target)
        let query = try await server.receive()
        #expect(query.metadata?.destination == target)
        #expect(query.metadata?.interfaceIndex == loopback)
        try await server.send(Array("r".utf8), to: query.remote, options: SendOptions(source: query.metadata?.destination))
        #expect(try await client.receive().remote == target)
        await client.close()
        await server.close()
    }

    @Test("an ECN codepoint set on send is read back on receive, from tasks off and on the loop",
          arguments: ["127.0.0.1", "::1"])
    func ecn(ip: String) async throws {
        guard ip == "127.0.0.1" || ipv6Available else { return }
        let loop = UVLoop(name: "ecn-\(ip)")
        let receiver = try await openSocket(ip, configuration: .init(receiveMetadata: .ecn))
        let sender = try await openSocket(ip, loop: loop)
        let codepoints = ECNCodepoint.allCases + ECNCodepoint.allCases.reversed()
        for (index, codepoint) in codepoints.enumerated() {
            let bytes = payload(index)
            if index.isMultiple(of: 2) {
                try await sender.send(bytes, to: receiver.localAddress, options: SendOptions(ecn: codepoint))
            } else {
                // On the sender's loop: the handle's own send path.
                try await Task(executorPreference: loop) {
                    try await sender.send(bytes[...], to: receiver.localAddress, options: SendOptions(ecn: codepoint))
                }.value
            }
            let datagram = try await receiver.receive()
            #expect(sequence(of: datagram) == index)
            #expect(datagram.metadata?.ecn == codepoint, "datagram \(index)")
            #expect(datagram.metadata?.receiveTime == nil && datagram.metadata?.destination == nil)
        }
        await sender.close()
        await receiver.close()
        await loop.shutdown()
    }

    @Test("a connected socket sends with options too")
    func connected() async throws {
        let receiver = try await openSocket(configuration: .init(receiveMetadata: [.ecn, .packetInfo]))
        let sender = try await UDPSocket(connectingTo: receiver.localAddress)
        try await sender.send(Array("c".utf8), options: SendOptions(source: SocketAddress("127.0.0.1:0"), ecn: .ect1))
        let datagram = try await receiver.receive()
        #expect(datagram.metadata?.ecn == .ect1)
        #expect(datagram.metadata?.destination == receiver.localAddress)
        await sender.close()
        await receiver.close()
    }

    @Test("a receive timestamp lies between a clock reading before the send and one after the receive")
    func timestamp() async throws {
        let receiver = try await openSocket(configuration: .init(receiveMetadata: .timestamp))
        let sender = try await openSocket()
        var previous: WallClockTime?
        for round in 0..<10 {
            let before = WallClockTime.now
            try await sender.send(payload(round), to: receiver.localAddress)
            let datagram = try await receiver.receive()
            let after = WallClockTime.now
            let stamp = try #require(datagram.metadata?.receiveTime)
            #expect(before <= stamp && stamp <= after, "\(before) <= \(stamp) <= \(after)")
            if let previous { #expect(previous <= stamp) }
            previous = stamp
        }
        await sender.close()
        await receiver.close()
    }

    @Test("metadata is nil when not enabled, through receive() and datagrams")
    func offByDefault() async throws {
        let receiver = try await openSocket()
        let sender = try await openSocket()
        #expect(receiver.configuration.receiveMetadata == [])
        try await sender.send(Array("a".utf8), to: receiver.localAddress, options: SendOptions(ecn: .ect0))
        try await sender.send(Array("b".utf8), to: receiver.localAddress)
        #expect(try await receiver.receive().metadata == nil)
        let rest = try await receive(1, from: receiver)
        #expect(rest.map(\.metadata) == [nil])
        await sender.close()
        await receiver.close()
    }

    @Test("a source of the wrong family throws a typed error before anything is sent, and is counted")
    func wrongFamily() async throws {
        let server = try await UDPSocket(bindingTo: SocketAddress("0.0.0.0:0"))
        let target = try SocketAddress(ip: "127.0.0.1", port: server.localAddress.port)
        await #expect(throws: UVError.addressFamilyNotSupported) {
            try await server.send([1], to: target, options: SendOptions(source: SocketAddress("[::1]:0")))
        }
        await #expect(throws: UVError.invalidArgument) {
            try await server.send([1], to: target, options: SendOptions(source: SocketAddress("224.0.0.1:0")))
        }
        let stats = await server.statistics
        #expect(stats.sendErrorCount == 2)
        #expect(stats.datagramsSent == 0)
        await server.close()
    }
}
