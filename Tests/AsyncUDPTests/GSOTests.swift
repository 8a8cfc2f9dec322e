import AsyncUDP
import Glibc
import Testing
import TestSupport

/// This process's descriptor of the UDP socket bound to `address` (found by its local address).
private func descriptor(boundTo address: SocketAddress) -> Int32? {
    for fd in Int32(3)..<Int32(4096) {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let found = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
        guard found, storage.ss_family == sa_family_t(AF_INET) else { continue }
        let sin = withUnsafeBytes(of: storage) { $0.loadUnaligned(as: sockaddr_in.self) }
        var type: Int32 = 0
        var typeLength = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &typeLength) == 0, type == Int32(SOCK_DGRAM.rawValue) else { continue }
        if Int(UInt16(bigEndian: sin.sin_port)) == address.port { return fd }
    }
    return nil
}

/// GSO sends on the async layer, from tasks off and on the loop, and the library's fallback.
@Suite("UDPSocket: GSO sends", .timeLimit(.minutes(1)))
struct SocketGSOTests {
    static func bytes(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 / 251) } }

    static func expectSegments(_ socket: UDPSocket, of bytes: [UInt8], size: Int) async throws {
        var offset = 0
        while offset < bytes.count {
            let datagram = try await socket.receive()
            let end = min(bytes.count, offset + size)
            #expect(datagram.payload == Array(bytes[offset..<end]), "segment at \(offset)")
            offset = end
        }
    }

    @Test("a GSO send of 64 x 1,000 bytes arrives as 64 datagrams, sent from off and on the loop")
    func segments() async throws {
        let loop = UVLoop(name: "gso")
        let sender = try await openSocket(loop: loop)
        let receiver = try await openSocket()
        let payload = Self.bytes(64 * 1_000)
        try await sender.send(payload, to: receiver.localAddress, options: SendOptions(segmentSize: 1_000))
        try await Self.expectSegments(receiver, of: payload, size: 1_000)
        try await Task(executorPreference: loop) {
            try await sender.send(payload[...], to: receiver.localAddress, options: SendOptions(segmentSize: 1_000))
        }.value
        try await Self.expectSegments(receiver, of: payload, size: 1_000)
        #expect(await receiver.statistics.datagramsReceived == 128)
        #expect(await sender.statistics.gsoFallbackCount == 0)
        #expect(await sender.statistics.datagramsSent == 128, "a GSO send counts as its segments")
        #expect(await sender.statistics.bytesSent == 128_000)
        await #expect(throws: UVError.invalidArgument) {
            try await sender.send(Self.bytes(6_500), to: receiver.localAddress, options: SendOptions(segmentSize: 100))
        }
        await sender.close()
        await receiver.close()
        await loop.shutdown()
    }

    @Test("when the kernel refuses GSO, every segment still arrives, and statistics say so")
    func fallback() async throws {
        let sender = try await openSocket()
        let receiver = try await openSocket()
        let fd = try #require(descriptor(boundTo: sender.localAddress))
        var on: Int32 = 1
        #expect(setsockopt(fd, SOL_SOCKET, 11 /* SO_NO_CHECK: GSO sends fail with EINVAL */, &on, socklen_t(MemoryLayout<Int32>.size)) == 0)
        let payload = Self.bytes(20 * 1_200 + 11)
        for round in 1...3 {
            try await sender.send(payload, to: receiver.localAddress, options: SendOptions(ecn: .ect1, segmentSize: 1_200))
            try await Self.expectSegments(receiver, of: payload, size: 1_200)
            #expect(await sender.statistics.gsoFallbackCount == round)
        }
        try await sender.send([1, 2, 3], to: receiver.localAddress)
        #expect(try await receiver.receive().payload == [1, 2, 3])
        let stats = await sender.statistics
        #expect(stats.datagramsSent == 3 * 21 + 1)
        #expect(stats.bytesSent == 3 * payload.count + 3)
        #expect(stats.sendErrorCount == 0)
        await sender.close()
        await receiver.close()
    }

    @Test("GSO + GRO: one buffer carries the 64 datagrams, and statistics count them on the wire")
    func gro() async throws {
        let sender = try await openSocket()
        let receiver = try await openSocket(configuration: .init(receiveMetadata: .gro))
        let payload = Self.bytes(64 * 1_000)
        try await sender.send(payload, to: receiver.localAddress, options: SendOptions(segmentSize: 1_000))
        let buffer = try await receiver.receive()
        #expect(buffer.metadata?.segmentSize == 1_000)
        #expect(buffer.segments.count == 64)
        #expect(Array(buffer.segments.joined()) == payload)
        let stats = await receiver.statistics
        #expect(stats.datagramsReceived == 1)
        #expect(stats.wireDatagramsReceived == 64)
        #expect(stats.bytesReceived == 64_000)
        await sender.close()
        await receiver.close()
    }
}
