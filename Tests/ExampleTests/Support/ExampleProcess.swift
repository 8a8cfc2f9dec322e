import Foundation
import Glibc
import Testing

/// Where `swift build` / `swift test` put the example binaries: the directory of the test
/// runner (`.build/<triple>/<configuration>/`), or `EXAMPLES_BIN_DIR` if set.
let examplesDirectory: URL = {
    if let override = ProcessInfo.processInfo.environment["EXAMPLES_BIN_DIR"] {
        return URL(fileURLWithPath: override)
    }
    var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    // Walk up (the runner may sit inside a bundle) to the directory that holds the binaries.
    for _ in 0..<4 {
        if FileManager.default.isExecutableFile(atPath: directory.appendingPathComponent("udp-echo").path) {
            return directory
        }
        directory.deleteLastPathComponent()
    }
    return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
}()

/// Whether an external program is on `PATH` (`socat` for example).
func isInstalled(_ program: String) -> Bool {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    return path.split(separator: ":").contains {
        FileManager.default.isExecutableFile(atPath: "\($0)/\(program)")
    }
}

/// How long a test waits, by default, for a child to print what it expects or to exit. It is
/// the one bound that fails a test, with the output so far; it is far above what the slowest
/// build needs (the AddressSanitizer build with the whole suite running beside it on 2 busy
/// cores) and below the suites' time limit. Peers never give up before it: they wait for an
/// explicit end (see `pythonPeerPrelude`) or `peerDeadlineSeconds`.
let childWait: Duration = .seconds(60)

enum OutputStream: Sendable { case stdout, stderr }

struct ProcessTimeout: Error, CustomStringConvertible {
    var description: String
}

/// A child process with piped standard input, output and error, for tests: output is collected
/// as it arrives by a thread of its own, every wait has a bound and fails with the output so
/// far, and `terminate()` (call it in a `defer`) always ends the process.
///
/// `@unchecked Sendable`: the output lives in `state` (locked); the input descriptor is only
/// used under `inputLock`.
final class ExampleProcess: @unchecked Sendable {
    let name: String
    private let state: ChildState
    private let inputLock = NSLock()
    private var inputFD: Int32

    /// Starts `executable` with `arguments`; `name` (the file name by default) is what
    /// failure messages call it.
    init(executable: URL, arguments: [String], name: String? = nil) throws {
        self.name = name ?? executable.lastPathComponent
        let input = try closeOnExecPipe()
        let output = try closeOnExecPipe()
        let errors = try closeOnExecPipe()
        let pid: pid_t
        do {
            pid = try spawn(executable.path, [executable.path] + arguments,
                            stdin: input.read, stdout: output.write, stderr: errors.write)
        } catch {
            for fd in [input.read, input.write, output.read, output.write, errors.read, errors.write] { close(fd) }
            throw error
        }
        // The child's ends belong to the child now.
        close(input.read)
        close(output.write)
        close(errors.write)
        inputFD = input.write
        state = ChildState(pid: pid, stdoutFD: output.read, stderrFD: errors.read)
    }

    /// Starts the example program `name` (`udp-echo`, `udpcat`, ...).
    convenience init(example: String, _ arguments: [String]) throws {
        try self.init(executable: examplesDirectory.appendingPathComponent(example), arguments: arguments)
    }

    /// Starts an external program found on `PATH`.
    convenience init(program: String, _ arguments: [String]) throws {
        try self.init(executable: URL(fileURLWithPath: "/usr/bin/env"), arguments: [program] + arguments, name: program)
    }

    /// Everything the process has written to `stream` so far.
    func text(_ stream: OutputStream) -> String {
        state.snapshot.text(stream)
    }

    /// Whether the process has exited and all its output has been read.
    var hasFinished: Bool { state.snapshot.status != nil }

    /// Writes to the process's standard input (nothing happens once it is closed, or if the
    /// process has stopped reading by exiting).
    func write(_ text: String) {
        inputLock.withLock {
            var bytes = Array(text.utf8)[...]
            while inputFD >= 0, !bytes.isEmpty {
                let count = bytes.withUnsafeBytes { Glibc.write(inputFD, $0.baseAddress, $0.count) }
                if count < 0 {
                    if errno == EINTR { continue }
                    return  // EPIPE: the process is gone; its exit status will say why
                }
                bytes = bytes.dropFirst(count)
            }
        }
    }

    /// Closes the process's standard input (end of file). Idempotent.
    func closeInput() {
        inputLock.withLock {
            if inputFD >= 0 { close(inputFD) }
            inputFD = -1
        }
    }

    /// Waits until `check` returns a value for what the process has printed so far; throws,
    /// with the output so far, if the process finishes first, if `timeout` passes, or if the
    /// test is cancelled (its time limit).
    private func wait<T>(for what: String, timeout: Duration, _ check: (ChildSnapshot) -> T?) async throws -> T {
        let start = ContinuousClock.now
        while true {
            // One snapshot for both questions: a status is only set once all output is in, so
            // "finished without a match" is never a match not read yet.
            let snapshot = state.snapshot
            if let value = check(snapshot) { return value }
            let why: String
            if let status = snapshot.status {
                why = "exited (status \(status)) before \(what)"
            } else if ContinuousClock.now - start >= timeout {
                why = "still running after \(timeout) without \(what)"
            } else {
                do {
                    // A poll interval, not a synchronisation: the loop re-checks the output.
                    try await Task.sleep(for: .milliseconds(10))
                    continue
                } catch {
                    why = "test cancelled (time limit?) after \(ContinuousClock.now - start) waiting for \(what)"
                }
            }
            let last = state.snapshot
            throw ProcessTimeout(description: "\(name): \(why)\nstdout: \(last.stdout)\nstderr: \(last.stderr)")
        }
    }

    /// Waits until `pattern` (a regular expression) matches `stream`, and returns the match's
    /// captures (the whole match first). Throws, with the output so far, if the process exits
    /// first or `timeout` passes.
    @discardableResult
    func waitFor(_ pattern: String, in stream: OutputStream, timeout: Duration = childWait) async throws -> [String] {
        let regex = try Regex(pattern)
        return try await wait(for: "/\(pattern)/ on \(stream)", timeout: timeout) { snapshot in
            snapshot.text(stream).firstMatch(of: regex).map { match in
                match.output.map { $0.substring.map(String.init) ?? "" }
            }
        }
    }

    /// Waits until `pattern` matches at least `count` times on `stream`.
    func waitFor(count: Int, of pattern: String, in stream: OutputStream, timeout: Duration = childWait) async throws {
        let regex = try Regex(pattern)
        try await wait(for: "\(count) × /\(pattern)/ on \(stream)", timeout: timeout) { snapshot in
            snapshot.text(stream).matches(of: regex).count >= count ? () : nil
        }
    }

    /// Waits for the process to exit (and for the end of its output) and returns its status;
    /// throws, with the output so far, after killing it, if it is still running at the deadline.
    func waitForExit(timeout: Duration = childWait) async throws -> Int32 {
        let status: Int32
        do {
            status = try await wait(for: "its exit", timeout: timeout) { $0.status }
        } catch {
            terminate()
            throw error
        }
        // Under `swift test --sanitize=thread` the examples are built with TSan too: a report
        // on their standard error fails the test that ran them.
        let errors = text(.stderr)
        for sanitizer in ["ThreadSanitizer", "AddressSanitizer", "LeakSanitizer"] where errors.contains("WARNING: \(sanitizer)") || errors.contains("ERROR: \(sanitizer)") {
            Issue.record("\(name) reported a \(sanitizer) problem:\n\(errors)")
        }
        return status
    }

    /// Sends `signal` (SIGINT by default) to the process.
    func interrupt(_ signal: Int32 = SIGINT) {
        state.signal(signal)
    }

    /// Ends the process if it still runs (SIGKILL) and closes its input. Idempotent; does not
    /// wait (the output thread reaps it).
    func terminate() {
        state.signal(SIGKILL)
        closeInput()
    }

    deinit { terminate() }
}
