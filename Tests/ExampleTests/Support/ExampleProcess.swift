import Foundation
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

enum OutputStream: Sendable { case stdout, stderr }

struct ProcessTimeout: Error, CustomStringConvertible {
    var description: String
}

/// A child process with piped standard input, output and error, for tests: output is collected
/// as it arrives, every wait has a deadline, and `terminate()` (call it in a `defer`) always
/// ends the process.
///
/// `@unchecked Sendable`: the mutable output buffers are only touched under `lock`; `process`
/// and the pipes are set up in `init` and then only used through their thread-safe methods.
final class ExampleProcess: @unchecked Sendable {
    let name: String
    private let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private let errors = Pipe()
    private let lock = NSLock()
    private var collected: [OutputStream: Data] = [.stdout: Data(), .stderr: Data()]

    /// Starts `executable` with `arguments`.
    init(executable: URL, arguments: [String]) throws {
        name = executable.lastPathComponent
        process.executableURL = executable
        process.arguments = arguments
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        for (pipe, stream) in [(output, OutputStream.stdout), (errors, .stderr)] {
            pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
                let data = handle.availableData
                guard let self else { return }
                if data.isEmpty {
                    handle.readabilityHandler = nil
                    return
                }
                self.lock.withLock { self.collected[stream]!.append(data) }
            }
        }
        try process.run()
    }

    /// Starts the example program `name` (`udp-echo`, `udpcat`, ...).
    convenience init(example: String, _ arguments: [String]) throws {
        try self.init(executable: examplesDirectory.appendingPathComponent(example), arguments: arguments)
    }

    /// Starts an external program found on `PATH`.
    convenience init(program: String, _ arguments: [String]) throws {
        try self.init(executable: URL(fileURLWithPath: "/usr/bin/env"), arguments: [program] + arguments)
    }

    /// Everything the process has written to `stream` so far.
    func text(_ stream: OutputStream) -> String {
        lock.withLock { String(decoding: collected[stream]!, as: UTF8.self) }
    }

    /// Writes to the process's standard input.
    func write(_ text: String) {
        input.fileHandleForWriting.write(Data(text.utf8))
    }

    /// Closes the process's standard input (end of file).
    func closeInput() {
        try? input.fileHandleForWriting.close()
    }

    /// Polls `stream` until `pattern` (a regular expression) matches, and returns the match's
    /// captures (the whole match first). Throws if the deadline passes or the process exits
    /// first without matching.
    @discardableResult
    func waitFor(_ pattern: String, in stream: OutputStream, timeout: Duration = .seconds(10)) async throws -> [String] {
        let regex = try Regex(pattern)
        let deadline = ContinuousClock.now + timeout
        while true {
            if let match = self.text(stream).firstMatch(of: regex) {
                return match.output.map { $0.substring.map(String.init) ?? "" }
            }
            guard process.isRunning, ContinuousClock.now < deadline else {
                throw ProcessTimeout(description: """
                    \(name): no /\(pattern)/ on \(stream) \(process.isRunning ? "within \(timeout)" : "before it exited")
                    stdout: \(text(.stdout))
                    stderr: \(text(.stderr))
                    """)
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Polls `stream` until `pattern` matches at least `count` times.
    func waitFor(count: Int, of pattern: String, in stream: OutputStream, timeout: Duration = .seconds(10)) async throws {
        let regex = try Regex(pattern)
        let deadline = ContinuousClock.now + timeout
        while text(stream).matches(of: regex).count < count {
            guard process.isRunning, ContinuousClock.now < deadline else {
                throw ProcessTimeout(description: """
                    \(name): fewer than \(count) /\(pattern)/ on \(stream)
                    stdout: \(text(.stdout))
                    stderr: \(text(.stderr))
                    """)
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Waits for the process to exit and returns its status; throws (after killing it) if it
    /// is still running at the deadline.
    func waitForExit(timeout: Duration = .seconds(10)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            guard ContinuousClock.now < deadline else {
                terminate()
                throw ProcessTimeout(description: "\(name) did not exit within \(timeout)\nstdout: \(text(.stdout))\nstderr: \(text(.stderr))")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        // Let the readability handlers take the last bytes.
        try await Task.sleep(for: .milliseconds(20))
        // Under `swift test --sanitize=thread` the examples are built with TSan too: a report
        // on their standard error fails the test that ran them.
        let errors = text(.stderr)
        for sanitizer in ["ThreadSanitizer", "AddressSanitizer", "LeakSanitizer"] where errors.contains("WARNING: \(sanitizer)") || errors.contains("ERROR: \(sanitizer)") {
            Issue.record("\(name) reported a \(sanitizer) problem:\n\(errors)")
        }
        return process.terminationStatus
    }

    /// Sends `signal` (SIGINT by default) to the process.
    func interrupt(_ signal: Int32 = SIGINT) {
        if process.isRunning { kill(process.processIdentifier, signal) }
    }

    /// Ends the process if it still runs (SIGKILL), and reaps it. Idempotent.
    ///
    /// SIGKILL because a child of the test runner inherits its blocked signal mask (the runner's
    /// threads block SIGTERM and SIGINT), so Python or socat would not die of SIGTERM. The
    /// examples handle SIGINT/SIGTERM with a dispatch source, which works all the same; tests
    /// that check a graceful exit use ``interrupt(_:)`` and ``waitForExit(timeout:)``.
    func terminate() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit { terminate() }
}

/// Runs a Python 3 script (`python3 -c`) with `arguments` and returns it, started.
func python(_ script: String, _ arguments: [String] = []) throws -> ExampleProcess {
    try ExampleProcess(program: "python3", ["-c", script] + arguments)
}
