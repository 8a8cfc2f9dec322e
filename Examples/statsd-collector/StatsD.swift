// The StatsD line protocol and its aggregation, with no networking: a parser for one line, and
// an aggregator that folds parsed metrics into one flush interval's values.
//
//     <name>:<value>|<type>[|@<sample rate>][|#<tags>]
//
//     requests:1|c            counter: add 1
//     requests:1|c|@0.1       counter sampled 1 in 10: add 10
//     temperature:21.5|g      gauge: set to 21.5
//     temperature:+1.5|g      gauge: add 1.5 (a leading sign makes it a delta)
//     latency:320|ms          timer, milliseconds (`h`, a histogram, is treated the same)
//     users:alice|s           set: count distinct values
//
// A datagram holds one or more lines separated by "\n".

/// One metric sample parsed from a StatsD line.
struct Metric: Hashable, Sendable {
    enum Value: Hashable, Sendable {
        /// Add `amount / sampleRate` to the counter.
        case counter(amount: Double, sampleRate: Double)
        /// Set the gauge to `value`, or add `value` to it when `isDelta`.
        case gauge(value: Double, isDelta: Bool)
        /// One timing in milliseconds, sampled at `sampleRate`.
        case timer(milliseconds: Double, sampleRate: Double)
        /// One member of a set.
        case set(member: String)
    }

    var name: String
    var value: Value
}

/// Why a line is not a StatsD metric.
struct MalformedLine: Error, Hashable, Sendable, CustomStringConvertible {
    var line: String
    var reason: String
    var description: String { "\(reason): \"\(line)\"" }
}

enum StatsDParser {
    /// Parses one line (without its newline).
    ///
    /// - Throws: ``MalformedLine`` saying what is wrong.
    static func parse(_ line: Substring) throws(MalformedLine) -> Metric {
        func malformed(_ reason: String) -> MalformedLine { MalformedLine(line: String(line), reason: reason) }
        guard let colon = line.firstIndex(of: ":") else { throw malformed("no ':' between name and value") }
        let name = line[..<colon]
        guard !name.isEmpty else { throw malformed("empty metric name") }
        guard !name.contains(where: { $0.isWhitespace || $0 == "|" }) else { throw malformed("whitespace or '|' in the metric name") }
        let fields = line[line.index(after: colon)...].split(separator: "|", omittingEmptySubsequences: false)
        guard fields.count >= 2 else { throw malformed("no '|type' after the value") }
        let valueText = fields[0]
        guard !valueText.isEmpty else { throw malformed("empty value") }

        var sampleRate = 1.0
        for field in fields.dropFirst(2) {
            if field.first == "@" {
                guard let rate = Double(field.dropFirst()), rate > 0, rate <= 1 else {
                    throw malformed("sample rate must be a number in (0, 1], not '\(field.dropFirst())'")
                }
                sampleRate = rate
            } else if field.first == "#" {
                continue  // DogStatsD tags: accepted, not aggregated separately
            } else {
                throw malformed("unexpected field '\(field)'")
            }
        }

        func number() throws(MalformedLine) -> Double {
            guard let value = Double(valueText), value.isFinite else { throw malformed("value '\(valueText)' is not a number") }
            return value
        }
        switch fields[1] {
        case "c":
            return Metric(name: String(name), value: .counter(amount: try number(), sampleRate: sampleRate))
        case "g":
            let isDelta = valueText.first == "+" || valueText.first == "-"
            return Metric(name: String(name), value: .gauge(value: try number(), isDelta: isDelta))
        case "ms", "h":
            let milliseconds = try number()
            guard milliseconds >= 0 else { throw malformed("a timing cannot be negative") }
            return Metric(name: String(name), value: .timer(milliseconds: milliseconds, sampleRate: sampleRate))
        case "s":
            return Metric(name: String(name), value: .set(member: String(valueText)))
        case let type:
            throw malformed("unknown metric type '\(type)' (expected c, g, ms, h or s)")
        }
    }
}

/// Folds metrics into the values of one flush interval.
///
/// Counters, timers and sets start afresh each interval; gauges keep their value until changed
/// (as in Etsy's statsd), so a delta applies to the last value even from an earlier interval.
struct Aggregator {
    private(set) var counters: [String: Double] = [:]
    private(set) var gauges: [String: Double] = [:]
    private(set) var timers: [String: (samples: [Double], count: Double)] = [:]
    private(set) var sets: [String: Set<String>] = [:]
    private(set) var datagrams = 0
    private(set) var lines = 0
    private(set) var malformed = 0

    /// Parses and adds every line of one datagram. Returns the malformed lines, which are
    /// counted and otherwise skipped.
    mutating func ingest(datagram payload: [UInt8]) -> [MalformedLine] {
        datagrams += 1
        var problems: [MalformedLine] = []
        for rawLine in payload.split(separator: UInt8(ascii: "\n")) {
            var bytes = rawLine[...]
            if bytes.last == UInt8(ascii: "\r") { bytes = bytes.dropLast() }
            guard !bytes.isEmpty else { continue }
            lines += 1
            guard let text = String(validating: bytes, as: UTF8.self) else {
                malformed += 1
                problems.append(MalformedLine(line: String(decoding: bytes, as: UTF8.self), reason: "not UTF-8"))
                continue
            }
            do {
                add(try StatsDParser.parse(text[...]))
            } catch {
                malformed += 1
                problems.append(error)
            }
        }
        return problems
    }

    /// Adds one parsed metric.
    mutating func add(_ metric: Metric) {
        switch metric.value {
        case .counter(let amount, let rate):
            counters[metric.name, default: 0] += amount / rate
        case .gauge(let value, let isDelta):
            gauges[metric.name] = isDelta ? (gauges[metric.name] ?? 0) + value : value
        case .timer(let milliseconds, let rate):
            timers[metric.name, default: ([], 0)].samples.append(milliseconds)
            timers[metric.name, default: ([], 0)].count += 1 / rate
        case .set(let member):
            sets[metric.name, default: []].insert(member)
        }
    }

    /// Returns the interval's values and starts the next interval.
    mutating func flush(intervalSeconds: Double) -> FlushReport {
        let report = FlushReport(
            intervalSeconds: intervalSeconds,
            datagrams: datagrams, lines: lines, malformed: malformed,
            counters: counters,
            counterRates: counters.mapValues { intervalSeconds > 0 ? $0 / intervalSeconds : 0 },
            gauges: gauges,
            timers: timers.mapValues { TimerSummary(samples: $0.samples, count: $0.count) },
            sets: sets.mapValues(\.count))
        counters.removeAll()
        timers.removeAll()
        sets.removeAll()
        datagrams = 0
        lines = 0
        malformed = 0
        return report
    }
}

/// One flush interval's aggregates.
struct FlushReport: Encodable, Sendable {
    var intervalSeconds: Double
    var datagrams: Int
    var lines: Int
    var malformed: Int
    /// Each counter's total for the interval, sample rates applied.
    var counters: [String: Double]
    /// Each counter's total per second.
    var counterRates: [String: Double]
    var gauges: [String: Double]
    var timers: [String: TimerSummary]
    /// Each set's number of distinct members.
    var sets: [String: Int]

    enum CodingKeys: String, CodingKey {
        case intervalSeconds = "interval_seconds"
        case datagrams, lines, malformed, counters
        case counterRates = "counter_rates"
        case gauges, timers, sets
    }
}

/// Statistics of one timer's samples in an interval, in milliseconds.
struct TimerSummary: Encodable, Sendable {
    /// Samples received, scaled by their sample rates (`latency:5|ms|@0.5` counts 2).
    var count: Double
    var min: Double
    var max: Double
    var mean: Double
    var median: Double
    var p90: Double
    var p99: Double
    var sum: Double

    init(samples: [Double], count: Double) {
        let sorted = samples.sorted()
        func rank(_ fraction: Double) -> Double {
            let index = Int((fraction * Double(sorted.count)).rounded(.up))
            return sorted[Swift.min(Swift.max(index, 1), sorted.count) - 1]
        }
        self.count = count
        self.min = sorted.first ?? 0
        self.max = sorted.last ?? 0
        self.sum = sorted.reduce(0, +)
        self.mean = sorted.isEmpty ? 0 : sum / Double(sorted.count)
        self.median = sorted.isEmpty ? 0 : rank(0.5)
        self.p90 = sorted.isEmpty ? 0 : rank(0.9)
        self.p99 = sorted.isEmpty ? 0 : rank(0.99)
    }
}
