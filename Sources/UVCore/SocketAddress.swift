internal import CLibUV
internal import CUVShims
internal import Glibc

/// An IP address family.
public enum AddressFamily: Sendable, Hashable, CustomStringConvertible {
    /// IPv4 (`AF_INET`).
    case ipv4
    /// IPv6 (`AF_INET6`).
    case ipv6

    /// The C constant, `AF_INET` or `AF_INET6`.
    public var rawValue: Int32 { self == .ipv4 ? AF_INET : AF_INET6 }

    /// The largest UDP payload one datagram of this family can carry: 65,507 bytes for IPv4 and
    /// 65,527 for IPv6 (65,535 less the IP and UDP headers).
    public var maximumPayloadSize: Int { self == .ipv4 ? 65_507 : 65_527 }

    public var description: String { self == .ipv4 ? "IPv4" : "IPv6" }
}

/// Why text could not be turned into a ``SocketAddress``.
public struct SocketAddressError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What was wrong with the input.
    public enum Reason: Hashable, Sendable {
        /// The IP part is neither dotted-quad IPv4 nor valid IPv6.
        case invalidIP
        /// The port is not a decimal number in 0...65535.
        case invalidPort
        /// The text has no `:port` part.
        case missingPort
        /// The IPv6 scope (after `%`) names no interface on this host.
        case unknownScope
        /// A scope was given for an address that cannot have one (IPv4).
        case unexpectedScope
    }

    /// What was wrong.
    public let reason: Reason
    /// The text that was rejected.
    public let input: String
    /// For ``Reason/unknownScope``: the system error when the interface could not be looked up
    /// at all (for example ``UVError/tooManyOpenFiles``), as opposed to not existing.
    public let underlyingError: UVError?

    /// Creates an error for the given reason and input.
    public init(_ reason: Reason, input: String, underlyingError: UVError? = nil) {
        self.reason = reason
        self.input = input
        self.underlyingError = underlyingError
    }

    public var description: String {
        if let underlyingError {
            return "cannot look up the IPv6 scope of \"\(input)\": \(underlyingError) (the input may be fine)"
        }
        switch reason {
        case .invalidIP where Self.looksLikeHostName(input):
            return "invalid IP address \"\(input)\": SocketAddress takes numeric addresses only; resolve host names with SocketAddress.resolve(host:port:family:)"
        case .invalidIP: return "invalid IP address \"\(input)\""
        case .invalidPort: return "invalid port in \"\(input)\": a port must be 0...65535"
        case .missingPort: return "missing port in \"\(input)\": write \"1.2.3.4:53\" or \"[::1]:53\""
        case .unknownScope: return "unknown IPv6 scope in \"\(input)\": no such interface on this host"
        case .unexpectedScope: return "an IPv4 address cannot have a scope: \"\(input)\""
        }
    }

    /// Whether the IP part of `text` has letters that no IPv4 or IPv6 address has.
    private static func looksLikeHostName(_ text: String) -> Bool {
        var host = Substring(text)
        if host.hasPrefix("[") { return false }
        if let colon = host.lastIndex(of: ":") { host = host[..<colon] }
        return host.unicodeScalars.contains { scalar in
            scalar.properties.isAlphabetic && !("a"..."f").contains(scalar) && !("A"..."F").contains(scalar)
        }
    }
}

/// An IPv4 or IPv6 address and a UDP port.
///
/// Create one from text or from an IP and a port:
///
/// ```swift
/// let dns = try SocketAddress("1.1.1.1:53")
/// let local = try SocketAddress("[::1]:9000")
/// let linkLocal = try SocketAddress("[fe80::1%lo]:9000")
/// let any = try SocketAddress(ip: "0.0.0.0", port: 0)
/// ```
///
/// Only numeric addresses are accepted; there is no name resolution. Unlike libuv's
/// `uv_ip4_addr`, a port outside 0...65535 is rejected rather than wrapped, and unlike
/// `uv_ip6_addr`, an IPv6 scope that names no interface is rejected rather than read as scope 0.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    @usableFromInline
    enum Storage: Hashable, Sendable {
        /// Address and port in host byte order.
        case v4(address: UInt32, port: UInt16)
        /// Address as two big-endian halves (as on the wire), port in host order.
        case v6(high: UInt64, low: UInt64, port: UInt16, flowInfo: UInt32, scopeID: UInt32)
    }

    @usableFromInline
    var storage: Storage

    init(storage: Storage) { self.storage = storage }

    /// Creates an address from an IP in text form and a port.
    ///
    /// - Parameters:
    ///   - ip: `"127.0.0.1"`, `"::1"` or `"fe80::1%lo"` (a scope by interface name or number).
    ///   - port: A port in 0...65535.
    /// - Throws: ``SocketAddressError`` when the IP does not parse, the port is out of range, or the
    ///   scope names no interface.
    public init(ip: String, port: Int) throws(SocketAddressError) {
        guard (0...65_535).contains(port) else {
            throw SocketAddressError(.invalidPort, input: "\(ip) port \(port)")
        }
        self = try Self.parse(ip: ip, port: UInt16(port), input: ip)
    }

    /// Parses `"1.2.3.4:53"`, `"[::1]:53"` or `"[fe80::1%lo]:53"`.
    ///
    /// IPv6 addresses must be written in brackets; the port is required.
    ///
    /// - Throws: ``SocketAddressError`` describing what is wrong with `text`.
    public init(_ text: String) throws(SocketAddressError) {
        let ipText: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                throw SocketAddressError(.invalidIP, input: text)
            }
            ipText = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.first == ":" else { throw SocketAddressError(.missingPort, input: text) }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else {
                throw SocketAddressError(.missingPort, input: text)
            }
            ipText = text[..<colon]
            if ipText.contains(":") {
                // Unbracketed IPv6 with what might be a port: ambiguous ("::1:53"), so refuse.
                throw SocketAddressError(.missingPort, input: text)
            }
            portText = text[text.index(after: colon)...]
        }
        guard let port = Self.parsePort(portText) else {
            throw SocketAddressError(.invalidPort, input: text)
        }
        let address = try Self.parse(ip: String(ipText), port: port, input: text)
        // Brackets are for IPv6 only ("[127.0.0.1]:1" is not an address), and IPv6 needs them.
        guard text.hasPrefix("[") == (address.family == .ipv6) else {
            throw SocketAddressError(.invalidIP, input: text)
        }
        self = address
    }

    /// Strict decimal: 1 to 5 ASCII digits, value at most 65535. No sign, no spaces.
    static func parsePort(_ text: Substring) -> UInt16? {
        guard !text.isEmpty, text.utf8.count <= 5,
            text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
            let value = Int(text), value <= 65_535
        else { return nil }
        return UInt16(value)
    }

    static func parse(ip: String, port: UInt16, input: String) throws(SocketAddressError) -> SocketAddress {
        var ipPart = Substring(ip)
        var scopeText: Substring?
        if let percent = ip.firstIndex(of: "%") {
            ipPart = ip[..<percent]
            scopeText = ip[ip.index(after: percent)...]
        }
        // No NULs allowed: they would silently truncate the C string.
        guard !ipPart.isEmpty, !ip.utf8.contains(0) else { throw SocketAddressError(.invalidIP, input: input) }
        var v4 = in_addr()
        if uv_inet_pton(AF_INET, String(ipPart), &v4) == 0 {
            guard scopeText == nil else { throw SocketAddressError(.unexpectedScope, input: input) }
            return SocketAddress(storage: .v4(address: UInt32(bigEndian: v4.s_addr), port: port))
        }
        var v6 = in6_addr()
        guard uv_inet_pton(AF_INET6, String(ipPart), &v6) == 0 else {
            throw SocketAddressError(.invalidIP, input: input)
        }
        var scopeID: UInt32 = 0
        if let scopeText {
            switch Self.lookUpScope(scopeText) {
            case .found(let id): scopeID = id
            case .unknown: throw SocketAddressError(.unknownScope, input: input)
            case .lookupFailed(let error): throw SocketAddressError(.unknownScope, input: input, underlyingError: error)
            }
        }
        let (high, low) = withUnsafeBytes(of: &v6) { raw in
            (raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self),
             raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        }
        return SocketAddress(storage: .v6(high: high, low: low, port: port, flowInfo: 0, scopeID: scopeID))
    }

    enum ScopeLookup {
        case found(UInt32)
        case unknown
        /// The system could not answer (no descriptor left for the lookup, ...).
        case lookupFailed(UVError)
    }

    /// An interface name ("lo") or index ("1") that exists on this host.
    static func lookUpScope(_ text: Substring) -> ScopeLookup {
        guard !text.isEmpty, text.utf8.count < Int(IF_NAMESIZE), !text.utf8.contains(0) else { return .unknown }
        errno = 0
        if text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) {
            guard let index = UInt32(text), index > 0 else { return .unknown }
            var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE))
            if if_indextoname(index, &name) != nil { return .found(index) }
        } else {
            let index = if_nametoindex(String(text))
            if index != 0 { return .found(index) }
        }
        // glibc answers with a socket and an ioctl: ENODEV/ENXIO mean "no such interface";
        // anything else (EMFILE, ENFILE, ENOMEM...) means the question could not be asked.
        var code = errno
        if code == 0 || code == ENODEV || code == ENXIO { return .unknown }
        // glibc 2.36 leaves ENOENT when every socket it tries fails (EMFILE, ...): ask for a
        // socket ourselves to learn the real reason.
        let probe = socket(AF_INET, Int32(SOCK_DGRAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        if probe >= 0 {
            close(probe)
        } else {
            code = errno
        }
        return .lookupFailed(UVError(code: -code, context: "interface lookup of \"\(text)\""))
    }

    /// An interface name ("lo") or index ("1") that exists on this host; `nil` otherwise.
    static func resolveScope(_ text: Substring) -> UInt32? {
        if case .found(let index) = lookUpScope(text) { return index }
        return nil
    }

    /// The address family.
    public var family: AddressFamily {
        if case .v4 = storage { return .ipv4 }
        return .ipv6
    }

    /// The port, 0...65535.
    public var port: Int {
        switch storage {
        case .v4(_, let port), .v6(_, _, let port, _, _): Int(port)
        }
    }

    /// The IPv6 flow information (`sin6_flowinfo`); 0 for IPv4.
    public var flowInfo: UInt32 {
        if case .v6(_, _, _, let flow, _) = storage { return flow }
        return 0
    }

    /// The IPv6 scope (interface index, `sin6_scope_id`); 0 for IPv4 and unscoped addresses.
    public var scopeID: UInt32 {
        if case .v6(_, _, _, _, let scope) = storage { return scope }
        return 0
    }

    /// The IP in text form, without port or scope: `"127.0.0.1"`, `"::1"`, `"::ffff:127.0.0.1"`.
    public var ip: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch storage {
        case .v4(let address, _):
            var raw = in_addr(s_addr: address.bigEndian)
            _ = uv_inet_ntop(AF_INET, &raw, &buffer, buffer.count)
        case .v6(let high, let low, _, _, _):
            var words = (high, low)
            _ = withUnsafeBytes(of: &words) { uv_inet_ntop(AF_INET6, $0.baseAddress, &buffer, buffer.count) }
        }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Whether the IP is a multicast group address (224.0.0.0/4 or ff00::/8).
    public var isMulticast: Bool {
        switch storage {
        case .v4(let address, _): address >> 28 == 0xE
        case .v6(let high, _, _, _, _): UInt64(bigEndian: high) >> 56 == 0xFF
        }
    }

    /// Returns the same IP with another port.
    public func withPort(_ port: Int) throws(SocketAddressError) -> SocketAddress {
        guard (0...65_535).contains(port) else { throw SocketAddressError(.invalidPort, input: "\(self) port \(port)") }
        var copy = self
        switch storage {
        case .v4(let a, _): copy.storage = .v4(address: a, port: UInt16(port))
        case .v6(let h, let l, _, let f, let s): copy.storage = .v6(high: h, low: l, port: UInt16(port), flowInfo: f, scopeID: s)
        }
        return copy
    }

    /// `"1.2.3.4:53"` or `"[::1]:53"` (with `%scope` inside the brackets when scoped); the output
    /// parses back to an equal address.
    public var description: String {
        switch storage {
        case .v4: return "\(ip):\(port)"
        case .v6(_, _, _, _, let scope):
            guard scope != 0 else { return "[\(ip)]:\(port)" }
            var name = [CChar](repeating: 0, count: Int(IF_NAMESIZE))
            let scopeText = if_indextoname(scope, &name) != nil
                ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                : String(scope)
            return "[\(ip)%\(scopeText)]:\(port)"
        }
    }
}

// MARK: - sockaddr conversion (internal)

extension SocketAddress {
    /// Reads a `sockaddr_in` or `sockaddr_in6`; nil for any other family.
    init?(_ address: UnsafePointer<sockaddr>) {
        switch Int32(address.pointee.sa_family) {
        case AF_INET:
            let sin = UnsafeRawPointer(address).loadUnaligned(as: sockaddr_in.self)
            storage = .v4(address: UInt32(bigEndian: sin.sin_addr.s_addr), port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = UnsafeRawPointer(address).loadUnaligned(as: sockaddr_in6.self)
            let (high, low) = withUnsafeBytes(of: sin6.sin6_addr) { raw in
                (raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self),
                 raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
            }
            storage = .v6(high: high, low: low, port: UInt16(bigEndian: sin6.sin6_port),
                          flowInfo: UInt32(bigEndian: sin6.sin6_flowinfo), scopeID: sin6.sin6_scope_id)
        default:
            return nil
        }
    }

    /// The wildcard address of `family` (`0.0.0.0` or `::`), port 0.
    package static func wildcard(_ family: AddressFamily) -> SocketAddress {
        SocketAddress(storage: family == .ipv6
            ? .v6(high: 0, low: 0, port: 0, flowInfo: 0, scopeID: 0)
            : .v4(address: 0, port: 0))
    }

    /// Writes this address as a `sockaddr_in` or `sockaddr_in6` at `target` (room for a
    /// `sockaddr_storage`); returns its length.
    @inline(__always)
    func write(to target: UnsafeMutableRawPointer) -> socklen_t {
        switch storage {
        case .v4(let address, let port):
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            sin.sin_addr.s_addr = address.bigEndian
            target.storeBytes(of: sin, as: sockaddr_in.self)
            return socklen_t(MemoryLayout<sockaddr_in>.size)
        case .v6(let high, let low, let port, let flow, let scope):
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            sin6.sin6_flowinfo = flow.bigEndian
            sin6.sin6_scope_id = scope
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { raw in
                raw.storeBytes(of: high, toByteOffset: 0, as: UInt64.self)
                raw.storeBytes(of: low, toByteOffset: 8, as: UInt64.self)
            }
            target.storeBytes(of: sin6, as: sockaddr_in6.self)
            return socklen_t(MemoryLayout<sockaddr_in6>.size)
        }
    }

    /// Calls `body` with this address as a C `sockaddr` and its length.
    func withSockAddr<R, E: Error>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws(E) -> R) throws(E) -> R {
        switch storage {
        case .v4(let address, let port):
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            sin.sin_addr.s_addr = address.bigEndian
            return try withUnsafePointer(to: &sin) { (p) throws(E) -> R in
                try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(E) -> R in
                    try body(sa, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        case .v6(let high, let low, let port, let flow, let scope):
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            sin6.sin6_flowinfo = flow.bigEndian
            sin6.sin6_scope_id = scope
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { raw in
                raw.storeBytes(of: high, toByteOffset: 0, as: UInt64.self)
                raw.storeBytes(of: low, toByteOffset: 8, as: UInt64.self)
            }
            return try withUnsafePointer(to: &sin6) { (p) throws(E) -> R in
                try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(E) -> R in
                    try body(sa, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        }
    }
}
