import Foundation
import Glibc

// Child processes for the example tests, with posix_spawn rather than Foundation's Process:
// - Process.run() overreads a readdir buffer under AddressSanitizer when the test process has
//   many descriptors open (see .ci/asan-suppressions.txt), and other tests open thousands.
// - Foundation's pipes are not close-on-exec, so a child started at the same moment by another
//   test could inherit one and hold it open: output would never reach end of file.
// - A child of Process inherits the test runner's blocked signals; here it starts with an empty
//   mask and default dispositions, as from a shell.
// Output is "complete" only at end of file on both pipes, not when the process has exited: what
// a child prints just before it exits is always seen.

/// `pipe2(2)` and `posix_spawn_file_actions_addclosefrom_np(3)` are in glibc (2.34+ for the
/// second), but Swift's Glibc module does not declare them (they need _GNU_SOURCE).
private typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32
private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32

/// A pipe whose two ends are close-on-exec from the start (no window in which a concurrent
/// spawn elsewhere in this process could inherit them).
func closeOnExecPipe() throws -> (read: Int32, write: Int32) {
    var fds: [Int32] = [-1, -1]
    guard let symbol = dlsym(nil, "pipe2") else { throw SpawnFailure(what: "pipe2", code: ENOSYS) }
    guard unsafeBitCast(symbol, to: Pipe2.self)(&fds, O_CLOEXEC) == 0 else {
        throw SpawnFailure(what: "pipe2", code: errno)
    }
    return (fds[0], fds[1])
}

struct SpawnFailure: Error, CustomStringConvertible {
    let what: String
    let code: Int32
    var description: String { "\(what): \(String(cString: strerror(code)))" }
}

/// Writing to a child that has exited must fail with EPIPE, not kill the test runner.
private let ignoreSIGPIPE: Void = { _ = signal(SIGPIPE, SIG_IGN) }()

/// Starts `path` with `arguments` (argv[0] included), this process's environment, and the given
/// descriptors as its standard input, output and error; every other descriptor is closed.
func spawn(_ path: String, _ arguments: [String], stdin: Int32, stdout: Int32, stderr: Int32) throws -> pid_t {
    _ = ignoreSIGPIPE
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, stdin, 0)
    posix_spawn_file_actions_adddup2(&actions, stdout, 1)
    posix_spawn_file_actions_adddup2(&actions, stderr, 2)
    if let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") {
        _ = unsafeBitCast(symbol, to: AddCloseFrom.self)(&actions, 3)
    }

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    var everySignal = sigset_t()
    sigfillset(&everySignal)
    sigdelset(&everySignal, SIGKILL)
    sigdelset(&everySignal, SIGSTOP)
    posix_spawnattr_setsigdefault(&attributes, &everySignal)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

    let environment = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
    let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
    defer {
        for pointer in argv { free(pointer) }
        for pointer in envp { free(pointer) }
    }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
    guard rc == 0 else { throw SpawnFailure(what: "cannot start \(path)", code: rc) }
    return pid
}

/// What a child has printed so far, and its exit status once it has finished.
struct ChildSnapshot: Sendable {
    var stdout: String
    var stderr: String
    /// Set once both output pipes are at end of file and the child has been reaped: the exit
    /// status, or 128 + the signal number that ended it (as a shell reports it).
    var status: Int32?

    func text(_ stream: OutputStream) -> String { stream == .stdout ? stdout : stderr }
}

/// The output and fate of one child, filled in by a thread of its own (so no Swift task ever
/// blocks on a pipe or in waitpid).
///
/// `@unchecked Sendable`: every mutable member is touched only under `lock`.
final class ChildState: @unchecked Sendable {
    let pid: pid_t
    private let lock = NSLock()
    private var output: [[UInt8]] = [[], []]
    private var status: Int32?

    /// Starts the thread that reads `stdoutFD` and `stderrFD` to end of file (and closes them),
    /// then reaps `pid`.
    init(pid: pid_t, stdoutFD: Int32, stderrFD: Int32) {
        self.pid = pid
        let context = Unmanaged.passRetained(PumpContext(state: self, fds: (stdoutFD, stderrFD))).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let context = Unmanaged<PumpContext>.fromOpaque(raw!).takeRetainedValue()
            context.state.pump(context.fds.0, context.fds.1)
            return nil
        }, context)
        precondition(rc == 0, "pthread_create: \(rc)")
        pthread_detach(thread)
    }

    private final class PumpContext {
        let state: ChildState
        let fds: (Int32, Int32)
        init(state: ChildState, fds: (Int32, Int32)) {
            self.state = state
            self.fds = fds
        }
    }

    var snapshot: ChildSnapshot {
        lock.withLock {
            ChildSnapshot(stdout: String(decoding: output[0], as: UTF8.self),
                          stderr: String(decoding: output[1], as: UTF8.self), status: status)
        }
    }

    /// Sends `signal` unless the child has been reaped (so the number cannot belong to another
    /// process by now).
    func signal(_ signal: Int32) {
        lock.withLock {
            if status == nil { _ = kill(pid, signal) }
        }
    }

    private func pump(_ stdoutFD: Int32, _ stderrFD: Int32) {
        var fds = [pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: stderrFD, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while fds.contains(where: { $0.fd >= 0 }) {
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                preconditionFailure("poll: \(String(cString: strerror(errno)))")
            }
            for index in fds.indices where fds[index].fd >= 0 && fds[index].revents != 0 {
                let count = buffer.withUnsafeMutableBytes { read(fds[index].fd, $0.baseAddress, $0.count) }
                if count < 0 && errno == EINTR { continue }
                if count <= 0 {
                    close(fds[index].fd)
                    fds[index].fd = -1  // poll ignores it from now on
                    continue
                }
                lock.withLock { output[index].append(contentsOf: buffer[0..<count]) }
            }
        }
        // Wait for the exit without reaping, then reap under the lock: `signal(_:)` never sees
        // a number that has been reaped and reused.
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR {}
        lock.withLock {
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            status = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
        }
    }
}
