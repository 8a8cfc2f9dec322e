// Helpers for the tests of AsyncUDPTesting: sequence-numbered payloads and a paced run of
// traffic through an impaired link.
import AsyncUDP
import AsyncUDPTesting
import Testing

/// `size` bytes: the sequence number `value` as 8 little-endian bytes, then 0xAB padding.
func payload(_ value: Int, size: Int = 16) -> [UInt8] {
    var bytes = [UInt8](repeating: 0xAB, count: max(size, 8))
    withUnsafeBytes(of: UInt64(value).littleEndian) { bytes.replaceSubrange(0..<8, with: $0) }
    return bytes
}

/// The sequence number at the start of a payload (at least 8 bytes).
func sequence(_ payload: [UInt8]) -> Int {
    payload.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
}

/// What one paced run of traffic through a link produced.
struct RelayRun: Sendable, Equatable {
    /// The link's client-to-server counters at the end.
    var counters: ImpairedLink.Counters
    /// The link's decisions, in datagram order.
    var decisions: [ImpairmentDecision]
    /// The payloads the server received, in arrival order.
    var arrivals: [[UInt8]]
}

/// Sends `count` sequence-numbered datagrams from a client through an impaired link to a server,
/// all on 127.0.0.1, in windows of `window`: after each window it waits until the link has passed
/// on everything it will, then reads exactly what the link says it sent on. Neither the kernel nor
/// a receive queue ever holds more than two windows, so nothing is lost but what the link drops.
func relay(_ count: Int, seed: UInt64, impairments: Impairments, size: Int = 16, window: Int = 100) async throws -> RelayRun {
    try await withLoopbackSocket(configuration: .init(receiveQueueLimit: 8192)) { server in
        try await withImpairedLink(to: server.localAddress, seed: seed, clientToServer: impairments) { link in
            try await withLoopbackSocket { client in
                var arrivals: [[UInt8]] = []
                var sent = 0
                while sent < count {
                    let end = min(sent + window, count)
                    try await client.send(contentsOf: (sent..<end).map { Datagram(payload: payload($0, size: size), remote: link.address) })
                    sent = end
                    let counters = try await link.waitUntilForwarded(.clientToServer, received: sent, within: .seconds(20))
                    while arrivals.count < counters.forwarded {
                        arrivals.append(try await server.expectDatagram(within: .seconds(10)).payload)
                    }
                }
                // Nothing more than the link counted reached the server.
                #expect(await server.statistics.datagramsReceived == arrivals.count)
                return RelayRun(counters: link.statistics.clientToServer, decisions: link.decisions(.clientToServer),
                                arrivals: arrivals)
            }
        }
    }
}

/// A continuation that an operation that ignores cancellation waits on, resumed by the test.
final class Parked: Sendable {
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init() { (stream, continuation) = AsyncStream.makeStream() }

    /// Waits until ``release()``; cancellation does not end the wait.
    func waitIgnoringCancellation() async {
        // An unstructured task does not inherit the caller's cancellation.
        let stream = self.stream
        await Task { for await _ in stream { return } }.value
    }

    func release() {
        continuation.yield()
        continuation.finish()
    }
}
