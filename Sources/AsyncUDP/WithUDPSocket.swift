import UVCore

/// Opens a socket connected to `remote`, runs `body` with it, and closes it on every exit path:
/// return, throw and cancellation. See ``UDPSocket/init(connectingTo:bindingTo:loop:configuration:)``.
///
/// ```swift
/// let reply = try await withUDPSocket(connectingTo: SocketAddress("127.0.0.1:53")) { udp in
///     try await udp.send(query)
///     return try await udp.receive(timeout: .seconds(2))   // nil if the server is silent
/// }
/// ```
///
/// - Parameters:
///   - remote: The peer.
///   - local: The local address; default, an ephemeral port on the wildcard address.
///   - loop: The loop to live on. Default `UVLoop.shared`.
///   - configuration: Receive queue, overflow policy and buffer sizes.
///   - isolation: The caller's actor, on which `body` runs; leave the default.
///   - body: Runs with the open socket; it is closed when `body` returns or throws.
/// - Returns: What `body` returns.
/// - Throws: What opening the socket or `body` throws.
public func withUDPSocket<Result>(
    connectingTo remote: SocketAddress,
    bindingTo local: SocketAddress? = nil,
    loop: UVLoop = .shared,
    configuration: UDPSocket.Configuration = UDPSocket.Configuration(),
    isolation: isolated (any Actor)? = #isolation,
    _ body: (UDPSocket) async throws -> Result
) async throws -> Result {
    let socket = try await UDPSocket(connectingTo: remote, bindingTo: local, loop: loop, configuration: configuration)
    return try await closing(socket, after: body)
}

/// Runs `body`, then closes `socket` whether `body` returned or threw.
private func closing<Result>(
    _ socket: UDPSocket,
    isolation: isolated (any Actor)? = #isolation,
    after body: (UDPSocket) async throws -> Result
) async throws -> Result {
    let result: Result
    do {
        result = try await body(socket)
    } catch {
        await socket.close()
        throw error
    }
    await socket.close()
    return result
}

/// Opens a socket bound to `address`, runs `body` with it, and closes it on every exit path:
/// return, throw and cancellation.
///
/// ```swift
/// try await withUDPSocket(bindingTo: SocketAddress("0.0.0.0:9000")) { udp in
///     for try await datagram in udp.datagrams {
///         try await udp.send(datagram.payload, to: datagram.remote)
///     }
/// }
/// ```
///
/// - Parameters:
///   - address: The local address.
///   - loop: The loop to live on. Default `UVLoop.shared`.
///   - flags: Bind flags.
///   - configuration: Receive queue, overflow policy and buffer sizes.
///   - isolation: The caller's actor, on which `body` runs; leave the default.
///   - body: Runs with the open socket; it is closed when `body` returns or throws.
/// - Returns: What `body` returns.
/// - Throws: What opening the socket or `body` throws.
public func withUDPSocket<Result>(
    bindingTo address: SocketAddress,
    loop: UVLoop = .shared,
    flags: UDPFlags = [],
    configuration: UDPSocket.Configuration = UDPSocket.Configuration(),
    isolation: isolated (any Actor)? = #isolation,
    _ body: (UDPSocket) async throws -> Result
) async throws -> Result {
    let socket = try await UDPSocket(bindingTo: address, loop: loop, flags: flags, configuration: configuration)
    return try await closing(socket, after: body)
}

extension UDPSocket {
    /// Resolves `host` and opens a socket connected to the first of its addresses that works.
    ///
    /// ```swift
    /// let udp = try await UDPSocket(connectingTo: "localhost", port: 53)
    /// ```
    ///
    /// - Parameters:
    ///   - host: A host name or a numeric address; see `SocketAddress.resolve(host:port:family:loop:)`.
    ///   - port: The peer's port, 1...65535.
    ///   - family: Only addresses of this family; `nil` for either.
    ///   - loop: The loop to live on (and to resolve on). Default `UVLoop.shared`.
    ///   - configuration: Receive queue, overflow policy and buffer sizes.
    /// - Throws: The resolver's `UVError` (`UVError.hostNotFound`, ...); the error of the last
    ///   address tried if none works; `SocketAddressError` for a port out of range.
    public init(connectingTo host: String, port: Int, family: AddressFamily? = nil, loop: UVLoop = .shared,
                configuration: Configuration = Configuration()) async throws {
        let candidates = try await SocketAddress.resolve(host: host, port: port, family: family, loop: loop)
        var lastError: (any Error)?
        for candidate in candidates {
            do {
                try await self.init(connectingTo: candidate, loop: loop, configuration: configuration)
                return
            } catch {
                lastError = error
            }
        }
        throw lastError ?? UVError.hostNotFound.with(context: "resolve \"\(host)\"")
    }
}

/// Resolves `host`, opens a socket connected to the first of its addresses that works, runs
/// `body` with it, and closes it on every exit path: return, throw and cancellation.
///
/// ```swift
/// let reply = try await withUDPSocket(connectingTo: "localhost", port: 5353) { udp in
///     try await udp.send(query)
///     return try await udp.receive(timeout: .seconds(2))
/// }
/// ```
///
/// - Parameters:
///   - host: A host name or a numeric address.
///   - port: The peer's port.
///   - family: Only addresses of this family; `nil` for either.
///   - loop: The loop to live on. Default `UVLoop.shared`.
///   - configuration: Receive queue, overflow policy and buffer sizes.
///   - isolation: The caller's actor, on which `body` runs; leave the default.
///   - body: Runs with the open socket; it is closed when `body` returns or throws.
/// - Returns: What `body` returns.
/// - Throws: What resolving, opening the socket or `body` throws.
public func withUDPSocket<Result>(
    connectingTo host: String,
    port: Int,
    family: AddressFamily? = nil,
    loop: UVLoop = .shared,
    configuration: UDPSocket.Configuration = UDPSocket.Configuration(),
    isolation: isolated (any Actor)? = #isolation,
    _ body: (UDPSocket) async throws -> Result
) async throws -> Result {
    let socket = try await UDPSocket(connectingTo: host, port: port, family: family, loop: loop, configuration: configuration)
    return try await closing(socket, after: body)
}
