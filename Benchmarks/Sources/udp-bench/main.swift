// udp-bench: the Swift implementations measured by Benchmarks/run.sh. Every implementation has
// both roles of every workload, so a workload runs with the same implementation on both ends,
// like the libuv C reference (reference/uvbench.c), whose command line this mirrors.
//
// Servers print "ready PORT" once bound:
//   udp-bench serve IMPL          echo server on 127.0.0.1:0; on stdin EOF prints
//                                 {"cpu": seconds since ready, "peak_rss_kib"} and exits
//   udp-bench sink IMPL COUNT     receiver; counts until COUNT arrive or 300 ms pass without one;
//                                 prints {"received", "seconds", "rate", "cpu", "peak_rss_kib"}
//                                 (rate from the first to the last arrival)
//   udp-bench idle IMPL SOCKETS   opens SOCKETS bound sockets; prints heap bytes per socket
// Clients print "ready PORT" once bound, then a JSON line with their own CPU seconds:
//   udp-bench flood IMPL PORT COUNT SIZE     sends COUNT datagrams of SIZE bytes as fast as the
//                                 implementation's API goes; prints {"sent", "seconds", "rate", "cpu"}
//   udp-bench window IMPL PORT COUNT WINDOW  keeps WINDOW 64-byte datagrams in flight until COUNT
//                                 round trips are done; prints rate and p50/p99 round-trip µs
//   udp-bench pingpong IMPL PORT COUNT       window with WINDOW 1
// Other:
//   udp-bench probe IMPL          exits 0 if IMPL is implemented here, 3 if not (run.py skips it)
//   udp-bench sink-group LOOPS COUNT   a UVLoopGroup of LOOPS loops, one UDPSocket per loop on one
//                                 port with .reusePort; counts like sink (the scaling section)
// W4 (bulk transfer with offloads; without offloads W4 uses `sink batch` and `flood batch`):
//   udp-bench gso-flood PORT COUNT SIZE SEGMENTS   sends COUNT datagrams of SIZE bytes as
//                                 buffers of SEGMENTS datagrams, each one `UDPSocket.send(_:to:options:)`
//                                 with `SendOptions(segmentSize: SIZE)` (GSO); "sent" counts datagrams
//   udp-bench gro-sink COUNT      the batch sink with `receiveMetadata: .gro`: counts the datagrams
//                                 each buffer carries (`segmentCount`) and their payload bytes
//
// IMPL: see `Implementation` below. Each is written as a competent user of its API would write
// it, with no tuning that the others do not get.
import AsyncUDP
import CBenchShims
import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// The implementations, one per way of using a UDP library. To add one, add a case here, give it
/// the roles in `run(_:_:)` at the bottom, and add it to IMPLS in run.py.
enum Implementation: String, CaseIterable {
    /// `UDPSocket`: `for try await` over `datagrams` and `await send`, in a `Task.detached`
    /// (the global concurrent executor).
    case async
    /// The same code in a `Task(executorPreference: loop)` on the socket's `UVLoop`.
    case affine
    /// `UDPHandle` on its loop: receive callback, `trySend`, falling back to `send`.
    case callback
    /// SwiftNIO `DatagramBootstrap` with a `ChannelHandler`: write in `channelRead`, flush in
    /// `channelReadComplete`.
    case nioHandler = "nio-handler"
    /// SwiftNIO `NIOAsyncChannel`: `for try await` over `inbound`, `await outbound.write`.
    case nioAsync = "nio-async"
    /// `UDPSocket`'s batch API in a `Task.detached`: `receive(upTo:)` takes what is queued in
    /// one call, `send(contentsOf:)` hands many datagrams to the kernel with `sendmmsg`.
    case batch
}

let receiveBufferSize = 4 << 20
let payloadSize = 64

// MARK: - Measuring

func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
        + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
}

/// The process's own peak RSS (VmHWM): getrusage's ru_maxrss survives execve, so it would report
/// the parent's (run.py's) peak when that is higher.
func peakRSSKiB() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }
    return 0
}

func monotonic() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func emit(_ line: String) {
    print(line)
    fflush(nil)
}

func fail(_ message: String, code: Int32 = 1) -> Never {
    FileHandle.standardError.write("udp-bench: \(message)\n".data(using: .utf8)!)
    exit(code)
}

/// Waits on a plain thread for stdin to close, then reports CPU and exits (echo servers).
func exitOnStdinEOF(cpuAtReady: Double) {
    Thread {
        var byte: UInt8 = 0
        while read(0, &byte, 1) > 0 {}
        emit("{\"cpu\": \(cpuSeconds() - cpuAtReady), \"peak_rss_kib\": \(peakRSSKiB())}")
        exit(0)
    }.start()
}

/// Counts what a sink receives. `note()` is called by one consumer at a time; the idle watcher
/// thread reads the atomics.
final class SinkCounter: Sendable {
    let expected: Int
    private let count = Atomic<Int>(0)
    private let bytes = Atomic<Int>(0)
    private let firstNanos = Atomic<UInt64>(0)
    private let lastNanos = Atomic<UInt64>(0)
    private let cpuAtReady: Double

    init(expected: Int) {
        self.expected = expected
        cpuAtReady = cpuSeconds()
    }

    /// `bytes`: payload bytes, reported when counted (the W4 GRO sink); 0 otherwise.
    func note(_ n: Int = 1, bytes: Int = 0) {
        if bytes > 0 { self.bytes.add(bytes, ordering: .relaxed) }
        let now = UInt64(monotonic() * 1e9)
        if count.load(ordering: .relaxed) == 0 { firstNanos.store(now, ordering: .relaxed) }
        lastNanos.store(now, ordering: .relaxed)
        if count.add(n, ordering: .relaxed).newValue >= expected { finish() }
    }

    func finish() {
        let count = count.load(ordering: .relaxed)
        let span = Double(lastNanos.load(ordering: .relaxed) &- firstNanos.load(ordering: .relaxed)) / 1e9
        let bytes = bytes.load(ordering: .relaxed)
        emit("{\"received\": \(count), " + (bytes > 0 ? "\"bytes\": \(bytes), " : "") + "\"seconds\": \(span), \"rate\": \(span > 0 ? Double(count - 1) / span : 0), "
            + "\"cpu\": \(cpuSeconds() - cpuAtReady), \"peak_rss_kib\": \(peakRSSKiB()), "
            + "\"last_at\": \(Double(lastNanos.load(ordering: .relaxed)) / 1e9)}")
        exit(0)
    }

    /// Finishes 300 ms after the last datagram (the rest were lost).
    func watchIdle() {
        Thread {
            while true {
                usleep(50_000)
                let last = Double(self.lastNanos.load(ordering: .relaxed)) / 1e9
                if self.count.load(ordering: .relaxed) > 0 && monotonic() - last > 0.3 { self.finish() }
            }
        }.start()
    }
}

/// The client side of the echo workloads (W2, W3): hands out stamped payloads (sequence number
/// and send time, echoed back by the server), records round-trip times, and reports when `count`
/// round trips are done. Used by one consumer at a time; the stall watcher reads the atomics.
final class RoundTrips: @unchecked Sendable {
    // Safe: `rtt` is written only by the single consumer (through `received`), before `finish`
    // reads it on the same thread; the watcher thread touches only the atomics and, when it
    // finishes a stalled run, exits the process.
    let count: Int
    let window: Int
    private let sent = Atomic<Int>(0)
    private let done = Atomic<Int>(0)
    private let lastProgressNanos = Atomic<UInt64>(0)
    private let rtt: UnsafeMutableBufferPointer<Double>
    private var startTime = 0.0
    private var cpuAtStart = 0.0

    init(count: Int, window: Int) {
        self.count = count
        self.window = min(window, count)
        rtt = .allocate(capacity: count)
    }

    /// Call once, just before the first send.
    func start() {
        cpuAtStart = cpuSeconds()
        startTime = monotonic()
        lastProgressNanos.store(UInt64(startTime * 1e9), ordering: .relaxed)
        watchStall()
    }

    /// The next payload to send, or nil when `count` have been sent.
    func next() -> [UInt8]? {
        let sequence = sent.load(ordering: .relaxed)
        guard sequence < count else { return nil }
        sent.store(sequence + 1, ordering: .relaxed)
        var payload = [UInt8](repeating: 0, count: payloadSize)
        let now = monotonic()
        payload.withUnsafeMutableBytes { bytes in
            bytes.storeBytes(of: UInt64(sequence), toByteOffset: 0, as: UInt64.self)
            bytes.storeBytes(of: now.bitPattern, toByteOffset: 8, as: UInt64.self)
        }
        return payload
    }

    /// Records a reply, given the send time it carries; exits the process after the last one.
    func received(sentAt: Double) {
        let now = monotonic()
        let index = done.load(ordering: .relaxed)
        rtt[index] = now - sentAt
        done.store(index + 1, ordering: .relaxed)
        lastProgressNanos.store(UInt64(now * 1e9), ordering: .relaxed)
        if index + 1 == count { finish(lost: 0) }
    }

    func received(_ payload: [UInt8]) {
        guard payload.count >= 16 else { return }
        received(sentAt: Double(bitPattern: payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self) }))
    }

    func received(_ buffer: ByteBuffer) {
        guard let bits = buffer.getInteger(at: buffer.readerIndex + 8, endianness: .little, as: UInt64.self) else { return }
        received(sentAt: Double(bitPattern: bits))
    }

    private func finish(lost: Int) {
        let elapsed = monotonic() - startTime
        let measured = done.load(ordering: .relaxed)
        var p50 = 0.0, p99 = 0.0
        if measured > 0 {
            let sorted = rtt[0..<measured].sorted()
            p50 = sorted[measured / 2] * 1e6
            p99 = sorted[Int(Double(measured) * 0.99)] * 1e6
        }
        emit("{\"round_trips\": \(measured + lost), \"lost\": \(lost), \"seconds\": \(elapsed), "
            + "\"rate\": \(Double(measured) / elapsed), \"p50_us\": \(p50), \"p99_us\": \(p99), "
            + "\"cpu\": \(cpuSeconds() - cpuAtStart)}")
        exit(0)
    }

    /// A datagram lost on loopback (rare) would stall the window: after 1 s without a reply the
    /// run ends and reports what was in flight as lost (the rate counts completed round trips).
    private func watchStall() {
        Thread {
            while true {
                usleep(100_000)
                let last = Double(self.lastProgressNanos.load(ordering: .relaxed)) / 1e9
                if monotonic() - last > 1.0 {
                    let lost = self.sent.load(ordering: .relaxed) - self.done.load(ordering: .relaxed)
                    FileHandle.standardError.write("udp-bench: no reply for 1 s; \(lost) lost\n".data(using: .utf8)!)
                    self.finish(lost: lost)
                }
            }
        }.start()
    }
}

/// The flood sender's report.
func reportFlood(sent: Int, startTime: Double, cpuAtStart: Double) -> Never {
    let elapsed = monotonic() - startTime
    emit("{\"sent\": \(sent), \"seconds\": \(elapsed), \"rate\": \(Double(sent) / elapsed), \"cpu\": \(cpuSeconds() - cpuAtStart), "
        + "\"start_at\": \(startTime)}")
    exit(0)
}

func loopback(_ port: Int) -> AsyncUDP.SocketAddress {
    do { return try AsyncUDP.SocketAddress(ip: "127.0.0.1", port: port) } catch { fail("bad port \(port)") }
}

// MARK: - AsyncUDP async layer (async, affine)

/// Runs `body` as the implementation says: in a `Task.detached` on the global executor, or in a
/// task that prefers the socket's loop.
func runConsumer(affine: Bool, loop: UVLoop, _ body: @escaping @Sendable () async throws -> Void) async throws {
    if affine {
        try await Task(executorPreference: loop, operation: body).value
    } else {
        try await Task.detached(operation: body).value
    }
}

func boundSocket(loop: UVLoop, receiveQueueLimit: Int = 1024) async throws -> UDPSocket {
    try await UDPSocket(bindingTo: loopback(0), loop: loop,
                        configuration: .init(receiveQueueLimit: receiveQueueLimit, receiveBufferSize: receiveBufferSize))
}

func serveAsync(affine: Bool) async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await boundSocket(loop: loop)
    exitOnStdinEOF(cpuAtReady: cpuSeconds())
    emit("ready \(udp.localAddress.port)")
    try await runConsumer(affine: affine, loop: loop) {
        for try await datagram in udp.datagrams {
            try await udp.send(datagram.payload, to: datagram.remote)
        }
    }
}

func sinkAsync(affine: Bool, count: Int) async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await boundSocket(loop: loop, receiveQueueLimit: 4096)
    let counter = SinkCounter(expected: count)
    counter.watchIdle()
    emit("ready \(udp.localAddress.port)")
    try await runConsumer(affine: affine, loop: loop) {
        for try await _ in udp.datagrams { counter.note() }
    }
}

func floodAsync(affine: Bool, port: Int, count: Int, size: Int) async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await boundSocket(loop: loop)
    let target = loopback(port)
    emit("ready \(udp.localAddress.port)")
    try await runConsumer(affine: affine, loop: loop) {
        let payload = [UInt8](repeating: 0, count: size)
        let cpu0 = cpuSeconds(), t0 = monotonic()
        for _ in 0..<count {
            try await udp.send(payload, to: target)
        }
        reportFlood(sent: count, startTime: t0, cpuAtStart: cpu0)
    }
}

func windowAsync(affine: Bool, port: Int, count: Int, window: Int) async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await boundSocket(loop: loop)
    let server = loopback(port)
    let trips = RoundTrips(count: count, window: window)
    emit("ready \(udp.localAddress.port)")
    try await runConsumer(affine: affine, loop: loop) {
        trips.start()
        for _ in 0..<trips.window {
            try await udp.send(trips.next()!, to: server)
        }
        for try await reply in udp.datagrams {
            trips.received(reply.payload)
            if let payload = trips.next() {
                try await udp.send(payload, to: server)
            }
        }
    }
}

// MARK: - AsyncUDP batch API (batch)

func serveBatch() async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await boundSocket(loop: loop)
    exitOnStdinEOF(cpuAtReady: cpuSeconds())
    emit("ready \(udp.localAddress.port)")
    try await runConsumer(affine: false, loop: loop) {
        while true {
            // Each received datagram goes back to its sender: `remote` is the destination.
            try await udp.send(contentsOf: udp.receive(upTo: 64))
        }
    }
}

func sinkBatch(count: Int) async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await boundSocket(loop: loop, receiveQueueLimit: 4096)
    let counter = SinkCounter(expected: count)
    counter.watchIdle()
    emit("ready \(udp.localAddress.port)")
    try await runConsumer(affine: false, loop: loop) {
        while true { counter.note(try await udp.receive(upTo: 256).count) }
    }
}

func floodBatch(port: Int, count: Int, size: Int) async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await boundSocket(loop: loop)
    let target = loopback(port)
    emit("ready \(udp.localAddress.port)")
    try await runConsumer(affine: false, loop: loop) {
        let batch = [Datagram](repeating: Datagram(payload: [UInt8](repeating: 0, count: size), remote: target), count: 64)
        let cpu0 = cpuSeconds(), t0 = monotonic()
        var sent = 0
        while sent < count {
            let n = min(64, count - sent)
            try await udp.send(contentsOf: batch.prefix(n))
            sent += n
        }
        reportFlood(sent: count, startTime: t0, cpuAtStart: cpu0)
    }
}

func windowBatch(port: Int, count: Int, window: Int) async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await boundSocket(loop: loop)
    let server = loopback(port)
    let trips = RoundTrips(count: count, window: window)
    emit("ready \(udp.localAddress.port)")
    try await runConsumer(affine: false, loop: loop) {
        trips.start()
        try await udp.send(contentsOf: (0..<trips.window).map { _ in Datagram(payload: trips.next()!, remote: server) })
        while true {
            var next: [Datagram] = []
            for reply in try await udp.receive(upTo: 64) {
                trips.received(reply.payload)
                if let payload = trips.next() { next.append(Datagram(payload: payload, remote: server)) }
            }
            try await udp.send(contentsOf: next)
        }
    }
}

// MARK: - W4: GSO and GRO (async layer)

/// W4's GSO sender: one `send(_:to:options:)` per buffer of `segments` datagrams, in a
/// `Task.detached` like the batch flood; the last buffer may carry fewer.
func gsoFlood(port: Int, count: Int, size: Int, segments: Int) async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await boundSocket(loop: loop)
    let target = loopback(port)
    emit("ready \(udp.localAddress.port)")
    try await runConsumer(affine: false, loop: loop) {
        let options = SendOptions(segmentSize: size)
        let full = [UInt8](repeating: 0, count: size * segments)
        let cpu0 = cpuSeconds(), t0 = monotonic()
        var sent = 0
        while sent < count {
            let n = min(segments, count - sent)
            if n == segments {
                try await udp.send(full, to: target, options: options)
            } else {
                try await udp.send(full[0..<(n * size)], to: target, options: options)
            }
            sent += n
        }
        reportFlood(sent: sent, startTime: t0, cpuAtStart: cpu0)
    }
}

/// W4's GRO sink: the batch sink's loop on a socket with `receiveMetadata: .gro`, counting the
/// datagrams each buffer carries and their bytes.
func groSink(count: Int) async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await UDPSocket(bindingTo: loopback(0), loop: loop,
                                  configuration: .init(receiveQueueLimit: 4096, receiveBufferSize: receiveBufferSize,
                                                       receiveMetadata: .gro))
    let counter = SinkCounter(expected: count)
    counter.watchIdle()
    emit("ready \(udp.localAddress.port)")
    try await runConsumer(affine: false, loop: loop) {
        while true {
            var datagrams = 0, bytes = 0
            for datagram in try await udp.receive(upTo: 256) {
                datagrams += datagram.segmentCount
                bytes += datagram.payload.count
            }
            counter.note(datagrams, bytes: bytes)
        }
    }
}

// MARK: - AsyncUDP callback layer

/// Opens a bound, receiving `UDPHandle` on `loop`; `setUp` runs on the loop thread right after,
/// with the handle (clients start sending there; their "ready" line follows, which is harmless).
func callbackHandle(loop: UVLoop, onDatagram: @escaping @Sendable (UDPHandle, Datagram) -> Void,
                    setUp: @escaping @Sendable (UDPHandle) -> Void = { _ in }) async throws -> Int {
    try await loop.submit {
        let handle = try UDPHandle(loop: loop)
        try handle.bind(loopback(0))
        try handle.setReceiveBufferSize(receiveBufferSize)
        try handle.startReceiving { handle, result in
            if case .success(let datagram) = result { onDatagram(handle, datagram) }
        }
        setUp(handle)
        return try handle.localAddress().port
    }
}

/// Try-send first; queue with `send` when the kernel would block or sends are queued.
func sendNowOrQueue(_ handle: UDPHandle, _ payload: [UInt8], to address: AsyncUDP.SocketAddress) {
    if (try? handle.trySend(payload, to: address)) == nil {
        try? handle.send(payload, to: address)
    }
}

func serveCallback() async throws {
    let loop = UVLoop(name: "bench")
    // As the C reference: `send` from inside the receive callback, which the handle queues until
    // the read batch is delivered and then flushes with sendmmsg.
    let port = try await callbackHandle(loop: loop) { handle, datagram in
        try? handle.send(datagram.payload, to: datagram.remote)
    }
    exitOnStdinEOF(cpuAtReady: cpuSeconds())
    emit("ready \(port)")
    try await Task.sleep(for: .seconds(3600))
}

func sinkCallback(count: Int) async throws {
    let loop = UVLoop(name: "bench")
    let counter = SinkCounter(expected: count)
    let port = try await callbackHandle(loop: loop) { _, _ in counter.note() }
    counter.watchIdle()
    emit("ready \(port)")
    try await Task.sleep(for: .seconds(3600))
}

/// The callback layer's flood: try-sends on the loop thread, 1,024 per loop turn so the loop stays
/// responsive; when the kernel would block, queues one datagram and goes on from its send callback.
final class CallbackFlood: @unchecked Sendable {
    // Safe: used only on the loop thread (started in the handle's set-up on the loop, continued
    // from `loop.execute` and from send callbacks).
    let count: Int
    let payload: [UInt8]
    let target: AsyncUDP.SocketAddress
    var handle: UDPHandle?
    var sent = 0
    var startTime = 0.0, cpuAtStart = 0.0

    init(count: Int, size: Int, target: AsyncUDP.SocketAddress) {
        self.count = count
        payload = [UInt8](repeating: 0, count: size)
        self.target = target
    }

    func start(_ handle: UDPHandle) {
        self.handle = handle
        startTime = monotonic()
        cpuAtStart = cpuSeconds()
        pump()
    }

    func pump() {
        guard let handle else { return }
        var budget = 1024
        while sent < count && budget > 0 {
            do {
                try handle.trySend(payload, to: target)
            } catch let error as UVError where error == .wouldBlock {
                do {
                    try handle.send(payload, to: target) { _, _ in
                        self.sent += 1
                        self.pump()
                    }
                } catch {
                    fail("send: \(error)")
                }
                return
            } catch {
                fail("trySend: \(error)")
            }
            sent += 1
            budget -= 1
        }
        if sent == count { reportFlood(sent: sent, startTime: startTime, cpuAtStart: cpuAtStart) }
        handle.loop.execute { self.pump() }
    }
}

func floodCallback(port: Int, count: Int, size: Int) async throws {
    let loop = UVLoop(name: "bench")
    let flood = CallbackFlood(count: count, size: size, target: loopback(port))
    let local = try await callbackHandle(loop: loop, onDatagram: { _, _ in }, setUp: flood.start)
    emit("ready \(local)")
    try await Task.sleep(for: .seconds(3600))
}

func windowCallback(port: Int, count: Int, window: Int) async throws {
    let loop = UVLoop(name: "bench")
    let server = loopback(port)
    let trips = RoundTrips(count: count, window: window)
    let local = try await callbackHandle(loop: loop, onDatagram: { handle, reply in
        trips.received(reply.payload)
        if let payload = trips.next() { try? handle.send(payload, to: server) }
    }) { handle in
        trips.start()
        for _ in 0..<trips.window { sendNowOrQueue(handle, trips.next()!, to: server) }
    }
    emit("ready \(local)")
    try await Task.sleep(for: .seconds(3600))
}

// MARK: - SwiftNIO ChannelHandler

typealias Envelope = AddressedEnvelope<ByteBuffer>

func nioLoopback(_ port: Int) -> NIOCore.SocketAddress {
    do { return try NIOCore.SocketAddress(ipAddress: "127.0.0.1", port: port) } catch { fail("bad port \(port)") }
}

func nioBootstrap(_ group: MultiThreadedEventLoopGroup) -> DatagramBootstrap {
    DatagramBootstrap(group: group)
        .channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBufferSize))
        .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
}

func nioHandlerChannel(_ handler: @escaping @Sendable () -> any ChannelHandler) async throws -> Channel {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    return try await nioBootstrap(group)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler()) }
        }
        .bind(host: "127.0.0.1", port: 0).get()
}

final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = Envelope
    typealias OutboundOut = Envelope
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }
    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

final class CountHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = Envelope
    let counter: SinkCounter
    init(counter: SinkCounter) { self.counter = counter }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { counter.note() }
}

/// The window client: the first window on `channelActive`, one new datagram per reply, flushed
/// once per read burst.
final class WindowClientHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = Envelope
    typealias OutboundOut = Envelope
    let trips: RoundTrips
    let server: NIOCore.SocketAddress
    init(trips: RoundTrips, server: NIOCore.SocketAddress) { (self.trips, self.server) = (trips, server) }

    func send(_ payload: [UInt8], context: ChannelHandlerContext) {
        let buffer = context.channel.allocator.buffer(bytes: payload)
        context.write(wrapOutboundOut(Envelope(remoteAddress: server, data: buffer)), promise: nil)
    }
    func channelActive(context: ChannelHandlerContext) {
        trips.start()
        for _ in 0..<trips.window { send(trips.next()!, context: context) }
        context.flush()
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        trips.received(unwrapInboundIn(data).data)
        if let payload = trips.next() { send(payload, context: context) }
    }
    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

/// The flood sender: writes 64 datagrams, flushes them (NIO sends a flushed batch with
/// `sendmmsg`), and goes on in the next event-loop task, or once the channel is writable again.
final class FloodHandler: ChannelInboundHandler, @unchecked Sendable {
    // Safe: used only on the channel's event loop.
    typealias InboundIn = Envelope
    typealias OutboundOut = Envelope
    let count: Int
    let envelope: Envelope
    var sent = 0
    var startTime = 0.0, cpuAtStart = 0.0

    init(count: Int, size: Int, target: NIOCore.SocketAddress) {
        self.count = count
        envelope = Envelope(remoteAddress: target, data: ByteBuffer(repeating: 0, count: size))
    }

    func channelActive(context: ChannelHandlerContext) {
        startTime = monotonic()
        cpuAtStart = cpuSeconds()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.execute { self.pump(loopBound.value) }
    }
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { pump(context) }
    }

    func pump(_ context: ChannelHandlerContext) {
        var batch = 0
        while sent < count && batch < 64 && context.channel.isWritable {
            sent += 1
            batch += 1
            if sent == count {
                let (sent, t0, cpu0) = (sent, startTime, cpuAtStart)
                context.writeAndFlush(wrapOutboundOut(envelope)).whenComplete { _ in
                    reportFlood(sent: sent, startTime: t0, cpuAtStart: cpu0)
                }
                return
            }
            context.write(wrapOutboundOut(envelope), promise: nil)
        }
        context.flush()
        if context.channel.isWritable {
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.eventLoop.execute { self.pump(loopBound.value) }
        }
    }
}

func serveNIOHandler() async throws {
    let channel = try await nioHandlerChannel { EchoHandler() }
    exitOnStdinEOF(cpuAtReady: cpuSeconds())
    emit("ready \(channel.localAddress!.port!)")
    try await channel.closeFuture.get()
}

func sinkNIOHandler(count: Int) async throws {
    let counter = SinkCounter(expected: count)
    let channel = try await nioHandlerChannel { CountHandler(counter: counter) }
    counter.watchIdle()
    emit("ready \(channel.localAddress!.port!)")
    try await channel.closeFuture.get()
}

func floodNIOHandler(port: Int, count: Int, size: Int) async throws {
    let target = nioLoopback(port)
    let channel = try await nioHandlerChannel { FloodHandler(count: count, size: size, target: target) }
    emit("ready \(channel.localAddress!.port!)")
    try await channel.closeFuture.get()
}

func windowNIOHandler(port: Int, count: Int, window: Int) async throws {
    let trips = RoundTrips(count: count, window: window)
    let server = nioLoopback(port)
    let channel = try await nioHandlerChannel { WindowClientHandler(trips: trips, server: server) }
    emit("ready \(channel.localAddress!.port!)")
    try await channel.closeFuture.get()
}

// MARK: - SwiftNIO NIOAsyncChannel

func nioAsyncChannel() async throws -> NIOAsyncChannel<Envelope, Envelope> {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    return try await nioBootstrap(group).bind(host: "127.0.0.1", port: 0) { channel in
        channel.eventLoop.makeCompletedFuture {
            try NIOAsyncChannel<Envelope, Envelope>(wrappingChannelSynchronously: channel)
        }
    }
}

func serveNIOAsync() async throws {
    let channel = try await nioAsyncChannel()
    exitOnStdinEOF(cpuAtReady: cpuSeconds())
    emit("ready \(channel.channel.localAddress!.port!)")
    try await channel.executeThenClose { inbound, outbound in
        for try await envelope in inbound {
            try await outbound.write(envelope)
        }
    }
}

func sinkNIOAsync(count: Int) async throws {
    let channel = try await nioAsyncChannel()
    let counter = SinkCounter(expected: count)
    counter.watchIdle()
    emit("ready \(channel.channel.localAddress!.port!)")
    try await channel.executeThenClose { inbound, _ in
        for try await _ in inbound { counter.note() }
    }
}

func floodNIOAsync(port: Int, count: Int, size: Int) async throws {
    let channel = try await nioAsyncChannel()
    let envelope = Envelope(remoteAddress: nioLoopback(port), data: ByteBuffer(repeating: 0, count: size))
    emit("ready \(channel.channel.localAddress!.port!)")
    try await channel.executeThenClose { _, outbound in
        let cpu0 = cpuSeconds(), t0 = monotonic()
        for _ in 0..<count {
            try await outbound.write(envelope)
        }
        reportFlood(sent: count, startTime: t0, cpuAtStart: cpu0)
    }
}

func windowNIOAsync(port: Int, count: Int, window: Int) async throws {
    let channel = try await nioAsyncChannel()
    let server = nioLoopback(port)
    let trips = RoundTrips(count: count, window: window)
    let allocator = channel.channel.allocator
    emit("ready \(channel.channel.localAddress!.port!)")
    try await channel.executeThenClose { inbound, outbound in
        trips.start()
        for _ in 0..<trips.window {
            try await outbound.write(Envelope(remoteAddress: server, data: allocator.buffer(bytes: trips.next()!)))
        }
        for try await reply in inbound {
            trips.received(reply.data)
            if let payload = trips.next() {
                try await outbound.write(Envelope(remoteAddress: server, data: allocator.buffer(bytes: payload)))
            }
        }
    }
}

// MARK: - Loop group (the scaling section)

func sinkGroup(loops: Int, count: Int) async throws {
    let group = UVLoopGroup(count: loops, name: "bench")
    var port = 0
    var sockets: [UDPSocket] = []
    for loop in group.loops {
        let socket = try await UDPSocket(bindingTo: loopback(port), loop: loop, flags: .reusePort,
                                         configuration: .init(receiveQueueLimit: 4096, receiveBufferSize: receiveBufferSize))
        port = socket.localAddress.port
        sockets.append(socket)
    }
    let counter = SinkCounter(expected: count)
    counter.watchIdle()
    emit("ready \(port)")
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        for socket in sockets {
            tasks.addTask {
                var pending = 0
                for try await _ in socket.datagrams {
                    pending += 1
                    if pending == 64 { counter.note(pending); pending = 0 }
                }
            }
        }
        try await tasks.waitForAll()
    }
}

// MARK: - Idle sockets

func raiseFileLimit() {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    limit.rlim_cur = limit.rlim_max
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

func heapInUse() -> Int { Int(cbench_heap_in_use()) }

func idle(_ impl: Implementation, sockets: Int) async throws {
    raiseFileLimit()
    let loop = UVLoop(name: "bench")
    var keep: [any Sendable] = []
    keep.reserveCapacity(sockets)
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    func open() async throws {
        switch impl {
        case .async, .affine, .batch: keep.append(try await UDPSocket(bindingTo: loopback(0), loop: loop))
        case .callback: _ = try await callbackHandle(loop: loop) { _, _ in }
        case .nioHandler, .nioAsync:
            keep.append(try await nioBootstrap(group).channelInitializer { $0.eventLoop.makeSucceededVoidFuture() }
                .bind(host: "127.0.0.1", port: 0).get())
        }
    }
    try await open()  // once first, so one-time allocations are not counted
    let before = heapInUse()
    for _ in 0..<sockets { try await open() }
    let after = heapInUse()
    emit("{\"sockets\": \(sockets), \"bytes_per_socket\": \(Double(after - before) / Double(sockets))}")
    exit(0)
}

// MARK: - main

let usage = """
    usage: udp-bench serve IMPL | sink IMPL COUNT | idle IMPL SOCKETS | flood IMPL PORT COUNT SIZE
           | window IMPL PORT COUNT WINDOW | pingpong IMPL PORT COUNT | probe IMPL | sink-group LOOPS COUNT
           | gso-flood PORT COUNT SIZE SEGMENTS | gro-sink COUNT
    IMPL: \(Implementation.allCases.map(\.rawValue).joined(separator: ", "))
    """

func integer(_ index: Int) -> Int {
    guard index < CommandLine.arguments.count, let value = Int(CommandLine.arguments[index]) else { fail(usage, code: 2) }
    return value
}

/// Every role of every implementation.
func run(_ mode: String, _ impl: Implementation) async throws {
    switch (mode, impl) {
    case ("probe", _): exit(0)
    case ("idle", _): try await idle(impl, sockets: integer(3))

    case ("serve", .async), ("serve", .affine): try await serveAsync(affine: impl == .affine)
    case ("serve", .batch): try await serveBatch()
    case ("serve", .callback): try await serveCallback()
    case ("serve", .nioHandler): try await serveNIOHandler()
    case ("serve", .nioAsync): try await serveNIOAsync()

    case ("sink", .async), ("sink", .affine): try await sinkAsync(affine: impl == .affine, count: integer(3))
    case ("sink", .batch): try await sinkBatch(count: integer(3))
    case ("sink", .callback): try await sinkCallback(count: integer(3))
    case ("sink", .nioHandler): try await sinkNIOHandler(count: integer(3))
    case ("sink", .nioAsync): try await sinkNIOAsync(count: integer(3))

    case ("flood", _):
        let (port, count, size) = (integer(3), integer(4), integer(5))
        switch impl {
        case .async, .affine: try await floodAsync(affine: impl == .affine, port: port, count: count, size: size)
        case .batch: try await floodBatch(port: port, count: count, size: size)
        case .callback: try await floodCallback(port: port, count: count, size: size)
        case .nioHandler: try await floodNIOHandler(port: port, count: count, size: size)
        case .nioAsync: try await floodNIOAsync(port: port, count: count, size: size)
        }

    case ("window", _), ("pingpong", _):
        let (port, count) = (integer(3), integer(4))
        let window = mode == "pingpong" ? 1 : integer(5)
        switch impl {
        case .async, .affine: try await windowAsync(affine: impl == .affine, port: port, count: count, window: window)
        case .batch: try await windowBatch(port: port, count: count, window: window)
        case .callback: try await windowCallback(port: port, count: count, window: window)
        case .nioHandler: try await windowNIOHandler(port: port, count: count, window: window)
        case .nioAsync: try await windowNIOAsync(port: port, count: count, window: window)
        }

    default: fail(usage, code: 2)
    }
}

let arguments = CommandLine.arguments
guard arguments.count >= 3 else { fail(usage, code: 2) }
if arguments[1] == "sink-group" {
    try await sinkGroup(loops: integer(2), count: integer(3))
} else if arguments[1] == "gso-flood" {
    try await gsoFlood(port: integer(2), count: integer(3), size: integer(4), segments: integer(5))
} else if arguments[1] == "gro-sink" {
    try await groSink(count: integer(2))
} else if let impl = Implementation(rawValue: arguments[2]) {
    try await run(arguments[1], impl)
} else {
    fail("unknown implementation: \(arguments[2])", code: 3)
}
