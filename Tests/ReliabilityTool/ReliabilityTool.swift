import ArgumentParser
import AsyncUDP
import Glibc

/// Helper programs for AsyncUDP's reliability work (issue 6): the leak check run under valgrind,
/// the soak, and the peers that the namespace tests start with `ip netns exec`.
///
/// Every subcommand ends by printing one line `RESULT key=value ...` for the tests to read.
@main
struct ReliabilityTool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reliability-tool",
        abstract: "Leak check, soak, and network peers for AsyncUDP's reliability tests.",
        subcommands: [LeakCheck.self, Soak.self, Send.self, Receive.self, MulticastLoop.self, Probe.self, ReuseCrowd.self,
                      Emfile.self, LateWork.self])
}

/// Writes a line to standard output at once (stdout is a pipe in the tests).
func emit(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress, $0.count) }
}

/// Writes a progress line to standard error.
func progress(_ line: String) {
    var bytes = Array("reliability-tool: \(line)\n".utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
}

func parseAddress(_ text: String) throws -> SocketAddress {
    do { return try SocketAddress(text) } catch { throw ValidationError("\(error)") }
}

/// The name of an error for RESULT lines: "ENETUNREACH", "closed", "cancelled", or the type.
func errorName(_ error: any Error) -> String {
    switch error {
    case let error as UVError: error.name
    case is ClosedHandleError: "closed"
    case is CancellationError: "cancelled"
    case let error as SocketAddressError: "address(\(error.reason))"
    default: String(describing: type(of: error))
    }
}

func formatCounts(_ counts: [String: Int]) -> String {
    counts.isEmpty ? "none" : counts.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ",")
}

/// Measures how long the loop takes to run a job, while other work goes on: the loop is
/// responsive when the worst delay stays small.
final class LoopLatencyProbe: Sendable {
    private let task: Task<Double, Never>

    init(loop: UVLoop) {
        task = Task {
            var worst = 0.0
            while !Task.isCancelled {
                let start = ContinuousClock.now
                _ = try? await loop.submit { () }
                let elapsed = ContinuousClock.now - start
                worst = max(worst, Double(elapsed.components.attoseconds) / 1e15 + Double(elapsed.components.seconds) * 1000)
                try? await Task.sleep(for: .milliseconds(1))
            }
            return worst
        }
    }

    /// Stops probing; returns the worst delay seen, in milliseconds.
    func stop() async -> Double {
        task.cancel()
        return await task.value
    }
}

/// The resident set size of this process, in KiB (from /proc/self/status).
func residentKiB() -> Int {
    guard let file = fopen("/proc/self/status", "r") else { return -1 }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 256)
    while fgets(&line, Int32(line.count), file) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if text.hasPrefix("VmRSS:") {
            return Int(text.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? -1
        }
    }
    return -1
}
