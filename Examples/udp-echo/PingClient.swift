import AsyncUDP
import Glibc

/// What a ping run does: `count` pings of `size` bytes, `window` in flight at once.
struct PingPlan: Sendable {
    var count: Int
    var window: Int
    var size: Int
    /// Nanoseconds after which an unanswered ping counts as lost (and a new one takes its place).
    var timeout: UInt64
    /// Nanoseconds after which the run stops with what it has.
    var deadline: UInt64
}

/// The outcome of a ping run.
struct Measurement: Sendable {
    /// Round-trip times in nanoseconds, sorted.
    var latencies: [UInt64]
    /// Nanoseconds from the first ping to the end of the run.
    var elapsed: UInt64
    /// Pings not answered within the timeout.
    var lost: Int
    /// Answers that came after their ping had been counted lost (they are not measured).
    var late: Int
    /// Whether the deadline stopped the run before every ping was answered or lost.
    var hitDeadline: Bool
}

/// A ping client: sends numbered pings to an echo server over a connected socket, keeps
/// `window` of them in flight, and records each round trip.
///
/// The actor's executor is the socket's loop, and ``measure(target:plan:loop:progress:)`` runs
/// in a task that prefers that loop too, so receiving, bookkeeping and sending all happen on the
/// loop thread with no thread hop: the loop-affine fast path of AsyncUDP.
///
/// Loss never makes it hang: a ping unanswered after `plan.timeout` counts as lost and a new
/// one is sent in its place; the run ends at `plan.deadline` whatever is left; and a server that
/// never answers is reported as an error after a second.
actor PingClient {
    nonisolated let loop: UVLoop
    nonisolated var unownedExecutor: UnownedSerialExecutor { loop.asUnownedSerialExecutor() }

    private let socket: UDPSocket
    private let plan: PingPlan
    private var progress: ProgressLine
    private var payload: [UInt8]
    private var nextSequence: UInt64 = 0
    /// Send time (monotonic nanoseconds) of each ping in flight, by sequence number.
    private var inFlight: [UInt64: UInt64] = [:]
    private var latencies: [UInt64] = []
    private var lost = 0
    private var late = 0
    private var refused = false
    private var start: UInt64 = 0
    private var stopping = false
    private var hitDeadline = false
    private var failure: (any Error)?

    private init(socket: UDPSocket, plan: PingPlan, progress: ProgressLine) {
        self.loop = socket.loop
        self.socket = socket
        self.plan = plan
        self.progress = progress
        self.payload = [UInt8](repeating: UInt8(ascii: "."), count: plan.size)
        latencies.reserveCapacity(plan.count)
    }

    /// Pings `target` as `plan` says and returns the measurement.
    ///
    /// Call it from a task that prefers `loop` (`Task(executorPreference: loop)`), or every
    /// datagram pays a hop to another thread and back.
    static func measure(target: SocketAddress, plan: PingPlan, loop: UVLoop,
                        progress: ProgressLine) async throws -> Measurement {
        let socket = try await UDPSocket(connectingTo: target, loop: loop)
        let client = PingClient(socket: socket, plan: plan, progress: progress)
        return try await client.run()
    }

    private var completed: Int { latencies.count + lost }

    private func run() async throws -> Measurement {
        start = monotonicNanoseconds()
        // The ticker expires lost pings, prints progress, and ends the run if nothing else can.
        let ticker = Task(executorPreference: loop) { [self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(10))
                await tick()
            }
        }
        defer { ticker.cancel() }
        for _ in 0..<plan.window { await sendNext() }
        do {
            for try await datagram in socket.datagrams {
                receive(datagram)
                if completed >= plan.count { break }
                if nextSequence < UInt64(plan.count) { await sendNext() }
            }
        } catch {
            failure = failure ?? error  // a fatal receive error; the socket is closed below
        }
        let elapsed = monotonicNanoseconds() - start
        await socket.close()
        progress.finish(done: completed, total: plan.count, lost: lost, elapsed: elapsed)
        if let failure { throw failure }
        if latencies.isEmpty { throw PingError(message: silenceMessage(after: elapsed)) }
        latencies.sort()
        return Measurement(latencies: latencies, elapsed: elapsed, lost: lost, late: late, hitDeadline: hitDeadline)
    }

    private func receive(_ datagram: Datagram) {
        let now = monotonicNanoseconds()
        guard datagram.payload.count >= 8 else { return }
        let sequence = datagram.payload.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard let sentAt = inFlight.removeValue(forKey: sequence) else {
            late += 1
            return
        }
        latencies.append(now - sentAt)
    }

    private func sendNext() async {
        let sequence = nextSequence
        nextSequence += 1
        payload.withUnsafeMutableBytes { $0.storeBytes(of: sequence.littleEndian, as: UInt64.self) }
        inFlight[sequence] = monotonicNanoseconds()
        do {
            try await socket.send(payload)
        } catch let error as UVError where error.isTransient {
            // ECONNREFUSED and friends: the ping is not answered and will time out.
            if error == .connectionRefused { refused = true }
        } catch {
            if !stopping { failure = error }
            await stop()
        }
    }

    private func tick() async {
        guard !stopping else { return }
        let now = monotonicNanoseconds()
        let expired = inFlight.filter { now - $0.value > plan.timeout }.map(\.key)
        for sequence in expired { inFlight[sequence] = nil }
        lost += expired.count
        for _ in expired where nextSequence < UInt64(plan.count) { await sendNext() }
        progress.update(done: completed, total: plan.count, lost: lost, elapsed: now - start)

        let silentFor = now - start
        if latencies.isEmpty && silentFor > max(1_000_000_000, 5 * plan.timeout) {
            failure = PingError(message: silenceMessage(after: silentFor))
            await stop()
        } else if completed >= plan.count {
            await stop()
        } else if now - start > plan.deadline {
            hitDeadline = true
            await stop()
        }
    }

    private func silenceMessage(after nanoseconds: UInt64) -> String {
        let server = socket.remoteAddress.map { "\($0)" } ?? "the server"
        return refused ? "no echo server at \(server) (connection refused)"
            : "no reply from \(server) after \(nanoseconds / 1_000_000) ms"
    }

    /// Ends the run: closing the socket finishes `datagrams`, so `run` leaves its loop.
    private func stop() async {
        guard !stopping else { return }
        stopping = true
        await socket.close()
    }
}

/// A ping run that could not measure anything.
struct PingError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// Nanoseconds on the monotonic clock.
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
