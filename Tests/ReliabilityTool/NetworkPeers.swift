import ArgumentParser
import AsyncUDP
import Glibc

/// Sends datagrams (alternating between one or more local sockets) and counts each error.
struct Send: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send datagrams; count errors by name; measure how responsive the loop stays.")

    @Option(help: "Local address to bind; repeat to alternate between several sockets.")
    var from: [String] = []

    @Option(help: "Destination, e.g. 10.0.0.2:9000 or [fd00::2]:9000.")
    var to: String

    @Option(help: "How many datagrams; 0 sends until terminated.")
    var count = 1

    @Option(help: "Pause between datagrams, in milliseconds.")
    var intervalMs = 0

    @Flag(help: "Enable SO_BROADCAST.")
    var broadcast = false

    @Option(help: "Interface for outgoing multicast (an IPv4 address, or an IPv6 interface name).")
    var multicastInterface: String?

    @Option(help: "Multicast loop: on or off.")
    var multicastLoop: String?

    func run() async throws {
        let destination = try parseAddress(to)
        let loop = UVLoop(name: "send")
        var sockets: [UDPSocket] = []
        let locals = from.isEmpty ? [destination.family == .ipv4 ? "0.0.0.0:0" : "[::]:0"] : from
        for local in locals {
            let socket = try await UDPSocket(bindingTo: try parseAddress(local), loop: loop)
            if broadcast { try await socket.setBroadcast(true) }
            if let multicastInterface { try await socket.setMulticastInterface(multicastInterface) }
            if let multicastLoop { try await socket.setMulticastLoop(multicastLoop == "on") }
            sockets.append(socket)
        }
        emit("READY")
        let probe = LoopLatencyProbe(loop: loop)
        var errors: [String: Int] = [:]
        var sent = 0
        var index = 0
        while count == 0 || index < count {
            let socket = sockets[index % sockets.count]
            do {
                try await socket.send(Array("\(index) from \(socket.localAddress)".utf8), to: destination)
                sent += 1
            } catch {
                errors[errorName(error), default: 0] += 1
            }
            index += 1
            if intervalMs > 0 {
                try await Task.sleep(for: .milliseconds(intervalMs))
            } else if index % 16 == 0 {
                await Task.yield()  // send() may complete without suspending
            }
        }
        // After the flood, the loop still answers: one echo through loopback on the same loop.
        let echo = await loopbackEcho(loop: loop)
        let worst = await probe.stop()
        var sendErrors = 0, transient = 0
        for socket in sockets {
            let stats = await socket.statistics
            sendErrors += stats.sendErrorCount
            transient += stats.transientErrorCount
            await socket.close()
        }
        await loop.shutdown()
        emit("RESULT attempted=\(index) sent=\(sent) errors=\(formatCounts(errors)) sendErrors=\(sendErrors) "
             + "transientErrors=\(transient) maxLoopLatencyMs=\(Int(worst.rounded(.up))) loopbackEcho=\(echo)")
    }

    /// Whether a datagram to a second socket on 127.0.0.1 arrives (needs `lo` up).
    func loopbackEcho(loop: UVLoop) async -> String {
        do {
            let a = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), loop: loop)
            let b = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), loop: loop)
            try await a.send(Array("ping".utf8), to: b.localAddress)
            var iterator = b.datagrams.makeAsyncIterator()
            let got = try await iterator.next()
            await a.close()
            await b.close()
            return got?.payload == Array("ping".utf8) ? "ok" : "missing"
        } catch {
            return errorName(error)
        }
    }
}

/// Receives until enough datagrams have come from the expected source, and reports every
/// source seen.
struct Receive: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "receive",
        abstract: "Receive (optionally joined to a group); report datagrams per source.")

    @Option(help: "Local address to bind, e.g. 0.0.0.0:9000.")
    var bind: String

    @Option(help: "Multicast group to join.")
    var join: String?

    @Option(help: "Interface to join on (an address; for IPv6 a scoped address such as ::%eth0).")
    var interface: String?

    @Option(help: "Source for a source-specific join.")
    var source: String?

    @Option(help: "Stop after this many datagrams from --expect-from (or from anyone).")
    var count = 1

    @Option(help: "The IP whose datagrams count towards --count.")
    var expectFrom: String?

    @Option(help: "Give up after this many seconds (exit status 3).")
    var timeout = 20.0

    func run() async throws {
        let loop = UVLoop(name: "receive")
        let socket = try await UDPSocket(bindingTo: try parseAddress(bind), loop: loop)
        if let join {
            if let source {
                try await socket.joinGroup(join, source: source, interface: interface)
            } else {
                try await socket.joinGroup(join, interface: interface)
            }
        }
        emit("READY port=\(socket.localAddress.port)")
        let limit = timeout
        let watchdog = Task {
            try await Task.sleep(for: .milliseconds(Int(limit * 1000)))
            await socket.close()
        }
        var perSource: [String: Int] = [:]
        var matched = 0
        for try await datagram in socket.datagrams {
            perSource[datagram.remote.ip, default: 0] += 1
            if expectFrom == nil || datagram.remote.ip == expectFrom { matched += 1 }
            if matched >= count { break }
        }
        watchdog.cancel()
        await socket.close()
        await loop.shutdown()
        emit("RESULT matched=\(matched) total=\(perSource.values.reduce(0, +)) sources=\(formatCounts(perSource))")
        if matched < count { throw ExitCode(3) }
    }
}

/// In one namespace: a receiver joined to a group and a sender with multicast loop on, then off.
/// With loop on the receiver gets the sender's group datagrams; with loop off it must not, which
/// is checked against unicast markers sent right after each group datagram.
struct MulticastLoop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "multicast-loop",
        abstract: "Check that multicast loop off suppresses local delivery (loop on as the control).")

    @Option var group: String
    @Option(help: "The local interface address to join and send on.") var interface: String
    @Option var port: Int
    @Option var count = 20

    func run() async throws {
        let loop = UVLoop(name: "mcast-loop")
        let receiver = try await UDPSocket(bindingTo: SocketAddress(ip: "0.0.0.0", port: port), loop: loop, flags: .reuseAddress)
        try await receiver.joinGroup(group, interface: interface)
        let sender = try await UDPSocket(bindingTo: SocketAddress(ip: interface, port: 0), loop: loop)
        try await sender.setMulticastInterface(interface)
        let groupAddress = try SocketAddress(ip: group, port: port)
        let marker = try SocketAddress(ip: interface, port: port)
        var iterator = receiver.datagrams.makeAsyncIterator()
        let watchdog = Task {
            try await Task.sleep(for: .seconds(20))
            await receiver.close()  // ends the iteration below if the control never arrives
        }

        // Control: loop on, the group datagram comes back to this host.
        try await sender.setMulticastLoop(true)
        try await sender.send(Array("G-on".utf8), to: groupAddress)
        try await sender.send(Array("M-on".utf8), to: marker)
        var onGroup = 0
        var onMarkers = 0
        while onGroup < 1 || onMarkers < 1, let datagram = try await iterator.next() {
            if datagram.payload.first == UInt8(ascii: "G") { onGroup += 1 } else { onMarkers += 1 }
        }
        // Loop off: each group datagram is followed by a marker; none of the group ones may come.
        try await sender.setMulticastLoop(false)
        for index in 0..<count {
            try await sender.send(Array("G-off \(index)".utf8), to: groupAddress)
            try await sender.send(Array("M-off \(index)".utf8), to: marker)
        }
        var offGroup = 0
        var offMarkers = 0
        while offMarkers < count, let datagram = try await iterator.next() {
            if datagram.payload.first == UInt8(ascii: "G") { offGroup += 1 } else { offMarkers += 1 }
        }
        watchdog.cancel()
        await receiver.close()
        await sender.close()
        await loop.shutdown()
        emit("RESULT loopOnGroup=\(onGroup) loopOnMarkers=\(onMarkers) loopOffGroup=\(offGroup) loopOffMarkers=\(offMarkers) sentOff=\(count)")
    }
}

/// One-shot checks that must run inside a namespace (they would send off the host otherwise),
/// or with other credentials. Each prints `RESULT outcome=<OK|error name>`.
struct Probe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "One-shot checks run in a namespace or as another user.")

    enum Check: String, ExpressibleByArgument, CaseIterable {
        /// Send to 0.0.0.0:P (Linux delivers it locally); OK when it arrives on 127.0.0.1:P.
        case zeroDestination = "zero-destination"
        /// Join a group with no interface (needs a multicast route).
        case joinWithoutInterface = "join-without-interface"
        /// Send to 255.255.255.255 without SO_BROADCAST.
        case broadcastWithoutPermission = "broadcast-without-permission"
        /// Bind 127.0.0.1:<port> (a privileged port when run unprivileged).
        case bindPort = "bind-port"
    }

    @Argument var check: Check
    @Option var port = 0

    func run() async throws {
        let loop = UVLoop(name: "probe")
        let outcome: String
        do {
            switch check {
            case .zeroDestination:
                let receiver = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), loop: loop)
                let sender = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), loop: loop)
                try await sender.send(Array("to zero".utf8), to: SocketAddress(ip: "0.0.0.0", port: receiver.localAddress.port))
                var iterator = receiver.datagrams.makeAsyncIterator()
                let got = try await iterator.next()
                outcome = got?.payload == Array("to zero".utf8) ? "OK" : "missing"
                await receiver.close()
                await sender.close()
            case .joinWithoutInterface:
                let socket = try await UDPSocket(bindingTo: SocketAddress("0.0.0.0:0"), loop: loop)
                defer { Task { await socket.close() } }
                try await socket.joinGroup("239.1.2.3")
                outcome = "OK"
            case .broadcastWithoutPermission:
                let socket = try await UDPSocket(bindingTo: SocketAddress("0.0.0.0:0"), loop: loop)
                defer { Task { await socket.close() } }
                try await socket.send(Array("bcast".utf8), to: SocketAddress("255.255.255.255:9"))
                outcome = "OK"
            case .bindPort:
                let socket = try await UDPSocket(bindingTo: SocketAddress(ip: "127.0.0.1", port: port), loop: loop)
                await socket.close()
                outcome = "OK"
            }
        } catch {
            outcome = errorName(error)
        }
        await loop.shutdown()
        emit("RESULT outcome=\(outcome)")
    }
}
