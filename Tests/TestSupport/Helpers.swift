public import AsyncUDP
import AsyncUDPTesting
import Glibc

/// Opens a socket on 127.0.0.1 (or `ip`), ephemeral port.
public func openSocket(_ ip: String = "127.0.0.1", loop: UVLoop = .shared, flags: UDPFlags = [],
                configuration: UDPSocket.Configuration = .init()) async throws -> UDPSocket {
    try await UDPSocket(bindingTo: SocketAddress(ip: ip, port: 0), loop: loop, flags: flags, configuration: configuration)
}

public struct TimedOut: Error, CustomStringConvertible {
    public let what: String
    public var description: String { "timed out waiting for: \(what)" }
}

/// Polls `condition` until it holds or `seconds` pass. Only for conditions that have no
/// notification of their own (kernel counters, statistics); never used as a fixed delay.
public func waitUntil(_ what: String, seconds: Double = 30, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while try await !condition() {
        if ContinuousClock.now > deadline { throw TimedOut(what: what) }
        try await Task.sleep(for: .milliseconds(1))
    }
}

/// Runs `body`, failing with AsyncUDPTesting's `TestTimeoutError` if it has not finished after
/// `seconds` (even if `body` ignores cancellation): the project's tests use the product they ship.
public func withDeadline<T: Sendable>(_ what: String, seconds: Double,
                               _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await AsyncUDPTesting.withDeadline(.milliseconds(Int(seconds * 1000)), what, body)
}

/// Reads `count` datagrams from a socket's stream.
public func receive(_ count: Int, from socket: UDPSocket) async throws -> [Datagram] {
    var got: [Datagram] = []
    guard count > 0 else { return got }
    for try await datagram in socket.datagrams {
        got.append(datagram)
        if got.count == count { break }
    }
    return got
}

/// 8-byte little-endian sequence number payloads, padded to `size`.
public func payload(_ value: Int, size: Int = 8) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: max(size, 8))
    withUnsafeBytes(of: UInt64(value).littleEndian) { bytes.replaceSubrange(0..<8, with: $0) }
    return bytes
}

public func sequence(of datagram: Datagram) -> Int {
    datagram.payload.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
}

/// Whether this process runs as root (namespaces, privileged ports).
public let isRoot = geteuid() == 0

/// An `Int32` socket option, read with getsockopt.
public func socketOption(_ fd: Int32, _ level: Int32, _ name: Int32) -> Int32? {
    var value: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    return getsockopt(fd, level, name, &value, &length) == 0 ? value : nil
}
