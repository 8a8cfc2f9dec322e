import AsyncUDP
import AsyncUDPTesting
import Testing

/// Every wait in AsyncUDPTesting fails at its deadline with ``TestTimeoutError``: none hangs.
@Suite("Waits with deadlines", .timeLimit(.minutes(1)))
struct DeadlineTests {
    @Test("withDeadline returns the operation's value, and passes its error on")
    func valueAndError() async throws {
        #expect(try await withDeadline(.seconds(5)) { 42 } == 42)
        struct Boom: Error {}
        await #expect(throws: Boom.self) { try await withDeadline(.seconds(5)) { throw Boom() } }
    }

    @Test("withDeadline throws TestTimeoutError at its deadline for an operation that never ends")
    func timesOut() async throws {
        let start = ContinuousClock.now
        let error = await #expect(throws: TestTimeoutError.self) {
            try await withDeadline(.milliseconds(200), "the answer") { try await Task.sleep(for: .seconds(3600)) }
        }
        let elapsed = ContinuousClock.now - start
        #expect(elapsed >= .milliseconds(200) && elapsed < .seconds(10), "\(elapsed)")
        #expect(error?.what == "the answer")
        #expect(error?.duration == .milliseconds(200))
        #expect(error?.description == "timed out after 0.2 seconds waiting for: the answer")
    }

    @Test("withDeadline returns at its deadline even when the operation ignores cancellation")
    func ignoresCancellation() async throws {
        let parked = Parked()
        defer { parked.release() }
        let start = ContinuousClock.now
        await #expect(throws: TestTimeoutError.self) {
            try await withDeadline(.milliseconds(200)) { await parked.waitIgnoringCancellation() }
        }
        #expect(ContinuousClock.now - start < .seconds(10))
    }

    @Test("cancelling the task that waits ends withDeadline with CancellationError, long before its deadline")
    func outerCancellation() async throws {
        let start = ContinuousClock.now
        let task = Task { try await withDeadline(.seconds(3600)) { try await Task.sleep(for: .seconds(3600)) } }
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(ContinuousClock.now - start < .seconds(10))
    }

    @Test("expectDatagram(within:) on a socket throws at its deadline and takes nothing; a datagram then is returned")
    func socketExpectDatagram() async throws {
        try await withLoopbackSocket { receiver in
            let start = ContinuousClock.now
            let error = await #expect(throws: TestTimeoutError.self) {
                try await receiver.expectDatagram(within: .milliseconds(150))
            }
            #expect(ContinuousClock.now - start >= .milliseconds(150))
            #expect(error?.what == "a datagram at \(receiver.localAddress)")
            try await withLoopbackSocket { sender in
                try await sender.send(Array("late".utf8), to: receiver.localAddress)
                #expect(try await receiver.expectDatagram(within: .seconds(5)).string == "late")
                try await sender.send(Array("stray".utf8), to: receiver.localAddress)
                let unexpected = await #expect(throws: UnexpectedDatagramError.self) {
                    try await receiver.expectNoDatagram(within: .seconds(5))
                }
                #expect(unexpected?.datagram.string == "stray")
                #expect(unexpected?.datagram.remote == sender.localAddress)
            }
            try await receiver.expectNoDatagram(within: .milliseconds(50))
        }
    }

    @Test("a test peer's expectDatagram(within:) throws at its deadline, names the peer, and takes nothing")
    func peerExpectDatagram() async throws {
        try await withTestPeer(script: .silent) { peer in
            let error = await #expect(throws: TestTimeoutError.self) {
                try await peer.expectDatagram(within: .milliseconds(150))
            }
            #expect(error?.description.contains("datagram at the test peer \(peer.address) (0 received so far") == true,
                    "\(String(describing: error))")
            await #expect(throws: TestTimeoutError.self) { try await peer.waitForReceived(1, within: .milliseconds(50)) }
            await #expect(throws: TestTimeoutError.self) { try await peer.waitForReplies(1, within: .milliseconds(50)) }
            try await withLoopbackSocket { client in
                try await client.send(Array("one".utf8), to: peer.address)
                #expect(try await peer.expectDatagram(within: .seconds(5)).payload == Array("one".utf8))
            }
            await #expect(throws: TestPeerError.invalidCount(0)) { try await peer.expectDatagrams(0, within: .seconds(1)) }
        }
    }

    @Test("an impaired link's waitUntilForwarded throws at its deadline when the traffic never comes")
    func linkWait() async throws {
        try await withTestPeer { peer in
            try await withImpairedLink(to: peer.address) { link in
                let error = await #expect(throws: TestTimeoutError.self) {
                    try await link.waitUntilForwarded(.clientToServer, received: 1, within: .milliseconds(150))
                }
                #expect(error?.description.contains("received 0") == true, "\(String(describing: error))")
            }
        }
    }
}
