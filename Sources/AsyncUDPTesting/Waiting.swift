// The waiting machinery behind every helper in this module: a deadline that always returns in
// time, and state that tasks can wait on until a condition over it holds.
import UVCore

/// A wait in a test ended at its deadline before what it waited for happened.
///
/// Every waiting helper in AsyncUDPTesting throws this instead of hanging, so a test that
/// expects a datagram that never comes fails at once with a message that says what was awaited:
///
/// ```
/// timed out after 0.5 seconds waiting for: a datagram at the test peer 127.0.0.1:40123 (3 received so far)
/// ```
public struct TestTimeoutError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What the test waited for.
    public let what: String
    /// How long it waited.
    public let duration: Duration

    /// Creates the error for a wait of `duration` for `what`.
    public init(waitingFor what: String, after duration: Duration) {
        self.what = what
        self.duration = duration
    }

    public var description: String { "timed out after \(duration) waiting for: \(what)" }
}

/// Runs `operation` and returns what it returns, or throws ``TestTimeoutError`` once `duration`
/// has passed without it finishing.
///
/// ```swift
/// let reply = try await withDeadline(.seconds(2), "the echo") {
///     try await client.receive()
/// }
/// ```
///
/// At the deadline the operation is cancelled and this returns at once, even if the operation
/// ignores cancellation (it then finishes on its own, unobserved); so a test never hangs here.
/// If the task that calls this is cancelled, the operation is cancelled too and this throws
/// `CancellationError`.
///
/// - Parameters:
///   - duration: How long the operation may take (measured with `ContinuousClock`).
///   - what: What the operation waits for, for the error's message.
///   - operation: The work; it runs in a task of its own.
/// - Returns: What `operation` returns.
/// - Throws: ``TestTimeoutError`` at the deadline; what `operation` throws; `CancellationError`.
public func withDeadline<T: Sendable>(
    _ duration: Duration,
    _ what: String = "the operation",
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    let outcome = OneShot<T>()
    let work = Task { outcome.complete(await Result { try await operation() }) }
    let timer = Task {
        // Cancelled once the outcome is known; then it decides nothing.
        if (try? await Task.sleep(for: duration)) != nil {
            outcome.complete(.failure(TestTimeoutError(waitingFor: what, after: duration)))
        }
    }
    defer {
        work.cancel()
        timer.cancel()
    }
    return try await withTaskCancellationHandler {
        try await outcome.value()
    } onCancel: {
        outcome.complete(.failure(CancellationError()))
    }
}

extension Result where Failure == any Error {
    /// The outcome of an async throwing body.
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

/// A result set once, by the first of several racers, and awaited by one task.
final class OneShot<T: Sendable>: @unchecked Sendable {
    // Safe to share: `result` and `waiter` are only read or written while `lock` is held, and
    // continuations are resumed after it is released.
    private let lock = PThreadLock()
    private var result: Result<T, any Error>?
    private var waiter: CheckedContinuation<T, any Error>?

    /// Sets the result unless one is set already; wakes the waiter.
    func complete(_ value: Result<T, any Error>) {
        let waiter: CheckedContinuation<T, any Error>? = lock.withLock {
            guard result == nil else { return nil }
            result = value
            defer { self.waiter = nil }
            return self.waiter
        }
        waiter?.resume(with: value)
    }

    /// Waits for the result.
    func value() async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let ready: Result<T, any Error>? = lock.withLock {
                if let result { return result }
                waiter = continuation
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }
}

/// What a new wait finds.
private enum WaitStart { case wait, ready, cancelled }

/// State guarded by a lock, that tasks can wait on until a condition over it holds.
final class Watched<State: Sendable>: @unchecked Sendable {
    // Safe to share: `state`, `waiters` and `nextID` are only read or written while `lock` is
    // held; continuations are resumed after it is released.
    private let lock = PThreadLock()
    private var state: State
    private var waiters: [Int: Waiter] = [:]
    private var nextID = 0

    private struct Waiter {
        let condition: @Sendable (State) -> Bool
        let continuation: CheckedContinuation<Void, any Error>
    }

    init(_ state: State) { self.state = state }

    /// Reads the state.
    func read<R>(_ body: (State) throws -> R) rethrows -> R {
        try lock.withLock { try body(state) }
    }

    /// Changes the state and wakes every waiter whose condition now holds.
    @discardableResult
    func update<R>(_ body: (inout State) throws -> R) rethrows -> R {
        var ready: [CheckedContinuation<Void, any Error>] = []
        let result = try lock.withLock {
            let result = try body(&state)
            for (id, waiter) in waiters where waiter.condition(state) {
                waiters[id] = nil
                ready.append(waiter.continuation)
            }
            return result
        }
        for continuation in ready { continuation.resume() }
        return result
    }

    /// Waits until `condition` holds (returns at once if it does). Throws `CancellationError`
    /// when the task is cancelled first.
    func wait(until condition: @escaping @Sendable (State) -> Bool) async throws {
        let id = lock.withLock {
            nextID += 1
            return nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let now: WaitStart = lock.withLock {
                    if condition(state) { return .ready }
                    // Checked under the lock: a cancellation after this finds the waiter below.
                    if Task.isCancelled { return .cancelled }
                    waiters[id] = Waiter(condition: condition, continuation: continuation)
                    return .wait
                }
                switch now {
                case .ready: continuation.resume()
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .wait: break
                }
            }
        } onCancel: {
            let waiter = lock.withLock { waiters.removeValue(forKey: id) }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Waits until `condition` holds, for at most `duration`.
    ///
    /// - Throws: ``TestTimeoutError`` (whose message is `what()`, read at the deadline).
    func wait(until condition: @escaping @Sendable (State) -> Bool, within duration: Duration,
              _ what: @escaping @Sendable (State) -> String) async throws {
        do {
            try await withDeadline(duration) { try await self.wait(until: condition) }
        } catch let timeout as TestTimeoutError {
            throw TestTimeoutError(waitingFor: read(what), after: timeout.duration)
        }
    }
}
