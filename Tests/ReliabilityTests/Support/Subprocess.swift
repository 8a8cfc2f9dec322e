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

/// Starts `arguments[0]` with standard input from /dev/null and standard output and error into
/// `outputFD` (or /dev/null when it is -1).
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
/// blocks Swift's cooperative threads.
final class Child: @unchecked Sendable {
    // Safe to share: every mutable member is touched only under `lock`.
    private let lock = PosixLock()
    private let pid: pid_t
    private var output: [UInt8] = []
    private var status: Int32?
    private var lineWaiters: [(String, CheckedContinuation<Bool, Never>)] = []
    private var exitWaiters: [CheckedContinuation<ChildResult, Never>] = []

    init(_ arguments: [String]) throws {
        var fds: [Int32] = [-1, -1]
        // Pipe, close-on-exec and spawn under one lock, so that no other child started here
        // inherits this pipe (pipe2 is not visible from Swift's Glibc module).
        pid = try spawnLock.withLock {
            guard pipe(&fds) == 0 else { throw SpawnError(command: arguments[0], code: errno) }
            _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
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

    /// Reader thread: collect output until EOF, then reap the child and wake every waiter.
    private func readUntilExit(fd: Int32) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            let ready: [CheckedContinuation<Bool, Never>] = lock.withLock {
                output.append(contentsOf: buffer[0..<count])
                var ready: [CheckedContinuation<Bool, Never>] = []
                lineWaiters.removeAll { prefix, continuation in
                    guard hasLine(startingWith: prefix) else { return false }
                    ready.append(continuation)
                    return true
                }
                return ready
            }
            for continuation in ready { continuation.resume(returning: true) }
        }
        close(fd)
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
        // Exit status, or 128 + signal number as a shell reports it.
        let code: Int32 = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
        let (lines, exits, result): ([CheckedContinuation<Bool, Never>], [CheckedContinuation<ChildResult, Never>], ChildResult) = lock.withLock {
            status = code
            defer { lineWaiters.removeAll(); exitWaiters.removeAll() }
            return (lineWaiters.map(\.1), exitWaiters, ChildResult(status: code, output: String(decoding: output, as: UTF8.self)))
        }
        for line in lines { line.resume(returning: false) }
        for waiter in exits { waiter.resume(returning: result) }
    }

    /// Waits until the child prints a line starting with `prefix`; false if it exits first.
    func waitForLine(startingWith prefix: String) async -> Bool {
        await withCheckedContinuation { continuation in
            let done: Bool? = lock.withLock {
                if hasLine(startingWith: prefix) { return true }
                if status != nil { return false }
                lineWaiters.append((prefix, continuation))
                return nil
            }
            if let done { continuation.resume(returning: done) }
        }
    }

    /// Waits for the child to exit and returns its status and output.
    func wait() async -> ChildResult {
        await withCheckedContinuation { continuation in
            let result: ChildResult? = lock.withLock {
                guard let status else {
                    exitWaiters.append(continuation)
                    return nil
                }
                return ChildResult(status: status, output: String(decoding: output, as: UTF8.self))
            }
            if let result { continuation.resume(returning: result) }
        }
    }

    /// Sends SIGTERM unless the child has already been reaped.
    func terminate() {
        lock.withLock {
            if status == nil { _ = kill(pid, SIGTERM) }
        }
    }
}

/// Runs a command to completion and returns its result.
func run(_ arguments: [String]) async throws -> ChildResult {
    try await Child(arguments).wait()
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
