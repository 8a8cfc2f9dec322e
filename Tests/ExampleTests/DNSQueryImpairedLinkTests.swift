import AsyncUDP
import AsyncUDPTesting
import Logging
import Testing
@testable import dns_query

/// dns-query through an impaired link (AsyncUDPTesting) to a scripted DNS server: lost queries,
/// lost replies and duplicate replies, decided by a seed. All traffic on 127.0.0.1.
@Suite("dns-query through an impaired link", .timeLimit(.minutes(1)))
struct DNSQueryImpairedLinkTests {
    /// A DNS server: answers every query with one A record, 192.0.2.55.
    static let server = TestPeer.Script.replying { request in
        guard let query = try? DNSMessage(parsing: request.payload), !query.isResponse else { return nil }
        var bytes = request.payload
        bytes[2] |= 0x80  // QR: a response
        bytes[3] |= 0x80  // RA
        bytes[7] = 1      // one answer
        bytes += [0xC0, 12, 0, 1, 0, 1, 0, 0, 0x0E, 0x10, 0, 4, 192, 0, 2, 55]  // A, TTL 3600
        return bytes
    }

    @Test("the dns-query binary sends again after its first query is lost, and prints the answer once")
    func binaryRetriesALostQuery() async throws {
        // A seed under which the link drops the first query and passes the second.
        let lossy = Impairments(dropRate: 0.5)
        let seed = try #require((0..<UInt64(1000)).first { seed in
            lossy.decision(forDatagram: 0, of: .clientToServer, seed: seed).drop
                && !lossy.decision(forDatagram: 1, of: .clientToServer, seed: seed).drop
        })
        try await withTestPeer(script: Self.server) { server in
            try await withImpairedLink(to: server.address, seed: seed, clientToServer: lossy,
                                       serverToClient: Impairments(duplicateRate: 1)) { link in
                let query = try ExampleProcess(example: "dns-query", ["--server", "127.0.0.1", "--port", "\(link.address.port)",
                                                                       "--timeout", "2", "--retries", "3", "--short", "lossy.test"])
                defer { query.terminate() }
                #expect(try await query.waitForExit() == 0, "\(query.text(.stderr))")
                #expect(query.text(.stdout) == "192.0.2.55\n")
                #expect(query.text(.stderr).contains("within 2 s (try 1 of 4)"), "\(query.text(.stderr))")
                try await link.waitUntilForwarded(.serverToClient, received: 1, within: .seconds(5))
                let stats = link.statistics
                #expect(stats.clientToServer.received == 2 && stats.clientToServer.dropped == 1, "\(stats)")
                #expect(stats.serverToClient.duplicated == 1, "\(stats)")
                #expect(server.received.count == 1)
            }
        }
    }

    @Test("DNSQuery.exchange gets every answer through a link that loses 40% each way and duplicates 30% of replies")
    func exchangeUnderLossAndDuplicates() async throws {
        let question = DNSQuestion(name: try DNSName("lossy.test"), type: .a)
        // Long enough that a reply on a loaded (sanitized) run is not taken for a loss, which would
        // change the sequence of datagrams the seeded link decides on.
        let waits = Array(repeating: Duration.milliseconds(300), count: 12)
        let logger = Logger(label: "dns-query-test")
        try await withTestPeer(script: Self.server) { server in
            try await withImpairedLink(to: server.address, seed: 2026, clientToServer: Impairments(dropRate: 0.4),
                                       serverToClient: Impairments(dropRate: 0.4, duplicateRate: 0.3)) { link in
                try await withUDPSocket(connectingTo: link.address) { udp in
                    for _ in 0..<20 {
                        let reply = try await DNSQuery.exchange(question, with: link.address, over: udp, waits: waits, logger: logger)
                        #expect(reply?.answers.map(\.description) == ["lossy.test. 3600 IN A 192.0.2.55"])
                    }
                }
                let stats = link.statistics
                #expect(stats.clientToServer.dropped > 0 && stats.serverToClient.dropped > 0, "\(stats)")
                #expect(stats.serverToClient.duplicated > 0, "\(stats)")
                #expect(stats.clientToServer.received > 20, "retries made up for the losses: \(stats)")
            }
        }
    }
}
