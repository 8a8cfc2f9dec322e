import Glibc

// Child processes with posix_spawn, not Foundation's Process: under AddressSanitizer,
// Foundation's Process.run() reads past the end of a readdir buffer
// (findMaximumOpenFromProcSelfFD copies a whole `dirent`), which aborts the test run as soon as
// the process has enough descriptors open (the 2,500-socket test does).

/// The `reliability-tool` binary built beside this test bundle (or `$RELIABILITY_TOOL`).
let reliabilityTool: String = {
    if let path = getenv("RELIABILITY_TOOL") { return String(cString: path) }
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let exe = count > 0 ? String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
    guard let slash = exe.lastIndex(of: "/") else { return "reliability-tool" }
    return String(exe[..<slash]) + "/reliability-tool"
}()

/// How long a test waits, by default, for a child's line or exit. It is the bound that fails
/// the test (with the output so far), far above what the slowest build needs, and below the
/// suites' time limits (2 and 3 minutes). When it passes, the child is killed: the test has
/// given up on it.
let childWait: Duration = .seconds(90)

/// The outcome of a finished child process.
struct ChildResult: Sendable, CustomStringConvertible {
    let status: Int32
    /// Standard output and standard error, interleaved.
    let output: String

    /// The `key=value` pairs of the last line that starts with "RESULT".
    var fields: [String: String] {
        guard let line = output.split(separator: "\n").last(where: { $0.hasPrefix("RESULT") }) else { return [:] }
        var fields: [String: String] = [:]
        for pair in line.split(separator: " ").dropFirst() {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        return fields
    }

    func int(_ key: String) -> Int? { fields[key].flatMap { Int($0) } }

    var description: String { "status \(status); output:\n\(output)" }
}

struct SpawnError: Error, CustomStringConvertible {
    let command: String
    let code: Int32
    var description: String { "cannot start \(command): \(String(cString: strerror(code)))" }
}

/// A pthread mutex (ThreadSanitizer understands it).
final class PosixLock: @unchecked Sendable {
    // Safe to share: the mutex is only used through pthread_mutex_lock/unlock.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }
    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// The environment children get: a PATH, and the sanitizer settings of this process.
private func childEnvironment() -> [String] {
    var environment = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    for key in ["ASAN_OPTIONS", "TSAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS"] {
        if let value = getenv(key) { environment.append("\(key)=\(String(cString: value))") }
    }
    return environment
}

/// `pipe2(2)` and `posix_spawn_file_actions_addclosefrom_np(3)` are in glibc (2.34+ for the
/// second), but Swift's Glibc module does not declare them (they need _GNU_SOURCE).
private typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32
private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32

/// Starts `arguments[0]` with standard input from /dev/null and standard output and error into
/// `outputFD` (or /dev/null when it is -1). The child gets no other descriptor of this process:
/// one it inherited by accident (another test's pipe) would keep that pipe from ever reaching
/// end of file.
private func spawn(_ arguments: [String], outputFD: Int32) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    if outputFD >= 0 {
        posix_spawn_file_actions_adddup2(&actions, outputFD, 1)
        posix_spawn_file_actions_adddup2(&actions, outputFD, 2)
    } else {
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    }
    if let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") {
        _ = unsafeBitCast(symbol, to: AddCloseFrom.self)(&actions, 3)
    }
    let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = childEnvironment().map { strdup($0) } + [nil]
    defer {
        for pointer in argv { free(pointer) }
        for pointer in envp { free(pointer) }
    }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, arguments[0], &actions, nil, argv, envp)
    guard rc == 0 else { throw SpawnError(command: arguments.joined(separator: " "), code: rc) }
    return pid
}

private let spawnLock = PosixLock()

/// A running child process. A thread of its own reads its output and reaps it, so waiting never
/// blocks Swift's cooperative threads. Every wait is bounded (`childWait` by default) and ends
/// early when the test is cancelled; either way the child is killed and the output so far, with
/// a note saying why, is what the test sees.
final class Child: @unchecked Sendable {
    // Safe to share: every mutable member is touched only under `lock`.
    private let lock = PosixLock()
    private let pid: pid_t
    private var output: [UInt8] = []
    private var status: Int32?

    /// What a suspended wait is waiting for.
    private enum Condition {
        case line(startingWith: String)
        case exit
    }
    private var waiters: [UInt64: (Condition, CheckedContinuation<Void, Never>)] = [:]
    /// Waits given up (timeout or cancellation) before they were registered.
    private var abandoned: Set<UInt64> = []
    private var nextWaiterID: UInt64 = 0

    init(_ arguments: [String]) throws {
        var fds: [Int32] = [-1, -1]
        // A close-on-exec pipe from the start (pipe2), and spawn under one lock, so that no
        // other child started here inherits it.
        pid = try spawnLock.withLock {
            guard let pipe2 = dlsym(nil, "pipe2") else { throw SpawnError(command: arguments[0], code: ENOSYS) }
            guard unsafeBitCast(pipe2, to: Pipe2.self)(&fds, O_CLOEXEC) == 0 else {
                throw SpawnError(command: arguments[0], code: errno)
            }
            do {
                return try spawn(arguments, outputFD: fds[1])
            } catch {
                close(fds[0])
                close(fds[1])
                throw error
            }
        }
        close(fds[1])
        let context = Unmanaged.passRetained(ReaderContext(child: self, fd: fds[0])).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let context = Unmanaged<ReaderContext>.fromOpaque(raw!).takeRetainedValue()
            context.child.readUntilExit(fd: context.fd)
            return nil
        }, context)
        precondition(rc == 0, "pthread_create: \(rc)")
        pthread_detach(thread)
    }

    private final class ReaderContext {
        let child: Child
        let fd: Int32
        init(child: Child, fd: Int32) {
            self.child = child
            self.fd = fd
        }
    }

    private func hasLine(startingWith prefix: String) -> Bool {
        String(decoding: output, as: UTF8.self).split(separator: "\n").contains { $0.hasPrefix(prefix) }
    }

    /// Whether `condition` holds. Call under `lock`.
    private func holds(_ condition: Condition) -> Bool {
        switch condition {
        case .line(let prefix): hasLine(startingWith: prefix)
        case .exit: status != nil
        }
    }

    /// Removes and returns the waiters whose condition holds (all of them once the child has
    /// been reaped). Call under `lock`.
    private func readyWaiters() -> [CheckedContinuation<Void, Never>] {
        let ready = waiters.filter { status != nil || holds($0.value.0) }
        for id in ready.keys { waiters[id] = nil }
        return ready.values.map(\.1)
    }

    /// Reader thread: collect output until EOF, then reap the child and wake every waiter.
    private func readUntilExit(fd: Int32) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            let ready = lock.withLock {
                output.append(contentsOf: buffer[0..<count])
                return readyWaiters()
            }
            for continuation in ready { continuation.resume() }
        }
        close(fd)
        // Wait for the exit without reaping, then reap under the lock, so that `kill` (always
        // under the lock, and only while `status` is nil) never meets a reused number.
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR {}
        let ready = lock.withLock {
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            // Exit status, or 128 + signal number as a shell reports it.
            status = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
            return readyWaiters()
        }
        for continuation in ready { continuation.resume() }
    }

    /// Suspends until `condition` holds or the child has been reaped. After `timeout`, or when
    /// the test is cancelled (its time limit), it gives up: the child is killed and a note
    /// saying why joins its output.
    private func suspend(until condition: Condition, timeout: Duration, what: String) async {
        let id = lock.withLock {
            nextWaiterID += 1
            return nextWaiterID
        }
        let timer = Task { [self] in
            do {
                try await Task.sleep(for: timeout)
                giveUp(id, because: "no \(what) within \(timeout)")
            } catch {
                // Cancelled: the wait ended first.
            }
        }
        defer { timer.cancel() }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now: Bool = lock.withLock {
                    if holds(condition) || status != nil || abandoned.remove(id) != nil { return true }
                    waiters[id] = (condition, continuation)
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            giveUp(id, because: "the test was cancelled (time limit?) while it waited for \(what)")
        }
    }

    /// Ends the wait `id` (now, or as soon as it registers), and kills the child.
    private func giveUp(_ id: UInt64, because reason: String) {
        let waiter: CheckedContinuation<Void, Never>? = lock.withLock {
            if status == nil {
                output.append(contentsOf: Array("\n[test] \(reason): killed it (SIGKILL)\n".utf8))
                _ = kill(pid, SIGKILL)
            }
            guard let waiter = waiters.removeValue(forKey: id) else {
                abandoned.insert(id)
                return nil
            }
            return waiter.1
        }
        waiter?.resume()
    }

    /// Waits until the child prints a line starting with `prefix`; false if it exits first, or
    /// if `timeout` passes (then it is killed).
    func waitForLine(startingWith prefix: String, timeout: Duration = childWait) async -> Bool {
        await suspend(until: .line(startingWith: prefix), timeout: timeout, what: "line starting with \(prefix)")
        return lock.withLock { hasLine(startingWith: prefix) }
    }

    /// Waits for the child to exit and returns its status and output. If it is still running
    /// after `timeout`, it is killed and the result has status -1 and the output so far.
    func wait(timeout: Duration = childWait) async -> ChildResult {
        await suspend(until: .exit, timeout: timeout, what: "exit")
        return lock.withLock {
            ChildResult(status: status ?? -1, output: String(decoding: output, as: UTF8.self))
        }
    }

    /// Sends SIGTERM unless the child has already been reaped.
    func terminate() {
        lock.withLock {
            if status == nil { _ = kill(pid, SIGTERM) }
        }
    }
}

/// Runs a command to completion (at most `timeout`: then it is killed) and returns its result.
func run(_ arguments: [String], timeout: Duration = childWait) async throws -> ChildResult {
    try await Child(arguments).wait(timeout: timeout)
}

/// Runs a command synchronously (setup and cleanup paths), output discarded; returns its exit
/// status, or -1 if it could not start.
@discardableResult
func runSync(_ arguments: [String]) -> Int32 {
    guard let pid = try? spawnLock.withLock({ try spawn(arguments, outputFD: -1) }) else { return -1 }
    var raw: Int32 = 0
    while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
    return (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
}

/// Runs blocking work (process spawns and `waitpid`) on a thread of its own and awaits it, so it
/// never holds one of the few cooperative threads that every other test's tasks need: with two
/// cores there are two, and a namespace set-up that blocks them stalls unrelated tests' timers.
func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let box = OffPoolWork { continuation.resume(with: Result { try work() }) }
        var thread = pthread_t()
        let context = Unmanaged.passRetained(box).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            Unmanaged<OffPoolWork>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, context)
        if rc != 0 {
            Unmanaged<OffPoolWork>.fromOpaque(context).release()
            continuation.resume(with: Result { try work() })  // no thread: block here instead
            return
        }
        pthread_detach(thread)
    }
}

/// The work ``offPool(_:)`` hands to its thread.
private final class OffPoolWork: @unchecked Sendable {
    // Safe: written once before the thread starts, called once on it.
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
