import Glibc
import Testing
import TestSupport
import UVCore

@Suite("UDPHandle: sending and receiving", .timeLimit(.minutes(1)))
@TestLoop
struct UDPHandleTransferTests {
    @Test("ping-pong; the sender address seen equals the peer's local address", arguments: ["127.0.0.1", "::1"])
    func pingPong(ip: String) async throws {
        let a = try boundHandle(ip)
        let b = try boundHandle(ip)
        let inboxA = try Inbox(a)
        let inboxB = try Inbox(b)
        for round in 0..<10 {
            #expect(try await sendAndWait(a, [Array("ping \(round)")], to: b.localAddress()) == nil)
            let ping = try await inboxB.datagram()
            #expect(ping.payload == Array("ping \(round)"))
            #expect(ping.remote == (try a.localAddress()))
            #expect(!ping.isTruncated)
            try b.send(Array("pong \(round)"), to: ping.remote)
            let pong = try await inboxA.datagram()
            #expect(pong.payload == Array("pong \(round)"))
            #expect(pong.remote == (try b.localAddress()))
        }
        await closeAll(a, b)
    }

    @Test("binary payloads with NUL bytes arrive byte for byte")
    func binary() async throws {
        let a = try boundHandle(), b = try boundHandle()
        let inbox = try Inbox(b)
        let payload: [UInt8] = [0, 1, 0, 255, 0, 0, 128] + (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        try a.send(payload, to: b.localAddress())
        #expect(try await inbox.datagram().payload == payload)
        await closeAll(a, b)
    }

    @Test("several buffers make one datagram; an empty list is refused")
    func buffers() async throws {
        let a = try boundHandle(), b = try boundHandle()
        let inbox = try Inbox(b)
        #expect(try await sendAndWait(a, [Array("ab"), [], Array("cd")], to: b.localAddress()) == nil)
        let datagram = try await inbox.datagram()
        #expect(datagram.payload == Array("abcd"))
        #expect(throws: UVError.invalidArgument) { try a.send([[UInt8]](), to: b.localAddress()) }
        #expect(throws: UVError.invalidArgument) { try a.trySend([[UInt8]](), to: b.localAddress()) }
        #expect(a.sendQueueCount == 0)
        // The handle is still fine afterwards.
        #expect(try a.trySend([Array("x"), Array("y")], to: b.localAddress()) == 2)
        #expect(try await inbox.datagram().payload == Array("xy"))
        await closeAll(a, b)
    }

    @Test("a zero-length datagram is delivered with its sender", arguments: ["127.0.0.1", "::1"])
    func empty(ip: String) async throws {
        let a = try boundHandle(ip), b = try boundHandle(ip)
        let inbox = try Inbox(b)
        #expect(try await sendAndWait(a, [[]], to: b.localAddress()) == nil)
        #expect(try a.trySend([UInt8](), to: b.localAddress()) == 0)
        for _ in 0..<2 {
            let datagram = try await inbox.datagram()
            #expect(datagram.payload.isEmpty)
            #expect(datagram.remote == (try a.localAddress()))
        }
        await closeAll(a, b)
    }

    @Test("size limits: the largest datagram passes, one byte more fails with EMSGSIZE",
          arguments: [("127.0.0.1", 65_507), ("::1", 65_527)])
    func sizeLimits(ip: String, largest: Int) async throws {
        let a = try boundHandle(ip), b = try boundHandle(ip)
        try b.setReceiveBufferSize(1 << 20)
        let inbox = try Inbox(b)
        let big = [UInt8](repeating: 0xAB, count: largest)
        #expect(try await sendAndWait(a, [big], to: b.localAddress()) == nil)
        #expect(try await inbox.datagram().payload == big)
        #expect(throws: UVError.messageTooLong) { try a.send([UInt8](repeating: 1, count: largest + 1), to: b.localAddress()) }
        #expect(throws: UVError.messageTooLong) { try a.trySend([UInt8](repeating: 1, count: largest + 1), to: b.localAddress()) }
        #expect(throws: UVError.messageTooLong) { try a.send([UInt8](repeating: 1, count: 10 << 20), to: b.localAddress()) }
        await closeAll(a, b)
    }

    @Test("an oversize send between two good ones fails alone")
    func oversizeAlone() async throws {
        let a = try boundHandle(), b = try boundHandle()
        let inbox = try Inbox(b)
        var outcomes: [String: UVError?] = [:]
        try a.send(Array("first"), to: b.localAddress()) { _, error in outcomes["first"] = error }
        #expect(throws: UVError.messageTooLong) {
            try a.send([UInt8](repeating: 0, count: 65_508), to: b.localAddress()) { _, _ in Issue.record("oversize callback ran") }
        }
        try a.send(Array("second"), to: b.localAddress()) { _, error in outcomes["second"] = error }
        #expect(try await inbox.datagram().payload == Array("first"))
        #expect(try await inbox.datagram().payload == Array("second"))
        #expect(try await sendAndWait(a, [Array("sync")], to: b.localAddress()) == nil)
        #expect(outcomes.count == 2)
        #expect(outcomes["first"]! == nil && outcomes["second"]! == nil)
        await closeAll(a, b)
    }

    @Test("a datagram larger than the receive buffer is reported truncated")
    func truncation() async throws {
        let a = try boundHandle(), b = try boundHandle()
        try b.setMaximumDatagramSize(8)
        #expect(throws: UVError.invalidArgument) { try b.setMaximumDatagramSize(0) }
        #expect(throws: UVError.invalidArgument) { try b.setMaximumDatagramSize(65_537) }
        let inbox = try Inbox(b)
        try a.send(Array("0123456789abcdef"), to: b.localAddress())
        try a.send(Array("short"), to: b.localAddress())
        let long = try await inbox.datagram()
        #expect(long.isTruncated)
        #expect(long.payload == Array("01234567"))
        let short = try await inbox.datagram()
        #expect(!short.isTruncated)
        #expect(short.payload == Array("short"))
        await closeAll(a, b)
    }

    @Test("trySend returns the byte count, and EAGAIN while sends are queued")
    func trySend() async throws {
        let a = try boundHandle(), b = try boundHandle()
        let inbox = try Inbox(b)
        #expect(try a.trySend(Array("hello"), to: b.localAddress()) == 5)
        #expect(try await inbox.datagram().payload == Array("hello"))
        // Sends made while a receive batch is delivered wait in the queue (they go out together
        // after it, with sendmmsg); meanwhile trySend refuses.
        var completed = false
        var refused: (any Error)?
        var queuedCount = -1
        try a.startReceiving { handle, _ in
            do {
                try handle.send(Array("queued"), to: b.localAddress()) { _, _ in completed = true }
                queuedCount = handle.sendQueueCount
                try handle.trySend(Array("blocked"), to: b.localAddress())
            } catch {
                refused = error
            }
        }
        try b.send(Array("trigger"), to: a.localAddress())
        #expect(try await inbox.datagram().payload == Array("queued"))
        #expect(queuedCount == 1)
        #expect((refused as? UVError) == .wouldBlock)
        _ = try await sendAndWait(a, [[]], to: b.localAddress())
        #expect(completed)
        await closeAll(a, b)
    }

    @Test("receive start/stop: twice is EALREADY; stop when idle is harmless; receiving resumes")
    func receiveStartStop() async throws {
        let a = try boundHandle(), b = try boundHandle()
        b.stopReceiving()
        var got: [[UInt8]] = []
        try b.startReceiving { _, result in if case .success(let d) = result { got.append(d.payload) } }
        #expect(b.isReceiving)
        #expect(throws: UVError.alreadyInProgress) { try b.startReceiving { _, _ in } }
        b.stopReceiving()
        #expect(!b.isReceiving)
        let inbox = try Inbox(b)
        try a.send(Array("after restart"), to: b.localAddress())
        #expect(try await inbox.datagram().payload == Array("after restart"))
        #expect(got.isEmpty)
        await closeAll(a, b)
    }

    @Test("startReceiving on an unbound handle binds an ephemeral port")
    func receiveUnbound() async throws {
        let a = try boundHandle()
        let b = try UDPHandle(loop: testLoop, family: .ipv6)
        let inbox = try Inbox(b)
        let local = try b.localAddress()
        #expect(local.port != 0)
        #expect(local.family == .ipv6)
        try a.send(Array("hi"), to: SocketAddress(ip: "127.0.0.1", port: local.port))
        #expect(try await inbox.datagram().payload == Array("hi"))
        await closeAll(a, b)
    }

    @Test("the receive callback given to init is used by startReceiving()")
    func initCallback() async throws {
        let a = try boundHandle()
        var got: [UInt8] = []
        let box = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[UInt8], any Error>) in
            do {
                let b = try UDPHandle(loop: testLoop, onReceive: { handle, result in
                    if case .success(let datagram) = result {
                        got = datagram.payload
                        handle.close()
                        continuation.resume(returning: got)
                    }
                })
                try b.bind(SocketAddress("127.0.0.1:0"))
                try b.startReceiving()
                try a.send(Array("via init"), to: b.localAddress())
            } catch {
                continuation.resume(throwing: error)
            }
        }
        #expect(box == Array("via init"))
        await closeAll(a)
    }
}

@Suite("UDPHandle: close", .timeLimit(.minutes(1)))
@TestLoop
struct UDPHandleCloseTests {
    @Test("close with 5 sends queued: each callback fires exactly once, with ECANCELED")
    func closeCancelsQueued() async throws {
        let a = try boundHandle(), b = try boundHandle()
        let target = try b.localAddress()
        var outcomes = [[UVError?]](repeating: [], count: 6)
        // Sends made in the receive callback wait in the queue until the batch ends; closing in
        // the same callback cancels them.
        var queuedAtClose = -1
        let closed = Confirmation()
        try a.startReceiving { handle, _ in
            for index in 0..<6 {
                try? handle.send(Array("#\(index)"), to: target) { _, error in outcomes[index].append(error) }
            }
            queuedAtClose = handle.sendQueueCount
            handle.close { _ in closed.signal() }
        }
        try b.send(Array("trigger"), to: a.localAddress())
        await closed.wait()
        #expect(queuedAtClose == 6)
        #expect(outcomes.allSatisfy { $0 == [UVError.canceled] })
        await closeAll(b)
    }

    @Test("closing twice is harmless; every operation after close throws ClosedHandleError")
    func afterClose() async throws {
        let a = try boundHandle()
        let address = try SocketAddress("127.0.0.1:9")
        var closes = 0
        a.close { _ in closes += 1 }
        a.close { _ in closes += 1 }
        #expect(a.isClosed)
        #expect(throws: ClosedHandleError.self) { try a.send(Array("x"), to: address) }
        await closeAll(a)
        a.close()
        #expect(closes == 2)
        #expect(throws: ClosedHandleError.self) { try a.send(Array("x"), to: address) }
        #expect(throws: ClosedHandleError.self) { try a.send([Array("x")], to: address) }
        #expect(throws: ClosedHandleError.self) { try a.trySend(Array("x"), to: address) }
        #expect(throws: ClosedHandleError.self) { try a.bind(SocketAddress("127.0.0.1:0")) }
        #expect(throws: ClosedHandleError.self) { try a.connect(address) }
        #expect(throws: ClosedHandleError.self) { try a.disconnect() }
        #expect(throws: ClosedHandleError.self) { try a.startReceiving { _, _ in } }
        #expect(throws: ClosedHandleError.self) { try a.localAddress() }
        #expect(throws: ClosedHandleError.self) { try a.remoteAddress() }
        #expect(throws: ClosedHandleError.self) { try a.fileDescriptor() }
        #expect(throws: ClosedHandleError.self) { try a.setTTL(5) }
        #expect(throws: ClosedHandleError.self) { try a.setBroadcast(true) }
        #expect(throws: ClosedHandleError.self) { try a.setMulticastTTL(1) }
        #expect(throws: ClosedHandleError.self) { try a.setMulticastLoop(true) }
        #expect(throws: ClosedHandleError.self) { try a.setMulticastInterface(nil) }
        #expect(throws: ClosedHandleError.self) { try a.setMembership("239.1.1.1", .join) }
        #expect(throws: ClosedHandleError.self) { try a.setSourceMembership(group: "232.1.1.1", source: "127.0.0.1", .join) }
        #expect(throws: ClosedHandleError.self) { try a.sendBufferSize() }
        #expect(throws: ClosedHandleError.self) { try a.setReceiveBufferSize(1000) }
        #expect(throws: ClosedHandleError.self) { try a.open(0) }
        a.stopReceiving()
        #expect(a.sendQueueCount == 0)
        #expect(a.sendQueueSize == 0)
        #expect(a.family == nil)
    }

    @Test("close from inside the receive callback with sends queued is safe")
    func closeInsideCallback() async throws {
        let a = try boundHandle(), b = try boundHandle()
        let aAddress = try a.localAddress()
        var outcomes: [UVError?] = []
        let closedInCallback: Bool = await withCheckedContinuation { continuation in
            do {
                try b.startReceiving { handle, _ in
                    // Queue sends, then close, all inside libuv's receive callback.
                    for _ in 0..<5 { try? handle.send(Array("reply"), to: aAddress) { _, error in outcomes.append(error) } }
                    handle.close { _ in continuation.resume(returning: true) }
                    #expect(handle.isClosed)
                    #expect(throws: ClosedHandleError.self) { try handle.send(Array("late"), to: aAddress) }
                }
                try a.send(Array("trigger"), to: b.localAddress())
            } catch {
                Issue.record(error)
                continuation.resume(returning: false)
            }
        }
        #expect(closedInCallback)
        #expect(outcomes.count == 5)
        await closeAll(a)
    }

    @Test("closing inside a send callback is safe")
    func closeInsideSendCallback() async throws {
        let a = try boundHandle(), b = try boundHandle()
        var calls = 0
        await withCheckedContinuation { continuation in
            do {
                try a.send(Array("1"), to: b.localAddress()) { handle, _ in
                    calls += 1
                    handle.close { _ in continuation.resume() }
                }
                try a.send(Array("2"), to: b.localAddress()) { _, _ in calls += 1 }
            } catch {
                Issue.record(error)
                continuation.resume()
            }
        }
        #expect(calls == 2)
        await closeAll(b)
    }
}

@Suite("UDPHandle: bind and addresses", .timeLimit(.minutes(1)))
@TestLoop
struct UDPHandleBindTests {
    @Test("EADDRINUSE without reuse; two binds with .reuseAddress both succeed")
    func addressInUse() async throws {
        let a = try boundHandle()
        let port = try a.localAddress().port
        #expect(port != 0)
        let b = try UDPHandle(loop: testLoop)
        #expect(throws: UVError.addressInUse) { try b.bind(SocketAddress(ip: "127.0.0.1", port: port)) }
        let c = try boundHandle(flags: .reuseAddress)
        let reusedPort = try c.localAddress().port
        let d = try UDPHandle(loop: testLoop, flags: .reuseAddress)
        try d.bind(SocketAddress(ip: "127.0.0.1", port: reusedPort))
        #expect(try d.localAddress().port == reusedPort)
        await closeAll(a, b, c, d)
    }

    @Test("binding twice, or after an implicit bind, is refused")
    func bindTwice() async throws {
        let a = try boundHandle()
        #expect(throws: UVError.invalidArgument) { try a.bind(SocketAddress("127.0.0.1:0")) }
        let b = try boundHandle()
        let c = try UDPHandle(loop: testLoop)
        try c.send(Array("auto-binds"), to: b.localAddress())
        #expect(throws: UVError.invalidArgument) { try c.bind(SocketAddress("127.0.0.1:0")) }
        await closeAll(a, b, c)
    }

    @Test("bad binds: a foreign address, flag misuse, family mismatch")
    func badBinds() async throws {
        let a = try UDPHandle(loop: testLoop)
        #expect(throws: UVError.addressNotAvailable) { try a.bind(SocketAddress("1.2.3.4:0")) }
        let b = try UDPHandle(loop: testLoop)
        #expect(throws: UVError.invalidArgument) { try b.bind(SocketAddress("127.0.0.1:0"), flags: .ipv6Only) }
        #expect(throws: UVError.invalidArgument) { try b.bind(SocketAddress("127.0.0.1:0"), flags: .partial) }
        let c = try UDPHandle(loop: testLoop, family: .ipv6)
        #expect(throws: UVError.invalidArgument) { try c.bind(SocketAddress("127.0.0.1:0")) }
        let d = try UDPHandle(loop: testLoop, family: .ipv4)
        #expect(throws: UVError.invalidArgument) { try d.bind(SocketAddress("[::1]:0")) }
        #expect(throws: UVError.badFileDescriptor) { try UDPHandle(loop: testLoop).localAddress() }
        await closeAll(a, b, c, d)
    }

    @Test("dual stack: [::] receives from 127.0.0.1 as ::ffff:127.0.0.1")
    func dualStack() async throws {
        let server = try boundHandle("::")
        let port = try server.localAddress().port
        let inbox = try Inbox(server)
        let client = try boundHandle("127.0.0.1")
        try client.send(Array("v4"), to: SocketAddress(ip: "127.0.0.1", port: port))
        let datagram = try await inbox.datagram()
        #expect(datagram.payload == Array("v4"))
        #expect(datagram.remote.ip == "::ffff:127.0.0.1")
        #expect(datagram.remote.port == (try client.localAddress().port))
        await closeAll(server, client)
    }

    @Test("dual stack: with .ipv6Only, IPv4 traffic is refused and only IPv6 arrives")
    func ipv6Only() async throws {
        let server = try boundHandle("::", flags: .ipv6Only)
        let port = try server.localAddress().port
        let inbox = try Inbox(server)
        // A connected IPv4 client learns from ICMP that no IPv4 socket has the port.
        let client = try UDPHandle(loop: testLoop)
        try client.connect(SocketAddress(ip: "127.0.0.1", port: port))
        let clientInbox = try Inbox(client)
        try client.send(Array("v4"))
        #expect(try await clientInbox.error() == .connectionRefused)
        let v6 = try boundHandle("::1")
        try v6.send(Array("v6"), to: SocketAddress(ip: "::1", port: port))
        let first = try await inbox.datagram()
        #expect(first.payload == Array("v6"))
        #expect(inbox.received == 1)
        #expect(throws: UVError.networkUnreachable) { try server.send(Array("x"), to: SocketAddress("127.0.0.1:9")) }
        await closeAll(server, client, v6)
    }

    @Test("family checks on send: IPv6 destination from IPv4, port 0, address on a connected handle")
    func sendChecks() async throws {
        let a = try boundHandle()
        #expect(throws: UVError.addressFamilyNotSupported) { try a.send(Array("x"), to: SocketAddress("[::1]:9")) }
        #expect(throws: UVError.invalidArgument) { try a.send(Array("x"), to: SocketAddress("127.0.0.1:0")) }
        #expect(throws: UVError.destinationAddressRequired) { try a.send(Array("x")) }
        #expect(throws: UVError.destinationAddressRequired) { try a.trySend(Array("x")) }
        try a.connect(SocketAddress("127.0.0.1:9"))
        #expect(throws: UVError.alreadyConnected) { try a.send(Array("x"), to: SocketAddress("127.0.0.1:9")) }
        #expect(throws: UVError.alreadyConnected) { try a.connect(SocketAddress("127.0.0.1:10")) }
        try a.disconnect()
        #expect(throws: UVError.notConnected) { try a.disconnect() }
        #expect(throws: UVError.invalidArgument) { try a.connect(SocketAddress("127.0.0.1:0")) }
        #expect(a.sendQueueCount == 0)
        await closeAll(a)
    }
}

@Suite("UDPHandle: options", .timeLimit(.minutes(1)))
@TestLoop
struct UDPHandleOptionTests {
    @Test("TTL 1...255 accepted, 0 and 256 rejected; multicast TTL 0...255", arguments: ["127.0.0.1", "::1"])
    func ttl(ip: String) async throws {
        let a = try boundHandle(ip)
        for ttl in [1, 64, 255] { try a.setTTL(ttl) }
        for ttl in [0, 256, -1] { #expect(throws: UVError.invalidArgument) { try a.setTTL(ttl) } }
        for ttl in [0, 1, 255] { try a.setMulticastTTL(ttl) }
        for ttl in [-1, 256] { #expect(throws: UVError.invalidArgument) { try a.setMulticastTTL(ttl) } }
        try a.setMulticastLoop(false)
        try a.setMulticastLoop(true)
        try a.setBroadcast(true)
        try a.setBroadcast(false)
        // The value actually reached the socket, at the right protocol level.
        let fd = try a.fileDescriptor()
        try a.setTTL(7)
        var value: Int32 = 0
        var length = socklen_t(4)
        if ip == "::1" {
            getsockopt(fd, Int32(IPPROTO_IPV6), IPV6_UNICAST_HOPS, &value, &length)
        } else {
            getsockopt(fd, Int32(IPPROTO_IP), IP_TTL, &value, &length)
        }
        #expect(value == 7)
        await closeAll(a)
    }

    @Test("options on a handle with no socket yet throw EBADF")
    func unboundOptions() async throws {
        let a = try UDPHandle(loop: testLoop)
        #expect(throws: UVError.badFileDescriptor) { try a.setTTL(5) }
        #expect(throws: UVError.badFileDescriptor) { try a.setBroadcast(true) }
        #expect(throws: UVError.badFileDescriptor) { try a.fileDescriptor() }
        #expect(a.family == nil)
        let b = try UDPHandle(loop: testLoop, family: .ipv4)
        try b.setTTL(5)
        #expect(b.family == .ipv4)
        await closeAll(a, b)
    }

    @Test("buffer sizes set to 10000 read back as 10000 or 20000")
    func bufferSizes() async throws {
        let a = try boundHandle()
        try a.setSendBufferSize(10_000)
        try a.setReceiveBufferSize(10_000)
        #expect([10_000, 20_000].contains(try a.sendBufferSize()))
        #expect([10_000, 20_000].contains(try a.receiveBufferSize()))
        #expect(throws: UVError.invalidArgument) { try a.setSendBufferSize(0) }
        #expect(throws: UVError.invalidArgument) { try a.setReceiveBufferSize(-5) }
        await closeAll(a)
    }

    @Test("family is reported once known")
    func family() async throws {
        let a = try boundHandle("::1")
        #expect(a.family == .ipv6)
        let b = try boundHandle()
        #expect(b.family == .ipv4)
        let c = try UDPHandle(loop: testLoop)
        #expect(c.family == nil)
        try c.send(Array("x"), to: b.localAddress())
        #expect(c.family == .ipv4)
        await closeAll(a, b, c)
    }
}

@Suite("UDPHandle: open(fd)", .timeLimit(.minutes(1)))
@TestLoop
struct UDPHandleOpenTests {
    private func udpSocket(_ family: Int32 = AF_INET) -> Int32 {
        socket(family, Int32(SOCK_DGRAM.rawValue), 0)
    }

    private func bindFD(_ fd: Int32) {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        _ = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    }

    @Test("an unbound socket: bind through the handle and ping")
    func unbound() async throws {
        let fd = udpSocket()
        let a = try UDPHandle(loop: testLoop)
        try a.open(fd)
        #expect(try a.fileDescriptor() == fd)
        var reuse: Int32 = 1
        var length = socklen_t(4)
        getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, &length)
        #expect(reuse == 0, "open(fd) must not leave libuv's SO_REUSEADDR behind")
        try a.bind(SocketAddress("127.0.0.1:0"))
        let b = try boundHandle()
        let inbox = try Inbox(b)
        try a.send(Array("from fd"), to: b.localAddress())
        #expect(try await inbox.datagram().remote == (try a.localAddress()))
        await closeAll(a, b)
    }

    @Test("an already bound socket keeps its address and receives")
    func alreadyBound() async throws {
        let fd = udpSocket()
        bindFD(fd)
        let a = try UDPHandle(loop: testLoop)
        try a.open(fd)
        let local = try a.localAddress()
        #expect(local.ip == "127.0.0.1" && local.port != 0)
        #expect(throws: UVError.invalidArgument) { try a.bind(SocketAddress("127.0.0.1:0")) }
        let inbox = try Inbox(a)
        let b = try boundHandle()
        try b.send(Array("to fd"), to: local)
        #expect(try await inbox.datagram().payload == Array("to fd"))
        await closeAll(a, b)
    }

    @Test("an already connected socket sends without an address")
    func alreadyConnected() async throws {
        let b = try boundHandle()
        let inbox = try Inbox(b)
        let peer = try b.localAddress()
        let fd = udpSocket()
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = UInt16(peer.port).bigEndian
        sin.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        _ = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        let a = try UDPHandle(loop: testLoop)
        try a.open(fd)
        #expect(try a.remoteAddress() == peer)
        try a.send(Array("connected fd"))
        #expect(try await inbox.datagram().payload == Array("connected fd"))
        await closeAll(a, b)
    }

    @Test("the same fd adopted twice, a second fd, or a non-UDP fd is an error")
    func adoptTwice() async throws {
        let fd = udpSocket()
        let a = try UDPHandle(loop: testLoop)
        try a.open(fd)
        let b = try UDPHandle(loop: testLoop)
        #expect(throws: UVError.alreadyExists) { try b.open(fd) }
        let other = udpSocket()
        #expect(throws: UVError.busy) { try a.open(other) }
        let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(throws: UVError.invalidArgument) { try b.open(tcp) }
        #expect(throws: UVError.self) { try b.open(-1) }
        Glibc.close(other)
        Glibc.close(tcp)
        await closeAll(a)
        // Once closed, its fd number may be adopted again (the kernel may reuse it).
        let again = udpSocket()
        try b.open(again)
        await closeAll(b)
    }

    @Test("an adopted IPv6 socket gets IPv6-level options")
    func ipv6Options() async throws {
        let fd = udpSocket(AF_INET6)
        let a = try UDPHandle(loop: testLoop)
        try a.open(fd)
        #expect(a.family == .ipv6)
        try a.setTTL(9)
        var value: Int32 = 0
        var length = socklen_t(4)
        getsockopt(fd, Int32(IPPROTO_IPV6), IPV6_UNICAST_HOPS, &value, &length)
        #expect(value == 9)
        await closeAll(a)
    }
}

@Suite("UDPHandle: connected handles", .timeLimit(.minutes(1)))
@TestLoop
struct UDPHandleConnectTests {
    @Test("send without an address; remoteAddress reports the peer")
    func connected() async throws {
        let b = try boundHandle()
        let inbox = try Inbox(b)
        let a = try UDPHandle(loop: testLoop)
        #expect(try a.remoteAddress() == nil)
        try a.connect(b.localAddress())
        #expect(try a.remoteAddress() == (try b.localAddress()))
        #expect(try await sendAndWait(a, [Array("no address")]) == nil)
        #expect(try a.trySend(Array("try")) == 3)
        #expect(try await inbox.datagram().payload == Array("no address"))
        #expect(try await inbox.datagram().payload == Array("try"))
        try a.disconnect()
        #expect(try a.remoteAddress() == nil)
        await closeAll(a, b)
    }

    @Test("a send to a closed port reports ECONNREFUSED, and the handle goes on receiving")
    func refused() async throws {
        let port = try await closedPort()
        let a = try boundHandle()
        try a.connect(port)
        let inbox = try Inbox(a)
        #expect(try await sendAndWait(a, [Array("nobody home")]) == nil)
        #expect(try await inbox.error() == .connectionRefused)
        // Someone takes the port and talks to us: still receiving.
        let b = try boundHandle(port: port.port)
        try b.send(Array("back"), to: a.localAddress())
        #expect(try await inbox.datagram().payload == Array("back"))
        try a.send(Array("again"))
        let bInbox = try Inbox(b)
        #expect(try await bInbox.datagram().payload == Array("again"))
        await closeAll(a, b)
    }
}

@Suite("UDPHandle: multicast and broadcast on loopback", .timeLimit(.minutes(1)))
@TestLoop
struct UDPHandleMulticastTests {
    @Test("join 239.255.x.y on 127.0.0.1, sender's multicast interface 127.0.0.1: delivered; leave")
    func anySource() async throws {
        let group = "239.255.\(Int.random(in: 1...254)).\(Int.random(in: 1...254))"
        let receiver = try boundHandle("0.0.0.0", flags: .reuseAddress)
        try receiver.setMembership(group, .join, interface: "127.0.0.1")
        #expect(throws: UVError.addressInUse) { try receiver.setMembership(group, .join, interface: "127.0.0.1") }
        let inbox = try Inbox(receiver)
        let sender = try boundHandle()
        try sender.setMulticastInterface("127.0.0.1")
        try sender.setMulticastTTL(0)
        try sender.setMulticastLoop(true)
        let port = try receiver.localAddress().port
        try sender.send(Array("to the group"), to: SocketAddress(ip: group, port: port))
        let datagram = try await inbox.datagram()
        #expect(datagram.payload == Array("to the group"))
        #expect(datagram.remote == (try sender.localAddress()))
        try receiver.setMembership(group, .leave, interface: "127.0.0.1")
        #expect(throws: UVError.addressNotAvailable) { try receiver.setMembership(group, .leave, interface: "127.0.0.1") }
        await closeAll(receiver, sender)
    }

    @Test("source-specific join with the sender's address: delivered")
    func sourceSpecific() async throws {
        let group = "232.1.\(Int.random(in: 1...254)).\(Int.random(in: 1...254))"
        let receiver = try boundHandle("0.0.0.0", flags: .reuseAddress)
        try receiver.setSourceMembership(group: group, source: "127.0.0.1", .join, interface: "127.0.0.1")
        let inbox = try Inbox(receiver)
        let sender = try boundHandle()
        try sender.setMulticastInterface("127.0.0.1")
        try sender.send(Array("ssm"), to: SocketAddress(ip: group, port: receiver.localAddress().port))
        #expect(try await inbox.datagram().payload == Array("ssm"))
        try receiver.setSourceMembership(group: group, source: "127.0.0.1", .leave, interface: "127.0.0.1")
        await closeAll(receiver, sender)
    }

    @Test("membership misuse gets clear errors")
    func membershipErrors() async throws {
        let a = try boundHandle("0.0.0.0")
        #expect(throws: SocketAddressError.self) { try a.setMembership("bogus", .join) }
        #expect(throws: UVError.invalidArgument) { try a.setMembership("127.0.0.1", .join) }
        #expect(throws: UVError.addressFamilyNotSupported) { try a.setMembership("ff02::1", .join) }
        #expect(throws: SocketAddressError.self) { try a.setMembership("239.1.1.1", .join, interface: "not-an-ip") }
        #expect(throws: UVError.noSuchDevice) { try a.setMembership("239.1.1.1", .join, interface: "1.2.3.4") }
        #expect(throws: UVError.addressFamilyNotSupported) { try a.setMembership("239.1.1.1", .join, interface: "::1") }
        #expect(throws: UVError.addressFamilyNotSupported) { try a.setSourceMembership(group: "232.1.1.1", source: "127.0.0.1", .join, interface: "::1") }
        #expect(throws: SocketAddressError.self) { try a.setSourceMembership(group: "232.1.1.1", source: "bad", .join) }
        #expect(throws: UVError.invalidArgument) { try a.setSourceMembership(group: "232.1.1.1", source: "::1", .join) }
        #expect(throws: UVError.addressNotAvailable) { try a.setMulticastInterface("1.2.3.4") }
        #expect(throws: UVError.addressFamilyNotSupported) { try a.setMulticastInterface("::1") }
        try a.setMulticastInterface(nil)
        await closeAll(a)
    }

    @Test("broadcast to 127.255.255.255 with broadcast on: delivered")
    func broadcast() async throws {
        let receiver = try boundHandle("0.0.0.0")
        let inbox = try Inbox(receiver)
        let sender = try boundHandle()
        let target = try SocketAddress(ip: "127.255.255.255", port: receiver.localAddress().port)
        #expect(try await sendAndWait(sender, [Array("denied")], to: target) == .permissionDenied)
        try sender.setBroadcast(true)
        #expect(try await sendAndWait(sender, [Array("to all")], to: target) == nil)
        #expect(try await inbox.datagram().payload == Array("to all"))
        await closeAll(receiver, sender)
    }

    @Test("255.255.255.255 with broadcast off: EACCES, from send and from trySend")
    func broadcastOff() async throws {
        let sender = try boundHandle("0.0.0.0")
        let target = try SocketAddress("255.255.255.255:9")
        #expect(try await sendAndWait(sender, [Array("no")], to: target) == .permissionDenied)
        #expect(throws: UVError.permissionDenied) { try sender.trySend(Array("no"), to: target) }
        await closeAll(sender)
    }
}

@Suite("UDPHandle: receive with recvmmsg", .timeLimit(.minutes(1)))
@TestLoop
struct UDPHandleBatchedReceiveTests {
    @Test("a burst read many at a time: datagrams, senders, sizes and truncation are exact")
    func batched() async throws {
        let sender = try boundHandle()
        let receiver = try UDPHandle(loop: testLoop)
        try receiver.bind(SocketAddress("127.0.0.1:0"))
        try receiver.setReceiveBufferSize(1 << 20)
        let inbox = try Inbox(receiver)
        let target = try receiver.localAddress()
        // A burst: several datagrams per recvmmsg call, in order.
        for index in 0..<50 { try sender.send(Array("#\(index)"), to: target) }
        for index in 0..<50 {
            let datagram = try await inbox.datagram()
            #expect(datagram.payload == Array("#\(index)"))
            #expect(datagram.remote == (try sender.localAddress()))
            #expect(!datagram.isTruncated)
        }
        try sender.send([UInt8](), to: target)
        #expect(try await inbox.datagram().payload.isEmpty)
        let largest = [UInt8](repeating: 0x5A, count: 65_507)
        try sender.send(largest, to: target)
        #expect(try await inbox.datagram().payload == largest)
        try receiver.setMaximumDatagramSize(8)
        try sender.send(Array("0123456789"), to: target)
        let truncated = try await inbox.datagram()
        #expect(truncated.isTruncated && truncated.payload == Array("01234567"))
        await closeAll(sender, receiver)
    }
}
