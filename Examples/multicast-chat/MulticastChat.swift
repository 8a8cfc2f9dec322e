// multicast-chat: everyone who runs it with the same group and port sees each other's lines.
import ArgumentParser
import AsyncUDP
import ExampleSupport
import Glibc
import Logging

@main
struct MulticastChat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "multicast-chat",
        abstract: "Chat over IP multicast: send each line of standard input to a group, print what others send.",
        discussion: """
            Received lines print as "SENDER: TEXT" on standard output; your own lines are not \
            echoed. At the end of standard input the chat keeps listening. SIGINT (Ctrl-C) or \
            SIGTERM leaves the group, closes the sockets and exits with status 0.
            """)

    @Option(help: "The multicast group (IPv4 such as 239.255.42.99, or IPv6 such as ff15::4242).")
    var group = "239.255.42.99"

    @Option(help: "The UDP port everyone in the chat uses; 0 picks a free one (logged at startup).")
    var port = 4_242

    @Option(help: "The local interface address to join on and send from, such as 192.168.1.10 or 127.0.0.1 (default: the kernel's choice).")
    var interface: String?

    @Option(help: "Multicast TTL (hop limit): 1 stays on the local network.")
    var ttl = 1

    @Flag(inversion: .prefixedEnableDisable, help: "Whether this host's other members receive your lines (IP_MULTICAST_LOOP).")
    var loop = true

    @Option(help: "A name to put in front of your lines (\"NAME: text\").")
    var name: String?

    @Flag(name: .shortAndLong, help: "Log at debug level.")
    var verbose = false

    func run() async throws {
        bootstrapOutput(verbose: verbose)
        let logger = Logger(label: "multicast-chat")
        let groupAddress: SocketAddress
        do {
            groupAddress = try SocketAddress(ip: group, port: port)
        } catch {
            throw UsageError("--group: \(error)")
        }
        guard groupAddress.isMulticast else { throw UsageError("--group \(group) is not a multicast address") }
        guard (0...255).contains(ttl) else { throw UsageError("--ttl \(ttl) is out of range 0...255") }
        let uvLoop = UVLoop(name: "multicast-chat")
        let outcome = await capture { try await chat(group: groupAddress, loop: uvLoop, logger: logger) }
        await uvLoop.shutdown()
        try outcome.get()
    }

    private func chat(group: SocketAddress, loop: UVLoop, logger: Logger) async throws {
        let wildcard = group.family == .ipv4 ? "0.0.0.0" : "::"
        // The receiving socket: the group's port on the wildcard address, shared (SO_REUSEADDR)
        // with the other members on this host, member of the group on the chosen interface.
        let receiver = try await UDPSocket(bindingTo: SocketAddress(ip: wildcard, port: group.port),
                                           loop: loop, flags: .reuseAddress)
        let port = receiver.localAddress.port
        let destination = try group.withPort(port)
        do {
            try await receiver.joinGroup(self.group, interface: interface)
        } catch {
            await receiver.close()
            throw UsageError("cannot join \(self.group) on \(interface ?? "the default interface"): \(error)")
        }
        // The sending socket: a port of its own (on the interface, for IPv4), so members can
        // tell senders apart and we can recognize (and skip) our own lines when they loop back.
        let sender: UDPSocket
        do {
            let senderIP = group.family == .ipv4 ? interface ?? wildcard : wildcard
            sender = try await UDPSocket(bindingTo: SocketAddress(ip: senderIP, port: 0), loop: loop)
            do {
                if let interface { try await sender.setMulticastInterface(interface) }
                try await sender.setMulticastTTL(ttl)
                try await sender.setMulticastLoop(self.loop)
            } catch {
                await sender.close()
                throw error
            }
        } catch {
            await receiver.close()
            throw UsageError("cannot send to \(self.group) from \(interface ?? "the default interface"): \(error)")
        }
        logger.info("joined \(self.group) on \(interface ?? "the default interface"), port \(port); sending from \(sender.localAddress)")

        let me = sender.localAddress
        // Our own lines, looped back. (With a wildcard sender the IP is unknown, so the port
        // alone decides: a sender elsewhere with the same port would be skipped too.)
        func isMine(_ remote: SocketAddress) -> Bool {
            remote.port == me.port && (remote.ip == me.ip || me.ip == wildcard)
        }
        let prefix = name.map { Array("\($0): ".utf8) } ?? []
        let groupText = self.group
        let interface = interface
        /// Leaves the group, then closes the receiving socket (which ends the receiving task).
        /// Closing would drop the membership too, but leaving first is what a well-behaved
        /// member does: the kernel tells the routers at once.
        @Sendable func leaveAndClose() async {
            guard await !receiver.isClosed else { return }
            do {
                try await receiver.leaveGroup(groupText, interface: interface)
                logger.info("left \(groupText)")
            } catch {
                logger.warning("leaving \(groupText): \(error)")
            }
            await receiver.close()
        }

        enum Ending: Sendable { case received, failed(any Error), inputEnded, signalled }
        let failure: (any Error)? = await withTaskGroup(of: Ending.self) { tasks in
            // Print what others say, on the loop thread (no hop between libuv and this loop).
            tasks.addTask(executorPreference: loop) {
                do {
                    for try await datagram in receiver.datagrams where !isMine(datagram.remote) {
                        var text = datagram.payload[...]
                        if text.last == UInt8(ascii: "\n") { text = text.dropLast() }
                        say("\(datagram.remote): " + String(decoding: text, as: UTF8.self))
                    }
                    return .received
                } catch {
                    return .failed(error)
                }
            }
            // Send each line of standard input to the group.
            tasks.addTask {
                do {
                    for try await line in LineSource.standardInput.lines() {
                        try await sender.send(prefix + line, to: destination)
                    }
                    logger.debug("end of input; still listening until SIGINT")
                    return .inputEnded
                } catch is CancellationError {
                    return .inputEnded
                } catch {
                    return .failed(error)
                }
            }
            // Leave and close on SIGINT or SIGTERM: that ends the receiving task.
            tasks.addTask {
                let number = await firstSignal(of: [SIGINT, SIGTERM])
                guard number != 0 else { return .signalled }
                logger.debug("signal \(number): leaving")
                await leaveAndClose()
                return .signalled
            }
            var failure: (any Error)?
            for await ending in tasks {
                switch ending {
                case .received: tasks.cancelAll()
                case .failed(let error):
                    failure = failure ?? error
                    tasks.cancelAll()
                    await leaveAndClose()
                case .inputEnded, .signalled: break
                }
            }
            return failure
        }
        await leaveAndClose()
        await sender.close()
        if let failure { throw failure }
    }
}

/// An error in what the user typed: ArgumentParser prints it as one line ("Error: ...") and
/// exits with status 1.
