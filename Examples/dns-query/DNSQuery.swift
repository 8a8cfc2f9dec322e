// dns-query: asks a DNS server one question over UDP, like `dig NAME TYPE @SERVER`, with a
// deadline for each try and retries with backoff. The request/response pattern in full:
// send, wait with `receive(timeout:)`, ignore what does not match, send again on a timeout.
import ArgumentParser
import AsyncUDP
import ExampleSupport
import Foundation
import Glibc
import Logging

@main
struct DNSQuery: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dns-query",
        abstract: "Ask a DNS server one question over UDP and print the answers, one per line.",
        discussion: """
            Sends a query (a random ID, recursion desired, one question), waits --timeout seconds \
            for the reply, and sends the same query again, with the same ID, each time a wait \
            ends without one; each wait is twice as long as the one before. Replies whose ID or \
            question does not match (a late reply to another query, a stray datagram) are \
            ignored. Exit status: 0 when the server answered (answers, if any, on standard \
            output); 1 when it answered with an error (NXDOMAIN, SERVFAIL, REFUSED, ...) or the \
            query failed; 2 for a usage error or a server that cannot be resolved; 3 when no \
            reply came after all tries.
            """)

    @Option(help: "The DNS server: a host name or a numeric address (default: the first nameserver in /etc/resolv.conf).")
    var server: String?

    @Option(help: "The server's UDP port.")
    var port = 53

    @Option(help: "The record type: A, AAAA, TXT, CNAME, MX, NS, PTR, SOA, ... or TYPE<number>.")
    var type = DNSType.a

    @Option(help: "Seconds to wait for the reply to the first try; each retry waits twice as long.")
    var timeout = 1.0

    @Option(help: "How many times to send the query again when a wait ends with no reply.")
    var retries = 3

    @Flag(help: "Print only the data of each answer (\"192.0.2.1\"), as dig +short does.")
    var short = false

    @Flag(name: .shortAndLong, help: "Log each try and each ignored datagram at debug level.")
    var verbose = false

    @Argument(help: "The name to ask about, such as example.com.")
    var name: String

    func validate() throws {
        guard (1...65_535).contains(port) else { throw ValidationError("--port must be 1...65535, not \(port)") }
        guard timeout > 0, timeout <= 3600 else { throw ValidationError("--timeout must be more than 0 and at most 3600 seconds") }
        guard (0...10).contains(retries) else { throw ValidationError("--retries must be 0...10, not \(retries)") }
        do { _ = try DNSName(name) } catch { throw ValidationError("\(name) is not a domain name: \(error)") }
    }

    /// Parses the command line and runs the query. A usage error exits with status 2 (as in dig
    /// and most Unix tools; ArgumentParser's own choice would be 64); `--help` exits with 0.
    static func main() async {
        let command: DNSQuery
        do {
            command = try parse()
        } catch {
            guard exitCode(for: error) != .success else { exit(withError: error) }
            complain(fullMessage(for: error))
            exit(withError: ExitCode(2))
        }
        do {
            try await command.run()
        } catch {
            exit(withError: error)
        }
    }

    func run() async throws {
        bootstrapOutput(verbose: verbose)
        let logger = Logger(label: "dns-query")
        let question = DNSQuestion(name: try DNSName(name), type: type)

        let host = try server ?? Self.systemNameserver()
        let address: SocketAddress
        do {
            // A numeric address comes back as it is; a name is resolved on libuv's thread pool.
            address = try await SocketAddress.resolve(host: host, port: port)[0]
        } catch {
            throw fail("cannot resolve the server \"\(host)\": \(error)", status: 2)
        }

        // Waits of 1, 2, 4, 8 s by default: 15 s in all, as long as dig waits by default.
        let waits = (0...retries).map { Duration.seconds(timeout) * (1 << $0) }
        let loop = UVLoop(name: "dns-query")
        let outcome = await capture {
            try await withUDPSocket(connectingTo: address, loop: loop) { udp in
                try await Self.exchange(question, with: address, over: udp, waits: waits, logger: logger)
            }
        }
        await loop.shutdown()

        guard let reply = try outcome.get() else {
            let total = waits.reduce(.zero, +)
            throw fail("no reply from \(address) after \(waits.count) tries (\(total.secondsText) s)", status: 3)
        }
        guard reply.responseCode == .noError else {
            throw fail("\(question.name) \(question.type): \(reply.responseCode) from \(address)", status: 1)
        }
        if reply.isTruncated {
            logger.warning("the reply was truncated (TC): it lost records that only TCP would carry")
        }
        if reply.answers.isEmpty {
            logger.notice("\(question.name) has no \(question.type) records (NOERROR, no answers)")
        }
        for record in reply.answers {
            say(short ? record.data.description : record.description)
        }
    }

    /// Sends the query for `question` and returns the reply that matches it, or `nil` after the
    /// last wait in `waits` ends with none.
    ///
    /// Every try sends the same bytes (the same ID), so a late reply to an earlier try is as
    /// good as the reply to the last one. Within a try, a datagram that is not a DNS message, or
    /// a reply with another ID or question, is logged and ignored, and the wait goes on until
    /// the try's deadline (not for a fresh timeout: strays cannot stretch it).
    static func exchange(_ question: DNSQuestion, with server: SocketAddress, over udp: UDPSocket,
                         waits: [Duration], logger: Logger) async throws -> DNSMessage? {
        let id = UInt16.random(in: .min ... .max)
        let query = DNSMessage.query(id: id, question: question)
        for (attempt, wait) in waits.enumerated() {
            try await udp.send(query)
            logger.debug("try \(attempt + 1) of \(waits.count): asked \(server) for \(question) (ID \(id)), waiting \(wait)")
            let deadline = ContinuousClock.now + wait
            while true {
                let remaining = deadline - ContinuousClock.now
                // receive(timeout:) is cancel-safe: when it returns nil it has taken nothing.
                guard remaining > .zero, let datagram = try await udp.receive(timeout: remaining) else { break }
                let reply: DNSMessage
                do {
                    reply = try DNSMessage(parsing: datagram.payload)
                } catch {
                    logger.info("ignoring a datagram of \(datagram.payload.count) bytes that is not a DNS message: \(error)")
                    continue
                }
                guard reply.isReply(toID: id, question: question) else {
                    logger.info("ignoring a reply that does not match: ID \(reply.id), question \(reply.questions.map(\.description).joined(separator: ", "))")
                    continue
                }
                logger.debug("reply on try \(attempt + 1): \(reply.responseCode), \(reply.answers.count) answers")
                return reply
            }
            logger.info("no reply from \(server) within \(wait.secondsText) s (try \(attempt + 1) of \(waits.count))")
        }
        return nil
    }

    /// The first `nameserver` in /etc/resolv.conf, the system resolver's first choice.
    static func systemNameserver() throws -> String {
        let text = (try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count >= 2, fields[0] == "nameserver" { return String(fields[1]) }
        }
        throw fail("no nameserver in /etc/resolv.conf: give one with --server", status: 2)
    }
}

extension DNSType: ExpressibleByArgument {
    init?(argument: String) { self.init(argument) }
    var defaultValueDescription: String { description }
}

extension Duration {
    /// The duration in seconds, to the millisecond, as text without a unit: `1.5`, `2`.
    var secondsText: String {
        let milliseconds = (Double(components.seconds) * 1e3 + Double(components.attoseconds) / 1e15).rounded()
        return milliseconds.truncatingRemainder(dividingBy: 1000) == 0 ? String(Int(milliseconds / 1000)) : String(milliseconds / 1000)
    }
}

/// Writes `message` to standard error with `write(2)`.
func complain(_ message: String) {
    let bytes = Array((message.hasSuffix("\n") ? message : message + "\n").utf8)
    var written = 0
    while written < bytes.count {
        let count = bytes[written...].withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { return }
        written += count
    }
}

/// Prints `Error: <reason>` on standard error and returns the exit status to throw.
func fail(_ reason: String, status: Int32) -> ExitCode {
    complain("Error: " + reason)
    return ExitCode(status)
}
