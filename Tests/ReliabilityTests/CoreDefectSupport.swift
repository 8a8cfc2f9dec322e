import Glibc
import Logging
import Synchronization
import Testing
import TestSupport
@testable import AsyncUDP
@testable import UVCore

// MARK: - Helpers

/// The bad indices of the 100-datagram batches: first, last, and both sides of each 32-datagram
/// `sendmmsg` chunk boundary.
let largeBatchBad = [0, 5, 31, 32, 33, 63, 64, 65, 99]

/// One `.pauseReading` setting.
struct PauseCase: Sendable, CustomTestStringConvertible {
    let limit: Int
    let high: Int
    let low: Int
    var testDescription: String { "limit \(limit) / high \(high) / low \(low)" }
}

/// Carries a value out of the loop it belongs to, on purpose: the exit tests read a handle off
/// its loop, and other tests hand a handle from one loop job to the next.
struct Smuggled<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// A flag any thread may set and read.
final class Flag: Sendable {
    private let state = Atomic<Bool>(false)
    func set() { state.store(true, ordering: .releasing) }
    var isSet: Bool { state.load(ordering: .acquiring) }
}

/// A counting semaphore over `sem_t` (a plain thread, or a loop job, may block on it).
final class Semaphore: @unchecked Sendable {
    // Safe to share: `semaphore` is only used through sem_wait and sem_post.
    private let semaphore: UnsafeMutablePointer<sem_t>
    init() {
        semaphore = .allocate(capacity: 1)
        sem_init(semaphore, 0, 0)
    }
    deinit {
        sem_destroy(semaphore)
        semaphore.deallocate()
    }
    func signal() { sem_post(semaphore) }
    func wait() { while sem_wait(semaphore) != 0 && errno == EINTR {} }
}

/// Integers appended by one task and read by another.
final class LockedInts: @unchecked Sendable {
    // Safe to share: `items` is only touched under `lock`.
    private let lock = PosixLock()
    private var items: [Int] = []
    func append(_ value: Int) { lock.withLock { items.append(value) } }
    var count: Int { lock.withLock { items.count } }
    var values: [Int] { lock.withLock { items } }
}

/// The first value handed to `resolve`, for any number of waiters.
final class OneShot<Value: Sendable>: @unchecked Sendable {
    // Safe to share: every member is touched only under `lock`.
    private let lock = PosixLock()
    private var value: Value?
    private var resolved = false
    private var waiters: [CheckedContinuation<Value, Never>] = []

    func resolve(_ newValue: Value) {
        let toResume: [CheckedContinuation<Value, Never>] = lock.withLock {
            guard !resolved else { return [] }
            resolved = true
            value = newValue
            defer { waiters.removeAll() }
            return waiters
        }
        for waiter in toResume { waiter.resume(returning: newValue) }
    }

    func wait() async -> Value {
        await withCheckedContinuation { continuation in
            let ready: Value?? = lock.withLock {
                if resolved { return .some(value) }
                waiters.append(continuation)
                return .none
            }
            if case .some(let value) = ready { continuation.resume(returning: value!) }
        }
    }
}

/// The outcome of `body`, run in a task of its own, if it finishes within `seconds`; `nil` if
/// not. Unlike `withDeadline` it never waits for a body that cannot be cancelled (a job queued
/// behind a loop that does not run), so a test fails instead of hanging.
func outcome<T: Sendable>(within seconds: Double, _ body: @escaping @Sendable () async throws -> T) async -> Result<T, any Error>? {
    let shot = OneShot<Result<T, any Error>?>()
    Task {
        do { shot.resolve(.success(try await body())) } catch { shot.resolve(.failure(error)) }
    }
    let timer = Task {
        try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
        shot.resolve(nil)
    }
    let result = await shot.wait()
    timer.cancel()
    return result
}

extension Result {
    /// The success value, or nil.
    var value: Success? { try? get() }
}

/// Runs `work` on a thread of its own (not a Swift concurrency thread, not a loop) and returns
/// its result.
func onPlainThread<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        startPlainThread { continuation.resume(returning: work()) }
    }
}

/// Starts a detached pthread that runs `work`.
func startPlainThread(_ work: @escaping @Sendable () -> Void) {
    let context = Unmanaged.passRetained(PlainThreadWork(work)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        Unmanaged<PlainThreadWork>.fromOpaque(raw!).takeRetainedValue().work()
        return nil
    }, context)
    precondition(rc == 0, "pthread_create: \(rc)")
    pthread_detach(thread)
}

/// What ``startPlainThread(_:)`` hands its thread.
final class PlainThreadWork: Sendable {
    let work: @Sendable () -> Void
    init(_ work: @escaping @Sendable () -> Void) { self.work = work }
}

/// What each send of a test reported: its index's outcomes, in the order they came.
@TestLoop
final class SendLog {
    private(set) var outcomes: [[UVError?]]
    private var count = 0
    let done = Confirmation()

    init(expected: Int) {
        outcomes = Array(repeating: [], count: expected)
        if expected == 0 { done.signal() }
    }

    func record(_ index: Int, _ error: UVError?) {
        outcomes[index].append(error)
        count += 1
        if count == outcomes.count { done.signal() }
    }
}

/// A value written inside a callback and read by the test afterwards.
@TestLoop
final class Box<Value> {
    var value: Value
    init(_ value: Value) { self.value = value }
}

/// A handle that, on the first datagram it receives, queues `sends` from inside its receive
/// callback (so they are flushed together after that read batch), each with a callback that
/// records its outcome under its own index; and the send queue's length right after queueing.
@TestLoop
func relayQueueing(_ sends: [([UInt8], SocketAddress)]) throws -> (UDPHandle, SendLog, Box<Int>) {
    let relay = try boundHandle(sends.first.map { $0.1.family == .ipv6 ? "::" : "127.0.0.1" } ?? "127.0.0.1")
    let log = SendLog(expected: sends.count)
    let queued = Box(-1)
    try relay.startReceiving { handle, result in
        guard case .success = result, queued.value < 0 else { return }
        for (index, (bytes, destination)) in sends.enumerated() {
            do {
                try handle.send(bytes, to: destination) { _, error in log.record(index, error) }
            } catch {
                log.record(index, error as? UVError ?? .invalidArgument)
            }
        }
        queued.value = handle.sendQueueCount
    }
    return (relay, log, queued)
}

/// `UDPHandle.send(contentsOf:)` and waits for its failures.
@TestLoop
func sendBatch(_ sender: UDPHandle, _ datagrams: [Datagram]) async throws -> [(index: Int, error: UVError)] {
    let failures = Box<[(index: Int, error: UVError)]>([])
    let done = Confirmation()
    try sender.send(contentsOf: datagrams) { _, reported in
        failures.value = reported
        done.signal()
    }
    await done.wait()
    return failures.value
}

/// Sends an end marker from `sender` to `target` and returns the sequence numbers `inbox` gets
/// before it: everything `sender` had sent there.
@TestLoop
func arrivals(at inbox: Inbox, after sender: UDPHandle, to target: SocketAddress) async throws -> [Int] {
    let marker = 1_000_000
    #expect(try await sendAndWait(sender, [payload(marker)], to: target) == nil)
    var seen: [Int] = []
    while true {
        let value = sequence(of: try await inbox.datagram())
        if value == marker { return seen }
        seen.append(value)
    }
}

/// Sends an end marker from `sender` to `receiver` and returns the sequence numbers `receiver`
/// gets before it.
func arrivals(at receiver: UDPSocket, after sender: UDPSocket) async throws -> [Int] {
    let marker = 1_000_000
    try await sender.send(payload(marker), to: receiver.localAddress)
    return try await withDeadline("the end marker", seconds: 30) {
        var seen: [Int] = []
        while true {
            let value = sequence(of: try await receiver.receive())
            if value == marker { return seen }
            seen.append(value)
        }
    }
}

/// `UDPSocket.send(contentsOf:)` of `count` datagrams to `receiver`, those at `bad` to
/// 127.255.255.255 (EACCES without broadcast); the `BatchSendError` it throws, if any.
func socketBatch(_ sender: UDPSocket, to receiver: UDPSocket, bad: [Int], count: Int) async throws -> BatchSendError? {
    let broadcast = try SocketAddress(ip: "127.255.255.255", port: receiver.localAddress.port)
    let batch = (0..<count).map { index in
        Datagram(payload: payload(index), remote: bad.contains(index) ? broadcast : receiver.localAddress)
    }
    do {
        try await sender.send(contentsOf: batch)
        return nil
    } catch let error as BatchSendError {
        return error
    }
}

/// The socket's statistics, after checking `received == delivered + droppedByPolicy + queued`.
func checkedStatistics(_ socket: UDPSocket) async throws -> UDPSocket.Statistics {
    let stats = await socket.statistics
    #expect(stats.datagramsReceived == stats.datagramsDelivered + stats.datagramsDroppedByPolicy + stats.datagramsQueued, "\(stats)")
    #expect(stats.datagramsQueued >= 0, "\(stats)")
    return stats
}

/// Sends from a detached task (off the loop) on a connected socket, as fast as it can, until a
/// transient error has been counted (or 5,000 sends); returns how many went and what was thrown.
func tightSends(_ socket: UDPSocket) async throws -> (sent: Int, thrown: [String]) {
    try await withDeadline("the tight send loop", seconds: 60) {
        await Task.detached { () -> (Int, [String]) in
            var sent = 0
            var thrown: [String] = []
            while sent < 5_000 {
                do {
                    try await socket.send(payload(sent))
                } catch {
                    thrown.append("\(error)")
                }
                sent += 1
                if sent % 8 == 0, await socket.statistics.transientErrorCount > 0 { break }
            }
            return (sent, thrown)
        }.value
    }
}

/// The first error published on the socket's `transientErrors`.
func firstTransientError(_ socket: UDPSocket) async -> UVError? {
    for await error in socket.transientErrors { return error }
    return nil
}

/// A new IPv4 UDP socket at a descriptor number of 700 or more, away from the numbers the
/// process's other tests use, so a number can be freed and taken again without a race.
func highUDPSocket() throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    try #require(fd >= 0)
    defer { close(fd) }
    let high = fcntl(fd, F_DUPFD_CLOEXEC, 700)
    try #require(high >= 700)
    return high
}

/// Offers `fd` to a new handle on the test loop: "adopted" (the handle is closed again, which
/// closes the descriptor), or the name of the error.
func adopt(_ fd: Int32) async throws -> String {
    try await testLoop.submit { () -> String in
        let handle = try UDPHandle(loop: testLoop)
        defer { handle.close() }
        do {
            try handle.open(fd)
            return "adopted"
        } catch let error as UVError {
            return error.name
        }
    }
}

/// IPPROTO_UDPLITE (not exported by Swift's Glibc module).
let udpLiteProtocol: Int32 = 136

/// Whether an IPv4 datagram socket of `proto` can be created here.
func canOpen(protocol proto: Int32) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), proto)
    guard fd >= 0 else { return false }
    close(fd)
    return true
}

/// `open(fd)` refuses a datagram socket of `proto` with EPROTONOSUPPORT and leaves it open.
func refusesProtocol(_ proto: Int32) async throws {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), proto)
    try #require(fd >= 0)
    let outcome = try await adopt(fd)
    if outcome == "adopted" {
        Issue.record("a datagram socket of protocol \(proto) was adopted as UDP")  // the handle closed it
        return
    }
    #expect(outcome == "EPROTONOSUPPORT")
    #expect(fcntl(fd, F_GETFD) != -1, "the refused descriptor is still open")
    #expect(socketOption(fd, SOL_SOCKET, SO_PROTOCOL) == proto)
    close(fd)
}

/// For the exit tests: a handle bound to 127.0.0.1 on a loop of its own (receiving, if asked),
/// carried off that loop; nil if it cannot be made.
func handleOffItsLoop(receiving: Bool) async -> Smuggled<UDPHandle>? {
    let loop = UVLoop(name: "off-loop-read")
    return try? await loop.submit { () -> Smuggled<UDPHandle> in
        let handle = try UDPHandle(loop: loop, family: .ipv4)
        try handle.bind(SocketAddress("127.0.0.1:0"))
        if receiving { try handle.startReceiving { _, _ in } }
        return Smuggled(handle)
    }
}

/// In debug builds, the exit test's standard error names what was read off the loop.
func expectTrapMessage(_ result: ExitTest.Result?, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #if DEBUG
    let text = result.map { String(decoding: $0.standardErrorContent, as: UTF8.self) } ?? ""
    #expect(text.contains("\(what) must run on UVLoop"), "standard error: \(text)", sourceLocation: sourceLocation)
    #endif
}

/// The first line of a small file, without its newline.
func readLine(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var buffer = [CChar](repeating: 0, count: 256)
    guard fgets(&buffer, Int32(buffer.count), file) != nil else { return nil }
    let bytes = buffer.prefix { $0 != 0 && $0 != 10 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

/// The names of this process's threads (/proc/self/task/*/comm).
func threadNames() -> [String] {
    guard let directory = opendir("/proc/self/task") else { return [] }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        let id = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        guard id.first?.isNumber == true, let name = readLine("/proc/self/task/\(id)/comm") else { continue }
        names.append(name)
    }
    return names
}

/// Runs `reliability-tool` with `arguments`, with a generous deadline (then it is terminated).
func runTool(_ arguments: [String]) async throws -> ChildResult {
    let child = try Child([reliabilityTool] + arguments)
    guard let result = await outcome(within: 90, { await child.wait() })?.value else {
        child.terminate()
        throw ToolTimedOut(arguments: arguments)
    }
    return result
}

/// `reliability-tool` did not finish within its deadline.
struct ToolTimedOut: Error, CustomStringConvertible {
    let arguments: [String]
    var description: String { "reliability-tool \(arguments.joined(separator: " ")) did not finish in time" }
}

extension ChildResult {
    /// The tool's `CHECK <name> ok|FAIL <detail>` lines, by name.
    var checks: [String: (ok: Bool, detail: String)] {
        var checks: [String: (ok: Bool, detail: String)] = [:]
        for line in output.split(separator: "\n") where line.hasPrefix("CHECK ") {
            let parts = line.split(separator: " ", maxSplits: 3).map(String.init)
            guard parts.count >= 3 else { continue }
            checks[parts[1]] = (parts[2] == "ok", parts.count > 3 ? parts[3] : "")
        }
        return checks
    }
}

/// Log entries captured by ``CapturingLogHandler``.
final class LogSink: @unchecked Sendable {
    // Safe to share: `stored` is only touched under `lock`.
    private let lock = PosixLock()
    private var stored: [(level: Logger.Level, message: String)] = []
    func add(_ level: Logger.Level, _ message: String) { lock.withLock { stored.append((level, message)) } }
    var entries: [(level: Logger.Level, message: String)] { lock.withLock { stored } }
}

/// A swift-log handler that keeps every entry in a ``LogSink``.
struct CapturingLogHandler: LogHandler {
    let sink: LogSink
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    var logLevel: Logger.Level = .trace

    func log(event: LogEvent) {
        sink.add(event.level, "\(event.message)")
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
}
