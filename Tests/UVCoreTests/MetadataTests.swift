import Glibc
import Testing
import TestSupport
import UVCore

/// The index of the loopback interface, as the kernel numbers it.
let loopbackIndex = UInt32(if_nametoindex("lo"))

/// Whether ::1 can be bound here (IPv6 tests skip without it).
let hasIPv6Loopback: Bool = {
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

/// Receive metadata and per-send options on the callback layer (`UDPHandle`), on real loopback
/// sockets: packet info, ECN, timestamps, source addresses; the loop's read path and the direct
/// read path.
@Suite("UDPHandle: receive metadata and send options", .timeLimit(.minutes(1)))
@TestLoop
struct HandleMetadataTests {
    /// A server bound to the wildcard address that echoes each datagram from the address it was
    /// sent to, with its ECN codepoint; replies are made inside the receive callback, so they go
    /// through the send queue (sendmmsg) with their control messages.
    @TestLoop
    final class SourceEcho {
        let handle: UDPHandle
        var seen: [Datagram] = []

        init(_ ip: String, flags: UDPFlags = []) throws {
            handle = try boundHandle(ip, flags: flags)
            try handle.setReceiveMetadata(.all)
            try handle.startReceiving { [unowned self] handle, result in
                guard case .success(let datagram) = result else { return }
                seen.append(datagram)
                let options = SendOptions(source: datagram.metadata?.destination, ecn: datagram.metadata?.ecn)
                try? handle.send(datagram.payload, to: datagram.remote, options: options)
            }
        }
    }

    @Test("metadata is nil unless asked for; each option reports only its own field")
    func optIn() async throws {
        let sender = try boundHandle()
        let plain = try boundHandle()
        let plainInbox = try Inbox(plain)
        try sender.send(Array("plain"), to: plain.localAddress(), options: SendOptions(ecn: .ect0))
        let datagram = try await plainInbox.datagram()
        #expect(datagram.payload == Array("plain"))
        #expect(datagram.metadata == nil)
        #expect(plain.receiveMetadata == [])

        let stamped = try boundHandle()
        try stamped.setReceiveMetadata(.timestamp)
        #expect(stamped.receiveMetadata == .timestamp)
        let stampedInbox = try Inbox(stamped)
        try sender.send(Array("stamped"), to: stamped.localAddress(), options: SendOptions(ecn: .ect0))
        let metadata = try #require(try await stampedInbox.datagram().metadata)
        #expect(metadata.receiveTime != nil)
        #expect(metadata.destination == nil && metadata.interfaceIndex == nil && metadata.ecn == nil)

        // Turned off again: nothing.
        try stamped.setReceiveMetadata([])
        try sender.send(Array("off"), to: stamped.localAddress())
        #expect(try await stampedInbox.datagram().metadata == nil)
        await closeAll(sender, plain, stamped)
    }

    @Test("a socket on 0.0.0.0 reports 127.0.0.1 and 127.0.0.2 as destinations and replies from each")
    func packetInfoIPv4() async throws {
        let server = try SourceEcho("0.0.0.0")
        let port = try server.handle.localAddress().port
        let client = try boundHandle("127.0.0.1")
        let inbox = try Inbox(client)
        for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.1"] {
            let target = try SocketAddress(ip: ip, port: port)
            try client.send(Array(ip), to: target)
            let reply = try await inbox.datagram()
            #expect(reply.payload == Array(ip))
            #expect(reply.remote == target, "the reply leaves from the address the client used")
            let query = try #require(server.seen.last)
            #expect(query.metadata?.destination == target)
            #expect(query.metadata?.interfaceIndex == loopbackIndex)
        }
        await closeAll(client, server.handle)
    }

    @Test("without a source, the reply to 127.0.0.2 leaves from 127.0.0.1 (so the test above can tell)")
    func withoutSource() async throws {
        let server = try boundHandle("0.0.0.0")
        let serverInbox = try Inbox(server)
        let port = try server.localAddress().port
        let client = try boundHandle("127.0.0.1")
        let inbox = try Inbox(client)
        try client.send(Array("q"), to: SocketAddress(ip: "127.0.0.2", port: port))
        let query = try await serverInbox.datagram()
        try server.send(Array("r"), to: query.remote)
        #expect(try await inbox.datagram().remote == SocketAddress(ip: "127.0.0.1", port: port))
        await closeAll(client, server)
    }

    @Test("IPv6: a socket on [::] reports ::1 and replies from it", .enabled(if: hasIPv6Loopback))
    func packetInfoIPv6() async throws {
        let server = try SourceEcho("::", flags: .ipv6Only)
        let port = try server.handle.localAddress().port
        let client = try boundHandle("::1")
        let inbox = try Inbox(client)
        let target = try SocketAddress(ip: "::1", port: port)
        try client.send(Array("six"), to: target)
        let reply = try await inbox.datagram()
        #expect(reply.remote == target)
        let query = try #require(server.seen.last)
        #expect(query.metadata?.destination == target)
        #expect(query.metadata?.interfaceIndex == loopbackIndex)
        await closeAll(client, server.handle)
    }

    @Test("dual stack: IPv4 traffic on [::] reports ::ffff:127.0.0.2 and the reply leaves from 127.0.0.2",
          .enabled(if: hasIPv6Loopback))
    func packetInfoDualStack() async throws {
        let server = try SourceEcho("::")
        let port = try server.handle.localAddress().port
        let client = try boundHandle("127.0.0.1")
        let inbox = try Inbox(client)
        let target = try SocketAddress(ip: "127.0.0.2", port: port)
        try client.send(Array("mapped"), to: target, options: SendOptions(ecn: .ect1))
        let reply = try await inbox.datagram()
        #expect(reply.remote == target)
        let query = try #require(server.seen.last)
        #expect(query.metadata?.destination == (try SocketAddress(ip: "::ffff:127.0.0.2", port: port)))
        #expect(query.metadata?.destination?.isIPv4Mapped == true)
        #expect(query.metadata?.ecn == .ect1)
        await closeAll(client, server.handle)
    }

    @Test("an ECN codepoint set on send is read back on receive", arguments: ["127.0.0.1", "::1"])
    func ecnRoundTrip(ip: String) async throws {
        guard ip == "127.0.0.1" || hasIPv6Loopback else { return }
        let sender = try boundHandle(ip)
        let receiver = try boundHandle(ip)
        try receiver.setReceiveMetadata(.ecn)
        let inbox = try Inbox(receiver)
        for codepoint in ECNCodepoint.allCases + ECNCodepoint.allCases.reversed() {
            try sender.send(Array("\(codepoint)"), to: receiver.localAddress(), options: SendOptions(ecn: codepoint))
            let datagram = try await inbox.datagram()
            #expect(datagram.payload == Array("\(codepoint)"))
            #expect(datagram.metadata?.ecn == codepoint)
        }
        // A plain send is Not-ECT.
        try sender.send(Array("plain"), to: receiver.localAddress())
        #expect(try await inbox.datagram().metadata?.ecn == .notECT)
        await closeAll(sender, receiver)
    }

    @Test("queued sends (sendmmsg) keep each datagram's own ECN codepoint")
    func ecnThroughQueue() async throws {
        let sender = try boundHandle()
        let receiver = try boundHandle()
        try receiver.setReceiveMetadata(.ecn)
        let inbox = try Inbox(receiver)
        let codepoints = (0..<40).map { ECNCodepoint.allCases[($0 * 7) % 4] }
        // Sent from inside a receive callback: all are queued, then flushed together.
        let trigger = try boundHandle()
        let target = try receiver.localAddress()
        try sender.startReceiving { handle, _ in
            for (index, codepoint) in codepoints.enumerated() {
                try? handle.send(payload(index), to: target, options: SendOptions(ecn: codepoint))
            }
        }
        try trigger.send(Array("go"), to: sender.localAddress())
        for (index, codepoint) in codepoints.enumerated() {
            let datagram = try await inbox.datagram()
            #expect(sequence(of: datagram) == index)
            #expect(datagram.metadata?.ecn == codepoint, "datagram \(index)")
        }
        await closeAll(sender, receiver, trigger)
    }

    @Test("trySend takes options; a dual-stack socket connected to ::ffff:127.0.0.1 marks ECN at the IPv4 level",
          .enabled(if: hasIPv6Loopback))
    func trySendAndMappedPeer() async throws {
        let receiver = try boundHandle("127.0.0.1")
        try receiver.setReceiveMetadata([.ecn, .packetInfo])
        let inbox = try Inbox(receiver)
        let sender = try boundHandle("::")
        #expect(try sender.trySend(Array("t"), to: receiver.localAddress(), options: SendOptions(ecn: .ect1)) == 1)
        #expect(try await inbox.datagram().metadata?.ecn == .ect1)
        let port = try receiver.localAddress().port
        try sender.connect(SocketAddress(ip: "::ffff:127.0.0.1", port: port))
        for codepoint in ECNCodepoint.allCases.reversed() {
            try sender.send(Array("\(codepoint)"), options: SendOptions(source: SocketAddress(ip: "::ffff:127.0.0.1", port: 0), ecn: codepoint))
            let datagram = try await inbox.datagram()
            #expect(datagram.payload == Array("\(codepoint)"))
            #expect(datagram.metadata?.ecn == codepoint)
        }
        await closeAll(sender, receiver)
    }

    @Test("a receive timestamp lies between a clock reading before the send and one after the receive")
    func timestamp() async throws {
        let sender = try boundHandle()
        let receiver = try boundHandle()
        try receiver.setReceiveMetadata(.timestamp)
        let inbox = try Inbox(receiver)
        for round in 0..<5 {
            let before = WallClockTime.now
            try sender.send(payload(round), to: receiver.localAddress())
            let datagram = try await inbox.datagram()
            let after = WallClockTime.now
            let stamp = try #require(datagram.metadata?.receiveTime)
            #expect(before <= stamp && stamp <= after, "\(before) <= \(stamp) <= \(after)")
            #expect(before.duration(to: stamp) >= .zero)
        }
        await closeAll(sender, receiver)
    }

    @Test("a consumer's direct read (recvmmsg off the loop) fills the same metadata")
    func directRead() async throws {
        let server = try boundHandle("0.0.0.0")
        try server.setReceiveMetadata(.all)  // not receiving: only the direct read takes datagrams
        let port = try server.localAddress().port
        let client = try boundHandle("127.0.0.1")
        let before = WallClockTime.now
        try client.send(Array("a"), to: SocketAddress(ip: "127.0.0.2", port: port), options: SendOptions(ecn: .congestionExperienced))
        try client.send(Array("b"), to: SocketAddress(ip: "127.0.0.1", port: port), options: SendOptions(ecn: .ect0))
        let sendPath = try #require(server.sendPath)
        var got: [Datagram] = []
        while got.count < 2 {
            var poller = pollfd(fd: sendPath.fd, events: Int16(POLLIN), revents: 0)
            #expect(poll(&poller, 1, 10_000) == 1, "the datagrams arrive")
            switch sendPath.receiveDirect(maxCount: 8, maximumDatagramSize: 65_536) {
            case .datagrams(let datagrams): got += datagrams
            case .wouldBlock: continue
            case let other: Issue.record("unexpected \(other)"); return
            }
        }
        let after = WallClockTime.now
        #expect(got.map(\.payload) == [Array("a"), Array("b")])
        #expect(got[0].metadata?.destination == (try SocketAddress(ip: "127.0.0.2", port: port)))
        #expect(got[1].metadata?.destination == (try SocketAddress(ip: "127.0.0.1", port: port)))
        #expect(got.map { $0.metadata?.interfaceIndex } == [loopbackIndex, loopbackIndex])
        #expect(got.map { $0.metadata?.ecn } == [.congestionExperienced, .ect0])
        for datagram in got {
            let stamp = try #require(datagram.metadata?.receiveTime)
            #expect(before <= stamp && stamp <= after)
        }
        await closeAll(client, server)
    }

    @Test("a source of the wrong family, or a multicast source, is refused before sending")
    func badSources() async throws {
        let v4 = try boundHandle("0.0.0.0")
        let target = try SocketAddress(ip: "127.0.0.1", port: v4.localAddress().port)
        #expect(throws: UVError.addressFamilyNotSupported) {
            try v4.send(Array("x"), to: target, options: SendOptions(source: SocketAddress(ip: "::1", port: 0)))
        }
        #expect(throws: UVError.invalidArgument) {
            try v4.send(Array("x"), to: target, options: SendOptions(source: SocketAddress(ip: "239.1.2.3", port: 0)))
        }
        if hasIPv6Loopback {
            let v6 = try boundHandle("::")
            #expect(throws: UVError.addressFamilyNotSupported) {
                try v6.send(Array("x"), to: SocketAddress(ip: "::1", port: 9), options: SendOptions(source: SocketAddress(ip: "127.0.0.1", port: 0)))
            }
            await closeAll(v6)
        }
        #expect(v4.sendQueueCount == 0)
        // A source that is not this host's: the kernel refuses it, through onSend; nothing crashes.
        let refused: UVError? = try await withCheckedThrowingContinuation { continuation in
            do {
                try v4.send(Array("x"), to: target, options: SendOptions(source: SocketAddress(ip: "192.0.2.1", port: 0))) { _, error in
                    continuation.resume(returning: error)
                }
            } catch {
                continuation.resume(throwing: error)
            }
        }
        #expect(refused != nil)
        await closeAll(v4)
    }

    @Test("setReceiveMetadata needs a socket; WallClockTime and ECNCodepoint behave as values")
    func values() async throws {
        let unbound = try UDPHandle(loop: testLoop)
        #expect(throws: UVError.badFileDescriptor) { try unbound.setReceiveMetadata(.all) }
        await closeAll(unbound)
        #expect(WallClockTime(seconds: 1, nanoseconds: 1_500_000_000) == WallClockTime(seconds: 2, nanoseconds: 500_000_000))
        #expect(WallClockTime(seconds: 2, nanoseconds: -1) == WallClockTime(seconds: 1, nanoseconds: 999_999_999))
        #expect(WallClockTime(seconds: 1, nanoseconds: 0).duration(to: WallClockTime(seconds: 2, nanoseconds: 5)) == .seconds(1) + .nanoseconds(5))
        #expect("\(WallClockTime(seconds: 3, nanoseconds: 42))" == "3.000000042")
        #expect(ECNCodepoint(trafficClass: 0xB9) == .ect1)
        #expect(ECNCodepoint(trafficClass: 0x03) == .congestionExperienced)
        #expect(try SocketAddress(ip: "::ffff:1.2.3.4", port: 1).isIPv4Mapped)
        #expect(try !SocketAddress(ip: "::1", port: 1).isIPv4Mapped)
        #expect(try !SocketAddress(ip: "1.2.3.4", port: 1).isIPv4Mapped)
    }
}
