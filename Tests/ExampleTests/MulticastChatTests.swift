import Foundation
import Testing

@Suite("multicast-chat", .timeLimit(.minutes(2)))
struct MulticastChatTests {
    @Test("two multicast-chat instances exchange lines over 127.0.0.1, then leave on SIGINT")
    func twoInstancesChat() async throws {
        // A group of its own, so concurrent runs do not hear each other.
        let group = "239.255.\(Int.random(in: 1...254)).\(Int.random(in: 1...254))"
        let alice = try ExampleProcess(example: "multicast-chat",
                                       ["--group", group, "--port", "0", "--interface", "127.0.0.1", "--name", "alice"])
        defer { alice.terminate() }
        let port = try await alice.waitFor(#"joined [\d.]+ on 127\.0\.0\.1, port (\d+)"#, in: .stderr)[1]
        // Bob shares the port and turns multicast loop off: on lo, datagrams still arrive.
        let bob = try ExampleProcess(example: "multicast-chat",
                                     ["--group", group, "--port", port, "--interface", "127.0.0.1", "--disable-loop"])
        defer { bob.terminate() }
        try await bob.waitFor("joined \(group)", in: .stderr)

        try await say("hello from alice", by: alice, until: #"127\.0\.0\.1:\d+: alice: hello from alice"#, in: bob)
        try await say("hi alice, bob here", by: bob, until: #"127\.0\.0\.1:\d+: hi alice, bob here"#, in: alice)
        // Nobody sees their own lines.
        #expect(!alice.text(.stdout).contains("hello from alice"))
        #expect(!bob.text(.stdout).contains("bob here"))

        for member in [alice, bob] {
            member.interrupt()
            #expect(try await member.waitForExit() == 0, "\(member.text(.stderr))")
            #expect(member.text(.stderr).contains("left \(group)"))
        }
    }

    @Test("multicast-chat refuses a group that is not multicast with a one-line reason")
    func refusesUnicastGroup() async throws {
        let chat = try ExampleProcess(example: "multicast-chat", ["--group", "127.0.0.1", "--port", "0"])
        defer { chat.terminate() }
        #expect(try await chat.waitForExit() != 0)
        #expect(chat.text(.stderr).trimmingCharacters(in: .whitespacesAndNewlines)
            == "Error: --group 127.0.0.1 is not a multicast address")
    }

    /// Types `line` into `speaker` until `pattern` shows up in `listener`'s output: the first
    /// datagrams after a join can race the membership, so the line is repeated every 300 ms
    /// (for at most `childWait`, the bound every other wait here has).
    private func say(_ line: String, by speaker: ExampleProcess, until pattern: String,
                     in listener: ExampleProcess) async throws {
        let deadline = ContinuousClock.now + childWait
        while true {
            speaker.write(line + "\n")
            do {
                try await listener.waitFor(pattern, in: .stdout, timeout: .milliseconds(300))
                return
            } catch let timeout as ProcessTimeout {
                if listener.hasFinished || speaker.hasFinished || ContinuousClock.now >= deadline { throw timeout }
            }
        }
    }
}
