// Sockets on loopback, on ephemeral ports, and receives that fail a test at a deadline.
public import AsyncUDP

extension SocketAddress {
    /// The loopback address of `family` (127.0.0.1 or ::1) with `port`.
    ///
    /// - Parameters:
    ///   - family: `.ipv4` for 127.0.0.1, `.ipv6` for ::1.
    ///   - port: The port; 0 (the default) asks the kernel for an ephemeral one when binding.
    /// - Throws: `SocketAddressError` for a port outside 0...65535.
    public static func loopback(_ family: AddressFamily = .ipv4, port: Int = 0) throws(SocketAddressError) -> SocketAddress {
        try SocketAddress(ip: family == .ipv4 ? "127.0.0.1" : "::1", port: port)
    }
}

/// Opens a socket bound to an ephemeral port on the loopback address of `family`.
///
/// Close it with `UDPSocket.close()` when done, or use ``withLoopbackSocket(family:loop:configuration:isolation:_:)``,
/// which closes it on every exit path.
///
/// - Parameters:
///   - family: `.ipv4` for 127.0.0.1, `.ipv6` for ::1.
///   - loop: The loop the socket lives on. Default `UVLoop.shared`.
///   - configuration: Receive queue, overflow policy and buffer sizes.
/// - Returns: The open socket; its `UDPSocket.localAddress` has the port the kernel chose.
/// - Throws: What `UDPSocket.init(bindingTo:loop:flags:configuration:)` throws.
public func loopbackSocket(family: AddressFamily = .ipv4, loop: UVLoop = .shared,
                           configuration: UDPSocket.Configuration = .init()) async throws -> UDPSocket {
    try await UDPSocket(bindingTo: .loopback(family), loop: loop, configuration: configuration)
}

/// Opens a socket on an ephemeral port on the loopback address of `family`, runs `body` with it,
/// and closes it on every exit path.
///
/// ```swift
/// try await withLoopbackSocket { client in
///     try await client.send("ping".utf8, to: server)
///     let reply = try await client.expectDatagram(within: .seconds(1))
/// }
/// ```
///
/// - Parameters:
///   - family: `.ipv4` for 127.0.0.1, `.ipv6` for ::1.
///   - loop: The loop the socket lives on. Default `UVLoop.shared`.
///   - configuration: Receive queue, overflow policy and buffer sizes.
///   - isolation: The actor `body` runs on: the caller's, by default.
///   - body: Runs with the open socket.
/// - Returns: What `body` returns.
/// - Throws: What opening the socket or `body` throws.
@discardableResult
public func withLoopbackSocket<Result>(
    family: AddressFamily = .ipv4,
    loop: UVLoop = .shared,
    configuration: UDPSocket.Configuration = .init(),
    isolation: isolated (any Actor)? = #isolation,
    _ body: (UDPSocket) async throws -> Result
) async throws -> Result {
    try await withUDPSocket(bindingTo: .loopback(family), loop: loop, configuration: configuration, body)
}

/// A datagram arrived where a test expected none.
public struct UnexpectedDatagramError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The datagram that arrived.
    public let datagram: Datagram
    /// Where it arrived.
    public let receiver: SocketAddress

    /// Creates the error for `datagram`, received at `receiver`.
    public init(datagram: Datagram, receiver: SocketAddress) {
        self.datagram = datagram
        self.receiver = receiver
    }

    public var description: String {
        "\(receiver) expected no datagram but received \(datagram.payload.count) bytes from \(datagram.remote)"
    }
}

extension UDPSocket {
    /// Waits for the next datagram, and fails the test by throwing if none comes in time.
    ///
    /// `receive(timeout:)` returns `nil` at its deadline; this throws instead, so
    /// `try await socket.expectDatagram(within: .seconds(1))` reads as the expectation it is.
    /// Like `receive(timeout:)`, it takes nothing when it times out.
    ///
    /// - Parameter duration: How long to wait.
    /// - Returns: The datagram.
    /// - Throws: ``TestTimeoutError`` at the deadline; what `receive(timeout:)` throws.
    public nonisolated func expectDatagram(within duration: Duration) async throws -> Datagram {
        guard let datagram = try await receive(timeout: duration) else {
            throw TestTimeoutError(waitingFor: "a datagram at \(localAddress)", after: duration)
        }
        return datagram
    }

    /// Waits for `duration` and fails the test by throwing if a datagram arrives meanwhile.
    ///
    /// Absence can only be checked by waiting: choose `duration` as long as the event you rule
    /// out would take.
    ///
    /// - Parameter duration: How long to listen.
    /// - Throws: ``UnexpectedDatagramError`` (the datagram is taken); what `receive(timeout:)` throws.
    public nonisolated func expectNoDatagram(within duration: Duration) async throws {
        if let datagram = try await receive(timeout: duration) {
            throw UnexpectedDatagramError(datagram: datagram, receiver: localAddress)
        }
    }
}
