internal import CLibUV
internal import Glibc

extension SocketAddress {
    /// Resolves a host name to UDP addresses, with libuv's `uv_getaddrinfo` (on the loop's
    /// thread pool, never on the caller's thread).
    ///
    /// A numeric address (`"127.0.0.1"`, `"::1"`) is returned as it is, without a lookup.
    ///
    /// ```swift
    /// let servers = try await SocketAddress.resolve(host: "localhost", port: 53)
    /// ```
    ///
    /// - Parameters:
    ///   - host: A host name (`"localhost"`, `"dns.example"`) or a numeric address.
    ///   - port: The port every address gets, 0...65535.
    ///   - family: Only addresses of this family; `nil` for both, in the resolver's order.
    ///   - loop: The loop whose thread pool does the lookup. Default ``UVLoop/shared``.
    /// - Returns: The addresses, in the resolver's order, without duplicates; never empty.
    /// - Throws: ``UVError`` with the resolver's code (``UVError/hostNotFound`` for `EAI_NONAME`,
    ///   ``UVError/resolverTemporaryFailure`` for `EAI_AGAIN`, ...) and the host in its context;
    ///   ``SocketAddressError`` for a port out of range; `CancellationError` (the lookup is
    ///   cancelled too).
    public static func resolve(host: String, port: Int, family: AddressFamily? = nil,
                               loop: UVLoop = .shared) async throws -> [SocketAddress] {
        guard (0...65_535).contains(port) else {
            throw SocketAddressError(.invalidPort, input: "\(host) port \(port)")
        }
        if let numeric = try? SocketAddress(ip: host, port: port) {
            if let family, numeric.family != family {
                throw UVError.addressFamilyNotSupported.with(context: "resolve \"\(host)\": not an \(family) address")
            }
            return [numeric]
        }
        guard !host.isEmpty, !host.utf8.contains(0) else {
            throw UVError.hostNotFound.with(context: "resolve \"\(host)\": not a host name")
        }
        if let error = loop.startError { throw error }
        try Task.checkCancellation()
        let lookup = Lookup(host: host, port: UInt16(port), family: family)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[SocketAddress], any Error>) in
                lookup.continuation = continuation
                loop.execute { lookup.start(on: loop) }
            }
        } onCancel: {
            loop.execute { lookup.cancel() }
        }
    }
}

/// One `uv_getaddrinfo` request and the task waiting for it. Lives until the callback (the
/// request holds a retain in `data`).
private final class Lookup: @unchecked Sendable {
    // Safe to share: after `resolve` sets `continuation` (before the lookup reaches the loop,
    // ordered by the loop's job queue), every member is only touched on the loop's thread.
    let host: String
    let port: UInt16
    let family: AddressFamily?
    var continuation: CheckedContinuation<[SocketAddress], any Error>?
    private var request: UnsafeMutablePointer<uv_getaddrinfo_t>?
    private var cancelled = false

    init(host: String, port: UInt16, family: AddressFamily?) {
        self.host = host
        self.port = port
        self.family = family
    }

    /// Loop thread: starts the lookup.
    func start(on loop: UVLoop) {
        guard !cancelled, !loop.isShuttingDown else {
            finish(.failure(cancelled ? CancellationError() : ClosedHandleError(operation: "resolve")))
            return
        }
        var hints = addrinfo()
        hints.ai_family = family?.rawValue ?? AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        hints.ai_protocol = Int32(IPPROTO_UDP)
        let request = UnsafeMutablePointer<uv_getaddrinfo_t>.allocate(capacity: 1)
        request.pointee.data = Unmanaged.passRetained(self).toOpaque()
        self.request = request
        let status = uv_getaddrinfo(loop.uvLoop, request, { request, status, result in
            guard let request, let data = request.pointee.data else { return }
            let lookup = Unmanaged<Lookup>.fromOpaque(data).takeRetainedValue()
            lookup.completed(status: status, result: result)
            if let result { uv_freeaddrinfo(result) }
            request.deallocate()
        }, host, nil, &hints)
        if status < 0 {
            Unmanaged<Lookup>.fromOpaque(request.pointee.data!).release()
            request.deallocate()
            self.request = nil
            finish(.failure(UVError(code: status, context: "resolve \"\(host)\"")))
        }
    }

    /// Loop thread: the task was cancelled.
    func cancel() {
        cancelled = true
        if let request {
            _ = request.withMemoryRebound(to: uv_req_t.self, capacity: 1) { uv_cancel($0) }
        }
    }

    private func completed(status: Int32, result: UnsafeMutablePointer<addrinfo>?) {
        request = nil
        if status == UV_EAI_CANCELED.rawValue || cancelled {
            finish(.failure(CancellationError()))
            return
        }
        if status < 0 {
            finish(.failure(UVError(code: status, context: "resolve \"\(host)\"")))
            return
        }
        var addresses: [SocketAddress] = []
        var entry = result
        while let current = entry {
            if let raw = current.pointee.ai_addr, let address = SocketAddress(UnsafePointer(raw)),
               let withPort = try? address.withPort(Int(port)), !addresses.contains(withPort) {
                addresses.append(withPort)
            }
            entry = current.pointee.ai_next
        }
        if addresses.isEmpty {
            finish(.failure(UVError.hostNotFound.with(context: "resolve \"\(host)\": no \(family.map { "\($0) " } ?? "")address")))
        } else {
            finish(.success(addresses))
        }
    }

    private func finish(_ result: Result<[SocketAddress], any Error>) {
        continuation?.resume(with: result)
        continuation = nil
    }
}

extension UVError {
    /// The resolver knows no such host (`EAI_NONAME`).
    public static let hostNotFound = UVError(code: UV_EAI_NONAME.rawValue)
    /// The resolver failed for now; try again later (`EAI_AGAIN`).
    public static let resolverTemporaryFailure = UVError(code: UV_EAI_AGAIN.rawValue)
    /// The resolver failed for good (`EAI_FAIL`).
    public static let resolverFailure = UVError(code: UV_EAI_FAIL.rawValue)
    /// The host exists but has no address of the family asked for (`EAI_NODATA`).
    public static let noAddress = UVError(code: UV_EAI_NODATA.rawValue)
}
