import Glibc
import Testing
import TestSupport
import UVCore

/// `bytes` counting up from `start`, so each segment's contents can be checked.
func countingBytes(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 / 256) } }

/// Makes the kernel refuse GSO on `fd` the way a route or device can: `SO_NO_CHECK` (no UDP
/// checksums) turns every `UDP_SEGMENT` send into `EINVAL`; ordinary sends still go out.
func refuseGSO(_ fd: Int32) -> Bool {
    var on: Int32 = 1
    return setsockopt(fd, SOL_SOCKET, 11 /* SO_NO_CHECK */, &on, socklen_t(MemoryLayout<Int32>.size)) == 0
}

/// GSO sends (`SendOptions.segmentSize`) on the callback layer: segments on the wire, limits, and
/// the library's own segmentation when the kernel refuses.
@Suite("UDPHandle: GSO sends", .timeLimit(.minutes(1)))
@TestLoop
struct HandleGSOTests {
    /// Receives `sizes.count` datagrams and checks they are `bytes` cut at `sizes`.
    func expectSegments(_ inbox: Inbox, of bytes: [UInt8], sizes: [Int]) async throws {
        var offset = 0
        for (index, size) in sizes.enumerated() {
            let datagram = try await inbox.datagram()
            #expect(datagram.payload.count == size, "segment \(index)")
            #expect(datagram.payload == Array(bytes[offset..<min(bytes.count, offset + size)]), "segment \(index)")
            offset += size
        }
    }

    @Test("one GSO send of 64 x 1,000 bytes (and of 54 x 1,200) arrives as that many datagrams at an ordinary socket")
    func segments() async throws {
        let sender = try boundHandle()
        let receiver = try boundHandle()
        let inbox = try Inbox(receiver)
        for (count, size) in [(64, 1_000), (54, 1_200)] {
            let bytes = countingBytes(count * size)
            let done = Confirmation()
            try sender.send(bytes, to: receiver.localAddress(), options: SendOptions(segmentSize: size)) { _, error in
                #expect(error == nil)
                done.signal()
            }
            await done.wait()
            try await expectSegments(inbox, of: bytes, sizes: Array(repeating: size, count: count))
        }
        #expect(sender.gsoFallbackCount == 0)
        await closeAll(sender, receiver)
    }

    @Test("the last segment may be shorter; GSO combines with ECN", arguments: ["127.0.0.1", "::1"])
    func shortLastSegment(ip: String) async throws {
        guard ip == "127.0.0.1" || hasIPv6Loopback else { return }
        let sender = try boundHandle(ip)
        let receiver = try boundHandle(ip)
        try receiver.setReceiveMetadata(.ecn)
        let inbox = try Inbox(receiver)
        let bytes = countingBytes(10 * 1_200 + 7)
        try sender.send(bytes, to: receiver.localAddress(), options: SendOptions(ecn: .ect0, segmentSize: 1_200))
        var offset = 0
        for size in Array(repeating: 1_200, count: 10) + [7] {
            let datagram = try await inbox.datagram()
            #expect(datagram.payload == Array(bytes[offset..<offset + size]))
            #expect(datagram.metadata?.ecn == .ect0)
            offset += size
        }
        await closeAll(sender, receiver)
    }

    @Test("GSO limits give clear errors before anything is sent")
    func limits() async throws {
        let sender = try boundHandle()
        let target = try SocketAddress(ip: "127.0.0.1", port: 9)
        #expect(throws: UVError.invalidArgument) { try sender.send([1, 2], to: target, options: SendOptions(segmentSize: 0)) }
        #expect(throws: UVError.invalidArgument) { try sender.send([1, 2], to: target, options: SendOptions(segmentSize: 70_000)) }
        #expect(throws: UVError.invalidArgument) {
            try sender.send(countingBytes(65 * 100), to: target, options: SendOptions(segmentSize: 100))
        }
        #expect(throws: UVError.messageTooLong) {
            try sender.send(countingBytes(65_508), to: target, options: SendOptions(segmentSize: 1_200))
        }
        #expect(sender.sendQueueCount == 0)
        await closeAll(sender)
    }

    @Test("when the kernel refuses GSO, the library cuts the payload, remembers the refusal and counts it")
    func fallback() async throws {
        let sender = try boundHandle()
        #expect(refuseGSO(try sender.fileDescriptor()))
        let receiver = try boundHandle()
        let inbox = try Inbox(receiver)
        let bytes = countingBytes(10 * 1_200 + 7)
        let sizes = Array(repeating: 1_200, count: 10) + [7]
        for round in 1...2 {
            let done = Confirmation()
            var outcomes: [UVError?] = []
            try sender.send(bytes, to: receiver.localAddress(), options: SendOptions(segmentSize: 1_200)) { _, error in
                outcomes.append(error)
                done.signal()
            }
            await done.wait()
            #expect(outcomes.count == 1 && outcomes[0] == nil, "round \(round): one completion, success")
            try await expectSegments(inbox, of: bytes, sizes: sizes)
            #expect(sender.gsoFallbackCount == round)
        }
        // GSO sends queued together (made inside a receive callback) are each cut, in order.
        let trigger = try boundHandle()
        let target = try receiver.localAddress()
        try sender.startReceiving { handle, _ in
            for index in 0..<3 {
                try? handle.send(Array(bytes.prefix(2_500 + index)), to: target, options: SendOptions(segmentSize: 1_000))
            }
            try? handle.send(Array("plain"), to: target)
        }
        try trigger.send(Array("go"), to: sender.localAddress())
        for index in 0..<3 {
            try await expectSegments(inbox, of: Array(bytes.prefix(2_500 + index)), sizes: [1_000, 1_000, 500 + index])
        }
        #expect(try await inbox.datagram().payload == Array("plain"))
        #expect(sender.gsoFallbackCount == 5)

        // A socket that meets the refusal first in a queued sendmmsg batch: the batch stops
        // there, and the refused sends are cut on the next flush, in order, behind nothing.
        let fresh = try boundHandle()
        #expect(refuseGSO(try fresh.fileDescriptor()))
        try fresh.startReceiving { handle, _ in
            try? handle.send(Array("before"), to: target)
            for index in 0..<2 {
                try? handle.send(Array(bytes.prefix(2_100 + index)), to: target, options: SendOptions(segmentSize: 1_000))
            }
            try? handle.send(Array("after"), to: target)
        }
        try trigger.send(Array("go"), to: fresh.localAddress())
        #expect(try await inbox.datagram().payload == Array("before"))
        for index in 0..<2 {
            try await expectSegments(inbox, of: Array(bytes.prefix(2_100 + index)), sizes: [1_000, 1_000, 100 + index])
        }
        #expect(try await inbox.datagram().payload == Array("after"))
        #expect(fresh.gsoFallbackCount == 2)
        await closeAll(sender, receiver, trigger, fresh)
    }

    @Test("a GSO send of 64 x 1,000 bytes reaches a GRO socket as one buffer of 64 segments", arguments: ["127.0.0.1", "::1"])
    func gro(ip: String) async throws {
        guard ip == "127.0.0.1" || hasIPv6Loopback else { return }
        let sender = try boundHandle(ip)
        let receiver = try boundHandle(ip)
        try receiver.setReceiveMetadata([.gro, .ecn])
        #expect(receiver.receiveMetadata == [.gro, .ecn])
        let inbox = try Inbox(receiver)
        let bytes = countingBytes(64 * 1_000 - 1)  // the last segment one byte short
        try sender.send(bytes, to: receiver.localAddress(), options: SendOptions(ecn: .ect0, segmentSize: 1_000))
        let buffer = try await inbox.datagram()
        #expect(buffer.payload == bytes)
        #expect(buffer.metadata?.segmentSize == 1_000)
        #expect(buffer.metadata?.ecn == .ect0)
        #expect(buffer.segmentCount == 64)
        let segments = buffer.segments
        #expect(segments.count == 64)
        #expect(segments.map(\.count) == Array(repeating: 1_000, count: 63) + [999])
        #expect(Array(segments.joined()) == bytes)
        // A single datagram is not a GRO buffer.
        try sender.send(Array("one"), to: receiver.localAddress())
        let single = try await inbox.datagram()
        #expect(single.metadata?.segmentSize == nil)
        #expect(single.segmentCount == 1 && single.segments == [Array("one")[...]])
        await closeAll(sender, receiver)
    }

    @Test("with GRO, a maximum datagram size of 1,500 bytes still delivers every coalesced segment (the limit is per datagram)")
    func groWithSmallMaximum() async throws {
        let sender = try boundHandle()
        let receiver = try boundHandle()
        try receiver.setMaximumDatagramSize(1_500)
        try receiver.setReceiveMetadata(.gro)
        let inbox = try Inbox(receiver)
        let bytes = countingBytes(64 * 1_000)
        try sender.send(bytes, to: receiver.localAddress(), options: SendOptions(segmentSize: 1_000))
        var received: [UInt8] = []
        while received.count < bytes.count {
            let buffer = try await inbox.datagram()
            #expect(!buffer.isTruncated)
            received += buffer.payload
        }
        #expect(received == bytes)
        await closeAll(sender, receiver)
    }
}
