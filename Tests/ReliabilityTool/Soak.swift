import ArgumentParser
import AsyncUDP
import Glibc
import Synchronization

/// Floods a slow consumer and checks that every datagram sent is accounted for.
struct Soak: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Flood a slow consumer; report RSS over time; check sent = delivered + drops (+ queued).")

    @Option(help: "How long to flood, in seconds.")
    var seconds = 60.0

    @Option(help: "Payload size in bytes.")
    var size = 256

    @Option(help: "The consumer's pause after each batch it takes, in microseconds (a slow consumer).")
    var consumerPause = 500

    @Option(help: "The receive queue limit.")
    var queueLimit = 1024

    func run() async throws {
        let receiverLoop = UVLoop(name: "soak-receiver")
        let senderLoop = UVLoop(name: "soak-sender")
        let receiver = try await UDPSocket(bindingTo: SocketAddress(ip: "127.0.0.1", port: 0), loop: receiverLoop,
                                           configuration: .init(receiveQueueLimit: queueLimit))
        let sender = try await UDPSocket(bindingTo: SocketAddress(ip: "127.0.0.1", port: 0), loop: senderLoop)
        let backlogBefore = backlogDrops()
        let rssStart = residentKiB()
        let stop = Atomic<Bool>(false)
        let pause = consumerPause
        let consumer = Task {
            var delivered = 0
            for try await _ in receiver.datagrams {
                delivered += 1
                if delivered % 128 == 0 { try? await Task.sleep(for: .microseconds(pause)) }
            }
            return delivered
        }
        let target = receiver.localAddress
        let bytes = [UInt8](repeating: 0x5A, count: size)
        let flood = Task(executorPreference: senderLoop) { () -> [String: Int] in
            var errors: [String: Int] = [:]
            var count = 0
            while !stop.load(ordering: .relaxed) {
                do { try await sender.send(bytes, to: target) } catch { errors[errorName(error), default: 0] += 1 }
                count += 1
                if count % 64 == 0 { await Task.yield() }  // send() may not suspend: let the loop poll
            }
            return errors
        }
        var samples: [String] = []
        let start = ContinuousClock.now
        var next = 5.0
        var rssAt5 = -1
        while true {
            let elapsed = Double((ContinuousClock.now - start).components.seconds)
            if elapsed >= next || elapsed >= seconds {
                let rss = residentKiB()
                if rssAt5 < 0 { rssAt5 = rss }
                let stats = await receiver.statistics
                samples.append("t=\(Int(elapsed))s rss=\(rss)KiB received=\(stats.datagramsReceived) delivered=\(stats.datagramsDelivered) dropped=\(stats.datagramsDroppedByPolicy) kernelDrops=\(stats.datagramsDroppedByKernel ?? -1) queued=\(stats.datagramsQueued)")
                emit("sample " + samples.last!)
                next += 5
            }
            if elapsed >= seconds { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        stop.store(true, ordering: .relaxed)
        let sendErrors = await flood.value
        let rssEnd = residentKiB()
        let sent = await sender.statistics.datagramsSent
        // Let the receiver read what is still in its socket buffer (progress decides, not time).
        var stats = await receiver.statistics
        var quiet = 0
        while stats.datagramsReceived + (stats.datagramsDroppedByKernel ?? 0) < sent && quiet < 200 {
            try await Task.sleep(for: .milliseconds(10))
            let now = await receiver.statistics
            quiet = now.datagramsReceived == stats.datagramsReceived ? quiet + 1 : 0
            stats = now
        }
        let kernel = stats.datagramsDroppedByKernel ?? 0
        let accounted = stats.datagramsDelivered + stats.datagramsDroppedByPolicy + kernel + stats.datagramsQueued
        let backlog = backlogDrops() - backlogBefore
        emit("RESULT seconds=\(Int(seconds)) rssStartKiB=\(rssStart) rss5sKiB=\(rssAt5) rssEndKiB=\(rssEnd) "
             + "sent=\(sent) received=\(stats.datagramsReceived) delivered=\(stats.datagramsDelivered) "
             + "droppedByPolicy=\(stats.datagramsDroppedByPolicy) kernelDrops=\(kernel) queued=\(stats.datagramsQueued) "
             + "peakQueued=\(stats.peakDatagramsQueued) accounted=\(accounted) unaccounted=\(sent - accounted) "
             + "backlogDrops=\(backlog) sendErrors=\(formatCounts(sendErrors))")
        await receiver.close()
        let delivered = try await consumer.value
        await sender.close()
        await receiverLoop.shutdown()
        await senderLoop.shutdown()
        if accounted != sent {
            emit("MISMATCH: sent \(sent) but accounted for \(accounted) (consumer saw \(delivered))")
            throw ExitCode(1)
        }
    }

    /// The kernel's per-CPU backlog drops (/proc/net/softnet_stat, second column), summed.
    func backlogDrops() -> Int {
        guard let file = fopen("/proc/net/softnet_stat", "r") else { return 0 }
        defer { fclose(file) }
        var total = 0
        var line = [CChar](repeating: 0, count: 512)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let columns = text.split(separator: " ")
            if columns.count > 1, let drops = Int(columns[1], radix: 16) { total += drops }
        }
        return total
    }
}
