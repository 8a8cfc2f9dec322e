// udp-echo: an echo server, a ping client, and a demo that runs both in one process on loopback
// and reports round trips per second and a latency histogram.
import ArgumentParser
import AsyncUDP
import ExampleSupport
import Glibc
import Logging

@main
struct UDPEcho: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "udp-echo",
        abstract: "A UDP echo server, a ping client, and a loopback demo that measures both.",
        discussion: "With no subcommand, runs `demo`: a server and a client in one process on 127.0.0.1.",
        subcommands: [Demo.self, Server.self, Client.self],
        defaultSubcommand: Demo.self
    )
}

/// Options shared by the client and the demo: how many pings, how many in flight, how big.
struct PingOptions: ParsableArguments {
    @Option(help: "Round trips to measure.")
    var count = 100_000

    @Option(help: "Pings in flight at once.")
    var window = 16

    @Option(help: "Payload bytes per ping (8...65507).")
    var size = 64

    @Option(help: "Milliseconds after which an unanswered ping counts as lost and is replaced.")
    var timeout = 200

    @Option(help: "Seconds after which the run stops, whatever is left.")
    var deadline = 60.0

    @Flag(name: .shortAndLong, help: "Log at debug level.")
    var verbose = false

    func validate() throws {
        guard count >= 1 else { throw ValidationError("--count must be at least 1") }
        guard window >= 1 else { throw ValidationError("--window must be at least 1") }
        guard (8...65_507).contains(size) else { throw ValidationError("--size must be 8...65507") }
        guard timeout >= 1 else { throw ValidationError("--timeout must be at least 1 ms") }
        guard deadline > 0 else { throw ValidationError("--deadline must be positive") }
    }

    var plan: PingPlan {
        PingPlan(count: count, window: min(window, count), size: size,
                 timeout: UInt64(timeout) * 1_000_000, deadline: UInt64(deadline * 1e9))
    }
}

extension UDPEcho {
    struct Demo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run an echo server and a ping client in one process on 127.0.0.1 and measure them.")

        @OptionGroup var options: PingOptions

        func run() async throws {
            bootstrapOutput(verbose: options.verbose)
            // Two loops, two threads: the server and the client each own one, as two processes
            // would, and both run their code on their loop's thread (the loop-affine fast path).
            let serverLoop = UVLoop(name: "echo-server")
            let clientLoop = UVLoop(name: "echo-client")
            let plan = options.plan
            let outcome = await UDPEcho.measure(plan: plan, serverLoop: serverLoop, clientLoop: clientLoop)
            // Shut the loops down once the sockets are gone: a socket's deinit runs on its loop.
            await clientLoop.shutdown()
            await serverLoop.shutdown()
            printReport(try outcome.get(), plan: plan)
        }
    }

    /// Starts the echo server, pings it, closes it, and returns what the client measured.
    fileprivate static func measure(plan: PingPlan, serverLoop: UVLoop,
                                clientLoop: UVLoop) async -> Result<Measurement, any Error> {
        let server: UDPSocket
        do {
            server = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), loop: serverLoop)
        } catch {
            return .failure(error)
        }
        let serving = Task(executorPreference: serverLoop) { try await serveEcho(on: server) }
        say("udp-echo demo: \(plan.count) round trips of \(plan.size) bytes, window \(plan.window), "
            + "to an echo server at \(server.localAddress) (server and client each on a loop thread of their own)")
        let outcome = await Task(executorPreference: clientLoop) {
            try await PingClient.measure(target: server.localAddress, plan: plan, loop: clientLoop,
                                         progress: ProgressLine())
        }.result
        await server.close()
        _ = await serving.result
        return outcome
    }
}

extension UDPEcho {
    struct Server: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Echo every datagram back to its sender until SIGINT or SIGTERM.")

        @Option(help: "The address to listen on.")
        var host = "127.0.0.1"

        @Option(help: "The port to listen on; 0 picks a free one (printed at startup).")
        var port = 7_007

        @Flag(name: .shortAndLong, help: "Log at debug level.")
        var verbose = false

        func run() async throws {
            bootstrapOutput(verbose: verbose)
            let logger = Logger(label: "udp-echo")
            let address = try parseAddress(host: host, port: port)
            let loop = UVLoop(name: "echo-server")
            try await Self.serve(at: address, loop: loop, logger: logger)
            await loop.shutdown()
        }

        private static func serve(at address: SocketAddress, loop: UVLoop, logger: Logger) async throws {
            let socket = try await UDPSocket(bindingTo: address, loop: loop)
            // Readiness line: scripts and tests wait for it.
            say("listening on \(socket.localAddress)")
            let stopper = Task {
                let signal = await firstSignal(of: [SIGINT, SIGTERM])
                guard signal != 0 else { return }
                // Read the counters while the socket is open: the kernel's drop count needs it.
                let statistics = await socket.statistics
                logger.info("signal \(signal): closing; \(statistics)")
                await socket.close()
            }
            defer { stopper.cancel() }
            try await withTaskExecutorPreference(loop) {
                try await serveEcho(on: socket, logger: logger)
            }
        }
    }

    struct Client: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Ping an echo server (this one, socat, anything that echoes) and measure round trips.")

        @Argument(help: "The server's IP address.")
        var host: String

        @Argument(help: "The server's port.")
        var port: Int

        @OptionGroup var options: PingOptions

        func run() async throws {
            bootstrapOutput(verbose: options.verbose)
            let target = try parseAddress(host: host, port: port)
            guard target.port != 0 else { throw UsageError("the server's port cannot be 0") }
            let plan = options.plan
            let loop = UVLoop(name: "echo-client")
            say("udp-echo client: \(plan.count) round trips of \(plan.size) bytes, window \(plan.window), to \(target)")
            let outcome = await Task(executorPreference: loop) {
                try await PingClient.measure(target: target, plan: plan, loop: loop, progress: ProgressLine())
            }.result
            await loop.shutdown()
            printReport(try outcome.get(), plan: plan)
        }
    }
}

/// Echoes every datagram of `socket` to its sender until the socket closes.
///
/// Call it from a task whose executor preference is the socket's loop (as `demo` and `server`
/// do): then receiving and sending both run on the loop thread with no thread hop.
func serveEcho(on socket: UDPSocket, logger: Logger = Logger(label: "udp-echo")) async throws {
    for try await datagram in socket.datagrams {
        do {
            try await socket.send(datagram.payload, to: datagram.remote)
        } catch is ClosedHandleError {
            return
        } catch {
            // One peer's bad datagram or unreachable address never stops the server.
            logger.warning("echo to \(datagram.remote) failed: \(error)")
        }
    }
}

/// An error in what the user typed: ArgumentParser prints it as one line and exits with status 1.

func parseAddress(host: String, port: Int) throws -> SocketAddress {
    guard (0...65_535).contains(port) else { throw UsageError("port \(port) is out of range 0...65535") }
    do {
        return try SocketAddress(ip: host, port: port)
    } catch {
        throw UsageError("\(error)")
    }
}
