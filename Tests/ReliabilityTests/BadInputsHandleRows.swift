import AsyncUDP
import Glibc
import Testing
import TestSupport

/// The BAD-INPUTS.md rows that need the callback layer (`UDPHandle`), on the test loop.
@TestLoop
enum HandleRows {
    static func portZeroIsSynchronous() async throws {
        let a = try boundHandle()
        var called = false
        #expect(throws: UVError.invalidArgument) {
            try a.send(Array("x"), to: SocketAddress("127.0.0.1:0")) { _, _ in called = true }
        }
        #expect(throws: UVError.invalidArgument) { try a.trySend(Array("x"), to: SocketAddress("127.0.0.1:0")) }
        #expect(a.sendQueueCount == 0)
        await closeAll(a)
        #expect(!called, "a refused send has no callback")
    }

    static func familyMismatchOnTrySend() async throws {
        let a = try boundHandle()
        #expect(throws: UVError.addressFamilyNotSupported) { try a.trySend(Array("x"), to: SocketAddress("[::1]:9")) }
        #expect(throws: UVError.addressFamilyNotSupported) { try a.send(Array("x"), to: SocketAddress("[::1]:9")) }
        await closeAll(a)
    }

    static func emptyBufferList() async throws {
        let a = try boundHandle(), b = try boundHandle()
        let inbox = try Inbox(b)
        #expect(throws: UVError.invalidArgument) { try a.send([] as [[UInt8]], to: b.localAddress()) }
        #expect(throws: UVError.invalidArgument) { try a.trySend([] as [[UInt8]], to: b.localAddress()) }
        // One empty buffer is a zero-length datagram.
        #expect(try await sendAndWait(a, [[]], to: b.localAddress()) == nil)
        #expect(try await inbox.datagram().payload == [])
        await closeAll(a, b)
    }

    static func bindOtherFamily() async throws {
        let v6 = try UDPHandle(loop: testLoop, family: .ipv6)
        #expect(throws: UVError.invalidArgument) { try v6.bind(SocketAddress("127.0.0.1:0")) }
        let v4 = try UDPHandle(loop: testLoop, family: .ipv4)
        #expect(throws: UVError.invalidArgument) { try v4.bind(SocketAddress("[::1]:0")) }
        // Each still binds its own family.
        try v6.bind(SocketAddress("[::1]:0"))
        try v4.bind(SocketAddress("127.0.0.1:0"))
        await closeAll(v4, v6)
    }

    static func unknownFlags() async throws {
        // Unknown bits (0x400, libuv's REUSEPORT value 64) are refused before libuv sees them,
        // and the handle stays unbound and usable.
        for raw: UInt32 in [0x400, 64] {
            let a = try UDPHandle(loop: testLoop)
            #expect(throws: UVError.invalidArgument) { try a.bind(SocketAddress("127.0.0.1:0"), flags: UDPFlags(rawValue: raw)) }
            try a.bind(SocketAddress("127.0.0.1:0"))
            let fd = try a.fileDescriptor()
            #expect(socketOption(fd, SOL_SOCKET, SO_REUSEPORT) == 0)
            #expect(socketOption(fd, SOL_SOCKET, SO_REUSEADDR) == 0)
            await closeAll(a)
        }
        let c = try UDPHandle(loop: testLoop)
        #expect(throws: UVError.invalidArgument) { try c.bind(SocketAddress("127.0.0.1:0"), flags: .partial) }
        await closeAll(c)
    }

    static func bindTwice() async throws {
        let a = try boundHandle()
        #expect(throws: UVError.invalidArgument) { try a.bind(SocketAddress("127.0.0.1:0")) }
        let peer = try boundHandle()
        let sender = try UDPHandle(loop: testLoop)
        #expect(try await sendAndWait(sender, [Array("auto-binds")], to: peer.localAddress()) == nil)
        #expect(throws: UVError.invalidArgument) { try sender.bind(SocketAddress("127.0.0.1:0")) }
        let receiver = try UDPHandle(loop: testLoop)
        try receiver.startReceiving { _, _ in }
        #expect(throws: UVError.invalidArgument) { try receiver.bind(SocketAddress("0.0.0.0:0")) }
        await closeAll(a, peer, sender, receiver)
    }

    static func typedFamilies() async throws {
        // The domain is a two-case enum; each creates a socket of that family at once.
        for family in [AddressFamily.ipv4, .ipv6] {
            let handle = try UDPHandle(loop: testLoop, family: family)
            #expect(handle.family == family)
            let fd = try handle.fileDescriptor()
            #expect(socketOption(fd, SOL_SOCKET, SO_DOMAIN) == family.rawValue)
            await closeAll(handle)
        }
    }

    static func connectTwice() async throws {
        let server = try boundHandle()
        let client = try boundHandle()
        try client.connect(server.localAddress())
        #expect(throws: UVError.alreadyConnected) { try client.connect(server.localAddress()) }
        try client.disconnect()
        try client.connect(server.localAddress())
        await closeAll(server, client)
    }

    static func disconnectUnconnected() async throws {
        let a = try boundHandle()
        #expect(throws: UVError.notConnected) { try a.disconnect() }
        let unbound = try UDPHandle(loop: testLoop)
        #expect(throws: UVError.notConnected) { try unbound.disconnect() }
        await closeAll(a, unbound)
    }

    static func connectPortZero() async throws {
        let a = try boundHandle()
        #expect(throws: UVError.invalidArgument) { try a.connect(SocketAddress("127.0.0.1:0")) }
        #expect(try a.remoteAddress() == nil)
        await closeAll(a)
    }

    static func peerWhenNotConnected() async throws {
        let unbound = try UDPHandle(loop: testLoop)
        #expect(try unbound.remoteAddress() == nil)
        let bound = try boundHandle()
        #expect(try bound.remoteAddress() == nil)
        await closeAll(unbound, bound)
    }

    static func receiveTwice() async throws {
        let a = try boundHandle()
        try a.startReceiving { _, _ in }
        #expect(throws: UVError.alreadyInProgress) { try a.startReceiving { _, _ in } }
        await closeAll(a)
    }

    static func stopWhenIdle() async throws {
        let a = try boundHandle(), b = try boundHandle()
        a.stopReceiving()
        a.stopReceiving()
        #expect(!a.isReceiving)
        let inbox = try Inbox(a)
        #expect(try await sendAndWait(b, [Array("after stops")], to: a.localAddress()) == nil)
        #expect(try await inbox.datagram().payload == Array("after stops"))
        await closeAll(a, b)
    }

    static func zeroDatagramSizeRefused() async throws {
        let a = try boundHandle()
        #expect(throws: UVError.invalidArgument) { try a.setMaximumDatagramSize(0) }
        #expect(throws: UVError.invalidArgument) { try a.setMaximumDatagramSize(65_537) }
        #expect(a.maximumDatagramSize == 65_536)
        await closeAll(a)
    }

    static func optionsOnUnboundHandle() async throws {
        let a = try UDPHandle(loop: testLoop)
        #expect(throws: UVError.badFileDescriptor) { try a.setTTL(5) }
        #expect(throws: UVError.badFileDescriptor) { try a.setBroadcast(true) }
        #expect(throws: UVError.badFileDescriptor) { try a.setMulticastLoop(false) }
        #expect(throws: UVError.badFileDescriptor) { try a.setMulticastTTL(3) }
        #expect(throws: UVError.badFileDescriptor) { try a.setMulticastInterface(nil) }
        #expect(throws: UVError.badFileDescriptor) { try a.setMembership("239.255.6.31", .join, interface: "127.0.0.1") }
        #expect(throws: UVError.badFileDescriptor) { try a.localAddress() }
        #expect(throws: UVError.badFileDescriptor) { try a.fileDescriptor() }
        #expect(throws: UVError.badFileDescriptor) { try a.sendBufferSize() }
        #expect(throws: UVError.badFileDescriptor) { try a.setReceiveBufferSize(4096) }
        #expect(a.family == nil)
        await closeAll(a)
    }

    static func multicastLoopIsBool() async throws {
        let a = try boundHandle()
        let fd = try a.fileDescriptor()
        try a.setMulticastLoop(false)
        #expect(socketOption(fd, Int32(IPPROTO_IP), IP_MULTICAST_LOOP) == 0)
        try a.setMulticastLoop(true)
        #expect(socketOption(fd, Int32(IPPROTO_IP), IP_MULTICAST_LOOP) == 1)
        let v6 = try boundHandle("::1")
        let fd6 = try v6.fileDescriptor()
        try v6.setMulticastLoop(false)
        #expect(socketOption(fd6, Int32(IPPROTO_IPV6), IPV6_MULTICAST_LOOP) == 0)
        await closeAll(a, v6)
    }

    static func sendWhileClosing() async throws {
        let a = try boundHandle(), b = try boundHandle()
        let target = try b.localAddress()
        var closed = false
        var callbacks = 0
        a.close { _ in closed = true }
        // Between uv_close and its callback.
        #expect(!closed)
        #expect(throws: ClosedHandleError.self) { try a.send(Array("x"), to: target) { _, _ in callbacks += 1 } }
        #expect(throws: ClosedHandleError.self) { try a.trySend(Array("x"), to: target) }
        await closeAll(a)
        #expect(closed)
        #expect(callbacks == 0)
        await closeAll(b)
    }

    static func sendAfterClosed() async throws {
        // On a loop of its own, so that the handle count is this test's alone.
        let loop = UVLoop(name: "row47")
        let target = try SocketAddress("127.0.0.1:9")
        let (refused, openAfter): (Int, Int) = try await withCheckedThrowingContinuation { continuation in
            loop.execute {
                do {
                    let handle = try UDPHandle(loop: loop)
                    try handle.bind(SocketAddress("127.0.0.1:0"))
                    handle.close { closed in
                        // The close has completed: sends are refused, and no socket is created.
                        var refused = 0
                        do { try closed.send(Array("x"), to: target) } catch is ClosedHandleError { refused += 1 } catch {}
                        do { try closed.trySend(Array("x"), to: target) } catch is ClosedHandleError { refused += 1 } catch {}
                        let count = refused
                        loop.execute { continuation.resume(returning: (count, loop.openHandleCount)) }
                    }
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
        #expect(refused == 2)
        #expect(openAfter == 0, "no socket was opened behind our back")
        await loop.shutdown()
        let a = try boundHandle()
        await closeAll(a)
        #expect(throws: ClosedHandleError.self) { try a.send(Array("x"), to: target) }
        #expect(throws: ClosedHandleError.self) { try a.fileDescriptor() }
        #expect(a.family == nil)
    }

    static func doubleClose() async throws {
        let a = try boundHandle()
        var closes = 0
        a.close { _ in closes += 1 }
        a.close { _ in closes += 1 }
        await closeAll(a)
        a.close { _ in closes += 1 }
        #expect(closes == 3)
    }

    static func closeWithQueuedSends() async throws {
        let a = try boundHandle(), b = try boundHandle()
        let target = try b.localAddress()
        var outcomes = [[UVError?]](repeating: [], count: 6)
        // Sends made in the receive callback wait in the queue until the batch ends; the close
        // in the same callback cancels each of them exactly once.
        let closed = Confirmation()
        try a.startReceiving { handle, _ in
            for index in 0..<6 {
                try? handle.send(Array("#\(index)"), to: target) { _, error in outcomes[index].append(error) }
            }
            handle.close { _ in closed.signal() }
        }
        try b.send(Array("trigger"), to: a.localAddress())
        await closed.wait()
        #expect(outcomes.allSatisfy { $0.count == 1 }, "each send completes exactly once")
        #expect(outcomes.allSatisfy { $0 == [UVError.canceled] })
        await closeAll(b)
    }

    static func adoptOwnedDescriptor() async throws {
        let owner = try boundHandle()
        let fd = try owner.fileDescriptor()
        let thief = try UDPHandle(loop: testLoop)
        #expect(throws: UVError.alreadyExists) { try thief.open(fd) }
        // The owner is unaffected.
        #expect(try owner.fileDescriptor() == fd)
        await closeAll(owner, thief)
    }

    static func adoptSecondDescriptor() async throws {
        let a = try boundHandle()
        let extra = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        #expect(extra >= 0)
        #expect(throws: UVError.busy) { try a.open(extra) }
        Glibc.close(extra)  // refused, so still ours
        await closeAll(a)
    }
}
