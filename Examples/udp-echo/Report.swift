import ExampleSupport
import Glibc
import Logging

/// Live progress on standard output: one line rewritten in place (`\r`) on a terminal, a plain
/// line about once a second otherwise (a log file or a pipe).
struct ProgressLine: Sendable {
    let isTerminal = isatty(1) != 0
    private var lastPrint: UInt64 = 0

    mutating func update(done: Int, total: Int, lost: Int, elapsed: UInt64) {
        let interval: UInt64 = isTerminal ? 100_000_000 : 1_000_000_000
        guard elapsed - lastPrint >= interval else { return }
        lastPrint = elapsed
        emit(done: done, total: total, lost: lost, elapsed: elapsed, final: false)
    }

    func finish(done: Int, total: Int, lost: Int, elapsed: UInt64) {
        emit(done: done, total: total, lost: lost, elapsed: elapsed, final: true)
    }

    private func emit(done: Int, total: Int, lost: Int, elapsed: UInt64, final: Bool) {
        let rate = elapsed == 0 ? 0 : Double(done) / (Double(elapsed) / 1e9)
        let percent = total == 0 ? 100 : done * 100 / total
        let text = "  \(done)/\(total) round trips (\(percent)%), \(format(rate, digits: 0))/s, \(lost) lost"
        if isTerminal {
            // \u{1B}[K clears what a longer previous line left behind.
            say("\r" + text + "\u{1B}[K", terminator: final ? "\n" : "")
        } else {
            say(text)
        }
    }
}

/// Prints round trips per second, the percentiles and a latency histogram.
func printReport(_ measurement: Measurement, plan: PingPlan) {
    let latencies = measurement.latencies
    let seconds = Double(measurement.elapsed) / 1e9
    let rate = seconds > 0 ? Double(latencies.count) / seconds : 0
    var summary = "\(latencies.count) round trips in \(format(seconds, digits: 2)) s: "
        + "\(format(rate, digits: 0)) round trips/s, \(measurement.lost) lost, \(measurement.late) late"
    if measurement.hitDeadline { summary += " (stopped at the deadline)" }
    say(summary)
    guard let maximum = latencies.last else {
        say("no round trips measured")
        return
    }
    func micro(_ nanoseconds: UInt64) -> String { format(Double(nanoseconds) / 1000, digits: 1) }
    say("latency µs: p50 \(micro(percentile(latencies, 0.50)))  p90 \(micro(percentile(latencies, 0.90)))"
        + "  p99 \(micro(percentile(latencies, 0.99)))  max \(micro(maximum))")
    say("latency histogram:")
    for line in histogram(latencies) { say(line) }
}

/// The nearest-rank percentile of sorted values; `fraction` in 0...1.
func percentile(_ sorted: [UInt64], _ fraction: Double) -> UInt64 {
    precondition(!sorted.isEmpty)
    let rank = Int((fraction * Double(sorted.count)).rounded(.up))
    return sorted[min(max(rank, 1), sorted.count) - 1]
}

/// Rows of a histogram over log-spaced microsecond buckets, from the first non-empty bucket to
/// the last.
func histogram(_ sorted: [UInt64]) -> [String] {
    let bounds: [UInt64] = [10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000]
    var counts = [Int](repeating: 0, count: bounds.count + 1)
    for nanoseconds in sorted {
        let micros = nanoseconds / 1000
        counts[bounds.firstIndex { micros < $0 } ?? bounds.count] += 1
    }
    guard let first = counts.firstIndex(where: { $0 > 0 }), let last = counts.lastIndex(where: { $0 > 0 }) else { return [] }
    let widest = counts.max() ?? 1
    func label(_ index: Int) -> String {
        let low = index == 0 ? "0" : "\(bounds[index - 1])"
        let text = index == bounds.count ? ">= \(low) µs" : "\(low)-\(bounds[index]) µs"
        return String(repeating: " ", count: max(0, 16 - text.count)) + text
    }
    return (first...last).map { index in
        let count = counts[index]
        let bar = String(repeating: "#", count: count == 0 ? 0 : max(1, count * 40 / widest))
        let share = format(Double(count) * 100 / Double(sorted.count), digits: 1)
        return "\(label(index)) | \(bar + String(repeating: " ", count: 40 - bar.count)) \(count) (\(share)%)"
    }
}

/// `value` with `digits` decimals, without Foundation.
func format(_ value: Double, digits: Int) -> String {
    guard value.isFinite else { return "\(value)" }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let scaled = (value * scale).rounded()
    if digits == 0 { return String(Int64(scaled)) }
    let whole = Int64(scaled) / Int64(scale)
    let fraction = abs(Int64(scaled)) % Int64(scale)
    let fractionText = String(fraction)
    let sign = scaled < 0 && whole == 0 ? "-" : ""
    return "\(sign)\(whole)." + String(repeating: "0", count: digits - fractionText.count) + fractionText
}

