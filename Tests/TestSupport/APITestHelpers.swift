// Helpers for the tests of the receive and send API (ReceiveAPITests, SendAPITests): paced
// sequence-numbered sends that neither the kernel nor the receive queue can drop, a wait for
// cancellation, and a server bound on both loopback addresses.
public import AsyncUDP

/// The kernel dropped datagrams for a socket that a test paces so that it never should.
public struct KernelDropped: Error, CustomStringConvertible {
    public let count: Int
    public var description: String { "the kernel dropped \(count) datagrams (receive buffer full)" }
}

/// Sends the sequence-numbered datagrams `range` (see ``payload(_:size:)``) from `sender` to
/// `receiver` in windows of `window`, one `send(contentsOf:)` each. After each window it waits
/// (polling the receiver's statistics, which have no notification of their own) until the
/// receiver has read everything sent so far and at most `backlog` datagrams wait for its
/// consumers: the kernel's receive buffer never holds more than one window, and the receive queue
/// never more than `backlog + window`, so with a queue limit above that nothing can be dropped.
///
/// - Parameter check: Called with every statistics sample (to check invariants while it runs).
/// - Throws: ``KernelDropped`` if the kernel dropped anyway; ``TimedOut`` if the receiver stops
///   reading or its consumers stop taking datagrams.
public func sendPaced(from sender: UDPSocket, to receiver: UDPSocket, _ range: Range<Int>, size: Int = 8,
                      window: Int = 100, backlog: Int = .max, seconds: Double = 30,
                      check: (UDPSocket.Statistics) -> Void = { _ in }) async throws {
    let start = await receiver.statistics
    let startKernelDrops = start.datagramsDroppedByKernel ?? 0
    var next = range.lowerBound
    while next < range.upperBound {
        let end = min(next + window, range.upperBound)
        try await sender.send(contentsOf: (next..<end).map { Datagram(payload: payload($0, size: size), remote: receiver.localAddress) })
        let sent = end - range.lowerBound
        try await waitUntil("the receiver read \(sent) datagrams and its consumers kept up", seconds: seconds) {
            let stats = await receiver.statistics
            check(stats)
            let kernelDrops = (stats.datagramsDroppedByKernel ?? 0) - startKernelDrops
            if kernelDrops > 0 { throw KernelDropped(count: kernelDrops) }
            return stats.datagramsReceived - start.datagramsReceived >= sent && stats.datagramsQueued <= backlog
        }
        next = end
    }
}

/// Suspends until the current task is cancelled (at once if it already is).
public func waitForCancellation() async {
    let (stream, continuation) = AsyncStream<Never>.makeStream()
    await withTaskCancellationHandler {
        for await _ in stream {}
    } onCancel: {
        continuation.finish()
    }
}

/// Two sockets on the same port, one on 127.0.0.1 and one on ::1: a server that a client reaches
/// whichever loopback address a name resolves to first.
public func openLoopbackServers() async throws -> (v4: UDPSocket, v6: UDPSocket) {
    var lastError: (any Error)?
    for _ in 0..<20 {
        let v4 = try await openSocket("127.0.0.1")
        do {
            let v6 = try await UDPSocket(bindingTo: SocketAddress(ip: "::1", port: v4.localAddress.port))
            return (v4, v6)
        } catch {
            // Someone holds that port on ::1: try another.
            lastError = error
            await v4.close()
        }
    }
    throw lastError ?? TimedOut(what: "a port free on both 127.0.0.1 and ::1")
}

/// What is wrong with `got` as the sequence numbers `expected`, in order and each exactly once:
/// `nil` when nothing is, otherwise a short account (missing, duplicated, unexpected, first out
/// of order), so a failure does not print thousands of numbers.
public func sequenceProblem(_ got: [Int], expected: Range<Int>, ordered: Bool = true) -> String? {
    var counts: [Int: Int] = [:]
    for value in got { counts[value, default: 0] += 1 }
    var problems: [String] = []
    func list(_ values: [Int]) -> String {
        values.prefix(10).map(String.init).joined(separator: ", ") + (values.count > 10 ? ", ... (\(values.count) in all)" : "")
    }
    let missing = expected.filter { counts[$0] == nil }
    if !missing.isEmpty { problems.append("missing \(list(missing))") }
    let duplicated = counts.filter { $0.value > 1 }.keys.sorted()
    if !duplicated.isEmpty { problems.append("more than once \(list(duplicated))") }
    let unexpected = counts.keys.filter { !expected.contains($0) }.sorted()
    if !unexpected.isEmpty { problems.append("not sent \(list(unexpected))") }
    if ordered, let index = got.indices.dropLast().first(where: { got[$0] >= got[$0 + 1] }) {
        problems.append("out of order at index \(index + 1): \(got[index + 1]) after \(got[index])")
    }
    return problems.isEmpty ? nil : "\(got.count) received: " + problems.joined(separator: "; ")
}

/// The result of `task`, or ``TimedOut`` after `seconds`; on time-out the task is cancelled
/// (awaiting an unstructured task does not pass cancellation on by itself, so a stuck task would
/// otherwise keep the deadline from ever firing).
public func result<T: Sendable>(of task: Task<T, any Error>, within seconds: Double, _ what: String) async throws -> Result<T, any Error> {
    try await withDeadline(what, seconds: seconds) {
        await withTaskCancellationHandler { await task.result } onCancel: { task.cancel() }
    }
}
