internal import CLibUV
internal import CUVShims
internal import Glibc
public import Logging
import Synchronization

/// A libuv event loop running on a thread of its own, usable as a Swift executor.
///
/// `UVLoop` owns one `uv_loop_t` and one thread that runs it. It is a `SerialExecutor`, so an
/// actor can make the loop its executor (every `UDPSocket` does), and a `TaskExecutor`, so
/// `Task(executorPreference: loop)` runs nonisolated async code on the loop thread. Code running
/// there talks to libuv with no lock and no thread hop.
///
/// ```swift
/// let loop = UVLoop(name: "dns")
/// loop.execute { print("on the loop thread:", loop.inLoop) }
/// await loop.shutdown()
/// ```
///
/// Jobs from other threads are queued under a lock and the loop is woken with `uv_async_send`
/// (libuv coalesces wakeups, and one wakeup drains everything queued); jobs queued by the loop
/// thread itself need no wakeup and run before the loop next waits for I/O.
///
/// A loop you create keeps running (and keeps itself alive) until you call ``shutdown()``.
/// ``shared`` starts on first use and runs for the life of the process.
///
/// ## Resource exhaustion
///
/// Starting a loop needs file descriptors (an epoll instance and an eventfd) and a thread. When
/// the process has none left (`EMFILE`, `EAGAIN`), `UVLoop(name:)` does not trap: it returns a
/// loop that never ran, with ``startError`` set, and everything that needs it (opening a socket
/// or a handle on it) throws that error. ``start(name:logger:)`` throws it at once.
///
/// - Important: After ``shutdown()`` the loop no longer runs libuv. Work that still arrives (a
///   task resuming on a socket's actor, an ``execute(_:)`` call) is not dropped: it runs, one job
///   at a time, on a short-lived thread of the loop's, and a warning is logged once. Handles on a
///   shut-down loop are closed, so such work typically ends in ``ClosedHandleError``.
public final class UVLoop: SerialExecutor, TaskExecutor, @unchecked Sendable {
    // Safe to share: `queue` is guarded by its lock; `startError`, `name`, `logger` are
    // immutable; everything marked "loop thread only" is touched only where `inLoop` holds (the
    // loop thread, or after shutdown the single late-work drainer), which the executor
    // serialises. `retired` is an atomic.

    /// The loop's name, used for its thread (the first 15 bytes) and in diagnostics.
    public let name: String

    /// Where the loop reports what it cannot return or throw: work that arrives after shutdown,
    /// a refused shutdown of ``shared``, a failed `uv_loop_close`. Silent unless you pass one.
    public let logger: Logger

    /// Why the loop could not start (`nil` when it runs or ran). A loop that could not start
    /// behaves like one that has shut down, and opening a socket on it throws this error.
    public var startError: UVError? { failure }
    /// Written only during `init`, before the loop is visible to any other thread.
    private var failure: UVError?

    /// The process-wide default loop, started on first use.
    ///
    /// It cannot be shut down: ``shutdown()`` on it is refused (and logged), because any library
    /// in the process may have sockets on it. If it cannot start (for example at `EMFILE`), the
    /// error is thrown by whatever needed it, and the next use tries again.
    public static var shared: UVLoop { SharedLoop.current() }

    /// Whether this is ``shared``.
    public var isShared: Bool { SharedLoop.isShared(self) }

    /// A logger that discards everything: the default, so the library prints nothing by itself.
    public static var silentLogger: Logger {
        Logger(label: "AsyncUDP", factory: { _ in SwiftLogNoOpLogHandler() })
    }

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

    enum Phase { case running, stopping, stopped }

    struct QueueState {
        var pending: [Job] = []
        /// A drain is due (an async wakeup was sent, or the loop thread queued work itself and
        /// keeps the loop from blocking until it drains): submitters need not wake the loop.
        var wakeupPending = false
        var phase = Phase.running
        var retiredDrainerRunning = false
        var warnedAboutLateWork = false
        var shutdownWaiters: [CheckedContinuation<Void, Never>] = []
        var joined = false
    }

    let queue = LockedBox(QueueState())
    /// Set once the loop has stopped (or never started).
    let retired = Atomic<Bool>(false)
    /// The loop thread, once started (written during `init` only).
    private(set) var loopThread = pthread_t()
    private(set) var threadStarted = false

    // Loop thread only.
    let uvLoop: UnsafeMutablePointer<uv_loop_t>
    let wakeup: UnsafeMutablePointer<uv_async_t>
    let turnEnd: UnsafeMutablePointer<uv_check_t>
    /// Active while work is due before the loop may block again: an active idle handle makes
    /// libuv poll with a zero timeout, so `turnEnd` runs without waiting for I/O.
    let keepAwake: UnsafeMutablePointer<uv_idle_t>
    var keepAwakeActive = false
    var turnEndWork: [any EndOfTurnWork] = []
    var draining: [Job] = []
    var resources: [ObjectIdentifier: any LoopResource] = [:]
    /// State that other modules attach to the loop (the UDP layer's I/O buffers), keyed by type.
    package var localStorage: [ObjectIdentifier: AnyObject] = [:]
    /// True from the moment the shutdown job starts closing handles.
    package internal(set) var isShuttingDown = false

    /// Creates a loop and starts its thread.
    ///
    /// Never traps: if the process is out of file descriptors or threads, the loop is returned
    /// stopped, with ``startError`` set (see the type's discussion). Use
    /// ``start(name:logger:)`` to get that error thrown instead.
    ///
    /// - Parameters:
    ///   - name: A name for the thread (truncated to 15 bytes by the kernel) and for diagnostics.
    ///   - logger: Where the loop logs; silent by default.
    public init(name: String = "AsyncUDP.loop", logger: Logger = UVLoop.silentLogger) {
        self.name = name
        self.logger = logger
        uvLoop = .allocate(capacity: 1)
        wakeup = .allocate(capacity: 1)
        turnEnd = .allocate(capacity: 1)
        keepAwake = .allocate(capacity: 1)
        serialRole = SerialRole(loop: self)
        // How far the set-up got: 1 = uv_loop_init, 2 = uv_async_init, 3 = check and idle.
        var stage = 0
        let rc = uv_loop_init(uvLoop)
        if rc < 0 {
            failure = UVError(code: rc, context: "UVLoop '\(name)': uv_loop_init")
        } else {
            stage = 1
            let rc2 = uv_async_init(uvLoop, wakeup) { async in
                guard let async, let data = async.pointee.data else { return }
                Unmanaged<UVLoop>.fromOpaque(data).takeUnretainedValue().drain()
            }
            if rc2 < 0 {
                failure = UVError(code: rc2, context: "UVLoop '\(name)': uv_async_init")
            } else {
                stage = 3
                uv_check_init(uvLoop, turnEnd)
                uv_idle_init(uvLoop, keepAwake)
                failure = startThread()
            }
        }
        guard let failure else { return }
        // Undo what was set up, on this thread (the loop never ran).
        if stage >= 3 {
            uv_close(handle(wakeup), nil)
            uv_close(handle(turnEnd), nil)
            uv_close(handle(keepAwake), nil)
            uv_run(uvLoop, UV_RUN_DEFAULT)
        }
        if stage >= 1 { uv_loop_close(uvLoop) }
        queue.withLock { $0.phase = .stopped }
        retired.store(true, ordering: .releasing)
        logger.error("UVLoop '\(name)' could not start: \(failure)")
    }

    /// Creates a loop and starts its thread, or throws why it cannot.
    ///
    /// - Parameters:
    ///   - name: A name for the thread and for diagnostics.
    ///   - logger: Where the loop logs; silent by default.
    /// - Throws: ``UVError`` such as ``UVError/tooManyOpenFiles`` when the process has no file
    ///   descriptor left, or ``UVError/wouldBlock`` (`EAGAIN`) when it cannot make a thread.
    public static func start(name: String = "AsyncUDP.loop", logger: Logger = UVLoop.silentLogger) throws(UVError) -> UVLoop {
        let loop = UVLoop(name: name, logger: logger)
        if let error = loop.startError { throw error }
        return loop
    }

    deinit {
        // Only reachable after the thread has exited (it holds a strong reference), or when the
        // loop never started.
        uvLoop.deallocate()
        wakeup.deallocate()
        turnEnd.deallocate()
        keepAwake.deallocate()
    }

    private final class StartContext {
        let loop: UVLoop
        let started: UnsafeMutablePointer<sem_t>
        init(loop: UVLoop, started: UnsafeMutablePointer<sem_t>) {
            self.loop = loop
            self.started = started
        }
    }

    /// Starts the loop thread; returns the error if it cannot.
    private func startThread() -> UVError? {
        wakeup.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        turnEnd.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        keepAwake.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        uv_check_start(turnEnd) { check in
            guard let check, let data = check.pointee.data else { return }
            Unmanaged<UVLoop>.fromOpaque(data).takeUnretainedValue().endOfTurn()
        }
        // The check handle must not keep the loop alive on its own.
        uv_unref(handle(turnEnd))

        let started = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
        sem_init(started, 0, 0)
        defer { sem_destroy(started); started.deallocate() }
        let context = Unmanaged.passRetained(StartContext(loop: self, started: started))
        let rc = pthread_create(&loopThread, nil, { raw in
            let context = Unmanaged<StartContext>.fromOpaque(raw!).takeRetainedValue()
            context.loop.threadMain(started: context.started)
            return nil
        }, context.toOpaque())
        if rc != 0 {
            context.release()
            uv_check_stop(turnEnd)
            return UVError(code: -rc, context: "UVLoop '\(name)': pthread_create")
        }
        threadStarted = true
        sem_wait(started)
        return nil
    }

    private func threadMain(started: UnsafeMutablePointer<sem_t>) {
        cuv_set_thread_name(name)
        cuv_set_current_loop(Unmanaged.passUnretained(self).toOpaque())
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
        uv_close(handle(wakeup), nil)
        uv_close(handle(turnEnd), nil)
        uv_close(handle(keepAwake), nil)
        uv_run(uvLoop, UV_RUN_DEFAULT)
        let rc = uv_loop_close(uvLoop)
        if rc != 0 {
            logger.error("UVLoop '\(name)': uv_loop_close: \(UVError(code: rc)); a handle outlived shutdown")
        }
        localStorage.removeAll()
        cuv_set_current_loop(nil)
        let waiters = queue.withLock { state in
            defer { state.shutdownWaiters.removeAll() }
            return state.shutdownWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Executor

    /// Whether the calling code runs on this loop's thread (or, after shutdown, is the thread
    /// currently running the loop's late work).
    ///
    /// A thread-local slot names the loop a thread serves: set when the loop thread starts,
    /// cleared when it retires, so a thread can never pass for a loop it does not run.
    public var inLoop: Bool {
        cuv_current_loop() == Unmanaged.passUnretained(self).toOpaque()
    }

    /// Traps with a clear message unless called on this loop's thread.
    ///
    /// - Parameters:
    ///   - what: What was attempted, for the message.
    ///   - file: The caller's file, for the message.
    ///   - line: The caller's line, for the message.
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
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws.
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

    /// The task executor for `Task(executorPreference:)` and `withTaskExecutorPreference(_:)`.
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

    @inline(__always)
    func run(_ job: Job) {
        switch job {
        case .actor(let job):
            job.runSynchronously(on: asUnownedSerialExecutor())
        case .task(let job):
            job.runSynchronously(on: asUnownedTaskExecutor())
        case .closure(let work):
            work()
        }
    }

    // MARK: Resources (loop thread only)

    func register(_ resource: any LoopResource) {
        resources[ObjectIdentifier(resource)] = resource
    }

    func unregister(_ resource: any LoopResource) {
        resources[ObjectIdentifier(resource)] = nil
        stopIfEverythingClosed()
    }

    /// The number of handles open on this loop (loop thread only).
    public var openHandleCount: Int {
        preconditionInLoop("openHandleCount")
        return resources.count
    }
}

/// A libuv handle pointer of any handle type, for `uv_close` and friends.
@inline(__always)
func handle<T>(_ pointer: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<uv_handle_t> {
    UnsafeMutableRawPointer(pointer).assumingMemoryBound(to: uv_handle_t.self)
}

/// Work deferred to the end of a loop turn; see ``UVLoop/runAtEndOfTurn(_:)``.
package protocol EndOfTurnWork: AnyObject {
    func endOfTurn()
}

/// Something open on a loop that the loop's shutdown must close.
protocol LoopResource: AnyObject {
    func closeForShutdown()
}

/// The lazily started ``UVLoop/shared``: started again on the next use if it could not start.
enum SharedLoop {
    private static let slot = LockedBox<UVLoop?>(nil)

    static func current() -> UVLoop {
        slot.withLock { loop in
            if let existing = loop, existing.startError == nil { return existing }
            let fresh = UVLoop(name: "AsyncUDP.shared")
            loop = fresh
            return fresh
        }
    }

    static func isShared(_ candidate: UVLoop) -> Bool {
        slot.withLock { $0 === candidate }
    }
}
