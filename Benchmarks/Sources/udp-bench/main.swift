// udp-bench: the Swift implementations measured by Benchmarks/run.sh, side by side with the raw
// libuv C reference (reference/uvbench.c), which also generates the load for all of them.
//
//   udp-bench serve IMPL          echo server on 127.0.0.1:0; prints "ready PORT"; on stdin EOF
//                                 prints {"cpu": seconds since ready, "peak_rss_kib": ...}
//   udp-bench sink IMPL COUNT     receiver; prints "ready PORT"; counts until COUNT arrive or
//                                 300 ms pass without one; prints {"received", "seconds", "rate"}
//   udp-bench idle IMPL SOCKETS   opens SOCKETS bound sockets; prints heap bytes per socket
//   udp-bench sink-group LOOPS COUNT   a UVLoopGroup of LOOPS loops, one UDPSocket per loop on one
//                                 port with .reusePort; counts like sink
//
// IMPL: async (UDPSocket, consumer on the global executor), affine (UDPSocket, consumer on the
// loop executor), callback (UDPHandle), nio-async (NIOAsyncChannel), nio-handler (ChannelHandler).
import AsyncUDP
import CBenchShims
import Foundation
import NIOCore
import NIOPosix

let receiveBufferSize = 4 << 20
/// `UDP_BENCH_BATCHED=1` reads with recvmmsg in the AsyncUDP implementations.
let batched = ProcessInfo.processInfo.environment["UDP_BENCH_BATCHED"] == "1"

func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
        + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
}

func peakRSSKiB() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss
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

/// Waits on a plain thread for stdin to close, then reports CPU and exits.
func exitOnStdinEOF(cpuAtReady: Double) {
    let thread = Thread {
        var byte: UInt8 = 0
        while read(0, &byte, 1) > 0 {}
        emit("{\"cpu\": \(cpuSeconds() - cpuAtReady), \"peak_rss_kib\": \(peakRSSKiB())}")
        exit(0)
    }
    thread.start()
}

/// Counts datagrams for the sink: thread-safe because every implementation calls it from one
/// thread at a time (a loop thread, an event loop, or the one consumer task).
final class SinkCounter: @unchecked Sendable {
    // Safe: `count`/`first`/`last` are written by a single consumer; the watchdog thread only
    // reads `last` and `count` to decide to finish, and a torn read only delays that decision.
    let expected: Int
    var count = 0
    var first = 0.0
    var last = 0.0
    init(expected: Int) { self.expected = expected }

    func note() {
        let now = monotonic()
        if count == 0 { first = now }
        last = now
        count += 1
        if count == expected { finish() }
    }

    func finish() {
        let span = last - first
        emit("{\"received\": \(count), \"seconds\": \(span), \"rate\": \(span > 0 ? Double(count - 1) / span : 0), \"peak_rss_kib\": \(peakRSSKiB())}")
        exit(0)
    }

    func watchIdle() {
        Thread {
            while true {
                usleep(50_000)
                if self.count > 0 && monotonic() - self.last > 0.3 { self.finish() }
            }
        }.start()
    }
}

// MARK: - AsyncUDP

func serveAsync(affine: Bool) async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), loop: loop,
                                  configuration: .init(receiveBufferSize: receiveBufferSize, batchedReceive: batched))
    exitOnStdinEOF(cpuAtReady: cpuSeconds())
    emit("ready \(udp.localAddress.port)")
    let echo = { @Sendable () async throws in
        for try await datagram in udp.datagrams {
            try await udp.send(datagram.payload, to: datagram.remote)
        }
    }
    if affine {
        try await Task(executorPreference: loop, operation: echo).value
    } else {
        try await Task.detached(operation: echo).value
    }
}

func sinkAsync(affine: Bool, counter: SinkCounter) async throws {
    let loop = UVLoop(name: "bench")
    let udp = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), loop: loop,
                                  configuration: .init(receiveQueueLimit: 4096, receiveBufferSize: receiveBufferSize, batchedReceive: batched))
    counter.watchIdle()
    emit("ready \(udp.localAddress.port)")
    let count = { @Sendable () async throws in
        for try await _ in udp.datagrams { counter.note() }
    }
    if affine {
        try await Task(executorPreference: loop, operation: count).value
    } else {
        try await Task.detached(operation: count).value
    }
}

func callbackHandle(loop: UVLoop, onDatagram: @escaping @Sendable (UDPHandle, Datagram) -> Void) async throws -> Int {
    try await loop.submit {
        let handle = try UDPHandle(loop: loop, batchedReceive: batched)
        try handle.bind(SocketAddress("127.0.0.1:0"))
        try handle.setReceiveBufferSize(receiveBufferSize)
        try handle.startReceiving { handle, result in
            if case .success(let datagram) = result { onDatagram(handle, datagram) }
        }
        return try handle.localAddress().port
    }
}

func serveCallback() async throws {
    let loop = UVLoop(name: "bench")
    let port = try await callbackHandle(loop: loop) { handle, datagram in
        if (try? handle.trySend(datagram.payload, to: datagram.remote)) == nil {
            try? handle.send(datagram.payload, to: datagram.remote)
        }
    }
    exitOnStdinEOF(cpuAtReady: cpuSeconds())
    emit("ready \(port)")
    try await Task.sleep(for: .seconds(3600))
}

func sinkCallback(counter: SinkCounter) async throws {
    let loop = UVLoop(name: "bench")
    let port = try await callbackHandle(loop: loop) { _, _ in counter.note() }
    counter.watchIdle()
    emit("ready \(port)")
    try await Task.sleep(for: .seconds(3600))
}

// MARK: - SwiftNIO

final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }
    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }
}

final class CountHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let counter: SinkCounter
    init(counter: SinkCounter) { self.counter = counter }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { counter.note() }
}

func nioBootstrap(_ group: MultiThreadedEventLoopGroup) -> DatagramBootstrap {
    DatagramBootstrap(group: group)
        .channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBufferSize))
        .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
}

func serveNIOHandler() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let channel = try await nioBootstrap(group)
        .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EchoHandler()) } }
        .bind(host: "127.0.0.1", port: 0).get()
    exitOnStdinEOF(cpuAtReady: cpuSeconds())
    emit("ready \(channel.localAddress!.port!)")
    try await channel.closeFuture.get()
}

func sinkNIOHandler(counter: SinkCounter) async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let channel = try await nioBootstrap(group)
        .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(CountHandler(counter: counter)) } }
        .bind(host: "127.0.0.1", port: 0).get()
    counter.watchIdle()
    emit("ready \(channel.localAddress!.port!)")
    try await channel.closeFuture.get()
}

func nioAsyncChannel(_ group: MultiThreadedEventLoopGroup) async throws -> NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>> {
    try await nioBootstrap(group).bind(host: "127.0.0.1", port: 0) { channel in
        channel.eventLoop.makeCompletedFuture {
            try NIOAsyncChannel<AddressedEnvelope<ByteBuffer>, AddressedEnvelope<ByteBuffer>>(wrappingChannelSynchronously: channel)
        }
    }
}

func serveNIOAsync() async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let channel = try await nioAsyncChannel(group)
    exitOnStdinEOF(cpuAtReady: cpuSeconds())
    emit("ready \(channel.channel.localAddress!.port!)")
    try await channel.executeThenClose { inbound, outbound in
        for try await envelope in inbound {
            try await outbound.write(envelope)
        }
    }
}

func sinkNIOAsync(counter: SinkCounter) async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let channel = try await nioAsyncChannel(group)
    counter.watchIdle()
    emit("ready \(channel.channel.localAddress!.port!)")
    try await channel.executeThenClose { inbound, _ in
        for try await _ in inbound { counter.note() }
    }
}

// MARK: - Loop group

/// Counts across several consumers (one per loop).
final class GroupCounter: @unchecked Sendable {
    // Safe: every field is read and written under `lock`.
    private let lock = NSLock()
    private var count = 0
    private var first = 0.0
    private var last = 0.0
    let expected: Int
    init(expected: Int) { self.expected = expected }

    func note(_ n: Int) {
        let now = monotonic()
        lock.lock()
        if count == 0 { first = now }
        last = now
        count += n
        let done = count >= expected
        lock.unlock()
        if done { finish() }
    }

    func finish() {
        lock.lock()
        let (count, span) = (self.count, last - first)
        lock.unlock()
        emit("{\"received\": \(count), \"seconds\": \(span), \"rate\": \(span > 0 ? Double(count - 1) / span : 0), \"peak_rss_kib\": \(peakRSSKiB())}")
        exit(0)
    }

    func watchIdle() {
        Thread {
            while true {
                usleep(50_000)
                self.lock.lock()
                let idle = self.count > 0 && monotonic() - self.last > 0.3
                self.lock.unlock()
                if idle { self.finish() }
            }
        }.start()
    }
}

func sinkGroup(loops: Int, counter: GroupCounter) async throws {
    let group = UVLoopGroup(count: loops, name: "bench")
    var port = 0
    var sockets: [UDPSocket] = []
    for loop in group.loops {
        let socket = try await UDPSocket(bindingTo: SocketAddress(ip: "127.0.0.1", port: port), loop: loop, flags: .reusePort,
                                         configuration: .init(receiveQueueLimit: 4096, receiveBufferSize: receiveBufferSize, batchedReceive: batched))
        port = socket.localAddress.port
        sockets.append(socket)
    }
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

func idle(_ impl: String, sockets: Int) async throws {
    raiseFileLimit()
    let loop = UVLoop(name: "bench")
    var keep: [any Sendable] = []
    keep.reserveCapacity(sockets)
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    // Warm up each implementation once so one-time allocations are not counted.
    switch impl {
    case "async", "affine": keep.append(try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), loop: loop))
    case "callback": _ = try await callbackHandle(loop: loop) { _, _ in }
    default: keep.append(try await nioBootstrap(group).channelInitializer { $0.eventLoop.makeSucceededVoidFuture() }.bind(host: "127.0.0.1", port: 0).get())
    }
    let before = heapInUse()
    for _ in 0..<sockets {
        switch impl {
        case "async", "affine": keep.append(try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), loop: loop))
        case "callback": _ = try await callbackHandle(loop: loop) { _, _ in }
        default: keep.append(try await nioBootstrap(group).channelInitializer { $0.eventLoop.makeSucceededVoidFuture() }.bind(host: "127.0.0.1", port: 0).get())
        }
    }
    let after = heapInUse()
    emit("{\"sockets\": \(sockets), \"bytes_per_socket\": \(Double(after - before) / Double(sockets))}")
    exit(0)
}

// MARK: - main

let arguments = CommandLine.arguments
guard arguments.count >= 3 else {
    FileHandle.standardError.write("usage: udp-bench serve IMPL | sink IMPL COUNT | idle IMPL SOCKETS\n".data(using: .utf8)!)
    exit(2)
}
let mode = arguments[1], impl = arguments[2]
switch (mode, impl) {
case ("serve", "async"): try await serveAsync(affine: false)
case ("serve", "affine"): try await serveAsync(affine: true)
case ("serve", "callback"): try await serveCallback()
case ("serve", "nio-async"): try await serveNIOAsync()
case ("serve", "nio-handler"): try await serveNIOHandler()
case ("sink", _):
    let counter = SinkCounter(expected: Int(arguments[3])!)
    switch impl {
    case "async": try await sinkAsync(affine: false, counter: counter)
    case "affine": try await sinkAsync(affine: true, counter: counter)
    case "callback": try await sinkCallback(counter: counter)
    case "nio-async": try await sinkNIOAsync(counter: counter)
    default: try await sinkNIOHandler(counter: counter)
    }
case ("idle", _): try await idle(impl, sockets: Int(arguments[3])!)
case ("sink-group", _): try await sinkGroup(loops: Int(impl)!, counter: GroupCounter(expected: Int(arguments[3])!))
default:
    FileHandle.standardError.write("unknown mode or implementation: \(mode) \(impl)\n".data(using: .utf8)!)
    exit(2)
}
