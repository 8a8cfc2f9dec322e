internal import CLibUV
internal import CUVShims
internal import DequeModule
internal import Glibc
import Synchronization

// Sending: the public send API, the send queue and its sendmmsg flush.
extension UDPHandle {
    /// Queues one datagram made of `buffers`, concatenated, for sending.
    ///
    /// The bytes are sent at once when nothing is queued (or copied into the queue when the
    /// socket's buffer is full), so the arrays may change once this returns. `onSend` is called
    /// exactly once, on the loop thread and never from inside this call: with `nil` once the
    /// kernel has taken the datagram, or with its error (``UVError/permissionDenied`` for a
    /// broadcast without ``setBroadcast(_:)``, ``UVError/canceled`` if the handle closes first).
    /// A failed send never affects the sends queued around it. Sends made inside the receive
    /// callback are queued and handed to the kernel together, with `sendmmsg`, after the batch
    /// of datagrams being delivered.
    ///
    /// - Parameters:
    ///   - buffers: At least one buffer; empty buffers are fine (all empty: a zero-length
    ///     datagram).
    ///   - address: The destination; `nil` for a connected handle.
    ///   - onSend: Called once with the outcome.
    /// - Throws: Synchronously, with nothing queued: ``UVError/invalidArgument`` for an empty
    ///   buffer list or destination port 0; ``UVError/messageTooLong`` above 65,507 bytes (IPv4)
    ///   or 65,527 (IPv6); ``UVError/destinationAddressRequired`` without an address on an
    ///   unconnected handle; ``UVError/alreadyConnected`` with one on a connected handle;
    ///   ``UVError/addressFamilyNotSupported`` for an IPv6 destination on an IPv4 socket;
    ///   ``UVError/networkUnreachable`` for an IPv4 destination on an IPv6-only socket;
    ///   ``ClosedHandleError``.
    public func send(_ buffers: [[UInt8]], to address: SocketAddress? = nil, onSend: SendHandler? = nil) throws {
        try checkOpen("send")
        guard !buffers.isEmpty else {
            throw UVError.invalidArgument.with(context: "send needs at least one buffer (an empty buffer is fine)")
        }
        if buffers.count == 1 {
            try send(buffers[0], to: address, onSend: onSend)
            return
        }
        var total = 0
        for buffer in buffers { total += buffer.count }
        try prepareSend(to: address, size: total)
        let completion: SendCompletion = onSend.map { .callback($0) } ?? .none
        enqueue(QueuedSend(joining: buffers, to: address, completion: completion))
    }

    /// Queues one datagram for sending; see ``send(_:to:onSend:)-([[UInt8]],_,_)``.
    public func send(_ bytes: [UInt8], to address: SocketAddress? = nil, onSend: SendHandler? = nil) throws {
        try sendOne(bytes, to: address, options: nil, onSend: onSend)
    }

    /// Queues one datagram for sending with per-send options: a source address (for a handle
    /// bound to a wildcard address) and an ECN codepoint. Otherwise as
    /// ``send(_:to:onSend:)-([[UInt8]],_,_)``.
    ///
    /// ```swift
    /// // Reply from the address the client sent to (needs .packetInfo receive metadata):
    /// try handle.send(reply, to: query.remote, options: SendOptions(source: query.metadata?.destination))
    /// ```
    ///
    /// - Parameters:
    ///   - bytes: The payload.
    ///   - address: The destination; `nil` for a connected handle.
    ///   - options: The source address and ECN codepoint.
    ///   - onSend: Called once with the outcome.
    /// - Throws: As ``send(_:to:onSend:)-([[UInt8]],_,_)``, and
    ///   ``UVError/addressFamilyNotSupported`` for a source of another family than the
    ///   destination; ``UVError/invalidArgument`` for a multicast source. A source that is not an
    ///   address of this host fails the send (``UVError/invalidArgument`` from the kernel), through
    ///   `onSend`.
    public func send(_ bytes: [UInt8], to address: SocketAddress? = nil, options: SendOptions,
                     onSend: SendHandler? = nil) throws {
        try sendOne(bytes, to: address, options: options.isEmpty ? nil : options, onSend: onSend)
    }

    private func sendOne(_ bytes: [UInt8], to address: SocketAddress?, options: SendOptions?, onSend: SendHandler?) throws {
        try checkOpen("send")
        try prepareSend(to: address, size: bytes.count, options: options)
        let completion: SendCompletion = onSend.map { .callback($0) } ?? .none
        bytes.withUnsafeBytes { raw in
            let attempt = sendNow(raw, to: address, options: options)
            switch attempt {
            case .sent?: finish(completion, nil)
            case .failed(let error)?: finish(completion, error)
            case .wouldBlock?: enqueue(QueuedSend(copying: raw, to: address, options: options, completion: completion), socketIsFull: true)
            case nil: enqueue(QueuedSend(copying: raw, to: address, options: options, completion: completion))
            }
        }
    }

    /// Sends one datagram now if the kernel will take it without waiting (libuv's
    /// `uv_udp_try_send`).
    ///
    /// - Returns: The number of bytes sent (the whole datagram).
    /// - Throws: ``UVError/wouldBlock`` while queued sends are pending or the socket buffer is
    ///   full; the kernel's error (``UVError/permissionDenied`` for a broadcast without broadcast
    ///   enabled, for example); the same synchronous checks as ``send(_:to:onSend:)-([[UInt8]],_,_)``.
    @discardableResult
    public func trySend(_ bytes: [UInt8], to address: SocketAddress? = nil) throws -> Int {
        try trySend(bytes, to: address, options: SendOptions())
    }

    /// Sends one datagram now, with per-send options (source address, ECN), if the kernel will
    /// take it without waiting; see ``trySend(_:to:)-([UInt8],_)`` and
    /// ``send(_:to:options:onSend:)``.
    ///
    /// - Returns: The number of bytes sent.
    /// - Throws: As ``trySend(_:to:)-([UInt8],_)``, and the option checks of
    ///   ``send(_:to:options:onSend:)``. A GSO send on a handle where the kernel refused GSO
    ///   throws ``UVError/wouldBlock``: only ``send(_:to:options:onSend:)`` cuts it.
    @discardableResult
    public func trySend(_ bytes: [UInt8], to address: SocketAddress? = nil, options: SendOptions) throws -> Int {
        try checkOpen("trySend")
        let options = options.isEmpty ? nil : options
        try prepareSend(to: address, size: bytes.count, options: options)
        guard sendQueue.isEmpty else { throw UVError.wouldBlock.with(context: "trySend: sends are queued") }
        let attempt = bytes.withUnsafeBytes { sendNow($0, to: address, options: options, evenDuringBatch: true) }
        switch attempt {
        case .sent?: return bytes.count
        case .failed(let error)?: throw error.with(context: "trySend")
        case .wouldBlock?, nil: throw UVError.wouldBlock.with(context: "trySend: the socket's buffer is full")
        }
    }

    /// Sends one datagram made of `buffers` now if possible; see ``trySend(_:to:)-([UInt8],_)``.
    @discardableResult
    public func trySend(_ buffers: [[UInt8]], to address: SocketAddress? = nil) throws -> Int {
        try checkOpen("trySend")
        guard !buffers.isEmpty else {
            throw UVError.invalidArgument.with(context: "trySend needs at least one buffer (an empty buffer is fine)")
        }
        return try trySend(buffers.count == 1 ? buffers[0] : Array(buffers.joined()), to: address)
    }

    /// Sends many datagrams, each to its own destination (``Datagram/remote``), in as few
    /// `sendmmsg` calls as the kernel allows.
    ///
    /// Each datagram succeeds or fails alone, and they go out in order. On a connected handle
    /// each datagram's `remote` must be the peer (it is sent without an address).
    ///
    /// - Parameters:
    ///   - datagrams: The datagrams; `isTruncated` is ignored.
    ///   - onSend: Called once, on the loop thread and never from inside this call, when every
    ///     datagram has been taken by the kernel or has failed, with the failures (each
    ///     datagram's index in `datagrams` and its error), in order; empty when all were sent.
    /// - Throws: ``ClosedHandleError`` only; every other problem belongs to one datagram.
    public func send(contentsOf datagrams: [Datagram], onSend: ((UDPHandle, [(index: Int, error: UVError)]) -> Void)? = nil) throws {
        try checkOpen("send(contentsOf:)")
        let batch = BatchSend(count: datagrams.count) { [self] failures in
            guard let onSend else { return }
            callAtEndOfTurn { [self] in onSend(self, failures) }
        }
        sendBatch(datagrams, batch: batch)
    }

    /// Loop thread: sends `datagrams` with `sendmmsg` where possible, queueing what must wait;
    /// each datagram's outcome goes to `batch`.
    package func sendBatch(_ datagrams: [Datagram], batch: BatchSend) {
        var ready: [Int] = []
        ready.reserveCapacity(datagrams.count)
        for (index, datagram) in datagrams.enumerated() {
            do {
                try prepareSend(to: batchDestination(datagram), size: datagram.payload.count)
                ready.append(index)
            } catch let error as UVError {
                batch.complete(index, error)
            } catch {
                batch.complete(index, .canceled)
            }
        }
        var position = 0
        while position < ready.count, canSendNow, let sendPath {
            // Hand up to one scratch-full to the kernel straight from the callers' arrays.
            let chunk = Array(ready[position..<min(ready.count, position + IOScratch.messages)])
            let completed = withPayloads(datagrams, chunk) { payloads in
                for (slot, index) in chunk.enumerated() {
                    fill(slot, payload: payloads[slot], to: batchDestination(datagrams[index]))
                }
                return sendPath.sendBatch(scratch.headers, count: chunk.count,
                                          report: { slot, attempt in
                                              if case .failed(let error) = attempt { batch.complete(chunk[slot], error) } else { batch.complete(chunk[slot], nil) }
                                          },
                                          transient: { reportTransient($0) })
            }
            position += completed
            if completed < chunk.count { break }
        }
        let socketIsFull = position < ready.count && canSendNow
        for index in ready[position...] {
            let datagram = datagrams[index]
            datagram.payload.withUnsafeBytes { raw in
                enqueue(QueuedSend(copying: raw, to: batchDestination(datagram), completion: .batch(batch, index: index)),
                        socketIsFull: socketIsFull)
            }
        }
    }

    private func batchDestination(_ datagram: Datagram) -> SocketAddress? {
        sendTarget.destination(for: datagram)
    }

    // MARK: The send core (loop thread)

    /// The checks of every send, then a socket to send from (an unbound handle is bound to the
    /// wildcard address of the destination's family, as libuv does).
    package func prepareSend(to address: SocketAddress?, size: Int, options: SendOptions? = nil) throws {
        try checkOpen("send")
        do {
            try sendTarget.validate(to: address, size: size, options: options)
        } catch {
            counters.sendErrors.add(1, ordering: .relaxed)
            throw error
        }
        if sendPath == nil || !isBound {
            try bindIfNeeded(address?.family)
        }
    }

    /// Whether a datagram may go to the kernel now: nothing is queued ahead of it, and no read
    /// batch is being delivered (sends made during one are flushed together after it).
    package var canSendNow: Bool { sendQueue.isEmpty && !deliveringBatch && !scratch.readInProgress && state == .open }

    /// Sends one prepared datagram now, from the caller's bytes. Returns `nil` without trying
    /// when it must queue (see ``canSendNow``). Counts the outcome and publishes an earlier
    /// datagram's error.
    ///
    /// - Parameter evenDuringBatch: Send now even while a read batch is delivered (`trySend`:
    ///   "now or not at all"), as long as nothing is queued.
    package func sendNow(_ bytes: UnsafeRawBufferPointer, to address: SocketAddress?, options: SendOptions? = nil,
                         evenDuringBatch: Bool = false) -> SendAttempt? {
        guard sendQueue.isEmpty, state == .open, evenDuringBatch || !deliveringBatch, let sendPath, !mustCutGSO(options) else { return nil }
        let (attempt, earlier) = sendPath.sendOne(bytes, to: address, options: options,
                                                  target: options == nil ? nil : sendTarget)
        if let earlier { reportTransient(earlier) }
        return attempt
    }

    /// Adds a datagram to the send queue; it goes out after those ahead of it.
    ///
    /// - Parameter socketIsFull: The caller just met `EAGAIN`: wait until the socket is
    ///   writable rather than trying again at once.
    package func enqueue(_ send: QueuedSend, socketIsFull: Bool = false) {
        let wasEmpty = sendQueue.isEmpty
        sendQueue.append(send)
        sendQueueBytes += send.payload.count
        guard wasEmpty else { return }
        sendPath?.setLoopOwns(true)
        if deliveringBatch {
            flushScheduled = true  // flushed together after the batch
        } else if scratch.readInProgress {
            // Another handle's read batch is delivered from the loop's buffers (this send comes
            // from one of its callbacks): flush at the end of the turn, not over them.
            flushScheduled = true
            scheduleEndOfTurn()
        } else if socketIsFull {
            updatePollEvents()
        } else {
            flushQueue()
        }
    }

    /// Hands queued datagrams to the kernel, `sendmmsg` by `sendmmsg`, until the queue is empty
    /// or the socket's buffer is full (then it waits for the socket to be writable).
    func flushQueue() {
        if scratch.readInProgress {
            flushScheduled = true
            scheduleEndOfTurn()
            return
        }
        flushScheduled = false
        guard state == .open, let sendPath else { return }
        while !sendQueue.isEmpty {
            cutRefusedGSOSends()
            let count = min(sendQueue.count, IOScratch.messages)
            for slot in 0..<count {
                let queued = sendQueue[slot]
                fill(slot, payload: UnsafeRawBufferPointer(queued.payload), to: queued.destination, options: queued.options)
            }
            var finished = 0
            let completed = sendPath.sendBatch(scratch.headers, count: count,
                                               report: { _, attempt in
                                                   finished += 1
                                                   let queued = sendQueue.removeFirst()
                                                   if case .failed(let error) = attempt { complete(queued, error) } else { complete(queued, nil) }
                                               },
                                               transient: { reportTransient($0) })
            assert(completed == finished)
            if completed < count { break }
        }
        if sendQueue.isEmpty { sendPath.setLoopOwns(false) }
        updatePollEvents()
    }

    /// Points scratch message `slot` at `payload`, addressed to `address`.
    @inline(__always)
    private func fill(_ slot: Int, payload: UnsafeRawBufferPointer, to address: SocketAddress?, options: SendOptions? = nil) {
        let iov = scratch.iovecs + slot
        iov.pointee = iovec(iov_base: UnsafeMutableRawPointer(mutating: payload.baseAddress), iov_len: payload.count)
        var header = msghdr()
        header.msg_iov = iov
        header.msg_iovlen = 1
        if let address {
            header.msg_name = scratch.name(slot)
            header.msg_namelen = address.write(to: scratch.name(slot))
        }
        if let options {
            let length = options.writeControl(to: scratch.controlBuffer(slot), destination: address ?? peer,
                                              family: sendTarget.destinationFamily(address))
            if length > 0 {
                header.msg_control = scratch.controlBuffer(slot)
                header.msg_controllen = length
            }
        }
        scratch.headers[slot] = cuv_mmsghdr(msg_hdr: header, msg_len: 0)
    }

    /// Completes a queued datagram (its payload is freed).
    func complete(_ queued: QueuedSend, _ error: UVError?) {
        sendQueueBytes -= queued.payload.count
        queued.free()
        finish(queued.completion, error)
    }

    /// Reports a datagram's outcome to whoever waits for it.
    func finish(_ completion: SendCompletion, _ error: UVError?) {
        switch completion {
        case .none:
            break
        case .callback(let onSend):
            callAtEndOfTurn { [self] in onSend(self, error) }
        case .resume(let continuation):
            continuation.resume(returning: error)
        case .batch(let batch, let index):
            batch.complete(index, error)
        }
    }

    /// Fails every queued datagram with ``UVError/canceled`` (the handle closed).
    func cancelQueuedSends() {
        while let queued = sendQueue.popFirst() {
            complete(queued, .canceled)
        }
        sendPath?.setLoopOwns(false)
    }
}

extension UDPHandle: EndOfTurnWork {
    /// Runs `callback` at the end of this loop turn (send callbacks never run inside `send`).
    func callAtEndOfTurn(_ callback: @escaping () -> Void) {
        finishedCallbacks.append(callback)
        scheduleEndOfTurn()
    }

    /// Asks for ``endOfTurn()`` once this turn.
    func scheduleEndOfTurn() {
        if !endOfTurnScheduled {
            endOfTurnScheduled = true
            loop.runAtEndOfTurn(self)
        }
    }

    /// End of turn: the callbacks of sends that completed during it.
    package func endOfTurn() {
        endOfTurnScheduled = false
        if flushScheduled, !deliveringBatch, !scratch.readInProgress, state == .open {
            flushQueue()  // queued during another handle's read batch
        }
        guard !finishedCallbacks.isEmpty else { return }
        let callbacks = finishedCallbacks
        finishedCallbacks.removeAll()
        callbackDepth += 1
        defer { callbackDepth -= 1 }
        for callback in callbacks { callback() }
    }
}
