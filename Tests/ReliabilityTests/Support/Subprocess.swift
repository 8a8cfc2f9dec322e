import Foundation
import Glibc

/// The `reliability-tool` binary built beside this test bundle (or `$RELIABILITY_TOOL`).
let reliabilityTool: String = {
    if let path = ProcessInfo.processInfo.environment["RELIABILITY_TOOL"] { return path }
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    return exe.deletingLastPathComponent().appendingPathComponent("reliability-tool").path
}()

/// The outcome of a finished child process.
struct ChildResult: Sendable, CustomStringConvertible {
    let status: Int32
    let stdout: String
    let stderr: String

    /// The `key=value` pairs of the last line that starts with "RESULT".
    var fields: [String: String] {
        guard let line = stdout.split(separator: "\n").last(where: { $0.hasPrefix("RESULT") }) else { return [:] }
        var fields: [String: String] = [:]
        for pair in line.split(separator: " ").dropFirst() {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        return fields
    }

    func int(_ key: String) -> Int? { fields[key].flatMap { Int($0) } }

    var description: String { "status \(status)\nstdout: \(stdout)\nstderr: \(stderr)" }
}

/// A running child process whose output is collected; `wait()` returns once it has exited.
final class Child: @unchecked Sendable {
    // Safe to share: `process` is configured before `run()` and afterwards only used through
    // Foundation's thread-safe `terminate`/`isRunning`; the output buffers are guarded by `lock`.
    private let process = Process()
    private let out = Pipe()
    private let err = Pipe()
    private let lock = NSLock()
    private var stdoutData = Data()
    private var stderrData = Data()
    private var lineWaiters: [(String, CheckedContinuation<Bool, Never>)] = []
    private var exited = false
    private var exitWaiters: [CheckedContinuation<Void, Never>] = []
    let commandLine: String

    init(_ arguments: [String]) throws {
        commandLine = arguments.joined(separator: " ")
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        out.fileHandleForReading.readabilityHandler = { [weak self] handle in
            self?.append(handle.availableData, toStdout: true)
        }
        err.fileHandleForReading.readabilityHandler = { [weak self] handle in
            self?.append(handle.availableData, toStdout: false)
        }
        process.terminationHandler = { [weak self] _ in self?.markExited() }
        try process.run()
    }

    private func append(_ data: Data, toStdout: Bool) {
        let ready: [CheckedContinuation<Bool, Never>] = lock.withLock {
            if toStdout { stdoutData.append(data) } else { stderrData.append(data) }
            let text = String(decoding: stdoutData, as: UTF8.self)
            var ready: [CheckedContinuation<Bool, Never>] = []
            lineWaiters.removeAll { prefix, continuation in
                guard text.split(separator: "\n").contains(where: { $0.hasPrefix(prefix) }) else { return false }
                ready.append(continuation)
                return true
            }
            return ready
        }
        for continuation in ready { continuation.resume(returning: true) }
    }

    private func markExited() {
        let (lines, waiters): ([CheckedContinuation<Bool, Never>], [CheckedContinuation<Void, Never>]) = lock.withLock {
            exited = true
            defer { lineWaiters.removeAll(); exitWaiters.removeAll() }
            return (lineWaiters.map(\.1), exitWaiters)
        }
        for line in lines { line.resume(returning: false) }
        for waiter in waiters { waiter.resume() }
    }

    /// Waits until the child prints a line starting with `prefix`; false if it exits first.
    func waitForLine(startingWith prefix: String) async -> Bool {
        await withCheckedContinuation { continuation in
            let done: Bool? = lock.withLock {
                let text = String(decoding: stdoutData, as: UTF8.self)
                if text.split(separator: "\n").contains(where: { $0.hasPrefix(prefix) }) { return true }
                if exited { return false }
                lineWaiters.append((prefix, continuation))
                return nil
            }
            if let done { continuation.resume(returning: done) }
        }
    }

    /// Waits for the child to exit and returns what it printed.
    func wait() async -> ChildResult {
        await withCheckedContinuation { continuation in
            let done: Bool = lock.withLock {
                if exited { return true }
                exitWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
        process.waitUntilExit()  // reaped already; makes terminationStatus valid
        // Collect what is still in the pipes.
        out.fileHandleForReading.readabilityHandler = nil
        err.fileHandleForReading.readabilityHandler = nil
        let restOut = out.fileHandleForReading.readDataToEndOfFile()
        let restErr = err.fileHandleForReading.readDataToEndOfFile()
        return lock.withLock {
            stdoutData.append(restOut)
            stderrData.append(restErr)
            return ChildResult(status: process.terminationStatus,
                               stdout: String(decoding: stdoutData, as: UTF8.self),
                               stderr: String(decoding: stderrData, as: UTF8.self))
        }
    }

    /// Sends SIGTERM if still running.
    func terminate() {
        if process.isRunning { process.terminate() }
    }
}

/// Runs a command to completion and returns its result.
func run(_ arguments: [String]) async throws -> ChildResult {
    let child = try Child(arguments)
    return await child.wait()
}

/// Runs a command synchronously (for cleanup paths that cannot await); returns the exit status.
@discardableResult
func runSync(_ arguments: [String]) -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: arguments[0])
    process.arguments = Array(arguments.dropFirst())
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    do { try process.run() } catch { return -1 }
    process.waitUntilExit()
    return process.terminationStatus
}
