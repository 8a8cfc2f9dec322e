import Testing
@testable import statsd_collector

/// The StatsD parser and aggregator on their own, without a socket (the collector's end-to-end
/// tests are in StatsDCollectorTests).
@Suite("StatsD parser and aggregator", .timeLimit(.minutes(1)))
struct StatsDParserTests {
    @Test("well-formed lines parse", arguments: [
        ("hits:1|c", Metric(name: "hits", value: .counter(amount: 1, sampleRate: 1))),
        ("hits:3|c|@0.25", Metric(name: "hits", value: .counter(amount: 3, sampleRate: 0.25))),
        ("hits:1|c|#region:eu,az:b", Metric(name: "hits", value: .counter(amount: 1, sampleRate: 1))),
        ("temp:-4.5|g", Metric(name: "temp", value: .gauge(value: -4.5, isDelta: true))),
        ("temp:+2|g", Metric(name: "temp", value: .gauge(value: 2, isDelta: true))),
        ("temp:7|g", Metric(name: "temp", value: .gauge(value: 7, isDelta: false))),
        ("db.query:12.5|ms|@0.5", Metric(name: "db.query", value: .timer(milliseconds: 12.5, sampleRate: 0.5))),
        ("size:300|h", Metric(name: "size", value: .timer(milliseconds: 300, sampleRate: 1))),
        ("users:alice|s", Metric(name: "users", value: .set(member: "alice"))),
    ])
    func parses(line: String, metric: Metric) throws {
        #expect(try StatsDParser.parse(line[...]) == metric)
    }

    @Test("malformed lines are refused with a reason", arguments: [
        ("no colon", "no ':'"),
        (":1|c", "empty metric name"),
        ("a b:1|c", "whitespace"),
        ("x:1", "no '|type'"),
        ("x:|c", "empty value"),
        ("x:abc|c", "not a number"),
        ("x:nan|c", "not a number"),
        ("x:1|q", "unknown metric type 'q'"),
        ("x:1|c|@0", "sample rate"),
        ("x:1|c|@1.5", "sample rate"),
        ("x:1|c|extra", "unexpected field"),
        ("x:-3|ms", "cannot be negative"),
    ])
    func refuses(line: String, reason: String) {
        #expect {
            try StatsDParser.parse(line[...])
        } throws: { error in
            (error as? MalformedLine)?.reason.contains(reason) == true
        }
    }

    @Test("a flush aggregates one interval and starts the next; gauges carry over")
    func aggregates() {
        var aggregator = Aggregator()
        let problems = aggregator.ingest(datagram: Array("a:1|c\na:1|c|@0.5\ng:10|g\ng:-3|g\nt:5|ms\nt:15|ms\ns:x|s\ns:y|s\ns:x|s\nbad\n".utf8))
        #expect(problems.map(\.line) == ["bad"])
        let first = aggregator.flush(intervalSeconds: 2)
        #expect(first.counters == ["a": 3])
        #expect(first.counterRates == ["a": 1.5])
        #expect(first.gauges == ["g": 7])
        #expect(first.sets == ["s": 2])
        #expect(first.timers["t"]?.mean == 10)
        #expect((first.datagrams, first.lines, first.malformed) == (1, 10, 1))

        _ = aggregator.ingest(datagram: Array("g:+1|g".utf8))
        let second = aggregator.flush(intervalSeconds: 2)
        #expect(second.counters.isEmpty && second.timers.isEmpty && second.sets.isEmpty)
        #expect(second.gauges == ["g": 8])
        #expect((second.datagrams, second.lines, second.malformed) == (1, 1, 0))
    }
}
