// udpcat: netcat for UDP. `listen` prints what arrives, `send` sends lines (or a load).
import ArgumentParser
import AsyncUDP
import ExampleSupport
import Glibc
import Logging

@main
struct UDPCat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "udpcat",
        abstract: "netcat for UDP: print the datagrams that arrive, or send lines as datagrams.",
        subcommands: [Listen.self, Send.self]
    )
}

extension UDPCat {
    struct Listen: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print each datagram that arrives, with its sender, until SIGINT or SIGTERM.",
            discussion: """
                Each datagram is one line on standard output: "SENDER: TEXT" (one trailing newline \
                of the payload is dropped), or with --hex "SENDER: N bytes: 68 69". Logs, such as \
                "listening on 127.0.0.1:9000", go to standard error.
                """)

        @Option(help: "The local address to listen on (numeric IPv4 or IPv6).")
        var host = "0.0.0.0"

        @Argument(help: "The port to listen on; 0 picks a free one (logged at startup).")
        var port: String

        @Flag(help: "Print payloads as hex bytes instead of text.")
        var hex = false

        @Option(help: "Exit after this many datagrams.")
        var count: Int?

        @Option(help: "Join this multicast group (binds the wildcard address with SO_REUSEADDR).")
        var join: String?

        @Option(help: "The local interface address for --join (default: the kernel's choice).")
        var interface: String?

        @Flag(help: "Allow broadcast on the socket (SO_BROADCAST).")
        var broadcast = false

        @Flag(name: .shortAndLong, help: "Log at debug level.")
        var verbose = false

        func run() async throws {
            bootstrapOutput(verbose: verbose)
            let logger = Logger(label: "udpcat")
            if let count, count < 1 { throw UsageError("--count must be at least 1") }
            var address = try parseAddress(host: host, port: port)
            var flags: UDPFlags = []
            if let join {
                // A group member listens on the wildcard address of the group's family, and
                // shares the port with other members on this host.
                let group = try parseAddress(host: join, port: port)
                guard group.isMulticast else { throw UsageError("\(join) is not a multicast group") }
                if host == "0.0.0.0" {
                    address = try SocketAddress(ip: group.family == .ipv4 ? "0.0.0.0" : "::", port: address.port)
                }
                flags.insert(.reuseAddress)
            }
            let loop = UVLoop(name: "udpcat")
            let outcome = await capture { try await listen(on: address, flags: flags, loop: loop, logger: logger) }
            await loop.shutdown()
            try outcome.get()
        }

        private func listen(on address: SocketAddress, flags: UDPFlags, loop: UVLoop, logger: Logger) async throws {
            try await withUDPSocket(bindingTo: address, loop: loop, flags: flags) { socket in
                if broadcast { try await socket.setBroadcast(true) }
                if let join {
                    do {
                        try await socket.joinGroup(join, interface: interface)
                    } catch {
                        throw UsageError("cannot join \(join) on \(interface ?? "the default interface"): \(error)")
                    }
                    logger.info("joined \(join) on \(interface ?? "the default interface")")
                }
                logger.info("listening on \(socket.localAddress)")
                let stopper = Task {
                    let signal = await firstSignal(of: [SIGINT, SIGTERM])
                    logger.debug("signal \(signal): closing")
                    await socket.close()
                }
                defer { stopper.cancel() }
                var received = 0
                for try await datagram in socket.datagrams {
                    say(render(datagram))
                    received += 1
                    if let count, received >= count { break }
                }
                if let join { try? await socket.leaveGroup(join, interface: interface) }
                let statistics = await socket.statistics
                logger.debug("closing: \(statistics)")
            }
        }

        private func render(_ datagram: Datagram) -> String {
            let truncated = datagram.isTruncated ? " (truncated)" : ""
            if hex {
                let bytes = datagram.payload.map { byte in
                    let digits = String(byte, radix: 16)
                    return digits.count == 1 ? "0" + digits : digits
                }
                return "\(datagram.remote): \(datagram.payload.count) bytes\(truncated): " + bytes.joined(separator: " ")
            }
            var payload = datagram.payload[...]
            if payload.last == UInt8(ascii: "\n") { payload = payload.dropLast() }
            return "\(datagram.remote): " + String(decoding: payload, as: UTF8.self) + truncated
        }
    }

    struct Send: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send each line of standard input (or of --file) as one datagram, or a load of --count datagrams.",
            discussion: """
                A line is sent without its newline; an empty line is a zero-length datagram. \
                --count and --size send generated payloads as fast as the socket takes them and \
                log the rate. A line longer than a UDP datagram can carry is an error.
                """)

        @Argument(help: "The destination's numeric IP address (unicast, multicast or broadcast).")
        var host: String

        @Argument(help: "The destination port.")
        var port: String

        @Option(help: "Read lines from this file instead of standard input.")
        var file: String?

        @Option(help: "Send this many generated datagrams instead of reading lines.")
        var count: Int?

        @Option(help: "Payload bytes of each generated datagram (with --count).")
        var size = 64

        @Option(help: "The local address to send from, such as 127.0.0.1:0 (default: the wildcard address, a free port).")
        var bind: String?

        @Flag(help: "Allow sending to a broadcast address (SO_BROADCAST).")
        var broadcast = false

        @Option(help: "TTL (hop limit): the multicast TTL for a multicast destination, else the unicast TTL.")
        var ttl: Int?

        @Option(help: "The interface address for outgoing multicast.")
        var interface: String?

        @Flag(name: .shortAndLong, help: "Log at debug level.")
        var verbose = false

        func run() async throws {
            bootstrapOutput(verbose: verbose)
            let logger = Logger(label: "udpcat")
            let target = try parseAddress(host: host, port: port)
            guard target.port != 0 else { throw UsageError("cannot send to port 0") }
            let limit = target.family.maximumPayloadSize
            if let count, count < 0 { throw UsageError("--count must not be negative") }
            if count != nil, file != nil { throw UsageError("--count and --file are alternatives; give one") }
            guard (0...limit).contains(size) else {
                throw UsageError("--size \(size) is out of range: a UDP datagram over \(target.family) carries 0...\(limit) bytes")
            }
            if let ttl, !(1...255).contains(ttl) { throw UsageError("--ttl \(ttl) is out of range 1...255") }
            let local: SocketAddress
            if let bind {
                do { local = try SocketAddress(bind) } catch { throw UsageError("--bind: \(error)") }
            } else {
                local = try SocketAddress(ip: target.family == .ipv4 ? "0.0.0.0" : "::", port: 0)
            }
            let source: LineSource
            if let file {
                guard let opened = LineSource(path: file) else { throw UsageError("cannot open \(file)") }
                source = opened
            } else {
                source = LineSource.standardInput
            }

            let loop = UVLoop(name: "udpcat")
            let outcome = await capture {
                try await withUDPSocket(bindingTo: local, loop: loop) { socket in
                    if broadcast { try await socket.setBroadcast(true) }
                    if target.isMulticast {
                        if let ttl { try await socket.setMulticastTTL(ttl) }
                        if let interface { try await socket.setMulticastInterface(interface) }
                    } else if let ttl {
                        try await socket.setTTL(ttl)
                    }
                    if let count {
                        try await sendLoad(count: count, to: target, on: socket, logger: logger)
                    } else {
                        try await sendLines(from: source, limit: limit, to: target, on: socket, logger: logger)
                    }
                }
            }
            await loop.shutdown()
            try outcome.get()
        }

        private func sendLines(from source: LineSource, limit: Int, to target: SocketAddress,
                               on socket: UDPSocket, logger: Logger) async throws {
            var sent = 0
            for try await line in source.lines() {
                guard line.count <= limit else {
                    throw UsageError("line \(sent + 1) has \(line.count) bytes; a UDP datagram over \(target.family) carries at most \(limit)")
                }
                try await socket.send(line, to: target)
                sent += 1
            }
            logger.debug("sent \(sent) datagrams to \(target)")
        }

        private func sendLoad(count: Int, to target: SocketAddress, on socket: UDPSocket, logger: Logger) async throws {
            let size = size
            let start = ContinuousClock.now
            // Loop-affine: on the socket's loop thread each send is a direct try-send, no hop.
            try await withTaskExecutorPreference(socket.loop) {
                let filler = [UInt8](repeating: UInt8(ascii: "x"), count: size)
                for index in 0..<count {
                    // "42 xxxx...": the sequence number, then filler, exactly `size` bytes.
                    var payload = Array("\(index) ".utf8.prefix(size))
                    payload += filler[payload.count...]
                    try await socket.send(payload, to: target)
                }
            }
            let elapsed = ContinuousClock.now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let rate = seconds > 0 ? Int(Double(count) / seconds) : 0
            logger.info("sent \(count) datagrams of \(size) bytes to \(target) in \(elapsed): \(rate) datagrams/s")
        }
    }
}

/// An error in what the user typed: ArgumentParser prints it as one line ("Error: ...") and
/// exits with status 1.

/// Parses a numeric IP address and a decimal port, with a one-line reason when either is wrong.
func parseAddress(host: String, port: String) throws -> SocketAddress {
    guard let number = Int(port), (0...65_535).contains(number) else {
        throw UsageError("invalid port \"\(port)\": a port is a number in 0...65535")
    }
    do {
        return try SocketAddress(ip: host, port: number)
    } catch {
        throw UsageError("\(error) (udpcat takes numeric addresses such as 127.0.0.1 or ::1)")
    }
}
