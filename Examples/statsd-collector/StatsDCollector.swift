// statsd-collector: receives StatsD metrics over UDP, aggregates them per flush interval, and
// prints a table (or JSON lines) at each flush and once more on SIGINT or SIGTERM.
import ArgumentParser
import AsyncUDP
import ExampleSupport
import Foundation
import Glibc
import Logging

@main
struct StatsDCollector: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "statsd-collector",
        abstract: "Receive StatsD metrics over UDP and print their aggregates at each flush interval.",
        discussion: """
            Understands counters (with sample rates, name:1|c|@0.1), gauges (name:5|g, and deltas \
            name:+2|g, name:-1|g), timers in milliseconds (name:12|ms) and sets (name:alice|s), \
            several per datagram separated by newlines. Malformed lines are logged, counted in \
            the flush, and skipped. SIGINT or SIGTERM flushes the last interval, then exits.
            """)

    @Option(help: "The local address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "The UDP port; 0 picks a free one (logged at startup).")
    var port = 8125

    @Option(help: "Seconds per aggregation interval.")
    var flushInterval = 10.0

    @Flag(help: "Print one JSON object per flush instead of a table.")
    var json = false

    @Flag(name: .shortAndLong, help: "Log at debug level (one line per datagram).")
    var verbose = false

    func validate() throws {
        guard flushInterval > 0 else { throw ValidationError("--flush-interval must be positive") }
        guard (0...65_535).contains(port) else { throw ValidationError("--port must be 0...65535") }
    }

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = verbose ? .debug : .info
            return handler
        }
        let logger = Logger(label: "statsd-collector")
        let address: SocketAddress
        do { address = try SocketAddress(ip: host, port: port) } catch { throw ValidationError("--host: \(error)") }
        let loop = UVLoop(name: "statsd")
        let outcome = await capture { try await collect(at: address, loop: loop, logger: logger) }
        await loop.shutdown()
        try outcome.get()
    }

    private func collect(at address: SocketAddress, loop: UVLoop, logger: Logger) async throws {
        let socket = try await UDPSocket(bindingTo: address, loop: loop,
                                         configuration: .init(receiveQueueLimit: 8192))
        logger.info("listening on \(socket.localAddress), flushing every \(flushInterval) s")
        let collector = Collector(loop: loop, format: json ? .json : .table, logger: logger)

        let interval = flushInterval
        let flusher = Task {
            var next = ContinuousClock.now
            while true {
                next += .seconds(interval)
                do { try await Task.sleep(until: next) } catch { return }
                await collector.flush(final: false)
            }
        }

        // Receive until the socket closes, which the first SIGINT or SIGTERM does. The receiving
        // task prefers the loop, and the collector actor lives there too, so a datagram goes from
        // libuv to the aggregator with no thread hop.
        enum Ending: Sendable { case received, failed(any Error), signalled }
        let failure: (any Error)? = await withTaskGroup(of: Ending.self) { group in
            group.addTask(executorPreference: loop) {
                do {
                    for try await datagram in socket.datagrams { await collector.ingest(datagram) }
                    return .received
                } catch {
                    return .failed(error)
                }
            }
            group.addTask {
                let number = await firstSignal(of: [SIGINT, SIGTERM])
                guard number != 0 else { return .signalled }  // cancelled: the receiver ended first
                logger.info("signal \(number): flushing the last interval and exiting")
                // Closing ends `datagrams` after the datagrams already queued, so they count.
                await socket.close()
                return .signalled
            }
            var failure: (any Error)?
            for await ending in group {
                switch ending {
                case .received: group.cancelAll()
                case .failed(let error): failure = error; group.cancelAll()
                case .signalled: break
                }
            }
            return failure
        }
        await socket.close()
        flusher.cancel()
        _ = await flusher.result
        await collector.flush(final: true)
        if let failure { throw failure }
    }
}

/// Owns the aggregator and prints each flush. Its executor is the socket's loop, so the
/// receiving task (which prefers that loop) calls it without a thread hop.
actor Collector {
    enum Format: Sendable { case table, json }

    nonisolated let loop: UVLoop
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    private var aggregator = Aggregator()
    private let format: Format
    private let logger: Logger
    private var intervalStart = ContinuousClock.now
    /// Malformed lines logged in this interval; beyond a few, only the flush reports the count.
    private var malformedLogged = 0
    private static let malformedLogLimit = 20

    init(loop: UVLoop, format: Format, logger: Logger) {
        self.loop = loop
        self.format = format
        self.logger = logger
    }

    func ingest(_ datagram: Datagram) {
        let problems = aggregator.ingest(datagram: datagram.payload)
        logger.debug("datagram from \(datagram.remote): \(datagram.payload.count) bytes, \(problems.count) malformed lines")
        for problem in problems {
            malformedLogged += 1
            if malformedLogged <= Self.malformedLogLimit {
                logger.warning("malformed line from \(datagram.remote): \(problem)")
            } else if malformedLogged == Self.malformedLogLimit + 1 {
                logger.warning("more malformed lines in this interval; the flush reports how many")
            }
        }
    }

    func flush(final: Bool) {
        let now = ContinuousClock.now
        let elapsed = now - intervalStart
        intervalStart = now
        malformedLogged = 0
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let report = aggregator.flush(intervalSeconds: seconds)
        switch format {
        case .json: printJSON(report, final: final)
        case .table: printTable(report, final: final)
        }
    }

    private func printJSON(_ report: FlushReport, final: Bool) {
        struct Line: Encodable {
            var timestamp: Double
            var final: Bool
            var report: FlushReport
            enum CodingKeys: CodingKey { case timestamp, final }
            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(timestamp, forKey: .timestamp)
                try container.encode(final, forKey: .final)
                try report.encode(to: encoder)
            }
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            let data = try encoder.encode(Line(timestamp: Date().timeIntervalSince1970, final: final, report: report))
            say(String(decoding: data, as: UTF8.self))
        } catch {
            logger.error("cannot encode the flush as JSON: \(error)")
        }
    }

    private func printTable(_ report: FlushReport, final: Bool) {
        let when = ISO8601DateFormatter().string(from: Date())
        say("\(final ? "final flush" : "flush") at \(when) after \(fixed(report.intervalSeconds, 1)) s: "
            + "\(report.datagrams) datagrams, \(report.lines) lines, \(report.malformed) malformed")
        var rows: [[String]] = []
        for (name, value) in report.counters.sorted(by: { $0.key < $1.key }) {
            rows.append(["counter", name, fixed(value, 2), "\(fixed(report.counterRates[name] ?? 0, 2))/s"])
        }
        for (name, value) in report.gauges.sorted(by: { $0.key < $1.key }) {
            rows.append(["gauge", name, fixed(value, 2), ""])
        }
        for (name, timer) in report.timers.sorted(by: { $0.key < $1.key }) {
            rows.append(["timer", name, "\(fixed(timer.count, 0)) samples",
                         "min \(fixed(timer.min, 1))  mean \(fixed(timer.mean, 1))  p90 \(fixed(timer.p90, 1))  max \(fixed(timer.max, 1)) ms"])
        }
        for (name, count) in report.sets.sorted(by: { $0.key < $1.key }) {
            rows.append(["set", name, "\(count) distinct", ""])
        }
        if rows.isEmpty {
            say("  (no metrics)")
            return
        }
        var widths = [Int](repeating: 0, count: 4)
        for row in rows { for (column, cell) in row.enumerated() { widths[column] = max(widths[column], cell.count) } }
        for row in rows {
            let cells = row.enumerated().map { column, cell in
                column == 3 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count)
            }
            say("  " + cells.joined(separator: "  "))
        }
    }
}

/// `value` with `digits` decimals.
func fixed(_ value: Double, _ digits: Int) -> String {
    String(format: "%.\(digits)f", value)
}
