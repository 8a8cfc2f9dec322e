internal import CUVShims
internal import DequeModule
internal import Glibc
import Synchronization

// Generic segmentation offload: a refusal by the kernel, remembered per socket, and the
// library's own segmentation that replaces it.
extension SendPath {
    /// Whether the kernel refused GSO on this socket; GSO sends are then cut by the library.
    var gsoRefused: Bool { gsoRefusedFlag.load(ordering: .relaxed) }

    /// Whether failure `code` of `message` is the kernel refusing GSO (`EIO`, `EINVAL`,
    /// `ENOPROTOOPT` on a message with `UDP_SEGMENT`). If so the refusal is remembered and the
    /// message counts as not sent, to be cut by the library (the caller treats it as "would
    /// block"; the loop's queue then cuts it).
    func refusedGSO(_ code: Int32, _ message: UnsafePointer<msghdr>) -> Bool {
        guard code == EIO || code == EINVAL || code == ENOPROTOOPT, cuv_segment_size(message) != 0 else { return false }
        gsoRefusedFlag.store(true, ordering: .relaxed)
        return true
    }

    /// The datagrams a sent message put on the wire: its GSO segments, or 1.
    @inline(__always)
    static func wireDatagrams(_ message: UnsafePointer<msghdr>, bytes: Int) -> Int {
        guard message.pointee.msg_controllen > 0 else { return 1 }
        let size = Int(cuv_segment_size(message))
        return size > 0 && bytes > size ? (bytes + size - 1) / size : 1
    }
}

extension UDPHandle {
    /// GSO sends this handle cut into datagrams itself because the kernel or the route refused
    /// GSO (see ``SendOptions/segmentSize``). After the first refusal every GSO send on the
    /// handle is cut by the library.
    public var gsoFallbackCount: Int {
        loop.preconditionInLoop("UDPHandle.gsoFallbackCount")
        return counters.gsoFallbacks.load(ordering: .relaxed)
    }

    /// Whether a send with `options` must wait for the queue to cut it (GSO refused here).
    func mustCutGSO(_ options: SendOptions?) -> Bool {
        options?.segmentSize != nil && sendPath?.gsoRefused == true
    }

    /// Loop thread, before a flush: once GSO is refused, replaces each GSO send in the next
    /// window of the queue by its segments, as ordinary datagrams in its place, sharing its
    /// completion (the first failure, or success once all went out).
    func cutRefusedGSOSends() {
        guard sendPath?.gsoRefused == true else { return }
        var index = 0
        while index < min(sendQueue.count, IOScratch.messages) {
            let queued = sendQueue[index]
            guard var plain = queued.options, let size = plain.segmentSize else {
                index += 1
                continue
            }
            plain.segmentSize = nil
            let total = queued.payload.count
            let count = max(1, (total + size - 1) / size)
            let completion = queued.completion
            let batch = BatchSend(count: count) { [self] failures in finish(completion, failures.first?.error) }
            let bytes = UnsafeRawBufferPointer(queued.payload)
            var segments: [QueuedSend] = []
            segments.reserveCapacity(count)
            for segment in 0..<count {
                let range = (segment * size)..<min(total, (segment + 1) * size)
                segments.append(QueuedSend(copying: UnsafeRawBufferPointer(rebasing: bytes[range]), to: queued.destination,
                                           options: plain.isEmpty ? nil : plain, completion: .batch(batch, index: segment)))
            }
            queued.free()
            sendQueue.remove(at: index)
            sendQueue.insert(contentsOf: segments, at: index)  // same bytes: sendQueueBytes is unchanged
            counters.gsoFallbacks.add(1, ordering: .relaxed)
            index += count
        }
    }
}
