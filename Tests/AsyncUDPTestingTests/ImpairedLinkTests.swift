import AsyncUDP
import AsyncUDPTesting
import Testing

/// The impaired link: determinism under a seed, each impairment at its rate over 10,000
/// datagrams (checked both by the link's counters and by what the server received), delays,
/// and both directions of a request/response exchange. All traffic on 127.0.0.1.
@Suite("ImpairedLink", .timeLimit(.minutes(1)))
struct ImpairedLinkTests {
    static let mixed = Impairments(dropRate: 0.2, duplicateRate: 0.1, reorderRate: 0.1,
                                   truncateRate: 0.1, truncateLength: 10, reorderHold: .milliseconds(200))

    @Test("a decision depends only on the seed, the direction and the datagram's index")
    func decisionsArePure() {
        let a = (0..<1000).map { Self.mixed.decision(forDatagram: $0, of: .clientToServer, seed: 1) }
        let b = (0..<1000).reversed().map { Self.mixed.decision(forDatagram: $0, of: .clientToServer, seed: 1) }.reversed()
        #expect(a == Array(b))
        let otherSeed = (0..<1000).map { Self.mixed.decision(forDatagram: $0, of: .clientToServer, seed: 2) }
        let otherDirection = (0..<1000).map { Self.mixed.decision(forDatagram: $0, of: .serverToClient, seed: 1) }
        #expect(a != otherSeed)
        #expect(a != otherDirection)
        #expect(a.map(\.index) == Array(0..<1000))
    }

    @Test("the same seed and the same traffic give the same decisions and the same arrivals; another seed does not")
    func sameSeedSameOutcome() async throws {
        let first = try await relay(2000, seed: 2026, impairments: Self.mixed)
        let second = try await relay(2000, seed: 2026, impairments: Self.mixed)
        #expect(first.decisions.count == 2000)
        #expect(first.decisions == second.decisions)
        #expect(first.counters == second.counters)
        #expect(first.arrivals.count == second.arrivals.count)
        let difference = (0..<min(first.arrivals.count, second.arrivals.count)).first { first.arrivals[$0] != second.arrivals[$0] }
        #expect(difference == nil, "the arrivals differ from index \(difference ?? 0): \(first.arrivals.dropFirst(difference ?? 0).prefix(3).map(sequence)) against \(second.arrivals.dropFirst(difference ?? 0).prefix(3).map(sequence))")
        // Every impairment happened, so the comparison above compared something.
        let counters = first.counters
        #expect(counters.dropped > 0 && counters.duplicated > 0 && counters.reordered > 0 && counters.truncated > 0, "\(counters)")
        let other = try await relay(2000, seed: 2027, impairments: Self.mixed)
        #expect(other.decisions != first.decisions)
        #expect(other.arrivals != first.arrivals, "another seed, the same arrivals")
    }

    /// One impairment at a time, over 10,000 datagrams. The tolerance, ±0.02, is more than four
    /// standard deviations of a rate of 0.3 over 10,000 draws (0.0046).
    static let rateCases: [(String, Impairments)] = [
        ("drop", Impairments(dropRate: 0.3)),
        ("duplicate", Impairments(duplicateRate: 0.2)),
        ("reorder", Impairments(reorderRate: 0.1, reorderHold: .milliseconds(20))),
        ("truncate", Impairments(truncateRate: 0.25, truncateLength: 9)),
    ]

    @Test("each impairment happens at its rate (±0.02 over 10,000 datagrams), as the server sees it",
          arguments: rateCases)
    func rates(name: String, impairments: Impairments) async throws {
        let count = 10_000
        let run = try await relay(count, seed: 99, impairments: impairments)
        let counters = run.counters
        #expect(counters.received == count)
        #expect(counters.forwarded == run.arrivals.count)
        let sequences = run.arrivals.map(sequence)
        var seen: [Int: Int] = [:]
        for value in sequences { seen[value, default: 0] += 1 }

        func expectRate(_ observed: Int, _ rate: Double) {
            let share = Double(observed) / Double(count)
            #expect(abs(share - rate) <= 0.02, "\(name): \(observed) of \(count) = \(share), configured \(rate)")
        }
        switch name {
        case "drop":
            let missing = (0..<count).filter { seen[$0] == nil }.count
            #expect(missing == counters.dropped)
            #expect(seen.values.allSatisfy { $0 == 1 })
            #expect(sequences == sequences.sorted())
            expectRate(missing, impairments.dropRate)
        case "duplicate":
            let twice = seen.values.filter { $0 == 2 }.count
            #expect(twice == counters.duplicated)
            #expect(seen.count == count && seen.values.allSatisfy { $0 <= 2 })
            expectRate(twice, impairments.duplicateRate)
        case "reorder":
            // A datagram is late when one with a higher number arrived before it.
            var highest = -1
            var late = 0
            for value in sequences {
                if value < highest { late += 1 } else { highest = value }
            }
            #expect(late == counters.reordered)
            #expect(seen.count == count && seen.values.allSatisfy { $0 == 1 })
            expectRate(late, impairments.reorderRate)
        case "truncate":
            let short = run.arrivals.filter { $0.count == impairments.truncateLength }.count
            #expect(short == counters.truncated)
            #expect(run.arrivals.allSatisfy { $0.count == impairments.truncateLength || $0.count == 16 })
            #expect(sequences == Array(0..<count))
            expectRate(short, impairments.truncateRate)
        default:
            Issue.record("no check for \(name)")
        }
        // Only the configured impairment happened.
        var others = counters
        others.received = 0
        others.forwarded = 0
        switch name {
        case "drop": others.dropped = 0
        case "duplicate": others.duplicated = 0
        case "reorder": others.reordered = 0
        default: others.truncated = 0
        }
        #expect(others == ImpairedLink.Counters(), "\(counters)")
    }

    @Test("a fixed delay holds every datagram at least that long and keeps their order")
    func fixedDelay() async throws {
        try await withLoopbackSocket { server in
            try await withImpairedLink(to: server.localAddress, clientToServer: Impairments(delay: .milliseconds(100))) { link in
                try await withLoopbackSocket { client in
                    let start = ContinuousClock.now
                    try await client.send(contentsOf: (0..<20).map { Datagram(payload: payload($0), remote: link.address) })
                    var got: [Int] = []
                    for _ in 0..<20 { got.append(sequence(try await server.expectDatagram(within: .seconds(5)).payload)) }
                    #expect(ContinuousClock.now - start >= .milliseconds(100))
                    #expect(got == Array(0..<20))
                    #expect(link.statistics.clientToServer.delayed == 20)
                }
            }
        }
    }

    @Test("jitter spreads a burst over the jitter window and reorders it; every datagram arrives once")
    func jitter() async throws {
        try await withLoopbackSocket { server in
            let impairments = Impairments(jitter: .milliseconds(300))
            try await withImpairedLink(to: server.localAddress, seed: 5, clientToServer: impairments) { link in
                try await withLoopbackSocket { client in
                    try await client.send(contentsOf: (0..<100).map { Datagram(payload: payload($0), remote: link.address) })
                    var got: [Int] = []
                    for _ in 0..<100 { got.append(sequence(try await server.expectDatagram(within: .seconds(5)).payload)) }
                    #expect(got.sorted() == Array(0..<100))
                    #expect(got != Array(0..<100), "a burst with 300 ms of jitter came through in order")
                    let delays = link.decisions(.clientToServer).map(\.delay)
                    #expect(delays.allSatisfy { $0 >= .zero && $0 <= .milliseconds(300) })
                    #expect(delays.contains { $0 < .milliseconds(50) } && delays.contains { $0 > .milliseconds(250) })
                    // The arrival order is the order of the drawn delays, except between datagrams
                    // whose delays differ by less than the time the link took to read the burst
                    // (generous: a sanitized build on a loaded 2-core machine wakes timers late).
                    let inversions = got.indices.flatMap { i in
                        got.indices[(i + 1)...].filter { delays[got[i]] > delays[got[$0]] + .milliseconds(150) }.map { (got[i], got[$0]) }
                    }
                    #expect(inversions.isEmpty, "arrived before datagrams with delays 150 ms shorter: \(inversions.prefix(5))")
                }
            }
        }
    }

    @Test("replies come back to the client through the link, impaired by their own direction's settings")
    func bothDirections() async throws {
        try await withTestPeer(script: .echo) { peer in
            try await withImpairedLink(to: peer.address, seed: 3, serverToClient: Impairments(duplicateRate: 1)) { link in
                try await withLoopbackSocket { client in
                    try await client.send(Array("hi".utf8), to: link.address)
                    #expect(try await client.expectDatagram(within: .seconds(5)).string == "hi")
                    let copy = try await client.expectDatagram(within: .seconds(5))
                    #expect(copy.string == "hi" && copy.remote == link.address)
                    #expect(link.clientAddress == client.localAddress)
                    let request = try await peer.expectDatagram(within: .seconds(5))
                    #expect(request.sender != client.localAddress, "the server sees the link, not the client")
                    // The counters of a direction are published once its datagrams are sent on.
                    try await link.waitUntilForwarded(.clientToServer, received: 1, within: .seconds(5))
                    try await link.waitUntilForwarded(.serverToClient, received: 1, within: .seconds(5))
                    let stats = link.statistics
                    #expect(stats.clientToServer.forwarded == 1 && stats.clientToServer.duplicated == 0)
                    #expect(stats.serverToClient.received == 1 && stats.serverToClient.duplicated == 1)
                    #expect(stats.serverToClient.forwarded == 2)
                }
            }
        }
    }

    @Test("bad impairments are refused with ImpairmentError", arguments: [
        Impairments(dropRate: 1.5), Impairments(duplicateRate: -0.1), Impairments(reorderRate: .nan),
        Impairments(delay: .milliseconds(-1)), Impairments(truncateRate: 0.5, truncateLength: -1),
    ])
    func badImpairments(impairments: Impairments) async throws {
        let server = try SocketAddress.loopback(port: 9)
        await #expect(throws: ImpairmentError.self) {
            try await withImpairedLink(to: server, impairments: impairments) { _ in }
        }
    }

    @Test("a server that is not on loopback, or has no port, is refused with ImpairmentError",
          arguments: ["192.0.2.1:53", "[2001:db8::1]:53", "127.0.0.1:0"])
    func notLoopback(server: String) async throws {
        let address = try SocketAddress(server)
        await #expect(throws: ImpairmentError.self) {
            try await withImpairedLink(to: address) { _ in }
        }
    }

    @Test("withImpairedLink closes its sockets when its body throws, and passes the error on")
    func closesOnThrow() async throws {
        struct Failed: Error {}
        var address: SocketAddress?
        try await withTestPeer { peer in
            await #expect(throws: Failed.self) {
                try await withImpairedLink(to: peer.address) { link in
                    address = link.address
                    throw Failed()
                }
            }
        }
        // The link's port is free again.
        try await withUDPSocket(bindingTo: try #require(address)) { _ in }
    }

    @Test("a link to a server on ::1 listens on ::1 and relays both ways")
    func ipv6() async throws {
        try await withTestPeer(.ipv6, script: .echo) { peer in
            try await withImpairedLink(to: peer.address) { link in
                #expect(link.address.ip == "::1")
                try await withLoopbackSocket(family: .ipv6) { client in
                    try await client.send(Array("six".utf8), to: link.address)
                    let reply = try await client.expectDatagram(within: .seconds(5))
                    #expect(reply.string == "six" && reply.remote == link.address)
                }
            }
        }
    }
}
