import AsyncUDP
import CLibUV
import Dispatch
import Foundation
import Synchronization
import Testing
import TestSupport

/// `send` from any bytes, several buffers and batches; `Datagram` as text.
@Suite("Send API", .timeLimit(.minutes(1)))
struct SendAPITests {
    /// One payload shape: what a user passes to `send`, and the datagram it must make.
    struct Shape: Sendable {
        let name: String
        let expected: [UInt8]
        let send: @Sendable (UDPSocket, SocketAddress?) async throws -> Void
    }

    static let bytes: [UInt8] = (0..<200).map { UInt8($0) }

    /// Every kind of bytes `send` takes, with an address or (nil) without one.
    static let shapes: [Shape] = {
        let bytes = Self.bytes
        let text = "héllo, wörld ✓"
        return [
            Shape(name: "[UInt8]", expected: bytes) { udp, to in try await sendOne(udp, bytes, to) },
            Shape(name: "ArraySlice payload[2...]", expected: Array(bytes[2...])) { udp, to in try await sendOne(udp, bytes[2...], to) },
            Shape(name: "ArraySlice [5..<9]", expected: Array(bytes[5..<9])) { udp, to in try await sendOne(udp, bytes[5..<9], to) },
            Shape(name: "Data", expected: bytes) { udp, to in try await sendOne(udp, Data(bytes), to) },
            Shape(name: "Data slice [3...]", expected: Array(bytes[3...])) { udp, to in try await sendOne(udp, Data(bytes)[3...], to) },
            Shape(name: "String.UTF8View", expected: Array(text.utf8)) { udp, to in try await sendOne(udp, text.utf8, to) },
            Shape(name: "Substring.UTF8View", expected: Array("llo".utf8)) { udp, to in try await sendOne(udp, "hello".dropFirst(2).utf8, to) },
            Shape(name: "Array(\"hi\".utf8)[...]", expected: Array("hi".utf8)) { udp, to in try await sendOne(udp, Array("hi".utf8)[...], to) },
            Shape(name: "lazy map (not contiguous)", expected: bytes.map { $0 ^ 0xFF }) { udp, to in
                try await sendOne(udp, bytes.lazy.map { $0 ^ 0xFF }, to)
            },
            Shape(name: "two-part ring (not contiguous)", expected: [9, 8, 7, 1, 2]) { udp, to in
                try await sendOne(udp, TwoPartBytes(front: [9, 8, 7], back: [1, 2]), to)
            },
            Shape(name: "repeatElement", expected: [UInt8](repeating: 7, count: 9)) { udp, to in
                try await sendOne(udp, repeatElement(UInt8(7), count: 9), to)
            },
            Shape(name: "[[UInt8]]", expected: Array("abcd".utf8)) { udp, to in
                try await sendBuffers(udp, [Array("ab".utf8), [], Array("cd".utf8)], to)
            },
            Shape(name: "[ArraySlice<UInt8>]", expected: Array(bytes[0..<3] + bytes[10..<12])) { udp, to in
                try await sendBuffers(udp, [bytes[0..<3], bytes[10..<12]], to)
            },
            Shape(name: "[Data]", expected: [1, 2, 3]) { udp, to in try await sendBuffers(udp, [Data([1, 2]), Data([3])], to) },
            Shape(name: "[String.UTF8View]", expected: Array("abc".utf8)) { udp, to in try await sendBuffers(udp, ["ab".utf8, "c".utf8], to) },
            Shape(name: "[] (zero-length)", expected: []) { udp, to in
                if let to { try await udp.send([], to: to) } else { try await udp.send([]) }
            },
            Shape(name: "empty Data", expected: []) { udp, to in try await sendOne(udp, Data(), to) },
            Shape(name: "one empty buffer", expected: []) { udp, to in try await sendBuffers(udp, [[UInt8]()], to) },
            Shape(name: "EmptyCollection", expected: []) { udp, to in try await sendOne(udp, EmptyCollection<UInt8>(), to) },
        ]
    }()

    static func sendOne(_ udp: UDPSocket, _ bytes: some Collection<UInt8>, _ to: SocketAddress?) async throws {
        if let to { try await udp.send(bytes, to: to) } else { try await udp.send(bytes) }
    }

    static func sendBuffers<Buffer: Collection<UInt8>>(_ udp: UDPSocket, _ buffers: [Buffer], _ to: SocketAddress?) async throws {
        if let to { try await udp.send(buffers, to: to) } else { try await udp.send(buffers) }
    }

    /// Sends every shape (from a task on the sender's loop, or from elsewhere) and checks what
    /// arrives, in order.
    func roundTrip(_ shapes: [Shape], from sender: UDPSocket, to destination: SocketAddress?, at receiver: UDPSocket,
                   onLoop: Bool) async throws {
        let send: @Sendable () async throws -> Void = {
            for shape in shapes { try await shape.send(sender, destination) }
        }
        if onLoop {
            let loop = sender.loop
            try await Task(executorPreference: loop) {
                #expect(loop.inLoop)
                try await send()
            }.value
        } else {
            try await send()
        }
        for shape in shapes {
            let datagram = try #require(try await receiver.receive(timeout: .seconds(10)), "\(shape.name): nothing arrived")
            #expect(datagram.payload == shape.expected, "\(shape.name)")
            #expect(datagram.remote == sender.localAddress, "\(shape.name)")
        }
        #expect(try await receiver.receive(timeout: .zero) == nil)
    }

    @Test("each kind of bytes round-trips, to an address", arguments: ["127.0.0.1", "::1"], [false, true])
    func bytesToAddress(ip: String, onLoop: Bool) async throws {
        let loop = UVLoop(name: "send-shapes")
        let receiver = try await openSocket(ip)
        let sender = try await openSocket(ip, loop: loop)
        try await roundTrip(Self.shapes, from: sender, to: receiver.localAddress, at: receiver, onLoop: onLoop)
        let stats = await sender.statistics
        #expect(stats.datagramsSent == Self.shapes.count && stats.sendErrorCount == 0)
        await sender.close()
        await receiver.close()
        await loop.shutdown()
    }

    @Test("each kind of bytes round-trips on a connected socket, without an address", arguments: ["127.0.0.1", "::1"], [false, true])
    func bytesConnected(ip: String, onLoop: Bool) async throws {
        let loop = UVLoop(name: "send-shapes-connected")
        let receiver = try await openSocket(ip)
        let sender = try await UDPSocket(connectingTo: receiver.localAddress, loop: loop)
        try await roundTrip(Self.shapes, from: sender, to: nil, at: receiver, onLoop: onLoop)
        await sender.close()
        await receiver.close()
        await loop.shutdown()
    }

    @Test("an empty list of buffers is refused with invalidArgument, with or without an address; nothing is sent")
    func emptyBufferList() async throws {
        let receiver = try await openSocket()
        let sender = try await openSocket()
        let connected = try await UDPSocket(connectingTo: receiver.localAddress)
        let to = receiver.localAddress
        await #expect(throws: UVError.invalidArgument) { try await sender.send([[UInt8]](), to: to) }
        await #expect(throws: UVError.invalidArgument) { try await sender.send([ArraySlice<UInt8>](), to: to) }
        await #expect(throws: UVError.invalidArgument) { try await sender.send([Data](), to: to) }
        await #expect(throws: UVError.invalidArgument) { try await connected.send([[UInt8]]()) }
        await #expect(throws: UVError.invalidArgument) { try await connected.send([ArraySlice<UInt8>]()) }
        try await sender.send(Array("marker".utf8), to: to)
        #expect(try await receiver.receive(timeout: .seconds(10))?.payload == Array("marker".utf8))
        #expect(try await receiver.receive(timeout: .zero) == nil)
        #expect(await sender.statistics.datagramsSent == 1)
        #expect(await connected.statistics.datagramsSent == 0)
        for socket in [receiver, sender, connected] { await socket.close() }
    }

    // MARK: Batches

    @Test("send(contentsOf:) sends a batch in order, each datagram to its own destination", arguments: [false, true])
    func batchInOrder(onLoop: Bool) async throws {
        let loop = UVLoop(name: "batch")
        let configuration = UDPSocket.Configuration(receiveQueueLimit: 1024, receiveBufferSize: 1 << 20)
        let a = try await openSocket(configuration: configuration)
        let b = try await openSocket(configuration: configuration)
        let sender = try await openSocket(loop: loop)
        let total = 400
        let batch = (0..<total).map { index in
            Datagram(payload: payload(index, size: 8 + index % 50), remote: index.isMultiple(of: 2) ? a.localAddress : b.localAddress)
        }
        if onLoop {
            try await Task(executorPreference: loop) { try await sender.send(contentsOf: batch) }.value
        } else {
            try await sender.send(contentsOf: batch)
        }
        try await sender.send(contentsOf: [Datagram]())  // an empty batch is nothing to do
        var gotA: [Int] = [], gotB: [Int] = []
        for _ in 0..<(total / 2) {
            let fromA = try #require(try await a.receive(timeout: .seconds(10)))
            let fromB = try #require(try await b.receive(timeout: .seconds(10)))
            #expect(fromA.payload.count == 8 + sequence(of: fromA) % 50)
            gotA.append(sequence(of: fromA))
            gotB.append(sequence(of: fromB))
        }
        #expect(gotA == Array(stride(from: 0, to: total, by: 2)))
        #expect(gotB == Array(stride(from: 1, to: total, by: 2)))
        let stats = await sender.statistics
        #expect(stats.datagramsSent == total && stats.sendErrorCount == 0)
        #expect((await a.statistics.datagramsDroppedByKernel ?? 0) == 0)
        for socket in [a, b, sender] { await socket.close() }
        await loop.shutdown()
    }

    @Test("send(contentsOf:) lists each failed datagram by index in BatchSendError; the others arrive, in order",
          arguments: [false, true])
    func batchFailures(onLoop: Bool) async throws {
        let loop = UVLoop(name: "batch-failures")
        let receiver = try await openSocket()
        let sender = try await openSocket(loop: loop)
        let to = receiver.localAddress
        let batch = [
            Datagram(payload: payload(0), remote: to),
            Datagram(payload: [UInt8](repeating: 1, count: 65_508), remote: to),  // too large for IPv4
            Datagram(payload: payload(2), remote: to),
            Datagram(payload: payload(3), remote: try SocketAddress(ip: "::1", port: to.port)),  // wrong family
            Datagram(payload: payload(4), remote: to),
            Datagram(payload: payload(5), remote: try SocketAddress(ip: "127.0.0.1", port: 0)),  // port 0
            Datagram(payload: payload(6), remote: to),
            Datagram(payload: payload(7), remote: try SocketAddress("127.255.255.255:9")),  // broadcast: the kernel refuses
            Datagram(payload: payload(8), remote: to),
        ]
        let send: @Sendable () async throws -> Void = { try await sender.send(contentsOf: batch) }
        let thrown: (any Error)?
        do {
            if onLoop {
                try await Task(executorPreference: loop) { try await send() }.value
            } else {
                try await send()
            }
            thrown = nil
        } catch {
            thrown = error
        }
        let error = try #require(thrown as? BatchSendError, "threw \(String(describing: thrown))")
        #expect(error.count == batch.count)
        #expect(error.failures.map(\.index) == [1, 3, 5, 7])
        #expect(error.failures.map(\.error) == [.messageTooLong, .addressFamilyNotSupported, .invalidArgument, .permissionDenied])
        var arrived: [Int] = []
        for _ in 0..<5 {
            arrived.append(sequence(of: try #require(try await receiver.receive(timeout: .seconds(10)))))
        }
        #expect(arrived == [0, 2, 4, 6, 8])
        #expect(try await receiver.receive(timeout: .zero) == nil)
        let stats = await sender.statistics
        #expect(stats.datagramsSent == 5)
        #expect(stats.sendErrorCount == 4)
        await sender.close()
        await receiver.close()
        await loop.shutdown()
    }

    @Test("send(contentsOf:) on a connected socket: the peer's datagrams go, any other destination fails alone")
    func batchConnected() async throws {
        let receiver = try await openSocket()
        let other = try await openSocket()
        let client = try await UDPSocket(connectingTo: receiver.localAddress)
        let batch = [
            Datagram(payload: payload(0), remote: receiver.localAddress),
            Datagram(payload: payload(1), remote: other.localAddress),
            Datagram(payload: payload(2), remote: receiver.localAddress),
        ]
        let error = await #expect(throws: BatchSendError.self) { try await client.send(contentsOf: batch) }
        #expect(error?.failures.map(\.index) == [1])
        #expect(error?.failures.map(\.error) == [.alreadyConnected])
        #expect(error?.count == 3)
        #expect(try await receiver.receive(timeout: .seconds(10)).map(sequence(of:)) == 0)
        #expect(try await receiver.receive(timeout: .seconds(10)).map(sequence(of:)) == 2)
        #expect(await other.statistics.datagramsReceived == 0)
        for socket in [receiver, other, client] { await socket.close() }
    }

    // MARK: Text

    @Test("Datagram as text: string, validatedString, init(string:remote:), String(datagram)")
    func datagramText() async throws {
        let address = try SocketAddress("127.0.0.1:9")
        let text = "héllo, wörld ✓"
        let datagram = Datagram(string: text, remote: address)
        #expect(datagram.payload == Array(text.utf8))
        #expect(datagram.remote == address && !datagram.isTruncated)
        #expect(datagram.string == text)
        #expect(datagram.validatedString == text)
        #expect(String(datagram) == text)

        let invalid = Datagram(payload: [0x68, 0xFF, 0x69], remote: address)
        #expect(invalid.validatedString == nil)
        #expect(invalid.string == "h\u{FFFD}i")
        #expect(String(invalid) == "h\u{FFFD}i")

        let empty = Datagram(string: "", remote: address)
        #expect(empty.payload.isEmpty && empty.string.isEmpty && empty.validatedString == "")
    }

    @Test("text over the wire: sent from a String, read back as one; a cut multi-byte character is not valid text")
    func textOverTheWire() async throws {
        let receiver = try await openSocket()
        let narrow = try await openSocket(configuration: .init(maximumDatagramSize: 2))
        let sender = try await openSocket()
        try await sender.send(contentsOf: [Datagram(string: "batch ✓", remote: receiver.localAddress)])
        try await sender.send("plain ✓".utf8, to: receiver.localAddress)
        let first = try #require(try await receiver.receive(timeout: .seconds(10)))
        #expect(String(first) == "batch ✓" && first.validatedString == "batch ✓")
        let second = try #require(try await receiver.receive(timeout: .seconds(10)))
        #expect(second.string == "plain ✓")

        try await sender.send("✓".utf8, to: narrow.localAddress)  // 3 bytes, read into 2
        let cut = try #require(try await narrow.receive(timeout: .seconds(10)))
        #expect(cut.isTruncated && cut.payload == [0xE2, 0x9C])
        #expect(cut.validatedString == nil)
        #expect(cut.string == "\u{FFFD}")
        for socket in [receiver, narrow, sender] { await socket.close() }
    }
}

/// A byte collection in two parts, so it has no contiguous storage (`withContiguousStorageIfAvailable`
/// returns nil), like a ring buffer that wrapped.
struct TwoPartBytes: Collection, Sendable {
    let front: [UInt8]
    let back: [UInt8]
    var startIndex: Int { 0 }
    var endIndex: Int { front.count + back.count }
    func index(after index: Int) -> Int { index + 1 }
    subscript(position: Int) -> UInt8 { position < front.count ? front[position] : back[position - front.count] }
}

// MARK: - Host names

/// `SocketAddress.resolve`, and the host-name forms of `UDPSocket(connectingTo:)` and
/// `withUDPSocket(connectingTo:)`. Only names in /etc/hosts are resolved, and the error case uses
/// a name the resolver refuses before sending any query: no DNS query leaves the machine.
@Suite("Send API: host names", .timeLimit(.minutes(1)))
struct SendAPIHostNameTests {
    /// A label of 64 bytes: longer than DNS allows, so the resolver fails (`EAI_NONAME`) without
    /// sending a query.
    static let refusedName = String(repeating: "a", count: 64) + ".invalid"

    @Test("resolve(host: \"localhost\") gives loopback addresses with the port, including those /etc/hosts lists")
    func localhost() async throws {
        let addresses = try await SocketAddress.resolve(host: "localhost", port: 9)
        #expect(!addresses.isEmpty)
        #expect(Set(addresses).count == addresses.count, "duplicates in \(addresses)")
        for address in addresses {
            #expect(address.port == 9)
            #expect(address.family == .ipv4 ? address.ip.hasPrefix("127.") : address.ip == "::1", "\(address)")
        }
        let listed = Set(try hostsFileAddresses(of: "localhost"))
        #expect(!listed.isEmpty, "/etc/hosts lists no address for localhost")
        #expect(listed.isSubset(of: Set(addresses.map(\.ip))), "/etc/hosts lists \(listed), resolve gave \(addresses)")
    }

    @Test("resolve with family .ipv4 gives only IPv4 addresses")
    func familyIPv4() async throws {
        let addresses = try await SocketAddress.resolve(host: "localhost", port: 53, family: .ipv4)
        #expect(!addresses.isEmpty)
        #expect(addresses.allSatisfy { $0.family == .ipv4 && $0.port == 53 })
        #expect(addresses.contains(try SocketAddress("127.0.0.1:53")))
    }

    @Test("resolve with family .ipv6 gives only IPv6 addresses",
          .enabled(if: hostsFileLists("localhost", family: .ipv6),
                   "/etc/hosts has no IPv6 address for localhost: the lookup would ask a DNS server"))
    func familyIPv6() async throws {
        let addresses = try await SocketAddress.resolve(host: "localhost", port: 53, family: .ipv6)
        #expect(!addresses.isEmpty)
        #expect(addresses.allSatisfy { $0.family == .ipv6 && $0.port == 53 })
    }

    @Test("numeric hosts come back as they are; a family that does not match is refused")
    func numeric() async throws {
        #expect(try await SocketAddress.resolve(host: "127.0.0.1", port: 9) == [try SocketAddress("127.0.0.1:9")])
        #expect(try await SocketAddress.resolve(host: "::1", port: 9, family: .ipv6) == [try SocketAddress("[::1]:9")])
        await #expect(throws: UVError.addressFamilyNotSupported) { try await SocketAddress.resolve(host: "::1", port: 9, family: .ipv4) }
        await #expect(throws: SocketAddressError.self) { try await SocketAddress.resolve(host: "localhost", port: 70_000) }
        await #expect(throws: SocketAddressError.self) { try await SocketAddress.resolve(host: "localhost", port: -1) }
    }

    @Test("a name the resolver refuses throws UVError EAI_NONAME naming the host")
    func refused() async throws {
        let host = Self.refusedName
        do {
            let addresses = try await SocketAddress.resolve(host: host, port: 9)
            Issue.record("resolved \(host) to \(addresses)")
        } catch let error as UVError {
            #expect(error == .hostNotFound)
            #expect(error.name == "EAI_NONAME")
            #expect(error.description.contains(host), "\(error)")
        }
        await #expect(throws: UVError.hostNotFound) { try await UDPSocket(connectingTo: host, port: 9) }
        var ran = false
        await #expect(throws: UVError.hostNotFound) {
            try await withUDPSocket(connectingTo: host, port: 9) { _ in ran = true }
        }
        #expect(!ran)
    }

    @Test("SocketAddress(\"localhost:53\") says it takes numeric addresses and names resolve")
    func textInitializerRefusesNames() throws {
        do {
            let address = try SocketAddress("localhost:53")
            Issue.record("parsed as \(address)")
        } catch {
            let message = String(describing: error)
            #expect(message.contains("numeric"), "\(message)")
            #expect(message.contains("resolve"), "\(message)")
        }
    }

    @Test("UDPSocket(connectingTo: \"localhost\", port:) reaches a loopback server and exchanges a datagram")
    func connectByName() async throws {
        let servers = try await openLoopbackServers()
        let port = servers.v4.localAddress.port
        let client = try await UDPSocket(connectingTo: "localhost", port: port)
        let remote = try #require(client.remoteAddress)
        #expect(remote.port == port && ["127.0.0.1", "::1"].contains(remote.ip), "\(remote)")
        let server = remote.family == .ipv4 ? servers.v4 : servers.v6
        try await client.send("ping".utf8)
        let ping = try #require(try await server.receive(timeout: .seconds(10)), "the server got nothing")
        #expect(ping.string == "ping")
        try await server.send("pong".utf8, to: ping.remote)
        let pong = try #require(try await client.receive(timeout: .seconds(10)), "no reply")
        #expect(String(pong) == "pong" && pong.remote == remote)

        let v4Only = try await UDPSocket(connectingTo: "localhost", port: port, family: .ipv4)
        #expect(v4Only.remoteAddress == (try SocketAddress(ip: "127.0.0.1", port: port)))
        await v4Only.close()
        for socket in [client, servers.v4, servers.v6] { await socket.close() }
    }

    @Test("withUDPSocket(connectingTo: \"localhost\", port:) exchanges a datagram with a deadline, then closes")
    func withSocketByName() async throws {
        let servers = try await openLoopbackServers()
        let port = servers.v4.localAddress.port
        // The servers echo whatever they get.
        let echoes = [servers.v4, servers.v6].map { server in
            Task {
                for try await datagram in server.datagrams { try await server.send(datagram.payload, to: datagram.remote) }
            }
        }
        var captured: UDPSocket?
        let reply = try await withUDPSocket(connectingTo: "localhost", port: port) { udp in
            captured = udp
            try await udp.send("echo me".utf8)
            return try await udp.receive(timeout: .seconds(10))
        }
        #expect(reply?.string == "echo me")
        let socket = try #require(captured)
        #expect(await socket.isClosed)
        for server in [servers.v4, servers.v6] { await server.close() }
        for echo in echoes { try await echo.value }
    }

    @Test("cancelling a resolve throws CancellationError, before it starts and while it waits for the resolver")
    func cancelResolve() async throws {
        let loop = UVLoop(name: "resolve-cancel")
        // Already cancelled.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await SocketAddress.resolve(host: "localhost", port: 9, loop: loop)
        }
        await #expect(throws: CancellationError.self) { try await early.value }

        // Waiting: every thread of libuv's pool is busy, so the lookup cannot run; only its
        // cancellation can end the call.
        let blocker = ThreadPoolBlocker()
        await blocker.block()
        let result = await outcome {
            // Numeric hosts need no lookup: they come back even now.
            #expect(try await SocketAddress.resolve(host: "127.0.0.1", port: 9, loop: loop) == [try SocketAddress("127.0.0.1:9")])
            let (started, startedSignal) = AsyncStream<Void>.makeStream()
            let lookup = Task {
                startedSignal.yield()
                return try await SocketAddress.resolve(host: "localhost", port: 9, loop: loop)
            }
            var signals = started.makeAsyncIterator()
            await signals.next()
            await Task.yield()
            lookup.cancel()
            return try await withDeadline("the cancelled resolve", seconds: 10) {
                // On time-out, open the pool so the lookup can end and the deadline can report.
                await withTaskCancellationHandler { await lookup.result } onCancel: { blocker.open() }
            }
        }
        blocker.release()
        let outcome = try result.get()
        #expect(throws: CancellationError.self) { try outcome.get() }

        // The loop and the pool work on.
        #expect(try await !SocketAddress.resolve(host: "localhost", port: 9, loop: loop).isEmpty)
        await loop.shutdown()
    }

    @Test("resolve on a loop that has shut down throws ClosedHandleError")
    func resolveAfterShutdown() async throws {
        let loop = UVLoop(name: "resolve-shutdown")
        await loop.shutdown()
        await #expect(throws: ClosedHandleError.self) {
            try await withDeadline("resolve on a stopped loop", seconds: 10) {
                try await SocketAddress.resolve(host: "localhost", port: 9, loop: loop)
            }
        }
    }
}

/// The addresses /etc/hosts lists for `name`.
func hostsFileAddresses(of name: String) throws -> [String] {
    let text = try String(contentsOfFile: "/etc/hosts", encoding: .utf8)
    var addresses: [String] = []
    for line in text.split(separator: "\n") {
        let fields = line.prefix { $0 != "#" }.split(whereSeparator: { $0 == " " || $0 == "\t" })
        if fields.count >= 2, fields.dropFirst().contains(Substring(name)) { addresses.append(String(fields[0])) }
    }
    return addresses
}

/// Whether /etc/hosts lists an address of `family` for `name`.
func hostsFileLists(_ name: String, family: AddressFamily) -> Bool {
    ((try? hostsFileAddresses(of: name)) ?? []).contains { (try? SocketAddress(ip: $0, port: 0))?.family == family }
}

/// The outcome of an async throwing body, so a test can clean up before it fails.
private func outcome<T>(of body: () async throws -> T) async -> Result<T, any Error> {
    do { return .success(try await body()) } catch { return .failure(error) }
}

/// Keeps every thread of libuv's thread pool (process-wide, shared by every loop) busy until
/// ``release()``, so a `uv_getaddrinfo` queued meanwhile waits in the pool's queue. Its work runs
/// on a private `uv_loop_t`, used only by the test that owns the blocker, one call at a time.
final class ThreadPoolBlocker: @unchecked Sendable {
    private let loop = UnsafeMutablePointer<uv_loop_t>.allocate(capacity: 1)
    private var requests: [UnsafeMutablePointer<uv_work_t>] = []
    private let gate = DispatchSemaphore(value: 0)
    private let opened = Atomic<Bool>(false)
    private let started: AsyncStream<Void>
    private let startedSignal: AsyncStream<Void>.Continuation
    /// libuv's pool size: UV_THREADPOOL_SIZE, default 4, at most 1024.
    let threads: Int

    init() {
        (started, startedSignal) = AsyncStream<Void>.makeStream()
        threads = min(max(Int(ProcessInfo.processInfo.environment["UV_THREADPOOL_SIZE"] ?? "") ?? 4, 1), 1024)
        uv_loop_init(loop)
    }

    /// Queues one blocking work item per pool thread and returns once all of them run.
    func block() async {
        for _ in 0..<threads {
            let request = UnsafeMutablePointer<uv_work_t>.allocate(capacity: 1)
            request.pointee.data = Unmanaged.passUnretained(self).toOpaque()
            requests.append(request)
            uv_queue_work(loop, request, { request in
                let blocker = Unmanaged<ThreadPoolBlocker>.fromOpaque(request!.pointee.data).takeUnretainedValue()
                blocker.startedSignal.yield()
                blocker.gate.wait()
            }, { _, _ in })
        }
        var running = started.makeAsyncIterator()
        for _ in 0..<threads { await running.next() }
    }

    /// Lets the pool's threads go (once; safe from any thread).
    func open() {
        guard !opened.exchange(true, ordering: .relaxed) else { return }
        for _ in 0..<threads { gate.signal() }
    }

    /// Lets the pool go and waits for its work items to finish.
    func release() {
        open()
        uv_run(loop, UV_RUN_DEFAULT)  // returns once every work item's completion has run
        uv_loop_close(loop)
        for request in requests { request.deallocate() }
        requests.removeAll()
    }

    deinit { loop.deallocate() }
}
