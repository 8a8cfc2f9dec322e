import Synchronization
import UVCore

// Receiving: receive(), receive(timeout:), receive(upTo:) and the datagrams stream.
extension UDPSocket {
    /// The datagrams the socket receives, as an `AsyncThrowingStream`.
    ///
    /// ```swift
    /// for try await datagram in udp.datagrams {
    ///     try await udp.send(datagram.payload, to: datagram.remote)
    /// }
    /// ```
    ///
    /// Each access gives a new stream over the socket's one queue, so the socket outlives its
    /// consumers: several tasks may iterate at once (each datagram goes to exactly one of them),
    /// and a loop that ends (`break`, or its task cancelled) ends only itself: the socket keeps
    /// receiving, and a later loop, or ``receive()``, continues with the next datagram.
    ///
    /// Iteration ends normally after ``close()`` (datagrams already queued are delivered first),
    /// ends (returns `nil`) when its task is cancelled, and throws on a fatal receive error.
    /// Transient errors (see ``transientErrors``) never end it.
    ///
    /// A lone consumer takes up to 128 queued datagrams at a time, so a burst costs it one lock
    /// and one wakeup; what it took but did not hand out when its loop ends goes back to the head
    /// of the queue, in order.
    public nonisolated var datagrams: AsyncThrowingStream<Datagram, any Error> {
        let iterator = DatagramIterator(queue: queue)
        return AsyncThrowingStream(unfolding: { try await iterator.next() })
    }

    /// Waits for the next datagram.
    ///
    /// Cancel-safe: if the task is cancelled while it waits, this throws `CancellationError` and
    /// takes nothing; the next receive gets the next datagram.
    ///
    /// - Returns: The next datagram.
    /// - Throws: `ClosedHandleError` once the socket is closed and its queue is empty; the fatal
    ///   error that ended receiving, if one did; `CancellationError`.
    nonisolated(nonsending) public func receive() async throws -> Datagram {
        guard let datagram = try await queue.take(upTo: 1)?.first else {
            throw ClosedHandleError(operation: "receive")
        }
        queue.noteDelivered()
        return datagram
    }

    /// Waits for the next datagram until `timeout` has passed.
    ///
    /// Cancel-safe, as ``receive()``: when the deadline passes first, this returns `nil` and
    /// takes nothing; a datagram that arrives just after is there for the next receive. Nothing
    /// is left running when it returns. A timeout of zero or less answers at once: a queued
    /// datagram, or `nil`.
    ///
    /// - Parameter timeout: How long to wait (measured with `ContinuousClock`).
    /// - Returns: The next datagram, or `nil` if none came in time.
    /// - Throws: As ``receive()``.
    nonisolated(nonsending) public func receive(timeout: Duration) async throws -> Datagram? {
        // Already queued: no timer at all.
        if let ready = queue.takeNow(upTo: 1)?.first {
            queue.noteDelivered()
            return ready
        }
        if timeout <= .zero {
            // Nothing queued and no time to wait: answer at once, with no task or timer. A
            // closed or failed socket throws as receive() does.
            if queue.hasEnded { return try await receive() }
            try Task.checkCancellation()
            return nil
        }
        return try await withThrowingTaskGroup(of: Datagram?.self) { group in
            group.addTask { try await self.receive() }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            // The first to finish decides; the other is cancelled and awaited, and a datagram the
            // receive took just before its cancellation is returned, never dropped.
            var result: Datagram?
            var failure: (any Error)?
            do {
                result = try await group.next() ?? nil
            } catch {
                failure = error
            }
            group.cancelAll()
            while true {
                do {
                    guard let other = try await group.next() else { break }
                    if let other { result = other }
                } catch is CancellationError {
                    continue
                } catch {
                    if failure == nil { failure = error }
                }
            }
            if let result { return result }
            if let failure { throw failure }
            try Task.checkCancellation()
            return nil
        }
    }

    /// Waits for datagrams and takes up to `maxCount` of those queued, in one call: the batch
    /// path for consumers that handle datagrams in bursts (one lock and one wakeup per call).
    ///
    /// Cancel-safe, as ``receive()``.
    ///
    /// - Parameter maxCount: The most datagrams to return; at least 1.
    /// - Returns: Between 1 and `maxCount` datagrams, in arrival order.
    /// - Throws: `UVError.invalidArgument` if `maxCount` is less than 1; as ``receive()``.
    nonisolated(nonsending) public func receive(upTo maxCount: Int) async throws -> [Datagram] {
        guard maxCount >= 1 else {
            throw UVError.invalidArgument.with(context: "receive(upTo:) needs a count of at least 1, not \(maxCount)")
        }
        guard let datagrams = try await queue.take(upTo: maxCount) else {
            throw ClosedHandleError(operation: "receive")
        }
        queue.noteDelivered(datagrams.count)
        return datagrams
    }
}

/// The state of one `datagrams` stream: a private batch served without locks.
final class DatagramIterator: @unchecked Sendable {
    // Safe to share: `batch` and `index` are only touched by the task that holds `busy` (an
    // atomic flag, acquire/release), and by `deinit`, which runs when no task can hold it.
    private let queue: ReceiveQueue
    private var batch: [Datagram] = []
    private var index = 0
    private let busy = Atomic<Bool>(false)

    init(queue: ReceiveQueue) { self.queue = queue }

    deinit {
        // The iteration ended (cancelled, `break`, or the stream was dropped) with datagrams it
        // took but did not hand out: they go back to the head of the queue, in order.
        if index < batch.count { queue.giveBack(batch[index...]) }
    }

    func next() async throws -> Datagram? {
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            // One stream iterated from two tasks at once: serve this one from the queue.
            return try await takeOne()
        }
        defer { busy.store(false, ordering: .releasing) }
        if index < batch.count {
            let datagram = batch[index]
            index += 1
            queue.noteDelivered()
            return datagram
        }
        batch.removeAll(keepingCapacity: true)
        index = 0
        do {
            guard let taken = try await queue.take(upTo: ReceiveQueue.batchLimit, sharing: true) else { return nil }
            batch = taken
            index = 1
            queue.noteDelivered()
            return taken[0]
        } catch is CancellationError {
            return nil
        }
    }

    private func takeOne() async throws -> Datagram? {
        do {
            guard let datagram = try await queue.take(upTo: 1)?.first else { return nil }
            queue.noteDelivered()
            return datagram
        } catch is CancellationError {
            return nil
        }
    }
}
