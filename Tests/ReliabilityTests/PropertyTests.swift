import AsyncUDP
import Glibc
import PropertyBased
import Testing
import TestSupport

/// Characters that address parsers trip over, mixed with arbitrary Unicode.
let addressAlphabet: [Character] = Array("0123456789abcdefABCDEFxX.:[]%- +/lo\u{0}\u{7f}\u{ff}é𝟘٣")

/// Turns random numbers into a string: mostly characters from `addressAlphabet`, sometimes any
/// Unicode scalar.
@Sendable func hostileText(_ codes: [UInt32]) -> String {
    var text = ""
    for code in codes {
        if code % 9 != 0 {
            text.append(addressAlphabet[Int(code / 9) % addressAlphabet.count])
        } else if let scalar = Unicode.Scalar(code % 0x10FFFF) {
            text.unicodeScalars.append(scalar)
        } else {
            text.append("\u{FFFD}")
        }
    }
    return text
}

/// Text that looks like an address more often than not: pieces of real addresses, perturbed.
@Sendable func addressLikeText(_ codes: [UInt32]) -> String {
    let junk = hostileText(Array(codes.dropFirst(3)))
    let a = codes[0], b = codes[1], c = codes[2]
    let port = Int(c % 70_020) - 10
    switch a % 5 {
    case 0: return "\(b & 255).\((b >> 8) & 255).\((b >> 16) & 255).\(b >> 24):\(port)"
    case 1: return "\(b & 255).\(b >> 24).0.1:\(port)\(junk.prefix(2))"
    case 2: return "[\(String(b & 0xFFFF, radix: 16))::\(String(b >> 16, radix: 16))\(c % 4 == 0 ? "%lo" : "")]:\(port)"
    case 3: return "\(String(b & 0xFFFF, radix: 16))::\(String(b >> 16, radix: 16)):\(port)"
    default: return junk
    }
}

let hostileString = Gen.uint32().array(of: 0...40).map(hostileText)
let addressLikeString = Gen.uint32().array(of: 3...30).map(addressLikeText)

@Suite("Hostile input: property-based", .timeLimit(.minutes(3)))
struct PropertyTests {
    /// Parsing never crashes: it returns an address whose text parses back to it, or throws a
    /// SocketAddressError that names the input.
    @Test("SocketAddress(text): random strings parse and round-trip, or throw a SocketAddressError naming the input")
    func parseRandomText() async {
        await propertyCheck(count: 40_000, input: addressLikeString) { text in
            do {
                let address = try SocketAddress(text)
                let printed = address.description
                #expect(try SocketAddress(printed) == address, "\(text) -> \(printed)")
                #expect(address.port >= 0 && address.port <= 65_535)
            } catch let error as SocketAddressError {
                #expect(error.input == text)
                #expect(!error.description.isEmpty)
            } catch {
                Issue.record("unexpected error type for \(text.debugDescription): \(error)")
            }
        }
    }

    @Test("SocketAddress(ip:port:): random IP strings and any Int port; the port is never wrapped")
    func parseRandomIPAndPort() async {
        await propertyCheck(count: 15_000, input: hostileString, Gen.int(in: -100_000...100_000)) { ip, port in
            do {
                let address = try SocketAddress(ip: ip, port: port)
                #expect((0...65_535).contains(port))
                #expect(address.port == port)
                #expect(try SocketAddress(address.description) == address)
            } catch is SocketAddressError {
                // Refused with a typed error; a port out of range must be refused.
            } catch {
                Issue.record("unexpected error type: \(error)")
            }
            if !(0...65_535).contains(port) {
                #expect(throws: SocketAddressError.self) { try SocketAddress(ip: "127.0.0.1", port: port) }
            }
        }
    }

    @Test("IPv4: print then parse gives the same address, ip and port")
    func ipv4RoundTrip() async {
        await propertyCheck(count: 15_000, input: Gen.uint32(), Gen.int(in: 0...65_535)) { raw, port in
            let ip = "\(raw >> 24).\((raw >> 16) & 255).\((raw >> 8) & 255).\(raw & 255)"
            do {
                let address = try SocketAddress(ip: ip, port: port)
                #expect(address.ip == ip)
                #expect(address.family == .ipv4)
                #expect(address.description == "\(ip):\(port)")
                #expect(try SocketAddress(address.description) == address)
                #expect(address.isMulticast == (raw >> 28 == 0xE))
            } catch {
                Issue.record("\(ip):\(port) refused: \(error)")
            }
        }
    }

    @Test("IPv6 (with and without a scope): print then parse gives the same address")
    func ipv6RoundTrip() async {
        let lo = if_nametoindex("lo")
        await propertyCheck(count: 15_000, input: Gen.uint16().array(of: 8), Gen.int(in: 0...65_535), Gen.bool) { groups, port, scoped in
            let ip = groups.map { String($0, radix: 16) }.joined(separator: ":")
            do {
                let address = try SocketAddress(ip: scoped ? "\(ip)%lo" : ip, port: port)
                #expect(address.family == .ipv6)
                #expect(address.scopeID == (scoped ? lo : 0))
                #expect(try SocketAddress(address.description) == address)
                #expect(try SocketAddress(ip: address.ip, port: port).ip == address.ip)
                #expect(address.isMulticast == (groups[0] >> 8 == 0xFF))
            } catch {
                Issue.record("\(ip) refused: \(error)")
            }
        }
    }

    @Test("withPort: any Int; in range it keeps the IP, out of range it throws")
    func withPort() async throws {
        let base = try SocketAddress("[2001:db8::7]:1")
        await propertyCheck(count: 5_000, input: Gen.int(in: -200_000...200_000)) { port in
            if (0...65_535).contains(port) {
                #expect((try? base.withPort(port))?.port == port)
                #expect((try? base.withPort(port))?.ip == base.ip)
            } else {
                #expect(throws: SocketAddressError.self) { try base.withPort(port) }
            }
        }
    }

    @Test("Configuration: random values open a socket or are refused with EINVAL")
    func configurations() async {
        let sizes = Gen.int(in: -5...70_000)
        await propertyCheck(count: 1_000, input: Gen.int(in: -3...3000), sizes, Gen.int(in: -3...40), Gen.int(in: -3...40)) { limit, size, high, low in
            let policies: [UDPSocket.OverflowPolicy] = [.dropNewest, .dropOldest, .pauseReading(highWatermark: high, lowWatermark: low)]
            let policy = policies[abs(limit + size) % 3]
            let configuration = UDPSocket.Configuration(receiveQueueLimit: limit, overflowPolicy: policy, maximumDatagramSize: size)
            var valid = limit >= 1 && (1...65_536).contains(size)
            if case .pauseReading(let h, let l) = policy { valid = valid && 0 <= l && l < h && h <= limit }
            do {
                let socket = try await openSocket(configuration: configuration)
                #expect(valid, "accepted \(configuration)")
                await socket.close()
            } catch let error as UVError {
                #expect(!valid && error == .invalidArgument, "refused \(configuration): \(error)")
            } catch {
                Issue.record("unexpected error: \(error)")
            }
        }
    }
}

/// Every public entry point of a socket that takes user data, fed random values: each returns
/// or throws a typed error (SocketAddressError, UVError), and the socket keeps working.
@Suite("Hostile input: socket entry points", .timeLimit(.minutes(3)))
struct EntryPointPropertyTests {
    /// An interface string that, if it names an address, names loopback, so that no random join
    /// or multicast setting can send IGMP/MLD off the host.
    static func loopbackOnly(_ text: String) -> String {
        guard let address = try? SocketAddress(ip: text, port: 0) else { return text }
        return address.family == .ipv4 ? "127.0.0.1" : "::1"
    }

    static func typed(_ error: any Error) -> Bool {
        error is SocketAddressError || error is UVError
    }

    @Test("joinGroup / leaveGroup / source-specific joins with random groups, sources and interfaces")
    func membership() async throws {
        let socket = try await openSocket()
        let groups = Gen.uint32().array(of: 1...20).map { codes -> String in
            codes[0] % 3 == 0 ? hostileText(codes) : "\(224 + codes[0] % 16).\(codes[0] >> 8 & 255).\(codes[0] >> 16 & 255).1"
        }
        await propertyCheck(count: 6_000, input: groups, hostileString, Gen.int(in: 0...3)) { group, junk, mode in
            let interface = mode == 3 ? Self.loopbackOnly(junk) : "127.0.0.1"
            do {
                switch mode {
                case 0:
                    try await socket.joinGroup(group, interface: interface)
                    // Joined: leaving works, and joining twice would have been EADDRINUSE.
                    try await socket.leaveGroup(group, interface: interface)
                case 1:
                    try await socket.leaveGroup(group, interface: interface)
                case 2:
                    try await socket.joinGroup(group, source: Self.loopbackOnly(junk), interface: interface)
                    try await socket.leaveGroup(group, source: Self.loopbackOnly(junk), interface: interface)
                default:
                    try await socket.joinGroup(group, interface: interface)
                    try await socket.leaveGroup(group, interface: interface)
                }
            } catch {
                #expect(Self.typed(error), "\(group) \(interface): \(error)")
            }
        }
        try await Self.stillWorks(socket)
        await socket.close()
    }

    @Test("option setters with random values: TTLs, buffer sizes, multicast interface, loop, broadcast")
    func options() async throws {
        let socket = try await openSocket()
        await propertyCheck(count: 6_000, input: Gen.int(in: -1_000...1_000), hostileString, Gen.int(in: 0...5)) { value, text, which in
            do {
                switch which {
                case 0:
                    try await socket.setTTL(value)
                    #expect((1...255).contains(value))
                case 1:
                    try await socket.setMulticastTTL(value)
                    #expect((0...255).contains(value))
                case 2:
                    try await socket.setMulticastInterface(Self.loopbackOnly(text))
                case 3:
                    try await socket.setReceiveBufferSize(value * 1000)
                    #expect(value > 0)
                case 4:
                    try await socket.setSendBufferSize(value * 1000)
                    #expect(value > 0)
                default:
                    try await socket.setMulticastLoop(value % 2 == 0)
                    try await socket.setBroadcast(value % 3 == 0)
                }
            } catch {
                #expect(Self.typed(error), "\(which) \(value) \(text.debugDescription): \(error)")
            }
        }
        try await socket.setMulticastInterface(nil)
        try await Self.stillWorks(socket)
        await socket.close()
    }

    @Test("send with random payload sizes and buffer lists: arrives intact, or a typed error")
    func sends() async throws {
        let receiver = try await openSocket(configuration: .init(receiveQueueLimit: 8192, receiveBufferSize: 8 << 20))
        let sender = try await openSocket()
        let lists = Gen.int(in: 0...14_000).array(of: 0...4).map { sizes in
            sizes.map { $0 < 12_000 ? $0 % 2_001 : 65_000 + $0 % 5_001 }
        }
        var expected: [[UInt8]] = []
        await propertyCheck(count: 1_000, input: lists, Gen.uint8()) { parts, fill in
            let buffers = parts.map { [UInt8](repeating: fill, count: $0) }
            let total = parts.reduce(0, +)
            do {
                try await sender.send(buffers, to: receiver.localAddress)
                #expect(!buffers.isEmpty && total <= 65_507)
                expected.append(Array(buffers.joined()))
            } catch let error as UVError {
                #expect(buffers.isEmpty ? error == .invalidArgument : error == .messageTooLong, "\(parts): \(error)")
            } catch {
                Issue.record("unexpected error for \(parts): \(error)")
            }
        }
        // Everything that was accepted arrives, in order (loopback, one sender).
        try await waitUntil("accepted datagrams read or dropped by the kernel") {
            let stats = await receiver.statistics
            return stats.datagramsReceived + (stats.datagramsDroppedByKernel ?? 0) >= expected.count
        }
        let stats = await receiver.statistics
        if stats.datagramsDroppedByKernel == 0 {
            let got = try await receive(expected.count, from: receiver).map(\.payload)
            #expect(got == expected)
        }
        #expect(await sender.statistics.datagramsSent == expected.count)
        await receiver.close()
        await sender.close()
    }

    /// The socket still sends and receives.
    static func stillWorks(_ socket: UDPSocket) async throws {
        let peer = try await openSocket()
        try await socket.send(Array("still works"), to: peer.localAddress)
        #expect(try await receive(1, from: peer).first?.payload == Array("still works"))
        await peer.close()
    }
}
