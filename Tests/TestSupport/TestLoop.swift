// Test support shared by the test targets: a global actor on a test loop (so tests can use
// `UDPHandle` directly), an inbox that hands received datagrams to an awaiting test, and
// helpers for sockets, payloads and bounded waits.
public import AsyncUDP
import Glibc

/// The loop the tests that use `UDPHandle` directly run on.
public let testLoop = UVLoop(name: "uvcore-tests")

/// A global actor whose executor is `testLoop`: code isolated to it runs on the loop thread, so it
/// may create and use `UDPHandle`s directly, and libuv callbacks run in its isolation.
@globalActor
public actor TestLoop {
    public static let shared = TestLoop()
    public nonisolated var unownedExecutor: UnownedSerialExecutor { testLoop.asUnownedSerialExecutor() }
}

/// Collects what a handle receives, and hands it out to an awaiting test in order.
@TestLoop
public final class Inbox {
    private var items: [Result<Datagram, UVError>] = []
    private var waiter: CheckedContinuation<Result<Datagram, UVError>, Never>?
    public private(set) var received = 0

    public init(_ handle: UDPHandle) throws {
        try handle.startReceiving { [self] _, result in push(result) }
    }

    private func push(_ result: Result<Datagram, UVError>) {
        received += 1
        if let waiter {
            self.waiter = nil
            waiter.resume(returning: result)
        } else {
            items.append(result)
        }
    }

    /// The next datagram or receive error. Cancellation (the suite's time limit) ends the wait
    /// with a `ECANCELED` failure rather than hanging the run.
    public func next() async -> Result<Datagram, UVError> {
        if !items.isEmpty { return items.removeFirst() }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if Task.isCancelled {
                    continuation.resume(returning: .failure(.canceled))
                } else {
                    waiter = continuation
                }
            }
        } onCancel: {
            Task { @TestLoop in self.cancelWait() }
        }
    }

    private func cancelWait() {
        if let waiter {
            self.waiter = nil
            waiter.resume(returning: .failure(.canceled))
        }
    }

    /// The next datagram; a receive error fails the test by throwing.
    public func datagram() async throws -> Datagram { try await next().get() }

    /// The next receive error; a datagram fails the test.
    public func error() async throws -> UVError {
        switch await next() {
        case .failure(let error): return error
        case .success(let datagram): throw UnexpectedDatagram(datagram: datagram)
        }
    }

    public var buffered: Int { items.count }
}

/// A datagram arrived where a receive error was expected.
public struct UnexpectedDatagram: Error { public let datagram: Datagram }

/// A handle bound to `ip` on an ephemeral port.
@TestLoop
public func boundHandle(_ ip: String = "127.0.0.1", port: Int = 0, flags: UDPFlags = []) throws -> UDPHandle {
    let handle = try UDPHandle(loop: testLoop)
    try handle.bind(SocketAddress(ip: ip, port: port), flags: flags)
    return handle
}

/// Queues a send and waits for its completion; returns the send's own error, if any.
@TestLoop
public func sendAndWait(_ handle: UDPHandle, _ buffers: [[UInt8]], to address: SocketAddress? = nil) async throws -> UVError? {
    try await withCheckedThrowingContinuation { continuation in
        do {
            try handle.send(buffers, to: address) { _, error in continuation.resume(returning: error) }
        } catch {
            continuation.resume(throwing: error)
        }
    }
}

/// Closes handles and waits for their close callbacks.
@TestLoop
public func closeAll(_ handles: UDPHandle...) async {
    for handle in handles {
        await withCheckedContinuation { continuation in handle.close { _ in continuation.resume() } }
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, read, closed). It is taken below the
/// kernel's ephemeral range (32768-60999 by default), so no other test's socket bound to port 0
/// can land on it between this call and the use that expects nobody there.
@TestLoop
public func closedPort(_ ip: String = "127.0.0.1") async throws -> SocketAddress {
    var lastError: (any Error)?
    for _ in 0..<200 {
        let candidate = Int.random(in: 20_000..<32_000)
        do {
            let probe = try boundHandle(ip, port: candidate)
            let address = try probe.localAddress()
            await closeAll(probe)
            return address
        } catch {
            lastError = error  // taken: try another
        }
    }
    throw lastError ?? UVError.addressInUse
}

extension Array where Element == UInt8 {
    /// The UTF-8 bytes of `text`.
    public init(_ text: String) { self = Array(text.utf8) }
}

/// A one-shot signal between loop callbacks and an awaiting test (on the test loop).
@TestLoop
public final class Confirmation {
    private var signalled = false
    private var waiter: CheckedContinuation<Void, Never>?

    public init() {}

    /// Marks the event as happened and wakes the waiter.
    public func signal() {
        signalled = true
        waiter?.resume()
        waiter = nil
    }

    /// Waits until ``signal()`` (at once if it already happened). The suite's time limit bounds it.
    public func wait() async {
        if signalled { return }
        await withCheckedContinuation { waiter = $0 }
    }
}
