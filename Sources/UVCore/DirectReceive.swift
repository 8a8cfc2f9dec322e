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
    ///   - maxCount: The most datagrams to read (at most ``IOScratch/messages``).
    ///   - maximumDatagramSize: Longer datagrams are truncated and marked.
    package func receiveDirect(maxCount: Int, maximumDatagramSize: Int) -> DirectRead {
        guard enterForReading() else { return .closed }
        defer { leave() }
        let buffers = IOScratch.checkOut()
        defer { IOScratch.checkIn(buffers) }
        let wanted = min(maxCount, IOScratch.messages)
        let withMetadata = !receiveMetadataOptions.isEmpty
        // With GRO the kernel may hand over up to 64 KiB of coalesced segments: read into the
        // whole chunk (the size limit is per datagram).
        let readLength = receiveMetadataOptions.contains(.gro) ? IOScratch.chunkSize : maximumDatagramSize
        buffers.prepareReceive(wanted, length: readLength, withControl: withMetadata)
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
            guard var datagram = buffers.receivedDatagram(index) else { continue }
            if withMetadata { datagram.metadata = metadata(of: buffers.headers + index, localPort: localPort) }
            datagrams.append(datagram)
        }
        counters.datagramsRead.add(Int(count), ordering: .relaxed)
        return datagrams.isEmpty ? .wouldBlock : .datagrams(datagrams)
    }
}
