import Foundation
import Testing

@Suite("statsd-collector", .timeLimit(.minutes(2)))
struct StatsDCollectorTests {
    /// Datagrams a Python client sends; the comments say what each line should contribute.
    static let datagrams: [String] = [
        "requests:1|c\nrequests:2|c|@0.5\nrequests:3|c\n",            // requests = 1 + 2/0.5 + 3 = 8
        "temperature:20|g\ntemperature:+1.5|g\ntemperature:-0.5|g",    // temperature = 21
        "latency:10|ms\nlatency:20|ms\nlatency:30|ms|@0.5\nlatency:40|ms\n",  // count 5, min 10, max 40
        "users:alice|s\nusers:bob|s\nusers:alice|s\n",                 // users = 2 distinct
        // Six malformed lines among good ones: no colon, bad value, unknown type, empty name,
        // sample rate above 1, invalid UTF-8.
        "no colon here\nbad:value|c\nx:1|zz\n:5|c\nrate:1|c|@2\nsampled:1|c|@0.1\n\\xff\\xfe:1|c\n",
        "tagged:2|c|#env:prod",                                       // tags are accepted
        "crlf:1|c\r\n",                                               // CRLF line ends too
    ]

    @Test("StatsD lines from Python, malformed ones and sample rates included, aggregate correctly in the --json flush")
    func jsonAggregates() async throws {
        // No periodic flush may come before the final one, however slow the run: an hour.
        let collector = try ExampleProcess(example: "statsd-collector",
                                           ["--port", "0", "--flush-interval", "3600", "--json", "--verbose"])
        defer { collector.terminate() }
        let port = try await collector.waitFor(#"listening on 127\.0\.0\.1:(\d+)"#, in: .stderr)[1]

        let literals = Self.datagrams.map { "b\"" + $0.replacingOccurrences(of: "\n", with: "\\n")
            .replacingOccurrences(of: "\r", with: "\\r") + "\"" }
        let client = try python("""
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for datagram in [\(literals.joined(separator: ", "))]:
                s.sendto(datagram, ("127.0.0.1", int(sys.argv[1])))
            print("sent", flush=True)
            """, [port])
        defer { client.terminate() }
        #expect(try await client.waitForExit() == 0, "\(client.text(.stderr))")
        // The debug log has a line per datagram: once all are in, the final flush holds them all.
        try await collector.waitFor(count: Self.datagrams.count, of: "datagram from 127.0.0.1", in: .stderr)
        #expect(collector.text(.stderr).contains("malformed line from 127.0.0.1"))

        collector.interrupt()
        #expect(try await collector.waitForExit() == 0, "\(collector.text(.stderr))")
        let lastLine = try #require(collector.text(.stdout).split(separator: "\n").last)
        let flush = try #require(try JSONSerialization.jsonObject(with: Data(lastLine.utf8)) as? [String: Any])

        #expect(flush["final"] as? Bool == true)
        #expect(flush["datagrams"] as? Int == 7)
        #expect(flush["lines"] as? Int == 22)
        #expect(flush["malformed"] as? Int == 6)
        let counters = try #require(flush["counters"] as? [String: Double])
        #expect(counters == ["requests": 8, "sampled": 10, "tagged": 2, "crlf": 1])
        #expect(flush["gauges"] as? [String: Double] == ["temperature": 21])
        #expect(flush["sets"] as? [String: Int] == ["users": 2])
        let timers = try #require(flush["timers"] as? [String: [String: Double]])
        let latency = try #require(timers["latency"])
        #expect(latency["count"] == 5)
        #expect(latency["min"] == 10)
        #expect(latency["max"] == 40)
        #expect(latency["sum"] == 100)
        #expect(latency["mean"] == 25)
        #expect(latency["median"] == 20)
        #expect(latency["p90"] == 40)
    }

    @Test("the collector prints a table at every flush interval and a final flush on SIGTERM")
    func periodicTable() async throws {
        let collector = try ExampleProcess(example: "statsd-collector", ["--port", "0", "--flush-interval", "0.2"])
        defer { collector.terminate() }
        let port = try await collector.waitFor(#"listening on 127\.0\.0\.1:(\d+)"#, in: .stderr)[1]
        let client = try python("""
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.sendto(b"jobs:3|c\\nqueue:7|g", ("127.0.0.1", int(sys.argv[1])))
            """, [port])
        defer { client.terminate() }
        #expect(try await client.waitForExit() == 0)
        try await collector.waitFor(#"counter\s+jobs\s+3\.00\s+"#, in: .stdout)
        // Counters start afresh; the gauge keeps its value in the next flushes.
        try await collector.waitFor(count: 3, of: #"gauge\s+queue\s+7\.00"#, in: .stdout)
        collector.interrupt(SIGTERM)
        #expect(try await collector.waitForExit() == 0)
        #expect(collector.text(.stdout).contains("final flush at"))
        #expect(collector.text(.stdout).matches(of: /counter\s+jobs/).count == 1)
    }
}
