import AsyncUDP
import AsyncUDPTesting
import Testing

/// The scripted peer: what it records, and each script and modifier, with real sockets.
@Suite("TestPeer", .timeLimit(.minutes(1)))
struct TestPeerTests {
    @Test("echo: every datagram comes back; the peer records payload, sender, order and time", arguments: [AddressFamily.ipv4, .ipv6])
    func echo(family: AddressFamily) async throws {
        try await withTestPeer(family, script: .echo) { peer in
            #expect(peer.address.family == family)
            #expect(peer.address.ip == (family == .ipv4 ? "127.0.0.1" : "::1"))
            try await withLoopbackSocket(family: family) { client in
                let before = ContinuousClock.now
                for word in ["one", "two", "three"] {
                    try await client.send(Array(word.utf8), to: peer.address)
                    let reply = try await client.expectDatagram(within: .seconds(5))
                    #expect(reply.string == word)
                    #expect(reply.remote == peer.address)
                }
                let received = try await peer.expectDatagrams(3, within: .seconds(5))
                #expect(received.map(\.index) == [0, 1, 2])
                #expect(received.map { String(decoding: $0.payload, as: UTF8.self) } == ["one", "two", "three"])
                #expect(received.allSatisfy { $0.sender == client.localAddress })
                #expect(received.map(\.time) == received.map(\.time).sorted())
                #expect(received[0].time >= before && received[2].time <= .now)
                #expect(peer.received == received)
                #expect(peer.repliesSent == 3)
            }
        }
    }

    @Test("reply: the same answer to everything")
    func fixedReply() async throws {
        try await withTestPeer(script: .reply(Array("pong".utf8))) { peer in
            try await withLoopbackSocket { client in
                for word in ["ping", "anything"] {
                    try await client.send(Array(word.utf8), to: peer.address)
                    #expect(try await client.expectDatagram(within: .seconds(5)).string == "pong")
                }
            }
        }
    }

    @Test("ignoringFirst(2): the first two requests get no reply, the third does")
    func ignoringFirst() async throws {
        try await withTestPeer(script: .echo.ignoringFirst(2)) { peer in
            try await withLoopbackSocket { client in
                for word in ["a", "b", "c"] { try await client.send(Array(word.utf8), to: peer.address) }
                // Replies go out in request order: had "a" or "b" been answered, it would come first.
                #expect(try await client.expectDatagram(within: .seconds(5)).string == "c")
                try await peer.waitForReceived(3, within: .seconds(5))
                #expect(peer.repliesSent == 1)
            }
        }
    }

    @Test("delayed(by:): the reply leaves no earlier than the delay after the request")
    func delayed() async throws {
        try await withTestPeer(script: .echo.delayed(by: .milliseconds(300))) { peer in
            try await withLoopbackSocket { client in
                let start = ContinuousClock.now
                try await client.send(Array("slow".utf8), to: peer.address)
                #expect(try await client.expectDatagram(within: .seconds(5)).string == "slow")
                #expect(ContinuousClock.now - start >= .milliseconds(300))
            }
        }
    }

    @Test("a delayed reply does not hold up the replies to later requests")
    func delayDoesNotBlock() async throws {
        let script = TestPeer.Script { request in
            [TestPeer.Reply(request.payload, after: request.index == 0 ? .seconds(3) : .zero)]
        }
        try await withTestPeer(script: script) { peer in
            try await withLoopbackSocket { client in
                try await client.send(Array("first".utf8), to: peer.address)
                try await client.send(Array("second".utf8), to: peer.address)
                #expect(try await client.expectDatagram(within: .seconds(2)).string == "second")
            }
        }
    }

    @Test("duplicated(): each reply comes twice")
    func duplicated() async throws {
        try await withTestPeer(script: .echo.duplicated()) { peer in
            try await withLoopbackSocket { client in
                try await client.send(Array("twice".utf8), to: peer.address)
                #expect(try await client.expectDatagram(within: .seconds(5)).string == "twice")
                #expect(try await client.expectDatagram(within: .seconds(5)).string == "twice")
                try await peer.waitForReplies(2, within: .seconds(5))
                #expect(peer.repliesSent == 2)
            }
        }
    }

    @Test("replying: a computed answer, or none for nil")
    func replying() async throws {
        try await withTestPeer(script: .replying { request in
            request.payload == Array("skip".utf8) ? nil : request.payload.reversed()
        }) { peer in
            try await withLoopbackSocket { client in
                try await client.send(Array("skip".utf8), to: peer.address)
                try await client.send(Array("abc".utf8), to: peer.address)
                #expect(try await client.expectDatagram(within: .seconds(5)).string == "cba")
                #expect(peer.repliesSent == 1)
            }
        }
    }

    @Test("a script that throws leaves the request unanswered and says why")
    func throwingScript() async throws {
        struct Refused: Error, CustomStringConvertible { var description: String { "refused" } }
        try await withTestPeer(script: TestPeer.Script { request in
            if request.index == 0 { throw Refused() }
            return [TestPeer.Reply(request.payload)]
        }) { peer in
            try await withLoopbackSocket { client in
                try await client.send(Array("x".utf8), to: peer.address)
                try await client.send(Array("y".utf8), to: peer.address)
                #expect(try await client.expectDatagram(within: .seconds(5)).string == "y")
                #expect(peer.replyErrors == ["script failed for datagram 0: refused"])
            }
        }
    }

    @Test("a reply to another destination, and an unsolicited send from the peer's address")
    func destinations() async throws {
        try await withLoopbackSocket { observer in
            let script = TestPeer.Script { [TestPeer.Reply($0.payload, to: observer.localAddress)] }
            try await withTestPeer(script: script) { peer in
                try await withLoopbackSocket { client in
                    try await client.send(Array("cc".utf8), to: peer.address)
                    let copy = try await observer.expectDatagram(within: .seconds(5))
                    #expect(copy.string == "cc" && copy.remote == peer.address)
                    try await peer.send(Array("stray".utf8), to: client.localAddress)
                    let stray = try await client.expectDatagram(within: .seconds(5))
                    #expect(stray.string == "stray" && stray.remote == peer.address)
                }
            }
        }
    }

    @Test("withTestPeer closes the peer when its body throws, and passes the error on")
    func closesOnThrow() async throws {
        struct Failed: Error {}
        var socket: UDPSocket?
        await #expect(throws: Failed.self) {
            try await withTestPeer { peer in
                socket = peer.socket
                throw Failed()
            }
        }
        #expect(await socket?.isClosed == true)
    }
}
