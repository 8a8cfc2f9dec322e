internal import CUVShims
internal import Glibc
package import Synchronization

/// What one attempt to hand a datagram to the kernel came to.
package enum SendAttempt: Sendable, Equatable {
    /// The kernel took the datagram.
    case sent
    /// The socket's buffer is full (`EAGAIN`): nothing was sent; wait until it is writable.
    case wouldBlock
    /// The datagram failed with its own error.
    case failed(UVError)
}

/// Counters of one socket, updated by whichever thread sends or receives.
package final class SocketCounters: Sendable {
    /// Datagrams the kernel took (a GSO send counts as its segments).
    package let datagramsSent = Atomic<Int>(0)
    /// Payload bytes the kernel took.
    package let bytesSent = Atomic<Int>(0)
    /// Sends that failed with their own error (not counting a closed socket or cancellation).
    package let sendErrors = Atomic<Int>(0)
    /// Transient errors: an earlier datagram's ICMP error, or `ENOBUFS`, from sends and receives.
    package let transientErrors = Atomic<Int>(0)
    /// Datagrams read from the socket.
    package let datagramsRead = Atomic<Int>(0)
    /// GSO sends the library cut into datagrams itself because the kernel refused GSO.
    package let gsoFallbacks = Atomic<Int>(0)

    package init() {}
}

/// The send side of one socket's descriptor: the one place where a datagram meets the kernel,
/// its errors are attributed, and the counters move. Shared by the loop (sends queued by
/// ``UDPHandle`` and flushed with `sendmmsg`) and, for ``UDPHandle``s that the async layer owns,
/// by tasks on other threads that send straight from their own thread.
///
/// ## Error attribution
///
/// An error caused by *this* datagram is this datagram's error. On a connected socket the kernel
/// also reports, on whatever send comes next, an ICMP error left by an *earlier* datagram
/// (`ECONNREFUSED`, `EHOSTUNREACH`, `ENETUNREACH`), and clears it; the datagram at hand was not
/// sent. So such an error is retried once: if the retry goes out, the first error was the earlier
/// datagram's (reported as transient); if it fails the same way, it is this datagram's own.
///
/// ## The gate
///
/// Tasks off the loop may send directly only while the loop has nothing queued and the socket is
/// open. One atomic word holds the number of such sends in flight, a "loop owns sending" bit (set
/// while the loop's queue is not empty) and a "closed" bit, so each decision is one
/// compare-and-swap: a direct send never overtakes a datagram the loop holds, and the loop never
/// closes the descriptor under a send in flight. When close finds sends in flight it does not
/// wait: the last of them to leave hands the close back to the loop.
package final class SendPath: Sendable {
    private static let closedBit = 1 << 62
    private static let loopOwnsBit = 1 << 61
    private static let countMask = (1 << 61) - 1

    /// The socket. Valid until the handle's close, which the gate orders after every direct send.
    package let fd: Int32
    /// The socket's counters.
    package let counters: SocketCounters
    private let gate = Atomic<Int>(0)
    private let connected = Atomic<Bool>(false)
    private let closeHandoff = LockedBox<(@Sendable () -> Void)?>(nil)
    /// Receive metadata: the ``ReceiveMetadataOptions`` bits (0-7), a "local port known" bit
    /// (8) and the local port (16-31). Read by whichever thread reads the socket.
    let receiveMetadataWord = Atomic<Int>(0)
    /// The kernel refused a GSO send on this socket: GSO sends are cut by the library from now on.
    let gsoRefusedFlag = Atomic<Bool>(false)

    init(fd: Int32, counters: SocketCounters) {
        self.fd = fd
        self.counters = counters
    }

    // MARK: Attribution

    /// Whether an ICMP error of an earlier datagram can surface on this socket's sends.
    var isConnected: Bool { connected.load(ordering: .relaxed) }

    func setConnected(_ value: Bool) { connected.store(value, ordering: .relaxed) }

    /// Sends one datagram, applying the attribution rule above, and counts the outcome. Any
    /// thread (off the loop only between ``enter()`` and ``leave()``).
    ///
    /// - Returns: The outcome for this datagram, and an earlier datagram's error if one surfaced
    ///   (counted here; the caller publishes it).
    func send(_ message: UnsafeMutablePointer<msghdr>, bytes: Int) -> (SendAttempt, earlier: UVError?) {
        let result = cuv_sendmsg(fd, message)
        if result >= 0 {
            noteSent(bytes: bytes, datagrams: Self.wireDatagrams(message, bytes: bytes))
            return (.sent, nil)
        }
        if refusedGSO(Int32(-result), message) { return (.wouldBlock, nil) }
        let (outcome, earlier) = attribute(failure: Int32(-result)) {
            let again = cuv_sendmsg(fd, message)
            return again >= 0 ? 0 : Int32(-again)
        }
        count(outcome, bytes: bytes, datagrams: Self.wireDatagrams(message, bytes: bytes), earlier: earlier)
        return (outcome, earlier)
    }

    /// Hands `count` prepared messages to the kernel with `sendmmsg`, in order, each with its
    /// own outcome and counted, stopping at the first that would block.
    ///
    /// - Parameters:
    ///   - report: Called, in order, for each message that completed (sent or failed).
    ///   - transient: Called with each earlier datagram's error that surfaced (already counted).
    /// - Returns: How many messages completed; the rest, from that index, would block.
    func sendBatch(_ headers: UnsafeMutablePointer<cuv_mmsghdr>, count total: Int,
                   report: (Int, SendAttempt) -> Void, transient: (UVError) -> Void) -> Int {
        var index = 0
        while index < total {
            let sent = cuv_sendmmsg(fd, headers + index, UInt32(total - index))
            if sent > 0 {
                for i in index..<(index + Int(sent)) {
                    let bytes = Int(headers[i].msg_len)
                    noteSent(bytes: bytes, datagrams: Self.wireDatagrams(&headers[i].msg_hdr, bytes: bytes))
                    report(i, .sent)
                }
                index += Int(sent)
                continue
            }
            // The first message failed (after a partial batch the kernel keeps that message's
            // error and reports it here, on the next call).
            let header = headers + index
            if sent < 0, refusedGSO(Int32(-sent), &header.pointee.msg_hdr) { return index }
            let (outcome, earlier) = attribute(failure: sent == 0 ? EAGAIN : Int32(-sent)) {
                let again = cuv_sendmsg(fd, &header.pointee.msg_hdr)
                return again >= 0 ? 0 : Int32(-again)
            }
            let bytes = Self.payloadLength(&header.pointee.msg_hdr)
            count(outcome, bytes: bytes, datagrams: Self.wireDatagrams(&header.pointee.msg_hdr, bytes: bytes), earlier: earlier)
            if let earlier { transient(earlier) }
            if outcome == .wouldBlock { return index }
            report(index, outcome)
            index += 1
        }
        return total
    }

    private func count(_ outcome: SendAttempt, bytes: Int, datagrams: Int, earlier: UVError?) {
        if let earlier { noteTransient(earlier) }
        switch outcome {
        case .sent: noteSent(bytes: bytes, datagrams: datagrams)
        case .failed: noteFailed()
        case .wouldBlock: break
        }
    }

    /// The bytes a message carries (the sum of its buffers).
    static func payloadLength(_ message: UnsafeMutablePointer<msghdr>) -> Int {
        var total = 0
        for i in 0..<Int(message.pointee.msg_iovlen) { total += message.pointee.msg_iov[i].iov_len }
        return total
    }

    /// Interprets the failure `code` (an errno) of one datagram; `retry` sends it once more and
    /// returns 0 or the new errno.
    func attribute(failure code: Int32, retry: () -> Int32) -> (SendAttempt, earlier: UVError?) {
        if code == EAGAIN || code == EWOULDBLOCK { return (.wouldBlock, nil) }
        let error = Syscall.error(code, "send")
        guard isConnected, error.isICMPError else { return (.failed(error), nil) }
        let second = retry()
        if second == 0 { return (.sent, error) }
        if second == EAGAIN || second == EWOULDBLOCK { return (.wouldBlock, error) }
        if second == code { return (.failed(error), nil) }
        return (.failed(Syscall.error(second, "send")), error)
    }

    /// Counts a datagram the kernel took (a GSO send: its `datagrams` segments).
    @inline(__always)
    func noteSent(bytes: Int, datagrams: Int = 1) {
        counters.datagramsSent.add(datagrams, ordering: .relaxed)
        counters.bytesSent.add(bytes, ordering: .relaxed)
    }

    /// Counts a datagram that failed with its own error.
    @inline(__always)
    package func noteFailed() {
        counters.sendErrors.add(1, ordering: .relaxed)
    }

    /// Counts a transient error (the caller publishes it). Any thread.
    func noteTransient(_ error: UVError) {
        counters.transientErrors.add(1, ordering: .relaxed)
    }

    // MARK: The gate

    /// A task off the loop asks to send now. True: go ahead, then call ``leave()``.
    @inline(__always)
    package func enter() -> Bool {
        var state = gate.load(ordering: .relaxed)
        while true {
            if state & (Self.closedBit | Self.loopOwnsBit) != 0 { return false }
            let (exchanged, original) = gate.weakCompareExchange(
                expected: state, desired: state + 1, successOrdering: .acquiring, failureOrdering: .relaxed)
            if exchanged { return true }
            state = original
        }
    }

    /// A task off the loop asks to read now (reads do not wait behind queued sends). True: go
    /// ahead, then call ``leave()``.
    @inline(__always)
    package func enterForReading() -> Bool {
        var state = gate.load(ordering: .relaxed)
        while true {
            if state & Self.closedBit != 0 { return false }
            let (exchanged, original) = gate.weakCompareExchange(
                expected: state, desired: state + 1, successOrdering: .acquiring, failureOrdering: .relaxed)
            if exchanged { return true }
            state = original
        }
    }

    /// A direct send or read is done. If it was the last one in flight after close began, it hands the
    /// close back to the loop.
    @inline(__always)
    package func leave() {
        let now = gate.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue
        if now & Self.closedBit != 0 && now & Self.countMask == 0 {
            closeHandoff.withLock { handoff in
                defer { handoff = nil }
                return handoff
            }?()
        }
    }

    /// Loop thread: the loop's queue became non-empty (true) or empty (false).
    func setLoopOwns(_ owns: Bool) {
        if owns {
            gate.bitwiseOr(Self.loopOwnsBit, ordering: .acquiringAndReleasing)
        } else {
            gate.bitwiseAnd(~Self.loopOwnsBit, ordering: .acquiringAndReleasing)
        }
    }

    /// Loop thread, when close begins: refuse new direct sends. Returns true if none is in
    /// flight (close may go on now); otherwise `handoff` runs (on the sending thread) once the
    /// last one leaves.
    func close(handoff: @escaping @Sendable () -> Void) -> Bool {
        closeHandoff.withLock { $0 = handoff }
        let before = gate.bitwiseOr(Self.closedBit, ordering: .acquiringAndReleasing).oldValue
        if before & Self.countMask == 0 {
            closeHandoff.withLock { $0 = nil }
            return true
        }
        return false
    }

    /// Whether close has begun (any thread).
    package var isClosed: Bool { gate.load(ordering: .acquiring) & Self.closedBit != 0 }
}

extension UVError {
    /// Whether the kernel may report this error for an *earlier* datagram on a connected socket
    /// (from an ICMP message): `ECONNREFUSED`, `EHOSTUNREACH` or `ENETUNREACH`.
    var isICMPError: Bool {
        self == .connectionRefused || self == .hostUnreachable || self == .networkUnreachable
    }
}

// MARK: - Sends from other threads

extension SendPath {
    /// Off the loop: sends one datagram straight from the calling thread, if the gate lets it
    /// (the loop holds nothing and the socket is open). The datagram was validated by the caller.
    ///
    /// - Returns: `nil` when the gate is shut (the caller goes through the loop); else the
    ///   outcome, counted, with an earlier datagram's error for the caller to publish.
    package func sendDirect(_ bytes: UnsafeRawBufferPointer, to address: SocketAddress?,
                            options: SendOptions? = nil, target: SendTarget? = nil) -> (SendAttempt, earlier: UVError?)? {
        if options?.segmentSize != nil && gsoRefused { return nil }  // the loop cuts it
        guard enter() else { return nil }
        defer { leave() }
        return sendOne(bytes, to: address, options: options, target: target)
    }

    /// Sends one datagram with `sendmsg` (with the control messages of `options`; `target`
    /// gives the peer and family they are written for), applying the attribution rule. The
    /// caller holds the right to send (the loop thread, or inside the gate).
    func sendOne(_ bytes: UnsafeRawBufferPointer, to address: SocketAddress?,
                 options: SendOptions?, target: SendTarget?) -> (SendAttempt, earlier: UVError?) {
        var name = sockaddr_storage()
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        var message = msghdr()
        return withUnsafeMutablePointer(to: &iov) { iovPointer in
            withUnsafeMutablePointer(to: &name) { namePointer in
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                if let address {
                    message.msg_name = UnsafeMutableRawPointer(namePointer)
                    message.msg_namelen = address.write(to: namePointer)
                }
                guard let options, !options.isEmpty else { return send(&message, bytes: bytes.count) }
                return withUnsafeTemporaryAllocation(byteCount: SendOptions.controlCapacity, alignment: 16) { control in
                    let length = options.writeControl(to: control.baseAddress!, destination: address ?? target?.peer,
                                                      family: target?.destinationFamily(address) ?? address?.family ?? .ipv4)
                    if length > 0 {
                        message.msg_control = control.baseAddress
                        message.msg_controllen = length
                    }
                    return send(&message, bytes: bytes.count)
                }
            }
        }
    }

    /// Off the loop: sends `datagrams[indices]` straight from the calling thread with
    /// `sendmmsg`, while the gate lets it, each with its own outcome. The datagrams were
    /// validated by the caller; `destination` gives each one's address (`nil` on a connected
    /// socket).
    ///
    /// - Returns: How many of `indices` completed, in order; the rest go through the loop.
    package func sendDirect(_ datagrams: [Datagram], _ indices: ArraySlice<Int>,
                            destination: (Datagram) -> SocketAddress?,
                            report: (Int, SendAttempt) -> Void, transient: (UVError) -> Void) -> Int {
        guard !indices.isEmpty, enter() else { return 0 }
        defer { leave() }
        let chunkSize = IOScratch.messages
        return withUnsafeTemporaryAllocation(of: cuv_mmsghdr.self, capacity: chunkSize) { headers in
            withUnsafeTemporaryAllocation(of: iovec.self, capacity: chunkSize) { iovecs in
                withUnsafeTemporaryAllocation(of: sockaddr_storage.self, capacity: chunkSize) { names in
                    var done = 0
                    var position = indices.startIndex
                    while position < indices.endIndex {
                        let chunk = Array(indices[position..<min(indices.endIndex, position + chunkSize)])
                        let completed = withPayloads(datagrams, chunk) { payloads in
                            for slot in 0..<chunk.count {
                                let payload = payloads[slot]
                                iovecs[slot] = iovec(iov_base: UnsafeMutableRawPointer(mutating: payload.baseAddress), iov_len: payload.count)
                                var header = msghdr()
                                header.msg_iov = iovecs.baseAddress! + slot
                                header.msg_iovlen = 1
                                if let address = destination(datagrams[chunk[slot]]) {
                                    let name = UnsafeMutableRawPointer(names.baseAddress! + slot)
                                    header.msg_name = name
                                    header.msg_namelen = address.write(to: name)
                                }
                                headers[slot] = cuv_mmsghdr(msg_hdr: header, msg_len: 0)
                            }
                            return sendBatch(headers.baseAddress!, count: chunk.count,
                                             report: { slot, attempt in report(chunk[slot], attempt) },
                                             transient: transient)
                        }
                        done += completed
                        if completed < chunk.count { break }
                        position += chunk.count
                    }
                    return done
                }
            }
        }
    }
}

/// Calls `body` with the payload bytes of `datagrams[indices]`, all valid at once: each array
/// lends its storage for the duration of the call, one nested `withUnsafeBytes` per datagram.
func withPayloads<R>(_ datagrams: [Datagram], _ indices: [Int], _ body: ([UnsafeRawBufferPointer]) -> R) -> R {
    var payloads: [UnsafeRawBufferPointer] = []
    payloads.reserveCapacity(indices.count)
    func lend(_ position: Int) -> R {
        if position == indices.count { return body(payloads) }
        return datagrams[indices[position]].payload.withUnsafeBytes { raw in
            payloads.append(raw)
            return lend(position + 1)
        }
    }
    return lend(0)
}
