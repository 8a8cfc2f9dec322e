import UVCore

// Sending: one datagram from any bytes, several buffers, a batch.
extension UDPSocket {
    /// Sends one datagram to `address`.
    ///
    /// Returns once the kernel has taken the datagram; throws that datagram's own error. When
    /// nothing is queued the datagram goes out at once from the caller's thread (no copy, no
    /// request allocated); otherwise it is copied into the socket's queue, which keeps datagrams
    /// in order. A failed send never fails the sends around it.
    ///
    /// On a connected socket, an ICMP error left by an *earlier* datagram (such as
    /// `ECONNREFUSED`) can surface on this send: it is published on ``transientErrors``, counted
    /// once, and this datagram is sent again, so the error never fails the wrong send.
    ///
    /// Cancellation: if the task is cancelled before the datagram is queued, nothing is sent and
    /// this throws `CancellationError`. Once queued, a datagram cannot be taken back: the call
    /// waits for the kernel's answer whatever happens to the task.
    ///
    /// - Parameters:
    ///   - bytes: The payload; empty is a zero-length datagram. At most 65,507 bytes over IPv4
    ///     and 65,527 over IPv6.
    ///   - address: The destination.
    /// - Throws: `UVError.messageTooLong`, `UVError.permissionDenied` (broadcast without
    ///   ``setBroadcast(_:)``), `UVError.addressFamilyNotSupported`, `UVError.invalidArgument`
    ///   (port 0), `UVError.alreadyConnected` (a connected socket takes no address),
    ///   `ClosedHandleError` (closed before or while queued), `CancellationError`.
    nonisolated(nonsending) public func send(_ bytes: [UInt8], to address: SocketAddress) async throws {
        try await sendDatagram(bytes, to: address)
    }

    /// Sends one datagram from any contiguous bytes: `ArraySlice<UInt8>`, Foundation's `Data`,
    /// `String.UTF8View`, ... (no copy when the bytes are contiguous); see
    /// ``send(_:to:)-([UInt8],SocketAddress)``.
    nonisolated(nonsending) public func send<Bytes: Collection<UInt8>>(_ bytes: Bytes, to address: SocketAddress) async throws {
        try await sendDatagram(bytes, to: address)
    }

    /// Sends one datagram made of several buffers, concatenated; see
    /// ``send(_:to:)-([UInt8],SocketAddress)``.
    ///
    /// - Throws: As ``send(_:to:)-([UInt8],SocketAddress)``, and `UVError.invalidArgument` for an
    ///   empty list (an empty *buffer* is fine).
    nonisolated(nonsending) public func send<Buffers: Collection>(_ buffers: Buffers, to address: SocketAddress) async throws
    where Buffers.Element: Collection<UInt8> {
        try await sendDatagram(try Self.joined(buffers), to: address)
    }

    /// Sends one datagram to the peer of a connected socket; see
    /// ``send(_:to:)-([UInt8],SocketAddress)``.
    ///
    /// - Throws: `UVError.destinationAddressRequired` on an unconnected socket, and as
    ///   ``send(_:to:)-([UInt8],SocketAddress)``.
    nonisolated(nonsending) public func send(_ bytes: [UInt8]) async throws {
        try await sendDatagram(bytes, to: nil)
    }

    /// Sends one datagram from any contiguous bytes to the peer of a connected socket.
    nonisolated(nonsending) public func send<Bytes: Collection<UInt8>>(_ bytes: Bytes) async throws {
        try await sendDatagram(bytes, to: nil)
    }

    /// Sends one datagram made of several buffers to the peer of a connected socket.
    nonisolated(nonsending) public func send<Buffers: Collection>(_ buffers: Buffers) async throws
    where Buffers.Element: Collection<UInt8> {
        try await sendDatagram(try Self.joined(buffers), to: nil)
    }

    /// Sends one datagram to `address` with per-send options: a source address (for a socket
    /// bound to `0.0.0.0` or `[::]`) and an ECN codepoint; otherwise as
    /// ``send(_:to:)-([UInt8],SocketAddress)``. Takes any contiguous bytes.
    ///
    /// ```swift
    /// // Reply from the address the client sent to
    /// // (with Configuration(receiveMetadata: .packetInfo)):
    /// try await udp.send(reply, to: query.remote,
    ///                    options: SendOptions(source: query.metadata?.destination))
    /// ```
    ///
    /// - Parameters:
    ///   - bytes: The payload.
    ///   - address: The destination.
    ///   - options: The source address and the ECN codepoint.
    /// - Throws: As ``send(_:to:)-([UInt8],SocketAddress)``, and `UVError.addressFamilyNotSupported`
    ///   for a source of another family than the destination, `UVError.invalidArgument` for a
    ///   multicast source or (from the kernel) a source that is not an address of this host.
    nonisolated(nonsending) public func send<Bytes: Collection<UInt8>>(_ bytes: Bytes, to address: SocketAddress,
                                                                      options: SendOptions) async throws {
        try await sendDatagram(bytes, to: address, options: options.isEmpty ? nil : options)
    }

    /// Sends one datagram to the peer of a connected socket with per-send options; see
    /// ``send(_:to:options:)``.
    nonisolated(nonsending) public func send<Bytes: Collection<UInt8>>(_ bytes: Bytes, options: SendOptions) async throws {
        try await sendDatagram(bytes, to: nil, options: options.isEmpty ? nil : options)
    }

    /// One buffer from several; an empty list is refused.
    private static func joined<Buffers: Collection>(_ buffers: Buffers) throws -> [UInt8] where Buffers.Element: Collection<UInt8> {
        guard let first = buffers.first else {
            throw UVError.invalidArgument.with(context: "send needs at least one buffer (an empty buffer is fine)")
        }
        if buffers.count == 1 { return Array(first) }
        var joined: [UInt8] = []
        for buffer in buffers { joined.append(contentsOf: buffer) }
        return joined
    }

    // MARK: One send path

    /// What the fast path came to.
    private enum Fast {
        /// The kernel took it.
        case sent
        /// On the loop: it must wait in the queue (behind others, or for room in the kernel).
        case queue(socketIsFull: Bool)
        /// Off the loop: the loop holds datagrams, or the socket is closing; go through it.
        case hop
    }

    nonisolated(nonsending) private func sendDatagram<Bytes: Collection<UInt8>>(_ bytes: Bytes, to address: SocketAddress?,
                                                                               options: SendOptions? = nil) async throws {
        try Task.checkCancellation()
        let fast: Fast
        if let outcome = try bytes.withContiguousStorageIfAvailable({
            try sendFast(UnsafeRawBufferPointer($0), to: address, options: options)
        }) {
            fast = outcome
        } else {
            fast = try Array(bytes).withUnsafeBytes { try sendFast($0, to: address, options: options) }
        }
        switch fast {
        case .sent:
            if shouldYield() { await Task.yield() }
        case .queue(let socketIsFull):
            // Still on the loop thread: nothing ran since the attempt.
            try await queueOnLoop(Array(bytes), to: address, options: options, socketIsFull: socketIsFull)
        case .hop:
            try await sendThroughLoop(Array(bytes), to: address, options: options)
        }
    }

    /// Sends now if that needs no waiting: on the loop through the handle, elsewhere straight
    /// from this thread when the loop holds nothing. Throws the datagram's own error.
    private nonisolated func sendFast(_ bytes: UnsafeRawBufferPointer, to address: SocketAddress?,
                                      options: SendOptions?) throws -> Fast {
        if loop.inLoop {
            let handle = handleBox.value
            try handle.prepareSend(to: address, size: bytes.count, options: options)
            switch handle.sendNow(bytes, to: address, options: options) {
            case .sent?: return .sent
            case .failed(let error)?: throw error
            case .wouldBlock?: return .queue(socketIsFull: true)
            case nil: return .queue(socketIsFull: false)
            }
        }
        do {
            try target.validate(to: address, size: bytes.count, options: options)
        } catch {
            sendPath.noteFailed()
            throw error
        }
        guard let (attempt, earlier) = sendPath.sendDirect(bytes, to: address, options: options,
                                                           target: options == nil ? nil : target) else { return .hop }
        if let earlier { transient.publish(earlier) }
        switch attempt {
        case .sent: return .sent
        case .failed(let error): throw error
        case .wouldBlock: return .hop
        }
    }

    /// On the loop: waits in the queue for the kernel's answer. `nonisolated(nonsending)`, so it
    /// stays on the caller's executor (the loop): a plain `nonisolated async` function would run
    /// on the global executor and touch the handle off its thread.
    nonisolated(nonsending) private func queueOnLoop(_ bytes: [UInt8], to address: SocketAddress?, options: SendOptions?,
                                         socketIsFull: Bool) async throws {
        let handle = handleBox.value
        let outcome: UVError? = await withUnsafeContinuation { continuation in
            bytes.withUnsafeBytes { raw in
                handle.enqueue(QueuedSend(copying: raw, to: address, options: options, completion: .resume(continuation)),
                               socketIsFull: socketIsFull)
            }
        }
        try Self.check(outcome)
    }

    /// Off the loop, when the direct path cannot send: on the loop, send or queue.
    private func sendThroughLoop(_ bytes: [UInt8], to address: SocketAddress?, options: SendOptions?) async throws {
        try Task.checkCancellation()
        let fast = try bytes.withUnsafeBytes { try sendFast($0, to: address, options: options) }
        if case .queue(let socketIsFull) = fast {
            try await queueOnLoop(bytes, to: address, options: options, socketIsFull: socketIsFull)
        }
    }

    /// A queued datagram's outcome: `ECANCELED` means the socket closed before it went out.
    private static func check(_ outcome: UVError?) throws {
        guard let error = outcome else { return }
        if error == .canceled { throw ClosedHandleError(operation: "send") }
        throw error
    }

    // MARK: Batches

    /// Sends many datagrams, each to its own destination (`Datagram.remote`), in as few
    /// `sendmmsg` system calls as the kernel allows; returns when every one has been taken by the
    /// kernel or has failed.
    ///
    /// They go out in order, and each succeeds or fails alone: a datagram that fails (too large,
    /// refused by the kernel) does not stop the others. On a connected socket each datagram's
    /// `remote` must be the peer. Cancellation: checked once, before anything is sent.
    ///
    /// - Parameter datagrams: The datagrams; `isTruncated` is ignored.
    /// - Throws: ``BatchSendError`` listing the datagrams that failed, with their index and
    ///   error, when any did (the others were sent); `ClosedHandleError` when the socket is
    ///   closed before they are queued; `CancellationError`.
    nonisolated(nonsending) public func send<Datagrams: Collection<Datagram>>(contentsOf datagrams: Datagrams) async throws {
        try Task.checkCancellation()
        let list = Array(datagrams)
        guard !list.isEmpty else { return }
        var failures: [BatchSendError.Failure] = []
        var pending = Array(list.indices)
        if !loop.inLoop {
            // Validate, then send straight from this thread while the loop holds nothing.
            var valid: [Int] = []
            valid.reserveCapacity(list.count)
            for index in pending {
                do {
                    try target.validate(to: target.destination(for: list[index]), size: list[index].payload.count)
                    valid.append(index)
                } catch {
                    sendPath.noteFailed()
                    failures.append(.init(index: index, error: error))
                }
            }
            let completed = sendPath.sendDirect(list, valid[...], destination: { [target] in target.destination(for: $0) },
                                                report: { index, attempt in
                                                    if case .failed(let error) = attempt { failures.append(.init(index: index, error: error)) }
                                                },
                                                transient: { [transient] in transient.publish($0) })
            pending = Array(valid[completed...])
        }
        if !pending.isEmpty {
            failures += try await sendBatchOnLoop(list, indices: pending)
        }
        if !failures.isEmpty {
            throw BatchSendError(failures: failures.sorted { $0.index < $1.index }, count: list.count)
        }
    }

    /// On the loop: sends `datagrams[indices]` through the handle (sendmmsg now, the queue for
    /// what must wait) and returns the failures.
    private func sendBatchOnLoop(_ datagrams: [Datagram], indices: [Int]) async throws -> [BatchSendError.Failure] {
        if handle.isClosed { throw ClosedHandleError(operation: "send(contentsOf:)") }
        let subset = indices.map { datagrams[$0] }
        let failures: [(index: Int, error: UVError)] = await withUnsafeContinuation { continuation in
            let batch = BatchSend(count: subset.count) { failures in continuation.resume(returning: failures) }
            handle.sendBatch(subset, batch: batch)
        }
        if failures.contains(where: { $0.error == .canceled }) {
            throw ClosedHandleError(operation: "send(contentsOf:)")
        }
        return failures.map { .init(index: indices[$0.index], error: $0.error) }
    }
}

/// Some datagrams of a ``UDPSocket/send(contentsOf:)`` failed; the others were sent.
public struct BatchSendError: Error, Sendable, CustomStringConvertible {
    /// One failed datagram.
    public struct Failure: Sendable, Hashable {
        /// Its position in the batch.
        public let index: Int
        /// Its own error.
        public let error: UVError
    }

    /// The failed datagrams, in batch order.
    public let failures: [Failure]
    /// How many datagrams the batch had.
    public let count: Int

    public var description: String {
        let list = failures.prefix(5).map { "#\($0.index): \($0.error)" }.joined(separator: "; ")
        return "\(failures.count) of \(count) datagrams failed (\(list)\(failures.count > 5 ? "; ..." : ""))"
    }
}
