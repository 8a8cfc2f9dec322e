internal import DequeModule
internal import Glibc
import Synchronization
import UVCore

/// Carries datagrams from a socket's receive callback (loop thread) to the one task iterating
/// `datagrams`, with bounded memory and one lock and at most one wakeup per burst.
///
/// - Loop side: each datagram is appended to `arrivals` (loop-confined, no lock). At the end of
///   the loop turn, `endOfTurn()` moves the whole burst into `shared.buffer` under the lock,
///   applying the overflow policy, and resumes the consumer if it waits.
/// - Consumer side: `next()` serves from `batch` (consumer-confined) and refills it with up to
///   `batchLimit` datagrams per lock.
///
/// Memory: at most `limit` datagrams wait in `shared.buffer`, the consumer holds at most
/// `batchLimit` more, and `arrivals` holds at most one turn's reads (libuv reads at most 32
/// datagrams per socket per turn).
final class ReceiveQueue: EndOfTurnWork, @unchecked Sendable {
    // Safe to share: `shared` is only touched under `lock`; the members marked "loop thread" are
    // only touched on the loop thread (the handle's callbacks, end-of-turn work and loop jobs);
    // the members marked "consumer" are only touched inside `next()`, which `consuming`
    // (an atomic flag) keeps to one task at a time, with acquire/release ordering between tasks.

    static let batchLimit = 128

    enum End {
        case closed
        case cancelled
        case failed(any Error)
    }

    struct Shared {
        var buffer = Deque<Datagram>()
        var waiter: UnsafeContinuation<Void, Never>?
        var end: End?
        var endReported = false
        var delivered = 0
        var peakQueued = 0
        var resumeRequested = false
    }

    let loop: UVLoop
    let limit: Int
    let policy: UDPSocket.OverflowPolicy
    private let lock = PThreadLock()
    private var shared = Shared()

    // Loop thread.
    private var arrivals: [Datagram] = []
    private var scheduled = false
    private(set) var paused = false
    weak var handle: UDPHandle?
    var received = 0
    var bytesReceived = 0
    var truncated = 0
    var droppedByPolicy = 0
    var transientErrors = 0
    var readingPauses = 0
    /// The kernel's drop count, read just before the socket closed.
    var finalKernelDrops: Int?
    let transientContinuation: AsyncStream<UVError>.Continuation

    // Consumer.
    private let consuming = Atomic<Bool>(false)
    private var batch: [Datagram] = []
    private var batchIndex = 0

    init(loop: UVLoop, configuration: UDPSocket.Configuration, transientErrors: AsyncStream<UVError>.Continuation) {
        self.loop = loop
        self.limit = configuration.receiveQueueLimit
        self.policy = configuration.overflowPolicy
        self.transientContinuation = transientErrors
        arrivals.reserveCapacity(32)
    }

    // MARK: Loop side

    /// The handle's receive callback.
    func receive(_ result: Result<Datagram, UVError>) {
        switch result {
        case .success(let datagram):
            received += 1
            bytesReceived += datagram.payload.count
            if datagram.isTruncated { truncated += 1 }
            arrivals.append(datagram)
            if !scheduled {
                scheduled = true
                loop.runAtEndOfTurn(self)
            }
        case .failure(let error) where error.isTransient:
            transientErrors += 1
            transientContinuation.yield(error)
        case .failure(let error):
            // Fatal: stop reading; the consumer gets what is buffered, then the error.
            handle?.stopReceiving()
            finish(.failed(error))
        }
    }

    func endOfTurn() {
        scheduled = false
        guard !arrivals.isEmpty else { return }
        var shouldPause = false
        let waiter: UnsafeContinuation<Void, Never>? = lock.withLock {
            guard shared.end == nil else {
                droppedByPolicy += arrivals.count
                return nil
            }
            for datagram in arrivals {
                if shared.buffer.count < limit {
                    shared.buffer.append(datagram)
                } else if case .dropOldest = policy {
                    shared.buffer.removeFirst()
                    shared.buffer.append(datagram)
                    droppedByPolicy += 1
                } else {
                    droppedByPolicy += 1
                }
            }
            if shared.buffer.count > shared.peakQueued { shared.peakQueued = shared.buffer.count }
            if case .pauseReading(let high, _) = policy, shared.buffer.count >= high {
                shouldPause = true
                shared.resumeRequested = false
            }
            defer { shared.waiter = nil }
            return shared.waiter
        }
        arrivals.removeAll(keepingCapacity: true)
        if shouldPause && !paused, let handle, handle.isReceiving {
            paused = true
            readingPauses += 1
            handle.stopReceiving()
        }
        waiter?.resume()
    }

    /// Loop thread: the consumer drained below the low watermark.
    private func resumeReading() {
        let wanted: Bool = lock.withLock {
            defer { shared.resumeRequested = false }
            return shared.resumeRequested && shared.end == nil
        }
        guard wanted, paused else { return }
        paused = false
        guard let handle, !handle.isClosed else { return }
        do {
            try handle.startReceiving()
        } catch {
            finish(.failed(error))
        }
    }

    /// Ends the stream: buffered datagrams are still delivered, then `end`. The first end wins.
    func finish(_ end: End) {
        let waiter: UnsafeContinuation<Void, Never>? = lock.withLock {
            if shared.end == nil { shared.end = end }
            defer { shared.waiter = nil }
            return shared.waiter
        }
        waiter?.resume()
        if case .cancelled = end {} else { transientContinuation.finish() }
    }

    /// Counters that need the lock (loop thread). Datagrams read this turn are first put
    /// through the overflow policy, so received = delivered + dropped + queued holds exactly and
    /// queued never exceeds the limit.
    func sharedCounters() -> (delivered: Int, queued: Int, peak: Int) {
        endOfTurn()
        return lock.withLock { (shared.delivered, shared.buffer.count, shared.peakQueued) }
    }

    // MARK: Consumer side

    /// The next datagram for the one consumer; `nil` once the stream has ended.
    func next() async throws -> Datagram? {
        guard consuming.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            throw UDPSocketError.concurrentIteration
        }
        defer { consuming.store(false, ordering: .releasing) }
        if batchIndex < batch.count {
            defer { batchIndex += 1 }
            return batch[batchIndex]
        }
        return try await refill()
    }

    private enum Refill {
        case ready
        case wait
        case end(End)
        case over
    }

    private func refill() async throws -> Datagram? {
        if Task.isCancelled { cancel() }
        while true {
            var requestResume = false
            let outcome: Refill = lock.withLock {
                if !shared.buffer.isEmpty {
                    let count = min(shared.buffer.count, Self.batchLimit)
                    batch.removeAll(keepingCapacity: true)
                    if count == shared.buffer.count {
                        batch.append(contentsOf: shared.buffer)
                        shared.buffer.removeAll(keepingCapacity: true)
                    } else {
                        batch.append(contentsOf: shared.buffer.prefix(count))
                        shared.buffer.removeFirst(count)
                    }
                    shared.delivered += count
                    if case .pauseReading(_, let low) = policy, shared.buffer.count <= low,
                       !shared.resumeRequested, shared.end == nil {
                        shared.resumeRequested = true
                        requestResume = true
                    }
                    return .ready
                }
                if let end = shared.end {
                    if shared.endReported { return .over }
                    shared.endReported = true
                    return .end(end)
                }
                return .wait
            }
            if requestResume {
                loop.execute { [self] in resumeReading() }
            }
            switch outcome {
            case .ready:
                batchIndex = 1
                return batch[0]
            case .over, .end(.closed), .end(.cancelled):
                batch.removeAll()
                batchIndex = 0
                return nil
            case .end(.failed(let error)):
                batch.removeAll()
                batchIndex = 0
                throw error
            case .wait:
                await withTaskCancellationHandler {
                    await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                        let ready: Bool = lock.withLock {
                            if !shared.buffer.isEmpty || shared.end != nil { return true }
                            shared.waiter = continuation
                            return false
                        }
                        if ready { continuation.resume() }
                    }
                } onCancel: {
                    cancel()
                }
            }
        }
    }

    /// The consuming task was cancelled: end iteration and stop receiving.
    private func cancel() {
        finish(.cancelled)
        loop.execute { [self] in
            paused = false
            handle?.stopReceiving()
        }
    }
}

