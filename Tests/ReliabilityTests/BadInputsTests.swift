import AsyncUDP
import Glibc
import Testing
import TestSupport

/// One row of ../shared/BAD-INPUTS.md.
struct BadInputRow: Sendable, CustomTestStringConvertible {
    let number: Int
    let input: String
    var testDescription: String { "#\(number) \(input)" }
}

/// The 55 rows of BAD-INPUTS.md (inputs and misuses, with what libuv 1.44.2 does), by number.
let badInputRows: [BadInputRow] = [
    (1, "bad IPv4 text"), (2, "bad IPv6 text"), (3, "unknown IPv6 scope"), (4, "port outside 0...65535"),
    (5, "destination port 0"), (6, "destination 0.0.0.0"), (7, "unknown address family"),
    (8, "IPv4 socket to an IPv6 destination"), (9, "IPv6-only socket to an IPv4 destination"),
    (10, "bind of the other family"), (11, "ipv6Only with an IPv4 bind"), (12, "unknown bind flag"),
    (13, "bind twice or after an auto-bind"), (14, "bind a port in use"), (15, "bind a non-local address"),
    (16, "bind a privileged port unprivileged"), (17, "bad socket domain"), (18, "IPv4 payload over 65507"),
    (19, "IPv6 payload over 65527"), (20, "zero-length datagram"), (21, "empty buffer list"),
    (22, "no destination, unconnected"), (23, "destination on a connected socket"),
    (24, "connect while connected"), (25, "disconnect while not connected"), (26, "connect to AF_UNSPEC"),
    (27, "connect to port 0"), (28, "peer address when not connected"), (29, "receive twice"),
    (30, "stop receiving when idle"), (31, "options on an unbound handle"), (32, "TTL out of range"),
    (33, "multicast TTL out of range"), (34, "multicast loop value 2"), (35, "unparseable group"),
    (36, "group that is not multicast"), (37, "unparseable interface"), (38, "interface not on this host"),
    (39, "IPv6 group or interface on an IPv4 socket"), (40, "leave a group never joined"),
    (41, "join the same group twice"), (42, "membership value out of range"), (43, "bad source for SSM"),
    (44, "join with no interface and no multicast route"), (45, "255.255.255.255 without broadcast"),
    (46, "send between close and its callback"), (47, "send after close completed"), (48, "double close"),
    (49, "close with sends queued"), (50, "adopt an fd another handle owns"), (51, "adopt a second fd"),
    (52, "allocator returns an empty buffer"), (53, "recvmmsg with a small buffer"),
    (54, "datagram larger than the receive buffer"), (55, "ICMP port unreachable on a connected socket"),
].map { BadInputRow(number: $0.0, input: $0.1) }

/// Rows that need a private network (a namespace): they would otherwise send off the host.
let namespaceRows: Set<Int> = [6, 44, 45]

@Suite("BAD-INPUTS.md: AsyncUDP's answer to each of the 55 rows", .timeLimit(.minutes(2)))
struct BadInputsTests {
    @Test("the table has every row, numbered 1...55")
    func complete() {
        #expect(badInputRows.map(\.number) == Array(1...55))
    }

    @Test("row", arguments: badInputRows.filter { !namespaceRows.contains($0.number) })
    func row(_ row: BadInputRow) async throws {
        try await BadInputChecks.check(row.number)
    }

    @Test("row (in a private network namespace)", .enabled(if: namespacesAvailable, namespaceSkipReason),
          arguments: badInputRows.filter { namespaceRows.contains($0.number) })
    func namespaceRow(_ row: BadInputRow) async throws {
        try await BadInputChecks.check(row.number)
    }
}

enum BadInputChecks {
    static func check(_ number: Int) async throws {
        switch number {
        case 1: try row1()
        case 2: try row2()
        case 3: try row3()
        case 4: try row4()
        case 5: try await row5()
        case 6: try await row6()
        case 7: try row7()
        case 8: try await row8()
        case 9: try await row9()
        case 10: try await row10()
        case 11: try await row11()
        case 12: try await row12()
        case 13: try await row13()
        case 14: try await row14()
        case 15: try await row15()
        case 16: try await row16()
        case 17: try await row17()
        case 18: try await row18()
        case 19: try await row19()
        case 20: try await row20()
        case 21: try await row21()
        case 22: try await row22()
        case 23: try await row23()
        case 24: try await row24()
        case 25: try await row25()
        case 26: try await row26()
        case 27: try await row27()
        case 28: try await row28()
        case 29: try await row29()
        case 30: try await row30()
        case 31: try await row31()
        case 32: try await row32()
        case 33: try await row33()
        case 34: try await row34()
        case 35: try await row35()
        case 36: try await row36()
        case 37: try await row37()
        case 38: try await row38()
        case 39: try await row39()
        case 40: try await row40()
        case 41: try await row41()
        case 42: try row42()
        case 43: try await row43()
        case 44: try await row44()
        case 45: try await row45()
        case 46: try await row46()
        case 47: try await row47()
        case 48: try await row48()
        case 49: try await row49()
        case 50: try await row50()
        case 51: try await row51()
        case 52: try await row52()
        case 53: try await row53()
        case 54: try await row54()
        case 55: try await row55()
        default: Issue.record("no check for row \(number)")
        }
    }

    // MARK: Addresses (1-4, 7)

    static func row1() throws {
        for text in ["256.0.0.1", "1.2.3", "1.2.3.4.5", "abc", "", " 127.0.0.1", "127.0.0.1 ", "0x7f.0.0.1",
                     "127.1", "01.2.3.4", "255.255.255*000", "2555.0.0.0", "255"] {
            #expect(throws: SocketAddressError(.invalidIP, input: text), "ip: \(text)") {
                try SocketAddress(ip: text, port: 53)
            }
            #expect(throws: SocketAddressError(.invalidIP, input: "\(text):53"), "text: \(text)") {
                try SocketAddress("\(text):53")
            }
            let error = SocketAddressError(.invalidIP, input: text)
            #expect(error.description.contains("invalid IP address"))
        }
    }

    static func row2() throws {
        for text in [":::1", "abcde::1", "1:2:3:4:5:6:7:8:9", "[::1]", ""] {
            #expect(throws: SocketAddressError(.invalidIP, input: text), "ip: \(text)") { try SocketAddress(ip: text, port: 53) }
            #expect(throws: SocketAddressError.self) { try SocketAddress("[\(text)]:53") }
        }
        // "127.0.0.1" is not IPv6: in brackets it is refused; bare, it is IPv4, never mistaken.
        #expect(throws: SocketAddressError(.invalidIP, input: "[127.0.0.1]:53")) { try SocketAddress("[127.0.0.1]:53") }
        #expect(try SocketAddress(ip: "127.0.0.1", port: 53).family == .ipv4)
    }

    static func row3() throws {
        for text in ["fe80::1%", "fe80::1%nosuchif"] {
            #expect(throws: SocketAddressError(.unknownScope, input: text)) { try SocketAddress(ip: text, port: 53) }
            #expect(throws: SocketAddressError(.unknownScope, input: "[\(text)]:53")) { try SocketAddress("[\(text)]:53") }
        }
        let lo = if_nametoindex("lo")
        #expect(lo > 0)
        #expect(try SocketAddress(ip: "fe80::1%lo", port: 53).scopeID == lo)
        #expect(try SocketAddress("[fe80::1%\(lo)]:53").scopeID == lo)
    }

    static func row4() throws {
        for port in [70000, -1, 65536] {
            #expect(throws: SocketAddressError.self) { try SocketAddress(ip: "127.0.0.1", port: port) }
            #expect(throws: SocketAddressError(.invalidPort, input: "127.0.0.1:\(port)")) { try SocketAddress("127.0.0.1:\(port)") }
            #expect(throws: SocketAddressError.self) { try SocketAddress("127.0.0.1:1").withPort(port) }
        }
        // Not wrapped: 70000 is not 4464, -1 is not 65535.
        #expect(try SocketAddress(ip: "127.0.0.1", port: 65535).port == 65535)
        #expect(try SocketAddress(ip: "127.0.0.1", port: 0).port == 0)
        #expect(throws: SocketAddressError(.invalidPort, input: "127.0.0.1 port 70000")) { try SocketAddress(ip: "127.0.0.1", port: 70000) }
    }

    static func row7() throws {
        // Typed addresses have one of two families; there is no way to build another.
        for address in [try SocketAddress("1.2.3.4:5"), try SocketAddress("[::1]:5")] {
            switch address.family {
            case .ipv4: #expect(address.family.rawValue == AF_INET)
            case .ipv6: #expect(address.family.rawValue == AF_INET6)
            }
        }
    }

    // MARK: Sends (5, 8, 9, 18-23)

    static func row5() async throws {
        let socket = try await openSocket()
        let zero = try SocketAddress("127.0.0.1:0")
        await #expect(throws: UVError.invalidArgument) { try await socket.send(Array("x"), to: zero) }
        await #expect(throws: UVError.invalidArgument) { try await socket.send([Array("x"), []], to: zero) }
        let stats = await socket.statistics
        #expect(stats.datagramsSent == 0)
        #expect(stats.sendErrorCount == 2)
        await socket.close()
        try await HandleRows.portZeroIsSynchronous()
    }

    static func row8() async throws {
        let v4 = try await openSocket()
        let v6 = try await openSocket("::1")
        await #expect(throws: UVError.addressFamilyNotSupported) { try await v4.send(Array("x"), to: v6.localAddress) }
        #expect(await v4.statistics.datagramsSent == 0)
        await v4.close()
        await v6.close()
        try await HandleRows.familyMismatchOnTrySend()
    }

    static func row9() async throws {
        let v6only = try await UDPSocket(bindingTo: SocketAddress("[::1]:0"), flags: .ipv6Only)
        let v4 = try await openSocket()
        await #expect(throws: UVError.networkUnreachable) { try await v6only.send(Array("x"), to: v4.localAddress) }
        await v6only.close()
        await v4.close()
    }

    static func row18() async throws {
        let receiver = try await openSocket()
        let sender = try await openSocket()
        for size in [65_508, 65_536, 10 << 20] {
            await #expect(throws: UVError.messageTooLong) {
                try await sender.send([UInt8](repeating: 1, count: size), to: receiver.localAddress)
            }
        }
        let largest = [UInt8](repeating: 7, count: 65_507)
        try await sender.send(largest, to: receiver.localAddress)
        let got = try #require(try await receive(1, from: receiver).first)
        #expect(got.payload == largest)
        #expect(!got.isTruncated)
        await receiver.close()
        await sender.close()
    }

    static func row19() async throws {
        let receiver = try await openSocket("::1")
        let sender = try await openSocket("::1")
        await #expect(throws: UVError.messageTooLong) {
            try await sender.send([UInt8](repeating: 1, count: 65_528), to: receiver.localAddress)
        }
        let largest = [UInt8](repeating: 9, count: 65_527)
        try await sender.send(largest, to: receiver.localAddress)
        let got = try #require(try await receive(1, from: receiver).first)
        #expect(got.payload == largest)
        await receiver.close()
        await sender.close()
    }

    static func row20() async throws {
        let receiver = try await openSocket()
        let sender = try await openSocket()
        try await sender.send([] as [UInt8], to: receiver.localAddress)
        try await sender.send([[], []] as [[UInt8]], to: receiver.localAddress)
        let got = try await receive(2, from: receiver)
        #expect(got.map(\.payload) == [[], []])
        #expect(got.allSatisfy { $0.remote == sender.localAddress })
        await receiver.close()
        await sender.close()
    }

    static func row21() async throws {
        let socket = try await openSocket()
        await #expect(throws: UVError.invalidArgument) { try await socket.send([] as [[UInt8]], to: socket.localAddress) }
        try await HandleRows.emptyBufferList()
        await socket.close()
    }

    static func row22() async throws {
        let socket = try await openSocket()
        await #expect(throws: UVError.destinationAddressRequired) { try await socket.send(Array("x")) }
        await socket.close()
    }

    static func row23() async throws {
        let server = try await openSocket()
        let client = try await UDPSocket(connectingTo: server.localAddress)
        // The library's decision: a connected socket takes no address, even its own peer's.
        await #expect(throws: UVError.alreadyConnected) { try await client.send(Array("x"), to: server.localAddress) }
        try await client.send(Array("ok"))
        #expect(try await receive(1, from: server).first?.payload == Array("ok"))
        await client.close()
        await server.close()
    }

    // MARK: Bind and connect (10-17, 24-28)

    static func row10() async throws { try await HandleRows.bindOtherFamily() }

    static func row11() async throws {
        await #expect(throws: UVError.invalidArgument) {
            try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), flags: .ipv6Only)
        }
    }

    static func row12() async throws {
        // Unknown bits (0x400, libuv's REUSEPORT 64) are refused with EINVAL before libuv sees them.
        #expect(UDPFlags.ipv6Only.rawValue == 1 && UDPFlags.partial.rawValue == 2 && UDPFlags.reuseAddress.rawValue == 4)
        try await HandleRows.unknownFlags()
    }

    static func row13() async throws { try await HandleRows.bindTwice() }

    static func row14() async throws {
        let first = try await openSocket()
        await #expect(throws: UVError.addressInUse) { try await UDPSocket(bindingTo: first.localAddress) }
        await first.close()
    }

    static func row15() async throws {
        await #expect(throws: UVError.addressNotAvailable) { try await UDPSocket(bindingTo: SocketAddress("1.2.3.4:0")) }
    }

    static func row16() async throws {
        let start = Int(readSysctl("/proc/sys/net/ipv4/ip_unprivileged_port_start") ?? 1024)
        guard start > 1 else {
            // Every port is unprivileged on this kernel: binding one is simply allowed.
            return
        }
        let port = start - 1
        if isRoot {
            // Root may bind it; an unprivileged child (nobody, no capabilities) gets EACCES.
            let result = try await run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                        "--inh-caps=-all", "--bounding-set=-all", reliabilityTool, "probe", "bind-port",
                                        "--port", "\(port)"])
            #expect(result.fields["outcome"] == "EACCES", "\(result)")
        } else {
            await #expect(throws: UVError.permissionDenied) {
                try await UDPSocket(bindingTo: SocketAddress(ip: "127.0.0.1", port: port))
            }
        }
    }

    static func row17() async throws { try await HandleRows.typedFamilies() }

    static func row24() async throws { try await HandleRows.connectTwice() }
    static func row25() async throws { try await HandleRows.disconnectUnconnected() }

    static func row26() async throws {
        // connect takes a typed address: IPv4 or IPv6, nothing else.
        let v4 = try await openSocket()
        let v6 = try await openSocket("::1")
        for server in [v4, v6] {
            let client = try await UDPSocket(connectingTo: server.localAddress)
            #expect(client.remoteAddress == server.localAddress)
            #expect(client.localAddress.family == server.localAddress.family)
            await client.close()
        }
        await v4.close()
        await v6.close()
    }

    static func row27() async throws {
        await #expect(throws: UVError.invalidArgument) { try await UDPSocket(connectingTo: SocketAddress("127.0.0.1:0")) }
        try await HandleRows.connectPortZero()
    }

    static func row28() async throws {
        let socket = try await openSocket()
        #expect(socket.remoteAddress == nil)
        await socket.close()
        try await HandleRows.peerWhenNotConnected()
    }

    // MARK: Receiving (29, 30, 52-54)

    static func row29() async throws {
        try await HandleRows.receiveTwice()
        // Several consumers of the async stream at once are fine: each datagram reaches exactly
        // one of them, and close ends every iteration normally.
        let socket = try await openSocket()
        let sender = try await openSocket()
        let consumers = (0..<2).map { _ in
            Task { () -> [Int] in
                var seen: [Int] = []
                for try await datagram in socket.datagrams { seen.append(sequence(of: datagram)) }
                return seen
            }
        }
        for index in 0..<100 { try await sender.send(payload(index), to: socket.localAddress) }
        try await waitUntil("every datagram delivered") { await socket.statistics.datagramsDelivered == 100 }
        await socket.close()
        await sender.close()
        var all: [Int] = []
        for consumer in consumers { all += try await consumer.value }
        #expect(all.sorted() == Array(0..<100))
    }

    static func row30() async throws { try await HandleRows.stopWhenIdle() }

    static func row52() async throws {
        // The library owns the allocator and never hands libuv an empty buffer: a size of 0 is
        // refused up front.
        await #expect(throws: UVError.invalidArgument) {
            try await openSocket(configuration: .init(maximumDatagramSize: 0))
        }
        try await HandleRows.zeroDatagramSizeRefused()
        let receiver = try await openSocket(configuration: .init(maximumDatagramSize: 1))
        let sender = try await openSocket()
        try await sender.send(Array("hello"), to: receiver.localAddress)
        let got = try #require(try await receive(1, from: receiver).first)
        #expect(got.payload == Array("h"))
        #expect(got.isTruncated)
        await receiver.close()
        await sender.close()
    }

    static func row53() async throws {
        // No recvmmsg flag is exposed, and tiny buffers do not hang the loop: a burst at a socket
        // reading 1 byte per datagram is all read (or dropped by the kernel, and counted).
        let receiver = try await openSocket(configuration: .init(receiveQueueLimit: 4096, maximumDatagramSize: 1,
                                                                 receiveBufferSize: 1 << 20))
        let sender = try await openSocket()
        let total = 2000
        for index in 0..<total { try await sender.send(payload(index, size: 100), to: receiver.localAddress) }
        try await waitUntil("every datagram read or counted as a kernel drop", seconds: 30) {
            let stats = await receiver.statistics
            return stats.datagramsReceived + (stats.datagramsDroppedByKernel ?? 0) == total
        }
        let stats = await receiver.statistics
        #expect(stats.datagramsTruncated == stats.datagramsReceived)
        #expect(stats.datagramsReceived > 0)
        // The loop is still responsive.
        #expect(try await UVLoop.shared.submit { 42 } == 42)
        await receiver.close()
        await sender.close()
    }

    static func row54() async throws {
        let receiver = try await openSocket(configuration: .init(maximumDatagramSize: 10))
        let sender = try await openSocket()
        try await sender.send([UInt8](repeating: 3, count: 100), to: receiver.localAddress)
        try await sender.send([UInt8](repeating: 4, count: 10), to: receiver.localAddress)
        let got = try await receive(2, from: receiver)
        #expect(got.map(\.payload.count) == [10, 10])
        #expect(got.map(\.isTruncated) == [true, false])
        #expect(await receiver.statistics.datagramsTruncated == 1)
        await receiver.close()
        await sender.close()
    }

    // MARK: Options (31-34)

    static func row31() async throws { try await HandleRows.optionsOnUnboundHandle() }

    static func row32() async throws {
        let socket = try await openSocket()
        for ttl in [-1, 0, 256] {
            await #expect(throws: UVError.invalidArgument) { try await socket.setTTL(ttl) }
        }
        try await socket.setTTL(1)
        try await socket.setTTL(255)
        await socket.close()
    }

    static func row33() async throws {
        let socket = try await openSocket()
        for ttl in [-1, 256] {
            await #expect(throws: UVError.invalidArgument) { try await socket.setMulticastTTL(ttl) }
        }
        try await socket.setMulticastTTL(0)
        try await socket.setMulticastTTL(255)
        await socket.close()
    }

    static func row34() async throws { try await HandleRows.multicastLoopIsBool() }

    // MARK: Multicast membership (35-43); joins name 127.0.0.1 so nothing leaves the host

    static func row35() async throws {
        let socket = try await openSocket()
        await #expect(throws: SocketAddressError(.invalidIP, input: "bogus")) { try await socket.joinGroup("bogus", interface: "127.0.0.1") }
        await socket.close()
    }

    static func row36() async throws {
        let socket = try await openSocket()
        await #expect(throws: UVError.invalidArgument) { try await socket.joinGroup("127.0.0.1", interface: "127.0.0.1") }
        await socket.close()
    }

    static func row37() async throws {
        let socket = try await openSocket()
        await #expect(throws: SocketAddressError.self) { try await socket.joinGroup("239.255.6.37", interface: "bogus") }
        await #expect(throws: SocketAddressError.self) { try await socket.setMulticastInterface("bogus") }
        await socket.close()
    }

    static func row38() async throws {
        let socket = try await openSocket()
        await #expect(throws: UVError.noSuchDevice) { try await socket.joinGroup("239.255.6.38", interface: "1.2.3.4") }
        await #expect(throws: UVError.addressNotAvailable) { try await socket.setMulticastInterface("1.2.3.4") }
        await socket.close()
    }

    static func row39() async throws {
        let socket = try await openSocket()
        await #expect(throws: UVError.addressFamilyNotSupported) { try await socket.joinGroup("ff02::1:3", interface: "127.0.0.1") }
        await #expect(throws: UVError.addressFamilyNotSupported) { try await socket.setMulticastInterface("::1") }
        // An IPv4 group with an IPv6 interface address: the same family-mismatch error.
        await #expect(throws: UVError.addressFamilyNotSupported) { try await socket.joinGroup("239.255.6.39", interface: "::1") }
        await #expect(throws: UVError.addressFamilyNotSupported) {
            try await socket.joinGroup("232.1.6.39", source: "127.0.0.1", interface: "::1")
        }
        await socket.close()
    }

    static func row40() async throws {
        let socket = try await openSocket()
        await #expect(throws: UVError.addressNotAvailable) { try await socket.leaveGroup("239.255.6.40", interface: "127.0.0.1") }
        await socket.close()
    }

    static func row41() async throws {
        let socket = try await openSocket()
        try await socket.joinGroup("239.255.6.41", interface: "127.0.0.1")
        await #expect(throws: UVError.addressInUse) { try await socket.joinGroup("239.255.6.41", interface: "127.0.0.1") }
        try await socket.leaveGroup("239.255.6.41", interface: "127.0.0.1")
        await socket.close()
    }

    static func row42() throws {
        // Membership is an enum of two cases: no out-of-range value can be written.
        for membership in [UDPMembership.join, .leave] {
            switch membership {
            case .join: #expect(membership != .leave)
            case .leave: #expect(membership != .join)
            }
        }
    }

    static func row43() async throws {
        let socket = try await openSocket()
        await #expect(throws: SocketAddressError(.invalidIP, input: "bogus")) {
            try await socket.joinGroup("232.1.6.43", source: "bogus", interface: "127.0.0.1")
        }
        await #expect(throws: UVError.invalidArgument) {
            try await socket.joinGroup("232.1.6.43", source: "::1", interface: "127.0.0.1")
        }
        await socket.close()
    }

    // MARK: Close and adoption (46-51)

    static func row46() async throws { try await HandleRows.sendWhileClosing() }
    static func row47() async throws {
        try await HandleRows.sendAfterClosed()
        let socket = try await openSocket()
        await socket.close()
        await #expect(throws: ClosedHandleError.self) { try await socket.send(Array("x"), to: socket.localAddress) }
        await #expect(throws: ClosedHandleError.self) { try await socket.setTTL(4) }
    }

    static func row48() async throws {
        try await HandleRows.doubleClose()
        let socket = try await openSocket()
        await socket.close()
        await socket.close()
        #expect(await socket.isClosed)
    }

    static func row49() async throws { try await HandleRows.closeWithQueuedSends() }
    static func row50() async throws { try await HandleRows.adoptOwnedDescriptor() }
    static func row51() async throws { try await HandleRows.adoptSecondDescriptor() }

    // MARK: ICMP (55)

    static func row55() async throws {
        let probe = try await openSocket()
        let port = probe.localAddress
        await probe.close()
        let client = try await UDPSocket(connectingTo: port)
        var errors = client.transientErrors.makeAsyncIterator()
        try await client.send(Array("nobody home"))
        #expect(await errors.next() == .connectionRefused)
        // Still usable: a server appears on the port and the next datagrams arrive.
        let server = try await UDPSocket(bindingTo: port)
        try await client.send(Array("later"))
        #expect(try await receive(1, from: server).first?.payload == Array("later"))
        #expect(await client.statistics.transientErrorCount >= 1)
        #expect(!(await client.isClosed))
        await client.close()
        await server.close()
    }

    // MARK: In a namespace (6, 44, 45)

    static func row6() async throws {
        // Linux delivers 0.0.0.0:P locally. Shown inside a namespace that has only lo.
        try await withNamespaces { network in
            let ns = try await network.addNamespace("zero")
            let result = try await run(network.tool(in: ns, ["probe", "zero-destination"]))
            #expect(result.fields["outcome"] == "OK", "\(result)")
        }
    }

    static func row44() async throws {
        try await withNamespaces { network in
            let ns = try await network.addNamespace("noroute")
            let result = try await run(network.tool(in: ns, ["probe", "join-without-interface"]))
            #expect(result.fields["outcome"] == "ENODEV", "\(result)")
        }
    }

    static func row45() async throws {
        try await withNamespaces { network in
            let pair = try await network.makeVethPair()
            let result = try await run(network.tool(in: pair.a, ["probe", "broadcast-without-permission"]))
            #expect(result.fields["outcome"] == "EACCES", "\(result)")
        }
    }
}

func readSysctl(_ path: String) -> Int? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var buffer = [CChar](repeating: 0, count: 64)
    guard fgets(&buffer, 64, file) != nil else { return nil }
    return Int(String(decoding: buffer.prefix { $0 != 0 && $0 != 10 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
}
