internal import CLibUV
internal import Glibc
import Synchronization

/// A libuv event loop running on a thread of its own, usable as a Swift executor.
///
/// `UVLoop` owns one `uv_loop_t` and one thread that runs it. It is a `SerialExecutor`, so an
/// actor can make the loop its executor (every `UDPSocket` does), and a `TaskExecutor`, so
/// `withTaskExecutorPreference(loop) { ... }` runs nonisolated async code on the loop thread.
/// Code running there talks to libuv with no lock and no thread hop.
///
/// ```swift
/// let loop = UVLoop(name: "dns")
/// loop.execute { print("on the loop thread:", loop.inLoop) }
/// await loop.shutdown()
/// ```
///
/// Jobs are queued under a lock and the loop is woken with `uv_async_send`; libuv coalesces
/// wakeups, and one wakeup drains everything queued.
///
/// A loop you create keeps running (and keeps itself alive) until you call ``shutdown()``.
/// ``shared`` starts on first use and normally runs for the life of the process.
///
/// - Important: After ``shutdown()`` the loop no longer runs libuv. Work that still arrives (a
///   task resuming on a socket's actor, an ``execute(_:)`` call) is not dropped: it runs, one job
///   at a time, on a short-lived thread of the loop's, and a one-time diagnostic is printed to
///   standard error. Handles on a shut-down loop are closed, so such work typically ends in
///   ``ClosedHandleError``.
public final class UVLoop: SerialExecutor, TaskExecutor, @unchecked Sendable {
    // Safe to share: `queue` is guarded by its lock; `threadID` is written once by the loop
    // thread before `init` returns (ordered by the `started` semaphore); everything marked
    // "loop thread only" is touched only where `inLoop` holds, which the executor serialises.

    /// The loop's name, used for its thread and in diagnostics.
    public let name: String

    /// The process-wide default loop, started on first use.
    public static let shared = UVLoop(name: "AsyncUDP.shared")

    enum Job {
        /// A job for an actor whose executor is this loop (arrived through `serialExecutor`).
        case actor(UnownedJob)
        /// A job for a task that prefers this loop as its task executor.
        case task(UnownedJob)
        case closure(@Sendable () -> Void)
    }

    /// The loop's serial-executor role. A separate object so that actor jobs and task-executor
    /// jobs arrive through different `enqueue` calls and can each be run with the right executor
    /// context: the runtime only skips a hop when both the serial and the task executor match.
    private final class SerialRole: SerialExecutor {
        unowned let loop: UVLoop
        init(loop: UVLoop) { self.loop = loop }
        func enqueue(_ job: consuming ExecutorJob) { loop.submit(.actor(UnownedJob(job))) }
        func asUnownedSerialExecutor() -> UnownedSerialExecutor { UnownedSerialExecutor(ordinary: self) }
        func isIsolatingCurrentContext() -> Bool? { loop.inLoop }
        func checkIsolated() { loop.preconditionInLoop("code isolated to this loop") }
    }

    private var serialRole: SerialRole!
    /// Jobs the loop thread runs in one wakeup before it lets libuv poll again, counted in
    /// rounds of "everything queued so far".
    private static let drainRounds = 1024

    enum Phase { case running, stopping, stopped }

    struct QueueState {
        var pending: [Job] = []
        var wakeupPending = false
        var phase = Phase.running
        /// After shutdown: the thread running late jobs, while one runs.
        var retiredDrainer: pthread_t?
        var retiredDrainerRunning = false
        var warnedAboutLateWork = false
        var shutdownWaiters: [CheckedContinuation<Void, Never>] = []
        var joined = false
    }

    private let queue = LockedBox(QueueState())
    /// Set once the loop has stopped; lets `inLoop` skip the lock while the loop runs.
    private let retired = Atomic<Bool>(false)
    private var threadID = pthread_t()
    private var thread = pthread_t()

    // Loop thread only.
    let uvLoop: UnsafeMutablePointer<uv_loop_t>
    private let wakeup: UnsafeMutablePointer<uv_async_t>
    private let turnEnd: UnsafeMutablePointer<uv_check_t>
    private var turnEndWork: [any EndOfTurnWork] = []
    private var draining: [Job] = []
    private var resources: [ObjectIdentifier: any LoopResource] = [:]
    /// True from the moment the shutdown job starts closing handles.
    private(set) var isShuttingDown = false
    /// One receive buffer per loop: libuv's allocate, read and receive callbacks for a handle run
    /// back to back on this thread, and each receive copies the bytes out before the next read.
    /// It holds `receiveChunks` chunks of 64 KiB: batched receives (`recvmmsg`) read up to that
    /// many datagrams at once into it; other handles use the first chunk.
    let receiveScratch: UnsafeMutableRawPointer
    static let receiveScratchSize = 65_536
    static let receiveChunks = 20

    /// Creates a loop and starts its thread.
    ///
    /// - Parameter name: A name for the thread (truncated to 15 bytes by the kernel) and for
    ///   diagnostics.
    public init(name: String = "AsyncUDP.loop") {
        self.name = name
        uvLoop = .allocate(capacity: 1)
        wakeup = .allocate(capacity: 1)
        turnEnd = .allocate(capacity: 1)
        receiveScratch = .allocate(byteCount: Self.receiveScratchSize * Self.receiveChunks, alignment: 16)
        let rc = uv_loop_init(uvLoop)
        precondition(rc == 0, "uv_loop_init failed: \(UVError(code: rc))")
        let rc2 = uv_async_init(uvLoop, wakeup) { async in
            guard let async, let data = async.pointee.data else { return }
            Unmanaged<UVLoop>.fromOpaque(data).takeUnretainedValue().drain()
        }
        precondition(rc2 == 0, "uv_async_init failed: \(UVError(code: rc2))")
        wakeup.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        uv_check_init(uvLoop, turnEnd)
        turnEnd.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        uv_check_start(turnEnd) { check in
            guard let check, let data = check.pointee.data else { return }
            Unmanaged<UVLoop>.fromOpaque(data).takeUnretainedValue().endOfTurn()
        }
        // The check handle must not keep the loop alive on its own.
        uv_unref(UnsafeMutableRawPointer(turnEnd).assumingMemoryBound(to: uv_handle_t.self))
        serialRole = SerialRole(loop: self)

        let started = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
        sem_init(started, 0, 0)
        defer { sem_destroy(started); started.deallocate() }
        let context = StartContext(loop: self, started: started)
        let rc3 = pthread_create(&thread, nil, { raw in
            let context = Unmanaged<StartContext>.fromOpaque(raw!).takeRetainedValue()
            context.loop.threadMain(started: context.started)
            return nil
        }, Unmanaged.passRetained(context).toOpaque())
        precondition(rc3 == 0, "pthread_create failed: \(rc3)")
        sem_wait(started)
    }

    deinit {
        // Only reachable after shutdown: the running thread holds a strong reference.
        uvLoop.deallocate()
        wakeup.deallocate()
        turnEnd.deallocate()
        receiveScratch.deallocate()
    }

    private final class StartContext {
        let loop: UVLoop
        let started: UnsafeMutablePointer<sem_t>
        init(loop: UVLoop, started: UnsafeMutablePointer<sem_t>) {
            self.loop = loop
            self.started = started
        }
    }

    private func threadMain(started: UnsafeMutablePointer<sem_t>) {
        threadID = pthread_self()
        sem_post(started)

        uv_run(uvLoop, UV_RUN_DEFAULT)
        // uv_run returned: the shutdown job closed every handle and called uv_stop, and the close
        // callbacks have run. Run whatever they queued, then retire the executor.
        while true {
            let late: [Job]? = queue.withLock { state in
                if state.pending.isEmpty {
                    state.phase = .stopped
                    retired.store(true, ordering: .releasing)
                    return nil
                }
                defer { state.pending.removeAll() }
                return state.pending
            }
            guard let late else { break }
            for job in late { run(job) }
        }
        uv_close(UnsafeMutableRawPointer(wakeup).assumingMemoryBound(to: uv_handle_t.self), nil)
        uv_close(UnsafeMutableRawPointer(turnEnd).assumingMemoryBound(to: uv_handle_t.self), nil)
        uv_run(uvLoop, UV_RUN_DEFAULT)
        let rc = uv_loop_close(uvLoop)
        if rc != 0 {
            writeDiagnostic("UVLoop '\(name)': uv_loop_close: \(UVError(code: rc)); a handle outlived shutdown")
        }
        let waiters = queue.withLock { state in
            defer { state.shutdownWaiters.removeAll() }
            return state.shutdownWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Executor

    /// Whether the calling code runs on this loop's thread (or, after shutdown, is the thread
    /// currently running the loop's late work).
    public var inLoop: Bool {
        let me = pthread_self()
        if pthread_equal(me, threadID) != 0 { return true }
        guard retired.load(ordering: .acquiring) else { return false }
        return queue.withLock { state in
            state.phase == .stopped && state.retiredDrainer.map { pthread_equal($0, me) != 0 } == true
        }
    }

    /// Traps with a clear message unless called on this loop's thread.
    ///
    /// - Parameter what: What was attempted, for the message.
    public func preconditionInLoop(_ what: @autoclosure () -> String = "this operation",
                                   file: StaticString = #fileID, line: UInt = #line) {
        precondition(inLoop, "\(what()) must run on UVLoop '\(name)''s thread; use loop.execute { } or an actor on the loop",
                     file: file, line: line)
    }

    /// Runs `work` on the loop thread, soon. Safe to call from any thread.
    ///
    /// - Parameter work: The closure to run. It runs after work already queued.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        submit(.closure(work))
    }

    /// Runs `body` on the loop thread and returns its result.
    ///
    /// - Parameter body: The work to do on the loop thread; its error, if any, is rethrown.
    public func submit<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            execute { continuation.resume(with: Result { try body() }) }
        }
    }

    /// Queues a job for the loop thread (part of `TaskExecutor`: jobs of tasks that prefer this
    /// loop). Actor jobs arrive through ``asUnownedSerialExecutor()`` instead.
    public func enqueue(_ job: consuming ExecutorJob) {
        submit(.task(UnownedJob(job)))
    }

    /// The serial executor for actors that run on this loop:
    /// `nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }`.
    public func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        serialRole.asUnownedSerialExecutor()
    }

    public func asUnownedTaskExecutor() -> UnownedTaskExecutor {
        UnownedTaskExecutor(ordinary: self)
    }

    /// Whether the current thread is this loop's: what `assumeIsolated` asks, for example from a
    /// libuv callback.
    public func isIsolatingCurrentContext() -> Bool? { inLoop }

    /// Traps unless called on this loop's thread.
    public func checkIsolated() {
        preconditionInLoop("code isolated to this loop")
    }

    private enum SubmitAction { case none, startRetiredDrainer }

    private func submit(_ job: Job) {
        let action: SubmitAction = queue.withLock { state in
            state.pending.append(job)
            switch state.phase {
            case .running, .stopping:
                if !state.wakeupPending {
                    state.wakeupPending = true
                    // Under the lock, so it cannot race with the loop closing `wakeup`.
                    uv_async_send(wakeup)
                }
                return .none
            case .stopped:
                if state.retiredDrainerRunning { return .none }
                state.retiredDrainerRunning = true
                return .startRetiredDrainer
            }
        }
        if case .startRetiredDrainer = action { startRetiredDrainer() }
    }

    /// Loop thread: runs everything queued, including what those jobs queue (a task hopping
    /// between the loop's actor and task roles), for a bounded number of rounds. `wakeupPending`
    /// stays set meanwhile, so submitters skip `uv_async_send`.
    private func drain() {
        for round in 1...Self.drainRounds {
            let more: Bool = queue.withLock { state in
                if state.pending.isEmpty {
                    state.wakeupPending = false
                    return false
                }
                if round == Self.drainRounds {
                    uv_async_send(wakeup)  // let libuv poll, then come back
                    return false
                }
                swap(&state.pending, &draining)
                return true
            }
            guard more else { return }
            for job in draining { run(job) }
            draining.removeAll(keepingCapacity: true)
        }
    }

    /// After shutdown: a detached thread runs late jobs until the queue is empty, then exits.
    /// (Running them inline in `enqueue` would re-enter the Swift runtime, which may call
    /// `enqueue` while it holds a task's lock.)
    private func startRetiredDrainer() {
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            let loop = Unmanaged<UVLoop>.fromOpaque(raw!).takeRetainedValue()
            loop.drainRetired()
            return nil
        }, context)
        if rc != 0 {
            Unmanaged<UVLoop>.fromOpaque(context).release()
            writeDiagnostic("UVLoop '\(name)': cannot start a thread for work after shutdown (\(rc)); running it inline")
            drainRetired()
            return
        }
        pthread_detach(thread)
    }

    private func drainRetired() {
        queue.withLock { $0.retiredDrainer = pthread_self() }
        while true {
            let (jobs, warn): ([Job], Bool) = queue.withLock { state in
                if state.pending.isEmpty {
                    state.retiredDrainer = nil
                    state.retiredDrainerRunning = false
                    return ([], false)
                }
                let warn = !state.warnedAboutLateWork
                state.warnedAboutLateWork = true
                defer { state.pending.removeAll() }
                return (state.pending, warn)
            }
            if jobs.isEmpty { return }
            if warn {
                writeDiagnostic("UVLoop '\(name)' received work after shutdown(); running it on a thread of its own (its handles are closed)")
            }
            for job in jobs { run(job) }
        }
    }

    @inline(__always)
    private func run(_ job: Job) {
        switch job {
        case .actor(let job):
            job.runSynchronously(on: asUnownedSerialExecutor())
        case .task(let job):
            job.runSynchronously(on: asUnownedTaskExecutor())
        case .closure(let work):
            work()
        }
    }

    // MARK: Shutdown

    /// Whether ``shutdown()`` has been called.
    public var isShutDown: Bool {
        queue.withLock { $0.phase != .running }
    }

    /// Closes every handle still open on this loop, stops it and joins its thread.
    ///
    /// Pending sends on those handles complete with ``UVError/canceled`` and their close callbacks
    /// run before this returns. Calling it again (or concurrently) waits for the same shutdown and
    /// returns. It may be called from code running on the loop itself (a loop-bound actor): the
    /// caller then resumes, after the loop has stopped, as late work (see the type's discussion).
    public func shutdown() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let (start, finished) = queue.withLock { state -> (Bool, Bool) in
                if state.phase == .stopped { return (false, true) }
                state.shutdownWaiters.append(continuation)
                guard state.phase == .running else { return (false, false) }
                state.phase = .stopping
                return (true, false)
            }
            if finished { continuation.resume() }
            if start {
                submit(.closure { [self] in beginShutdown() })
            }
        }
        let join = queue.withLock { state in
            defer { state.joined = true }
            return !state.joined
        }
        guard join else { return }
        if pthread_equal(pthread_self(), thread) != 0 {
            pthread_detach(thread)  // resumed on the loop thread itself: it cannot join itself
        } else {
            pthread_join(thread, nil)
        }
    }

    /// Loop thread: close everything and let `uv_run` return.
    private func beginShutdown() {
        isShuttingDown = true
        for resource in Array(resources.values) {
            resource.closeForShutdown()
        }
        uv_stop(uvLoop)
    }

    // MARK: End of turn (loop thread only)

    /// Runs `work.endOfTurn()` once, after this turn's I/O callbacks (a `uv_check` handle). The
    /// receive path uses it to hand a whole burst of datagrams to a consumer at once.
    package func runAtEndOfTurn(_ work: any EndOfTurnWork) {
        turnEndWork.append(work)
    }

    private func endOfTurn() {
        if !turnEndWork.isEmpty {
            let work = turnEndWork
            turnEndWork.removeAll(keepingCapacity: true)
            for item in work { item.endOfTurn() }
        }
        // Consumers resumed just now may run on this loop (loop-affine tasks): run them in this
        // turn rather than after another trip through epoll.
        drain()
    }

    // MARK: Resources (loop thread only)

    func register(_ resource: any LoopResource) {
        resources[ObjectIdentifier(resource)] = resource
    }

    func unregister(_ resource: any LoopResource) {
        resources[ObjectIdentifier(resource)] = nil
    }

    /// Whether an open handle on this loop owns `fd` (libuv itself only notices an fd once its
    /// watcher has started, so "the same fd adopted twice" is checked here).
    func ownsDescriptor(_ fd: Int32) -> Bool {
        resources.values.contains { $0.descriptorIfOpen == fd }
    }

    /// The number of handles open on this loop (loop thread only).
    public var openHandleCount: Int {
        preconditionInLoop("openHandleCount")
        return resources.count
    }
}

/// Work deferred to the end of a loop turn; see ``UVLoop/runAtEndOfTurn(_:)``.
package protocol EndOfTurnWork: AnyObject {
    func endOfTurn()
}

/// Something open on a loop that the loop's shutdown must close.
protocol LoopResource: AnyObject {
    func closeForShutdown()
    var descriptorIfOpen: Int32? { get }
}

/// Writes one line to standard error, prefixed "AsyncUDP: ".
func writeDiagnostic(_ message: String) {
    var line = Array("AsyncUDP: \(message)\n".utf8)
    _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}
