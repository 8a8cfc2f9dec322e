internal import CLibUV
internal import CUVShims
internal import Glibc
import Logging
import Synchronization

// The loop's job queue: how work from any thread reaches the loop thread, how the loop thread
// drains it, end-of-turn work, and what happens to work that arrives after shutdown.
extension UVLoop {
    /// Rounds of "everything queued so far" that one drain runs before libuv polls again. Jobs
    /// queued by the jobs of a round (a task hopping between the loop's actor and task roles)
    /// run in the next round; a bound keeps a task that yields in a loop from starving I/O.
    static let drainRounds = 16

    private enum SubmitAction { case none, keepAwake, startRetiredDrainer }

    func submit(_ job: Job) {
        let onLoop = inLoop
        let action: SubmitAction = queue.withLock { state in
            state.pending.append(job)
            switch state.phase {
            case .running, .stopping:
                if state.wakeupPending { return .none }
                state.wakeupPending = true
                if onLoop {
                    // The loop thread queues for itself: no system call; the idle handle keeps
                    // libuv from blocking until `endOfTurn` drains.
                    return .keepAwake
                }
                // Under the lock, so it cannot race with the loop closing `wakeup`.
                uv_async_send(wakeup)
                return .none
            case .stopped:
                if onLoop {
                    // The late-work drainer itself: it picks this up in its next round.
                    return .none
                }
                if state.retiredDrainerRunning { return .none }
                state.retiredDrainerRunning = true
                return .startRetiredDrainer
            }
        }
        switch action {
        case .none: break
        case .keepAwake: stayAwake()
        case .startRetiredDrainer: startRetiredDrainer()
        }
    }

    /// Loop thread: make the next poll non-blocking, so `endOfTurn` runs without waiting for I/O.
    func stayAwake() {
        guard !keepAwakeActive, !retired.load(ordering: .relaxed) else { return }
        keepAwakeActive = true
        uv_idle_start(keepAwake) { _ in }
    }

    /// Loop thread: runs what is queued, round by round (see ``drainRounds``). `wakeupPending`
    /// stays set while jobs remain, so submitters skip `uv_async_send`; the idle handle then
    /// brings the loop back here after one non-blocking poll.
    func drain() {
        for _ in 0..<Self.drainRounds {
            let more: Bool = queue.withLock { state in
                if state.pending.isEmpty {
                    state.wakeupPending = false
                    return false
                }
                swap(&state.pending, &draining)
                return true
            }
            guard more else { return }
            for job in draining { run(job) }
            draining.removeAll(keepingCapacity: true)
        }
        stayAwake()
    }

    // MARK: End of turn (loop thread only)

    /// Runs `work.endOfTurn()` once, after this turn's I/O callbacks (a `uv_check` handle), and
    /// keeps the loop from blocking until it has. Loop thread only.
    package func runAtEndOfTurn(_ work: any EndOfTurnWork) {
        if retired.load(ordering: .acquiring) {
            // After shutdown (the late-work drainer): there are no more turns; run it as a job.
            let bound = LoopBound(work, on: self)
            execute { bound.value.endOfTurn() }
            return
        }
        turnEndWork.append(work)
        stayAwake()
    }

    func endOfTurn() {
        // Work added by end-of-turn work runs in the same turn, a bounded number of times.
        for _ in 0..<Self.drainRounds where !turnEndWork.isEmpty {
            let work = turnEndWork
            turnEndWork.removeAll(keepingCapacity: true)
            for item in work { item.endOfTurn() }
        }
        // Tasks resumed by this turn's I/O may run on this loop (loop-affine consumers): run
        // them now rather than after another trip through epoll.
        drain()
        guard keepAwakeActive, turnEndWork.isEmpty else { return }
        let idle = queue.withLock { !$0.wakeupPending }
        if idle {
            keepAwakeActive = false
            uv_idle_stop(keepAwake)
        }
    }

    // MARK: Work after shutdown

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
            logger.error("UVLoop '\(name)': cannot start a thread for work after shutdown (\(UVError(code: -rc))); running it inline")
            drainRetired()
            return
        }
        pthread_detach(thread)
    }

    private func drainRetired() {
        let previous = cuv_current_loop()
        cuv_set_current_loop(Unmanaged.passUnretained(self).toOpaque())
        defer { cuv_set_current_loop(previous) }
        while true {
            let (jobs, warn): ([Job], Bool) = queue.withLock { state in
                if state.pending.isEmpty {
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
                logger.warning("UVLoop '\(name)' received work after shutdown(); running it on a thread of its own (its handles are closed)")
            }
            for job in jobs { run(job) }
        }
    }

    // MARK: Shutdown

    /// Whether ``shutdown()`` has been called, or the loop could not start.
    public var isShutDown: Bool {
        queue.withLock { $0.phase != .running }
    }

    /// Closes every handle still open on this loop, stops it and joins its thread.
    ///
    /// Pending sends on those handles complete with ``UVError/canceled`` and their close callbacks
    /// run before this returns. Calling it again (or concurrently) waits for the same shutdown and
    /// returns. It may be called from code running on the loop itself (a loop-bound actor): the
    /// caller then resumes, after the loop has stopped, as late work (see the type's discussion).
    ///
    /// ``shared`` cannot be shut down: the call returns at once and logs an error, since other
    /// code in the process may have sockets on it (``shutdownIfNotShared()`` throws instead).
    public func shutdown() async {
        if isShared {
            logger.error("UVLoop.shared cannot be shut down: other code in the process may use it; create a UVLoop of your own to shut down")
            return
        }
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
        joinThread()
    }

    /// Shuts the loop down like ``shutdown()``, or throws if it is ``shared``.
    ///
    /// - Throws: ``UVLoopError/sharedLoopShutdown`` for ``shared``.
    public func shutdownIfNotShared() async throws(UVLoopError) {
        if isShared { throw .sharedLoopShutdown }
        await shutdown()
    }

    private func joinThread() {
        let join = queue.withLock { state in
            defer { state.joined = true }
            return !state.joined
        }
        guard join, threadStarted else { return }
        if pthread_equal(pthread_self(), loopThread) != 0 {
            pthread_detach(loopThread)  // it cannot join itself
        } else {
            pthread_join(loopThread, nil)
        }
    }

    /// Loop thread: close everything, and let `uv_run` return once every handle has closed.
    ///
    /// A socket with a send or read in flight on another thread closes only when that call
    /// leaves (it hands the close back to the loop), so the loop keeps running until the last
    /// resource has unregistered: stopping earlier would strand that close after the loop ended,
    /// and whoever waits for the socket to close would wait forever.
    private func beginShutdown() {
        isShuttingDown = true
        for resource in Array(resources.values) {
            resource.closeForShutdown()
        }
        stopIfEverythingClosed()
    }

    /// Loop thread, during shutdown: stops `uv_run` once no resource is left open.
    func stopIfEverythingClosed() {
        if isShuttingDown && resources.isEmpty { uv_stop(uvLoop) }
    }
}

/// Errors of ``UVLoop`` itself.
public enum UVLoopError: Error, Hashable, Sendable, CustomStringConvertible {
    /// ``UVLoop/shared`` cannot be shut down: other code in the process may use it.
    case sharedLoopShutdown

    public var description: String {
        switch self {
        case .sharedLoopShutdown:
            "UVLoop.shared cannot be shut down: other code in the process may use it; create a UVLoop of your own to shut down"
        }
    }
}
