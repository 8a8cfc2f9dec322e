import AsyncUDP
import Testing

/// Real multicast and broadcast between two network namespaces joined by a veth pair. Each peer
/// is a `reliability-tool` child started with `ip netns exec`; nothing leaves the namespaces.
@Suite("Private network: multicast and broadcast across a veth pair",
       .enabled(if: namespacesAvailable, namespaceSkipReason), .timeLimit(.minutes(2)))
struct NamespaceNetworkTests {
    /// Starts the receiver in B, waits until it is bound (and joined), runs the sender in A until
    /// the receiver has what it wants, then stops the sender.
    func exchange(_ network: PrivateNetwork, _ pair: VethPair, receiver: [String], sender: [String])
        async throws -> (received: ChildResult, sent: ChildResult) {
        let receiving = try Child(network.tool(in: pair.b, ["receive", "--timeout", "90"] + receiver))
        guard await receiving.waitForLine(startingWith: "READY") else {
            let result = await receiving.wait()
            Issue.record("receiver did not start: \(result)")
            return (result, ChildResult(status: -1, output: "sender not started"))
        }
        let sending = try Child(network.tool(in: pair.a, ["send"] + sender))
        let received = await receiving.wait()
        sending.terminate()
        let sent = await sending.wait()
        return (received, sent)
    }

    @Test("IPv4 multicast from A reaches a member in B")
    func ipv4Multicast() async throws {
        try await withNamespaces { network in
            let pair = try await network.makeVethPair()
            let (received, sent) = try await exchange(network, pair,
                receiver: ["--bind", "0.0.0.0:45001", "--join", "239.77.0.1", "--interface", pair.b4,
                           "--count", "5", "--expect-from", pair.a4],
                sender: ["--from", "\(pair.a4):0", "--to", "239.77.0.1:45001", "--multicast-interface", pair.a4,
                         "--count", "0", "--interval-ms", "10"])
            #expect(received.status == 0, "\(received)\n\(sent)")
            #expect(received.int("matched") == 5)
        }
    }

    @Test("IPv6 multicast from A reaches a member in B")
    func ipv6Multicast() async throws {
        try await withNamespaces { network in
            let pair = try await network.makeVethPair()
            let (received, sent) = try await exchange(network, pair,
                receiver: ["--bind", "[::]:45002", "--join", "ff15::4242", "--interface", "::%\(pair.linkB)",
                           "--count", "5", "--expect-from", pair.a6],
                sender: ["--from", "[\(pair.a6)]:0", "--to", "[ff15::4242]:45002", "--multicast-interface", pair.linkA,
                         "--count", "0", "--interval-ms", "10"])
            #expect(received.status == 0, "\(received)\n\(sent)")
            #expect(received.int("matched") == 5)
        }
    }

    @Test("multicast loop off: B receives every datagram, the sender's own host none (loop on is the control)")
    func multicastLoopOff() async throws {
        try await withNamespaces { network in
            let pair = try await network.makeVethPair()
            let member = try Child(network.tool(in: pair.b, [
                "receive", "--bind", "0.0.0.0:45003", "--join", "239.77.0.2", "--interface", pair.b4,
                "--count", "21", "--expect-from", pair.a4, "--timeout", "90"]))
            #expect(await member.waitForLine(startingWith: "READY"))
            let local = try await run(network.tool(in: pair.a, [
                "multicast-loop", "--group", "239.77.0.2", "--interface", pair.a4, "--port", "45003", "--count", "20"]))
            let remote = await member.wait()
            #expect(local.status == 0, "\(local)")
            #expect((local.int("loopOnGroup") ?? 0) >= 1, "control: with loop on the local member hears the group \(local)")
            #expect(local.int("loopOffMarkers") == 20)
            #expect(local.int("loopOffGroup") == 0, "with loop off nothing comes back locally \(local)")
            #expect(remote.status == 0 && remote.int("matched") == 21, "B heard all 21 \(remote)")
        }
    }

    @Test("broadcast to 255.255.255.255 and to the subnet broadcast reaches B", arguments: ["limited", "subnet"])
    func broadcast(kind: String) async throws {
        try await withNamespaces { network in
            let pair = try await network.makeVethPair()
            let destination = kind == "limited" ? "255.255.255.255" : pair.broadcast4
            let (received, sent) = try await exchange(network, pair,
                receiver: ["--bind", "0.0.0.0:45004", "--count", "3", "--expect-from", pair.a4],
                sender: ["--from", "\(pair.a4):0", "--to", "\(destination):45004", "--broadcast",
                         "--count", "0", "--interval-ms", "10"])
            #expect(received.status == 0, "\(received)\n\(sent)")
            #expect(received.int("matched") == 3)
        }
    }

    @Test("source-specific membership: the joined source is received, another source to the same group is not")
    func sourceSpecific() async throws {
        try await withNamespaces { network in
            let pair = try await network.makeVethPair()
            // The sender alternates: a datagram from the other source, then one from the right one.
            let (received, sent) = try await exchange(network, pair,
                receiver: ["--bind", "0.0.0.0:45005", "--join", "232.77.0.1", "--source", pair.a4,
                           "--interface", pair.b4, "--count", "10", "--expect-from", pair.a4],
                sender: ["--from", "\(pair.a4second):0", "--from", "\(pair.a4):0", "--to", "232.77.0.1:45005",
                         "--multicast-interface", pair.a4, "--count", "0", "--interval-ms", "5"])
            #expect(received.status == 0, "\(received)\n\(sent)")
            #expect(received.int("matched") == 10)
            #expect(received.int("total") == 10, "nothing from \(pair.a4second): \(received.fields["sources"] ?? "")")
            // The other source really sent: its datagrams reach a plain member of the group.
            let (control, _) = try await exchange(network, pair,
                receiver: ["--bind", "0.0.0.0:45006", "--join", "232.77.0.1", "--interface", pair.b4,
                           "--count", "3", "--expect-from", pair.a4second],
                sender: ["--from", "\(pair.a4second):0", "--to", "232.77.0.1:45006",
                         "--multicast-interface", pair.a4, "--count", "0", "--interval-ms", "5"])
            #expect(control.status == 0 && control.int("matched") == 3, "control: \(control)")
        }
    }
}
