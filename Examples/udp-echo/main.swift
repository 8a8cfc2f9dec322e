// udp-echo demo (callback layer): an echo server and a client on loopback, in one process, on one
// libuv loop. The client keeps a window of pings in flight and reports round trips per second and
// latency percentiles.
import AsyncUDP
import Glibc

let count = 50_000
let window = 16
let loop = UVLoop(name: "udp-echo")

func nanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

struct Outcome: Sendable {
    var latencies: [UInt64]
    var elapsed: UInt64
}

let outcome: Outcome = try await withCheckedThrowingContinuation { continuation in
    loop.execute {
        do {
            let server = try UDPHandle(loop: loop)
            try server.bind(SocketAddress("127.0.0.1:0"))
            try server.startReceiving { handle, result in
                guard case .success(let datagram) = result else { return }
                try? handle.send(datagram.payload, to: datagram.remote)
            }
            let target = try server.localAddress()
            let client = try UDPHandle(loop: loop)
            try client.bind(SocketAddress("127.0.0.1:0"))
            var sendTimes = [UInt64](repeating: 0, count: count)
            var latencies: [UInt64] = []
            latencies.reserveCapacity(count)
            var sent = 0
            func sendNext() throws {
                var payload = [UInt8](repeating: 0, count: 64)
                withUnsafeBytes(of: UInt64(sent).littleEndian) { payload.replaceSubrange(0..<8, with: $0) }
                sendTimes[sent] = nanoseconds()
                sent += 1
                try client.send(payload, to: target)
            }
            let start = nanoseconds()
            try client.startReceiving { _, result in
                guard case .success(let datagram) = result, datagram.payload.count >= 8 else { return }
                let sequence = datagram.payload.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
                latencies.append(nanoseconds() - sendTimes[sequence])
                if sent < count { try? sendNext() }
                if latencies.count == count {
                    let elapsed = nanoseconds() - start
                    client.close()
                    server.close()
                    continuation.resume(returning: Outcome(latencies: latencies, elapsed: elapsed))
                }
            }
            for _ in 0..<window { try sendNext() }
        } catch {
            continuation.resume(throwing: error)
        }
    }
}
await loop.shutdown()

let sorted = outcome.latencies.sorted()
func percentile(_ p: Double) -> Double { Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000 }
let seconds = Double(outcome.elapsed) / 1e9
print("udp-echo (callback layer): \(count) round trips of 64 bytes, window \(window), on 127.0.0.1")
func fixed(_ value: Double, _ digits: Int = 1) -> String {
    let scale = (0..<digits).reduce(1.0) { acc, _ in acc * 10 }
    let rounded = (value * scale).rounded() / scale
    return digits == 0 ? String(Int(rounded)) : String(rounded)
}
print("  \(fixed(Double(count) / seconds, 0)) round trips/s in \(fixed(seconds, 2)) s")
print("  latency µs: p50 \(fixed(percentile(0.5)))  p90 \(fixed(percentile(0.9)))  p99 \(fixed(percentile(0.99)))  max \(fixed(Double(sorted.last!) / 1000))")
