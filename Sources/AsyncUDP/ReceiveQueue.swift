internal import DequeModule
import Synchronization
import UVCore

/// Carries datagrams from a socket's reads (loop thread) to any number of consumers: tasks
/// calling `receive()`, `receive(timeout:)` or `receive(upTo:)`, and iterations of `datagrams`.
///
/// - Loop side: the handle hands each datagram of a read batch to ``receive(_:)`` (no lock);
///   at the end of the batch, ``receiveBatchEnded()`` moves it into the shared queue under one
///   lock, applying the overflow policy, and wakes as many waiting consumers as there are
///   datagrams.
/// - Consumer side: a consumer takes datagrams under the lock, in its own task; a woken consumer
///   is only told to look again, so a datagram never sits in a continuation where a cancelled
///   task could lose it. An iteration of `datagrams` takes up to ``batchLimit`` at a time into a
///   private batch (one lock per batch, not per datagram) and, when it ends early (cancelled,
///   or the loop broke), puts what it did not hand out back at the head of the queue, in order.
///
/// Counting: `received` and `droppedByPolicy` move on the loop thread; `delivered` moves when
/// user code gets a datagram. `queued` is `received - delivered - droppedByPolicy`, so the
/// identity holds exactly at every moment.
final class ReceiveQueue: DatagramReceiver, @unchecked Sendable {
    // Safe to share: `shared` is only touched under `lock`; members marked "loop thread" are
    // only touched on the loop thread (the handle's callbacks and loop jobs); the counters and
    // `consumers` are atomics; `sendPath` is written once before the queue is shared.

    /// The most datagrams one iteration of `datagrams` takes into its private batch.
    static let batchLimit = 128

    enum End {
        case closed
        case failed(any Error)
    }

    /// What a waiting consumer is woken with.
    enum Wake {
        case ready
        case cancelled
    }

    struct Waiter {
        let id: UInt64
        let continuation: UnsafeContinuation<Wake, Never>
    }

    struct Shared {
        var buffer = Deque<Datagram>()
        var waiters = Deque<Waiter>()
        var nextWaiterID: UInt64 = 0
        var end: End?
        var peakQueued = 0
        /// `.pauseReading`: reading stopped for lack of room, and nobody asked to resume yet.
        var readingPaused = false
        /// Who reads the socket right now: the loop (a read batch) or a consumer on another
        /// thread (a direct read). One at a time, so datagrams keep their order.
        var reader = Reader.none
        /// A lone consumer off the loop reads the socket from its own thread whenever the queue
        /// is empty: the loop, which would only compete with it (and wake for nothing), leaves
        /// reading to it until it finds the socket empty and waits.
        var consumerReads = false
        /// The loop stopped watching for reads because of `consumerReads`.
        var loopLeftReading = false
        /// Direct reads so far, and at the loop's last check (to notice a consumer that stopped).
        var directReads = 0
        var directReadsAtLastCheck = 0
    }

    enum Reader { case none, loop, consumer }

    let loop: UVLoop
    let limit: Int
    let policy: UDPSocket.OverflowPolicy
    private let lock = PThreadLock()
    private var shared = Shared()
    /// Datagrams user code has been given.
    let delivered = Atomic<Int>(0)
    /// Consumers active now (waiting or holding a batch); with more than one, batches shrink
    /// so that datagrams spread across them.
    private let consumers = Atomic<Int>(0)

    /// Datagrams read (by the loop, or directly by a consumer), their bytes, the truncated ones.
    let received = Atomic<Int>(0)
    let bytesReceived = Atomic<Int>(0)
    let truncated = Atomic<Int>(0)
    /// The datagrams GRO buffers carried beyond the first of each (wire datagrams =
    /// `received` + this).
    let extraSegments = Atomic<Int>(0)
    /// The socket's send machine, also used for direct reads. Set once, on the loop, while the
    /// socket opens (before any consumer can see the queue).
    var sendPath: SendPath?
    let maximumDatagramSize: Int

    // Loop thread.
    private var arrivals: [Datagram] = []
    weak var handle: UDPHandle?
    var droppedByPolicy = 0
    var readingPauses = 0
    /// The kernel's drop count, read just before the socket closed.
    var finalKernelDrops: Int?
    let transient: TransientErrors

    init(loop: UVLoop, configuration: UDPSocket.Configuration, transient: TransientErrors) {
        self.loop = loop
        self.limit = configuration.receiveQueueLimit
        self.policy = configuration.overflowPolicy
        self.maximumDatagramSize = configuration.maximumDatagramSize
        self.transient = transient
        arrivals.reserveCapacity(32)
    }

    // MARK: Loop side

    func receiveBudget() -> Int {
        guard case .pauseReading(let high, _) = policy else { return Int.max }
        // Read no more than fits under the high watermark: nothing read is ever dropped.
        let queued = lock.withLock { shared.buffer.count } + arrivals.count
        let room = high - queued
        if room <= 0 { notePause() }
        return room
    }

    private func notePause() {
        let first: Bool = lock.withLock {
            defer { shared.readingPaused = true }
            return !shared.readingPaused
        }
        if first { readingPauses += 1 }
    }

    func receive(_ datagram: Datagram) {
        countReceived(datagram)
        arrivals.append(datagram)
    }

    @inline(__always)
    private func countReceived(_ datagram: Datagram) {
        received.add(1, ordering: .relaxed)
        bytesReceived.add(datagram.payload.count, ordering: .relaxed)
        if datagram.isTruncated { truncated.add(1, ordering: .relaxed) }
        let segments = datagram.segmentCount
        if segments > 1 { extraSegments.add(segments - 1, ordering: .relaxed) }
    }

    func beginLoopRead() -> LoopReadPermission {
        lock.withLock {
            if shared.consumerReads {
                shared.loopLeftReading = true
                shared.directReadsAtLastCheck = shared.directReads
                return .leaveToConsumer
            }
            if shared.reader == .consumer { return .skip }
            shared.reader = .loop
            return .read
        }
    }

    func loopShouldResumeReading() -> Bool {
        lock.withLock {
            // The consumer is inside its read right now (perhaps preempted): let it finish;
            // watching again meanwhile would only make the loop spin on a readable socket.
            if shared.reader == .consumer { return false }
            // The consumer read since the last check: it is still at it.
            if shared.consumerReads && shared.directReads != shared.directReadsAtLastCheck {
                shared.directReadsAtLastCheck = shared.directReads
                return false
            }
            shared.consumerReads = false
            shared.loopLeftReading = false
            return true
        }
    }

    func endLoopRead() {
        lock.withLock { shared.reader = .none }
    }

    func receiveFailed(_ error: UVError, fatal: Bool) {
        if fatal {
            finish(.failed(error))
        } else {
            transient.publish(error)
        }
    }

    func receiveBatchEnded() {
        guard !arrivals.isEmpty else { return }
        var toWake: [UnsafeContinuation<Wake, Never>] = []
        lock.withLock {
            guard shared.end == nil else {
                droppedByPolicy += arrivals.count
                return
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
            toWake = wakeLocked(upTo: shared.buffer.count)
        }
        arrivals.removeAll(keepingCapacity: true)
        for continuation in toWake { continuation.resume(returning: .ready) }
    }

    /// Under the lock: removes up to `count` waiters (all of them with `Int.max`) to wake.
    private func wakeLocked(upTo count: Int) -> [UnsafeContinuation<Wake, Never>] {
        var woken: [UnsafeContinuation<Wake, Never>] = []
        while woken.count < count, let waiter = shared.waiters.popFirst() {
            woken.append(waiter.continuation)
        }
        return woken
    }

    /// Ends receiving: queued datagrams are still delivered, then `end`. The first end wins.
    func finish(_ end: End) {
        let toWake: [UnsafeContinuation<Wake, Never>] = lock.withLock {
            if shared.end == nil { shared.end = end }
            return wakeLocked(upTo: Int.max)
        }
        for continuation in toWake { continuation.resume(returning: .ready) }
    }

    /// Loop thread: a consumer brought the queue down to the low watermark.
    private func resumeReading() {
        let wanted: Bool = lock.withLock {
            defer { shared.readingPaused = false }
            return shared.readingPaused && shared.end == nil
        }
        guard wanted, let handle else { return }
        handle.receiverHasRoom()
    }

    /// Datagrams waiting in the shared queue now, and the most that ever waited.
    var queueDepth: (queued: Int, peak: Int) {
        lock.withLock { (shared.buffer.count, shared.peakQueued) }
    }

    // MARK: Consumer side

    private enum Take {
        case taken
        case end(End)
        case wait
        /// The queue is empty and nobody reads: this consumer (off the loop, alone) reads the
        /// socket itself.
        case readDirectly
    }

    /// Under the lock: takes up to `count` datagrams into `into`, or reports the end, or that
    /// the caller must wait. Asks the loop to resume reading when the queue fell to the low
    /// watermark.
    private func takeLocked(_ requested: Int, sharing: Bool, into batch: inout [Datagram], resume: inout Bool, mayReadDirectly: Bool = false) -> Take {
        // Decided now, not before the wait: a consumer that started waiting alone must not
        // take a whole burst when others have started waiting beside it since.
        let count = sharing && consumers.load(ordering: .relaxed) > 1 ? 1 : requested
        if !shared.buffer.isEmpty {
            let n = min(count, shared.buffer.count)
            if n == shared.buffer.count {
                batch.append(contentsOf: shared.buffer)
                shared.buffer.removeAll(keepingCapacity: true)
            } else {
                batch.append(contentsOf: shared.buffer.prefix(n))
                shared.buffer.removeFirst(n)
            }
            if shared.readingPaused, case .pauseReading(_, let low) = policy, shared.buffer.count <= low {
                resume = true
            }
            return .taken
        }
        if let end = shared.end { return .end(end) }
        // Alone at this moment too: a consumer that started beside it since shares the burst.
        if mayReadDirectly && shared.reader == .none && !shared.readingPaused
            && consumers.load(ordering: .relaxed) == 1 {
            shared.reader = .consumer
            shared.consumerReads = true
            shared.directReads += 1
            return .readDirectly
        }
        return .wait
    }

    /// Takes up to `count` datagrams (at least one), waiting for them; with `sharing`, only one
    /// while other consumers take from the queue too. Cancel-safe: a wait
    /// cancelled before datagrams are there takes nothing (a woken consumer always takes, so a
    /// wakeup is never lost).
    ///
    /// - Returns: The datagrams (not yet counted as delivered), or `nil` once the socket is
    ///   closed and the queue empty.
    /// - Throws: `CancellationError`; the fatal receive error that ended receiving.
    func take(upTo count: Int, sharing: Bool = false) async throws -> [Datagram]? {
        try Task.checkCancellation()
        consumers.add(1, ordering: .relaxed)
        defer { consumers.subtract(1, ordering: .relaxed) }
        var batch: [Datagram] = []
        var pulled = false
        // Off the loop, a lone consumer reads the socket itself when the queue is empty: no
        // thread handoff while datagrams keep coming.
        var mayReadDirectly = sendPath != nil && !loop.inLoop && consumers.load(ordering: .relaxed) == 1
        while true {
            var resume = false
            let outcome = lock.withLock { takeLocked(count, sharing: sharing, into: &batch, resume: &resume, mayReadDirectly: mayReadDirectly) }
            if resume { loop.execute { [self] in resumeReading() } }
            switch outcome {
            case .taken: return batch
            case .end(.closed): return nil
            case .end(.failed(let error)): throw error
            case .readDirectly:
                if let direct = readDirectly(upTo: count) { return direct }
                mayReadDirectly = false  // nothing there: wait for the loop's next read
            case .wait:
                giveReadingBack()
                // A consumer on the loop thread reads the socket itself rather than wait for
                // the next poll: datagrams that are there are taken at once.
                if !pulled, loop.inLoop, let handle, handle.readNow() {
                    pulled = true
                    continue
                }
                try await waitForDatagrams()
            }
        }
    }

    /// A consumer is about to wait (or to read on the loop): if the loop left reading to a
    /// consumer that reads directly, and none is reading now, the loop watches the socket again
    /// at once rather than at its next check.
    private func giveReadingBack() {
        let mustWatch: Bool = lock.withLock {
            guard shared.consumerReads, shared.reader != .consumer else { return false }
            shared.consumerReads = false
            defer { shared.loopLeftReading = false }
            return shared.loopLeftReading
        }
        guard mustWatch else { return }
        if loop.inLoop {
            handle?.resumeLoopReading()
        } else {
            loop.execute { [self] in handle?.resumeLoopReading() }
        }
    }

    /// A consumer's read from its own thread, holding the reading turn. Returns the datagrams,
    /// or `nil` when there were none (the caller waits for the loop).
    private func readDirectly(upTo count: Int) -> [Datagram]? {
        let result = sendPath?.receiveDirect(maxCount: count, maximumDatagramSize: maximumDatagramSize) ?? .closed
        let loopMustWatch: Bool = lock.withLock {
            shared.reader = .none
            if case .datagrams = result { return false }
            // Nothing there: this consumer is about to wait, so the loop must watch again.
            shared.consumerReads = false
            defer { shared.loopLeftReading = false }
            return shared.loopLeftReading
        }
        if loopMustWatch { loop.execute { [self] in handle?.resumeLoopReading() } }
        switch result {
        case .datagrams(let datagrams):
            for datagram in datagrams { countReceived(datagram) }
            return datagrams
        case .wouldBlock, .closed:
            return nil
        case .transient(let error):
            transient.publish(error)
            return nil
        case .failed(let error):
            finish(.failed(error))
            loop.execute { [self] in handle?.stopReceiving() }
            return nil
        }
    }

    /// Whether receiving has ended (closed or failed); queued datagrams may remain.
    var hasEnded: Bool { lock.withLock { shared.end != nil } }

    /// Takes up to `count` queued datagrams without waiting; `nil` when none is queued.
    func takeNow(upTo count: Int) -> [Datagram]? {
        var batch: [Datagram] = []
        var resume = false
        let outcome = lock.withLock { takeLocked(count, sharing: false, into: &batch, resume: &resume) }
        if resume { loop.execute { [self] in resumeReading() } }
        guard case .taken = outcome else { return nil }
        return batch
    }

    /// Suspends until datagrams may be there (or the end); throws `CancellationError` if the
    /// task is cancelled while it waits.
    private func waitForDatagrams() async throws {
        let id: UInt64 = lock.withLock {
            defer { shared.nextWaiterID += 1 }
            return shared.nextWaiterID
        }
        let wake: Wake = await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Wake, Never>) in
                // Under the lock, so the cancellation handler either finds this waiter or runs
                // before it was added (then the cancelled flag is already set).
                let immediate: Wake? = lock.withLock {
                    if !shared.buffer.isEmpty || shared.end != nil { return .ready }
                    if Task.isCancelled { return .cancelled }
                    shared.waiters.append(Waiter(id: id, continuation: continuation))
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter: Waiter? = lock.withLock {
                guard let index = shared.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return shared.waiters.remove(at: index)
            }
            waiter?.continuation.resume(returning: .cancelled)
        }
        if case .cancelled = wake { throw CancellationError() }
    }

    /// Counts datagrams handed to user code.
    @inline(__always)
    func noteDelivered(_ count: Int = 1) {
        // Releasing: whoever reads `delivered` (acquiring) also sees these datagrams counted
        // as received.
        delivered.add(count, ordering: .releasing)
    }


    /// Puts datagrams a consumer took but did not hand out back at the head of the queue, in
    /// order, and wakes a waiter for them.
    func giveBack(_ datagrams: some Collection<Datagram>) {
        guard !datagrams.isEmpty else { return }
        let toWake: [UnsafeContinuation<Wake, Never>] = lock.withLock {
            shared.buffer.insert(contentsOf: datagrams, at: 0)
            return wakeLocked(upTo: datagrams.count)
        }
        for continuation in toWake { continuation.resume(returning: .ready) }
    }
}

/// The transient-error side of a socket: counted by the handle's counters, published here.
final class TransientErrors: Sendable {
    let stream: AsyncStream<UVError>
    private let continuation: AsyncStream<UVError>.Continuation

    init() {
        (stream, continuation) = AsyncStream<UVError>.makeStream(bufferingPolicy: .bufferingNewest(64))
    }

    func publish(_ error: UVError) { continuation.yield(error) }
    func finish() { continuation.finish() }
}
