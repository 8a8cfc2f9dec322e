internal import CLibUV

/// An error reported by libuv, or by AsyncUDP on libuv's behalf.
///
/// `UVError` is a thin struct over libuv's negative error code (on Linux, `-errno`). Two errors are
/// equal when their codes are equal, so you can match on the static members:
///
/// ```swift
/// do {
///     try handle.bind(SocketAddress("127.0.0.1:53"))
/// } catch let error as UVError where error == .addressInUse {
///     // someone else has the port
/// }
/// ```
///
/// AsyncUDP checks many inputs before they reach libuv (an empty buffer list, an out-of-range TTL,
/// an oversize datagram) and throws the same code libuv would report, synchronously, with a
/// ``context`` sentence that says what was wrong.
public struct UVError: Error, Hashable, Sendable, CustomStringConvertible {
    /// libuv's error code: a negative number, `-errno` on Linux (for example `-98` for
    /// `EADDRINUSE`).
    public let code: Int32

    /// What AsyncUDP was doing or checking when the error arose, if it added anything to libuv's
    /// own message. Not part of equality.
    public let context: String?

    /// Creates an error from a libuv status code.
    ///
    /// - Parameters:
    ///   - code: A negative libuv status code, such as the result of a failed `uv_*` call.
    ///   - context: An optional sentence describing what went wrong.
    public init(code: Int32, context: String? = nil) {
        self.code = code
        self.context = context
    }

    /// The error's symbolic name, such as `"EADDRINUSE"` (from `uv_err_name`).
    public var name: String { String(cString: uv_err_name(code)) }

    /// The human-readable message from `uv_strerror`, such as `"address already in use"`.
    public var message: String { String(cString: uv_strerror(code)) }

    /// `"EADDRINUSE: address already in use"`, followed by the context when there is one.
    public var description: String {
        if let context { return "\(name): \(message) (\(context))" }
        return "\(name): \(message)"
    }

    /// Returns the same error with a context sentence attached.
    public func with(context: String) -> UVError { UVError(code: code, context: context) }

    public static func == (lhs: UVError, rhs: UVError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    /// Throws a `UVError` for a negative libuv status; returns non-negative statuses unchanged.
    @discardableResult
    static func check(_ status: Int32, _ context: @autoclosure () -> String? = nil) throws(UVError) -> Int32 {
        if status < 0 { throw UVError(code: status, context: context()) }
        return status
    }
}

extension UVError {
    private init(_ code: uv_errno_t) { self.init(code: code.rawValue) }

    /// The address is already in use. The corresponding C error is `EADDRINUSE`.
    public static let addressInUse = UVError(UV_EADDRINUSE)
    /// The address is not available on this host. The corresponding C error is `EADDRNOTAVAIL`.
    public static let addressNotAvailable = UVError(UV_EADDRNOTAVAIL)
    /// The address family is not supported by this socket. The corresponding C error is
    /// `EAFNOSUPPORT`.
    public static let addressFamilyNotSupported = UVError(UV_EAFNOSUPPORT)
    /// The operation is already in progress (receiving twice). The corresponding C error is
    /// `EALREADY`.
    public static let alreadyInProgress = UVError(UV_EALREADY)
    /// The socket is already connected. The corresponding C error is `EISCONN`.
    public static let alreadyConnected = UVError(UV_EISCONN)
    /// The socket is not connected. The corresponding C error is `ENOTCONN`.
    public static let notConnected = UVError(UV_ENOTCONN)
    /// A destination address is required. The corresponding C error is `EDESTADDRREQ`.
    public static let destinationAddressRequired = UVError(UV_EDESTADDRREQ)
    /// The file descriptor is not valid (for example, a handle that has no socket yet). The
    /// corresponding C error is `EBADF`.
    public static let badFileDescriptor = UVError(UV_EBADF)
    /// The resource is busy (for example, adopting a second fd into a handle). The corresponding C
    /// error is `EBUSY`.
    public static let busy = UVError(UV_EBUSY)
    /// The operation was canceled, as pending sends are when a handle closes. The corresponding C
    /// error is `ECANCELED`.
    public static let canceled = UVError(UV_ECANCELED)
    /// The peer refused the connection (an ICMP port-unreachable). The corresponding C error is
    /// `ECONNREFUSED`.
    public static let connectionRefused = UVError(UV_ECONNREFUSED)
    /// The object already exists (for example, an fd already owned by another handle). The
    /// corresponding C error is `EEXIST`.
    public static let alreadyExists = UVError(UV_EEXIST)
    /// The host is unreachable. The corresponding C error is `EHOSTUNREACH`.
    public static let hostUnreachable = UVError(UV_EHOSTUNREACH)
    /// An argument is invalid. The corresponding C error is `EINVAL`.
    public static let invalidArgument = UVError(UV_EINVAL)
    /// The datagram is larger than the protocol allows. The corresponding C error is `EMSGSIZE`.
    public static let messageTooLong = UVError(UV_EMSGSIZE)
    /// The network is unreachable. The corresponding C error is `ENETUNREACH`.
    public static let networkUnreachable = UVError(UV_ENETUNREACH)
    /// No buffer space is available. The corresponding C error is `ENOBUFS`.
    public static let noBufferSpace = UVError(UV_ENOBUFS)
    /// No such device (for example, a multicast interface that does not exist). The corresponding
    /// C error is `ENODEV`.
    public static let noSuchDevice = UVError(UV_ENODEV)
    /// The protocol option is not available. The corresponding C error is `ENOPROTOOPT`.
    public static let protocolNotAvailable = UVError(UV_ENOPROTOOPT)
    /// Permission denied (for example, a broadcast without broadcast enabled). The corresponding C
    /// error is `EACCES`.
    public static let permissionDenied = UVError(UV_EACCES)
    /// The operation would block (a try-send while sends are queued). The corresponding C error is
    /// `EAGAIN`.
    public static let wouldBlock = UVError(UV_EAGAIN)
    /// The operation is not supported. The corresponding C error is `ENOTSUP`.
    public static let notSupported = UVError(UV_ENOTSUP)
    /// The process has no file descriptor left. The corresponding C error is `EMFILE`.
    public static let tooManyOpenFiles = UVError(UV_EMFILE)
    /// The system has no file descriptor left. The corresponding C error is `ENFILE`.
    public static let tooManyOpenFilesInSystem = UVError(UV_ENFILE)
    /// Not enough memory. The corresponding C error is `ENOMEM`.
    public static let outOfMemory = UVError(UV_ENOMEM)
    /// The descriptor is not a socket. The corresponding C error is `ENOTSOCK`.
    public static let notASocket = UVError(UV_ENOTSOCK)
    /// The protocol is not supported (for example, adopting a socket that is not UDP). The
    /// corresponding C error is `EPROTONOSUPPORT`.
    public static let protocolNotSupported = UVError(UV_EPROTONOSUPPORT)
    /// The operation timed out. The corresponding C error is `ETIMEDOUT`.
    public static let timedOut = UVError(UV_ETIMEDOUT)
    /// An I/O error (for example, a route that refuses UDP segmentation offload). The
    /// corresponding C error is `EIO`.
    public static let ioError = UVError(UV_EIO)

    /// Whether this error is one of the ICMP-driven or resource errors after which a UDP socket
    /// keeps working: `ECONNREFUSED`, `EHOSTUNREACH`, `ENETUNREACH` or `ENOBUFS`.
    public var isTransient: Bool {
        self == .connectionRefused || self == .hostUnreachable || self == .networkUnreachable
            || self == .noBufferSpace
    }
}

/// Thrown by any operation on a handle or socket that has been closed, or whose loop has shut down.
public struct ClosedHandleError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The operation that was attempted, such as `"send"`.
    public let operation: String

    /// Creates the error for the named operation.
    public init(operation: String) { self.operation = operation }

    public var description: String { "\(operation): the handle is closed" }
}
