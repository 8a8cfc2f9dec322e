import Testing
import UVCore

@Suite("SocketAddress parsing", .timeLimit(.minutes(1)))
struct SocketAddressTests {
    @Test("good addresses parse and print back", arguments: [
        ("1.2.3.4:53", "1.2.3.4", 53, AddressFamily.ipv4),
        ("0.0.0.0:0", "0.0.0.0", 0, .ipv4),
        ("255.255.255.255:65535", "255.255.255.255", 65535, .ipv4),
        ("[::1]:53", "::1", 53, .ipv6),
        ("[::]:9000", "::", 9000, .ipv6),
        ("[::ffff:127.0.0.1]:80", "::ffff:127.0.0.1", 80, .ipv6),
        ("[2001:db8::1]:443", "2001:db8::1", 443, .ipv6),
    ])
    func good(text: String, ip: String, port: Int, family: AddressFamily) throws {
        let address = try SocketAddress(text)
        #expect(address.ip == ip)
        #expect(address.port == port)
        #expect(address.family == family)
        #expect(address.description == text)
        #expect(try SocketAddress(address.description) == address)
        #expect(try SocketAddress(ip: ip, port: port) == address)
    }

    @Test("bad text is rejected with the reason", arguments: [
        ("1.2.3.4:70000", SocketAddressError.Reason.invalidPort),
        ("1.2.3.4:-1", .invalidPort),
        ("1.2.3.4:+53", .invalidPort),
        ("1.2.3.4:", .invalidPort),
        ("1.2.3.4: 53", .invalidPort),
        ("1.2.3.4:000053", .invalidPort),
        ("[fe80::1%nosuchif]:53", .unknownScope),
        ("[fe80::1%]:53", .unknownScope),
        ("[fe80::1%99999]:53", .unknownScope),
        ("[::1]", .missingPort),
        ("1.2.3.4", .missingPort),
        ("::1:53", .missingPort),
        ("1.2.3:53", .invalidIP),
        ("", .missingPort),
        (":53", .invalidIP),
        ("256.0.0.1:1", .invalidIP),
        ("1.2.3.4.5:1", .invalidIP),
        ("abc:1", .invalidIP),
        (" 127.0.0.1:1", .invalidIP),
        ("0x7f.0.0.1:1", .invalidIP),
        ("127.1:1", .invalidIP),
        ("01.2.3.4:1", .invalidIP),
        ("[:::1]:1", .invalidIP),
        ("[abcde::1]:1", .invalidIP),
        ("[1:2:3:4:5:6:7:8:9]:1", .invalidIP),
        ("[127.0.0.1]:1", .invalidIP),
        ("[::1:1", .invalidIP),
        ("127.0.0.1%lo:1", .unexpectedScope),
        ("1.2.3.4\u{0}:1", .invalidIP),
    ])
    func bad(text: String, reason: SocketAddressError.Reason) {
        #expect(throws: SocketAddressError(reason, input: text)) { try SocketAddress(text) }
    }

    @Test("ports outside 0...65535 are rejected, not wrapped", arguments: [70000, -1, 65536, Int.max, Int.min])
    func portRange(port: Int) {
        #expect(throws: SocketAddressError.self) { try SocketAddress(ip: "127.0.0.1", port: port) }
    }

    @Test("scopes: an interface name or number that exists is accepted")
    func scopes() throws {
        let byName = try SocketAddress("[fe80::1%lo]:53")
        #expect(byName.scopeID > 0)
        #expect(byName.description == "[fe80::1%lo]:53")
        let byNumber = try SocketAddress("[fe80::1%\(byName.scopeID)]:53")
        #expect(byNumber == byName)
        #expect(try SocketAddress(ip: "fe80::1%lo", port: 1).scopeID == byName.scopeID)
    }

    @Test("multicast classification")
    func multicast() throws {
        #expect(try SocketAddress("239.255.0.1:1").isMulticast)
        #expect(try SocketAddress("224.0.0.1:1").isMulticast)
        #expect(try !SocketAddress("127.0.0.1:1").isMulticast)
        #expect(try SocketAddress("[ff02::1]:1").isMulticast)
        #expect(try !SocketAddress("[::1]:1").isMulticast)
    }

    @Test("hashing and equality follow the address")
    func hashing() throws {
        let set: Set = [try SocketAddress("1.2.3.4:5"), try SocketAddress(ip: "1.2.3.4", port: 5), try SocketAddress("[::1]:5")]
        #expect(set.count == 2)
        #expect(try SocketAddress("1.2.3.4:5").withPort(6) == SocketAddress("1.2.3.4:6"))
    }
}

@Suite("UVError", .timeLimit(.minutes(1)))
struct UVErrorTests {
    @Test("names, messages and equality by code")
    func basics() {
        #expect(UVError.addressInUse.name == "EADDRINUSE")
        #expect(UVError.addressInUse.message == "address already in use")
        #expect(UVError.messageTooLong.with(context: "x") == .messageTooLong)
        #expect(UVError.canceled.description == "ECANCELED: operation canceled")
        #expect(UVError.connectionRefused.isTransient)
        #expect(UVError.noBufferSpace.isTransient)
        #expect(!UVError.messageTooLong.isTransient)
    }
}
