import Testing
import TestSupport
import UVCore

/// The loop's read and send buffers are shared by every handle on it: a send made from one
/// handle's receive callback, on another handle, must not overwrite the batch being delivered.
@Suite("Shared I/O buffers", .timeLimit(.minutes(1)))
@TestLoop
struct SharedBufferTests {
    @Test("a batch send on another handle from inside a receive callback leaves the rest of the read batch intact",
          arguments: ["send(contentsOf:)", "send"])
    func sendFromAnotherHandleDuringBatch(kind: String) async throws {
        let source = try boundHandle(), receiver = try boundHandle()
        let relay = try boundHandle(), sink = try boundHandle()
        let sinkInbox = try Inbox(sink)
        // Twenty datagrams of different lengths wait in the receiver's socket before it reads,
        // so its first read takes them all in one recvmmsg.
        for index in 0..<20 {
            #expect(try await sendAndWait(source, [Array(repeating: UInt8(index), count: 10 + index)],
                                          to: receiver.localAddress()) == nil)
        }
        let sourceAddress = try source.localAddress()
        let sinkAddress = try sink.localAddress()
        var got: [(payload: [UInt8], from: SocketAddress)] = []
        let allArrived = Confirmation()
        try receiver.startReceiving { _, result in
            guard case .success(let datagram) = result else { return }
            if got.isEmpty {
                // On another handle, from inside this batch: three datagrams of 300 bytes.
                let out = (0..<3).map { _ in Datagram(payload: Array(repeating: 0xEE, count: 300), remote: sinkAddress) }
                if kind == "send" {
                    for datagram in out { try? relay.send(datagram.payload, to: sinkAddress) }
                } else {
                    try? relay.send(contentsOf: out)
                }
            }
            got.append((datagram.payload, datagram.remote))
            if got.count == 20 { allArrived.signal() }
        }
        for _ in 0..<3 { #expect(try await sinkInbox.datagram().payload.count == 300) }
        await allArrived.wait()
        #expect(got.count == 20)
        for (index, item) in got.enumerated() {
            #expect(item.payload == Array(repeating: UInt8(index), count: 10 + index), "datagram \(index)")
            #expect(item.from == sourceAddress, "sender of datagram \(index)")
        }
        await closeAll(source, receiver, relay, sink)
    }
}
