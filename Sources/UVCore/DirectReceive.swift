internal import CUVShims
internal import Glibc
import Synchronization

/// What a read straight from a consumer's thread came to.
package enum DirectRead {
    /// Datagrams, in arrival order (at least one).
    case datagrams([Datagram])
    /// Nothing to read now.
    case wouldBlock
    /// A transient error (an earlier datagram's ICMP error): counted; reading may go on.
    case transient(UVError)
    /// A fatal receive error.
    case failed(UVError)
    /// The socket is closing: the caller goes through the loop.
    case closed
}

extension SendPath {
    /// Off the loop: reads up to `maxCount` datagrams straight from the calling thread with
    /// `recvmmsg`, if the socket is open. The caller makes sure nobody else reads at the same
    /// time (the async layer's receive queue hands out one reading turn at a time), so the order
    /// of datagrams is kept.
    ///
    /// - Parameters:
    ///   - maxCount: The most datagrams to read (at most ``DirectReadBuffers/messages``).
    ///   - maximumDatagramSize: Longer datagrams are truncated and marked.
    package func receiveDirect(maxCount: Int, maximumDatagramSize: Int) -> DirectRead {
        guard enterForReading() else { return .closed }
        defer { leave() }
        let buffers = DirectReadBuffers.checkOut()
        defer { DirectReadBuffers.checkIn(buffers) }
        let wanted = min(maxCount, DirectReadBuffers.messages)
        let withMetadata = !receiveMetadataOptions.isEmpty
        // With GRO, the whole chunk (see UDPHandle.prepareReceive).
        let readLength = receiveMetadataOptions.contains(.gro) ? IOScratch.chunkSize : maximumDatagramSize
        for index in 0..<wanted {
            let iov = buffers.iovecs + index
            iov.pointee = iovec(iov_base: buffers.chunk(index), iov_len: readLength)
            var header = msghdr()
            header.msg_name = UnsafeMutableRawPointer(buffers.names + index)
            header.msg_namelen = socklen_t(MemoryLayout<sockaddr_storage>.size)
            header.msg_iov = iov
            header.msg_iovlen = 1
            if withMetadata { Self.attachControl(&header, buffers.control + index * IOScratch.controlSize) }
            buffers.headers[index] = cuv_mmsghdr(msg_hdr: header, msg_len: 0)
        }
        let count = cuv_recvmmsg(fd, buffers.headers, UInt32(wanted))
        if count < 0 {
            let code = -count
            if code == EAGAIN || code == EWOULDBLOCK { return .wouldBlock }
            let error = Syscall.error(code, "recvmmsg")
            if error.isTransient {
                noteTransient(error)
                return .transient(error)
            }
            return .failed(error)
        }
        let localPort = withMetadata ? localPortForMetadata() : 0
        var datagrams: [Datagram] = []
        datagrams.reserveCapacity(Int(count))
        for index in 0..<Int(count) {
            let header = buffers.headers[index]
            let length = Int(header.msg_len)
            let kept = min(length, readLength)
            let name = UnsafeRawPointer(buffers.names + index).assumingMemoryBound(to: sockaddr.self)
            guard let remote = SocketAddress(name) else { continue }
            let payload = [UInt8](UnsafeRawBufferPointer(start: buffers.chunk(index), count: kept))
            let truncated = header.msg_hdr.msg_flags & Int32(MSG_TRUNC) != 0 || kept < length
            var datagram = Datagram(payload: payload, remote: remote, isTruncated: truncated)
            if withMetadata { datagram.metadata = metadata(of: buffers.headers + index, localPort: localPort) }
            datagrams.append(datagram)
        }
        counters.datagramsRead.add(Int(count), ordering: .relaxed)
        return datagrams.isEmpty ? .wouldBlock : .datagrams(datagrams)
    }
}

/// Receive buffers for reads from consumers' threads: a small pool shared by every socket,
/// since a read holds its buffers only for one system call.
final class DirectReadBuffers: @unchecked Sendable {
    // Safe to share: a set of buffers is used by one thread at a time (checked out of the pool
    // under its lock, and checked back in when the read is done).
    static let messages = 64

    let headers: UnsafeMutablePointer<cuv_mmsghdr>
    let iovecs: UnsafeMutablePointer<iovec>
    let names: UnsafeMutablePointer<sockaddr_storage>
    /// Control-message buffers, ``IOScratch/controlSize`` bytes per message (used only with
    /// receive metadata).
    let control: UnsafeMutableRawPointer
    /// `messages` chunks of 64 KiB; only the pages a datagram touches become resident.
    let slab: UnsafeMutableRawPointer

    private init() {
        headers = .allocate(capacity: Self.messages)
        headers.initialize(repeating: cuv_mmsghdr(), count: Self.messages)
        iovecs = .allocate(capacity: Self.messages)
        iovecs.initialize(repeating: iovec(), count: Self.messages)
        names = .allocate(capacity: Self.messages)
        names.initialize(repeating: sockaddr_storage(), count: Self.messages)
        control = .allocate(byteCount: IOScratch.controlSize * Self.messages, alignment: 16)
        slab = .allocate(byteCount: IOScratch.chunkSize * Self.messages, alignment: 16)
    }

    deinit {
        headers.deallocate()
        iovecs.deallocate()
        names.deallocate()
        control.deallocate()
        slab.deallocate()
    }

    @inline(__always)
    func chunk(_ index: Int) -> UnsafeMutableRawPointer { slab + index * IOScratch.chunkSize }

    /// Sets kept for reuse: at most one per core is ever needed at once.
    private static let pool = LockedBox<[DirectReadBuffers]>([])

    static func checkOut() -> DirectReadBuffers {
        pool.withLock { $0.popLast() } ?? DirectReadBuffers()
    }

    static func checkIn(_ buffers: DirectReadBuffers) {
        pool.withLock { free in
            if free.count < 8 { free.append(buffers) }
        }
    }
}
