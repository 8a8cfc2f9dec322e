internal import CUVShims
internal import Glibc

/// The buffers UDP handles read into and build `sendmmsg` batches in: one set per loop, since
/// the loop thread does one system call at a time (created on first use, freed when the loop
/// stops), and a small pool of sets for reads from consumers' threads (``checkOut()``).
final class IOScratch: @unchecked Sendable {
    // Safe to share: a set is used by one thread at a time, a loop's set by its loop thread and
    // a pooled set by the reader that checked it out (under the pool's lock) until it checks it
    // back in.
    /// Messages per `recvmmsg` / `sendmmsg` call. A window of 64 datagrams in flight is read in
    /// one call (with 32, every such burst costs a third call that finds nothing).
    static let messages = 64
    /// Bytes per receive chunk: any UDP datagram fits (and libuv's recvmmsg hang on smaller
    /// buffers cannot happen, since libuv is not the one reading).
    static let chunkSize = 65_536
    /// Control-message bytes per message (packet info, ECN, timestamps, segment sizes).
    static let controlSize = 256

    /// A read batch of some handle on this loop is being delivered from these buffers: until it
    /// ends, no handle may use them to send (a receive callback that sends on another handle
    /// queues, and that handle flushes at the end of the turn). Loop thread only.
    var readInProgress = false

    let headers: UnsafeMutablePointer<cuv_mmsghdr>
    let iovecs: UnsafeMutablePointer<iovec>
    let names: UnsafeMutablePointer<sockaddr_storage>
    let control: UnsafeMutableRawPointer
    /// `messages` chunks of `chunkSize` bytes. Only the pages a datagram touches become resident.
    let slab: UnsafeMutableRawPointer

    private init() {
        headers = .allocate(capacity: Self.messages)
        headers.initialize(repeating: cuv_mmsghdr(), count: Self.messages)
        iovecs = .allocate(capacity: Self.messages)
        iovecs.initialize(repeating: iovec(), count: Self.messages)
        names = .allocate(capacity: Self.messages)
        names.initialize(repeating: sockaddr_storage(), count: Self.messages)
        control = .allocate(byteCount: Self.controlSize * Self.messages, alignment: 16)
        slab = .allocate(byteCount: Self.chunkSize * Self.messages, alignment: 16)
    }

    deinit {
        headers.deallocate()
        iovecs.deallocate()
        names.deallocate()
        control.deallocate()
        slab.deallocate()
    }

    /// The scratch buffers of `loop` (loop thread only).
    static func of(_ loop: UVLoop) -> IOScratch {
        let key = ObjectIdentifier(IOScratch.self)
        if let existing = loop.localStorage[key] { return unsafeDowncast(existing, to: IOScratch.self) }
        let fresh = IOScratch()
        loop.localStorage[key] = fresh
        return fresh
    }

    @inline(__always)
    func chunk(_ index: Int) -> UnsafeMutableRawPointer { slab + index * Self.chunkSize }

    @inline(__always)
    func controlBuffer(_ index: Int) -> UnsafeMutableRawPointer { control + index * Self.controlSize }

    @inline(__always)
    func name(_ index: Int) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(names + index) }

    // MARK: Receiving

    /// Points the first `count` messages at receive chunks of `length` bytes (and,
    /// `withControl`, at control buffers for metadata), ready for `recvmmsg`.
    func prepareReceive(_ count: Int, length: Int, withControl: Bool) {
        for index in 0..<count {
            let iov = iovecs + index
            iov.pointee = iovec(iov_base: chunk(index), iov_len: length)
            var header = msghdr()
            header.msg_name = name(index)
            header.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
            header.msg_iov = iov
            header.msg_iovlen = 1
            if withControl {
                header.msg_control = controlBuffer(index)
                header.msg_controllen = Self.controlSize
            }
            headers[index] = cuv_mmsghdr(msg_hdr: header, msg_len: 0)
        }
    }

    /// The datagram `recvmmsg` left in message `index` (its metadata aside), or `nil` if its
    /// sender is not an IP address.
    @inline(__always)
    func receivedDatagram(_ index: Int) -> Datagram? {
        let header = headers[index]
        guard let remote = SocketAddress(name(index).assumingMemoryBound(to: sockaddr.self)) else { return nil }
        let payload = [UInt8](UnsafeRawBufferPointer(start: chunk(index), count: Int(header.msg_len)))
        return Datagram(payload: payload, remote: remote, isTruncated: header.msg_hdr.msg_flags & Int32(MSG_TRUNC) != 0)
    }

    // MARK: The pool for reads off the loop

    /// Sets kept for reuse: at most one per core is ever needed at once.
    private static let pool = LockedBox<[IOScratch]>([])

    /// A set of buffers for one read from a consumer's thread; give it back with ``checkIn(_:)``.
    static func checkOut() -> IOScratch {
        pool.withLock { $0.popLast() } ?? IOScratch()
    }

    /// Returns a set taken with ``checkOut()``.
    static func checkIn(_ buffers: IOScratch) {
        pool.withLock { free in
            if free.count < 8 { free.append(buffers) }
        }
    }
}

/// How a queued datagram's outcome is reported, on the loop thread.
package enum SendCompletion {
    /// Nobody waits.
    case none
    /// The callback layer's `onSend` (run at the end of the loop turn).
    case callback(UDPHandle.SendHandler)
    /// An async caller: resumed with `nil` when sent, or with the datagram's error.
    case resume(UnsafeContinuation<UVError?, Never>)
    /// One datagram of a batch.
    case batch(BatchSend, index: Int)
}

/// Tracks the datagrams of one batch send: each completes once; the batch completes when all
/// have.
package final class BatchSend {
    private var remaining: Int
    /// The failed datagrams: their index in the batch and their error.
    package private(set) var failures: [(index: Int, error: UVError)] = []
    private var onDone: (([(index: Int, error: UVError)]) -> Void)?

    /// A batch of `count` datagrams; `onDone` runs on the loop thread when the last completes.
    package init(count: Int, onDone: @escaping ([(index: Int, error: UVError)]) -> Void) {
        remaining = count
        self.onDone = onDone
        if count == 0 { finish() }
    }

    func complete(_ index: Int, _ error: UVError?) {
        if let error { failures.append((index, error)) }
        remaining -= 1
        if remaining == 0 { finish() }
    }

    private func finish() {
        let done = onDone
        onDone = nil
        done?(failures.sorted { $0.index < $1.index })
    }
}

/// A datagram waiting in a handle's send queue: its own copy of the bytes, its destination and
/// who to tell.
package struct QueuedSend {
    /// The payload, owned (allocated for the queue, freed when the send completes).
    let payload: UnsafeMutableRawBufferPointer
    let destination: SocketAddress?
    /// Per-send options (source address, ECN); `nil` for a plain send.
    let options: SendOptions?
    let completion: SendCompletion

    /// Copies `bytes` for the queue.
    package init(copying bytes: UnsafeRawBufferPointer, to destination: SocketAddress?, options: SendOptions? = nil,
                 completion: SendCompletion) {
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
        if let base = bytes.baseAddress, bytes.count > 0 {
            storage.baseAddress!.copyMemory(from: base, byteCount: bytes.count)
        }
        payload = UnsafeMutableRawBufferPointer(start: storage.baseAddress, count: bytes.count)
        self.destination = destination
        self.options = options
        self.completion = completion
    }

    /// Joins several buffers into one datagram for the queue.
    init(joining buffers: [[UInt8]], to destination: SocketAddress?, completion: SendCompletion) {
        var total = 0
        for buffer in buffers { total += buffer.count }
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 1)
        var offset = 0
        for buffer in buffers {
            buffer.withUnsafeBytes { bytes in
                if let base = bytes.baseAddress, bytes.count > 0 {
                    (storage.baseAddress! + offset).copyMemory(from: base, byteCount: bytes.count)
                }
            }
            offset += buffer.count
        }
        payload = UnsafeMutableRawBufferPointer(start: storage.baseAddress, count: total)
        self.destination = destination
        self.options = nil
        self.completion = completion
    }

    func free() { UnsafeMutableRawPointer(payload.baseAddress!).deallocate() }
}
