// The DNS wire format (RFC 1035), just enough for one question and its answers: a query builder
// and a reply parser, with no networking, so each piece can be tested on bytes alone.
//
//     header     ID (16 bits), flags (QR, opcode, AA, TC, RD, RA, RCODE), and the counts of
//                questions, answers, authority and additional records: 12 bytes
//     question   NAME, TYPE (16 bits), CLASS (16 bits)
//     answer     NAME, TYPE, CLASS, TTL (32 bits), RDLENGTH (16 bits), RDATA
//
// A name is a list of labels, each a length byte (1...63) and that many bytes, ending with a
// zero byte or with a compression pointer: two bytes whose top bits are 11 and whose other 14
// bits are the offset of an earlier name in the message, which continues the name.
import Glibc

/// Why bytes are not a DNS message, or text is not a name.
struct DNSError: Error, Hashable, Sendable, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A record type: A, AAAA, TXT, ..., or any other by number.
struct DNSType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    var rawValue: UInt16
    init(rawValue: UInt16) { self.rawValue = rawValue }

    static let a = DNSType(rawValue: 1)
    static let ns = DNSType(rawValue: 2)
    static let cname = DNSType(rawValue: 5)
    static let soa = DNSType(rawValue: 6)
    static let ptr = DNSType(rawValue: 12)
    static let mx = DNSType(rawValue: 15)
    static let txt = DNSType(rawValue: 16)
    static let aaaa = DNSType(rawValue: 28)

    static let named: [(name: String, type: DNSType)] = [
        ("A", .a), ("NS", .ns), ("CNAME", .cname), ("SOA", .soa), ("PTR", .ptr), ("MX", .mx),
        ("TXT", .txt), ("AAAA", .aaaa), ("SRV", DNSType(rawValue: 33)), ("CAA", DNSType(rawValue: 257)),
        ("ANY", DNSType(rawValue: 255)),
    ]

    /// A type by name, in any case ("aaaa"), or by number in RFC 3597's form ("TYPE65").
    init?(_ text: String) {
        let upper = text.uppercased()
        if let known = Self.named.first(where: { $0.name == upper }) {
            self = known.type
        } else if upper.hasPrefix("TYPE"), let number = UInt16(upper.dropFirst(4)) {
            self.init(rawValue: number)
        } else {
            return nil
        }
    }

    var description: String {
        Self.named.first(where: { $0.type == self })?.name ?? "TYPE\(rawValue)"
    }
}

/// A domain name. Equal names compare equal in any ASCII case, as DNS requires (RFC 4343).
struct DNSName: Hashable, Sendable, CustomStringConvertible {
    /// The labels, without the root's empty one: `["a", "test"]` for `a.test.`.
    var labels: [[UInt8]]

    init(labels: [[UInt8]]) { self.labels = labels }

    /// A name from text: `"a.test"` or `"a.test."`; `"."` is the root.
    ///
    /// - Throws: ``DNSError`` for an empty label, a label over 63 bytes or a name over 255.
    init(_ text: String) throws(DNSError) {
        guard !text.isEmpty else { throw DNSError("an empty name") }
        var body = Substring(text)
        if body.hasSuffix(".") { body = body.dropLast() }
        labels = []
        guard !body.isEmpty else { return }  // "."
        for label in body.split(separator: ".", omittingEmptySubsequences: false) {
            guard !label.isEmpty else { throw DNSError("an empty label in \"\(text)\"") }
            guard label.utf8.count <= 63 else {
                throw DNSError("the label \"\(label.prefix(20))...\" has \(label.utf8.count) bytes; a label has at most 63")
            }
            labels.append(Array(label.utf8))
        }
        guard wireLength <= 255 else { throw DNSError("\"\(text.prefix(20))...\" takes \(wireLength) bytes; a name takes at most 255") }
    }

    /// The bytes the name takes in a message without compression.
    var wireLength: Int { labels.reduce(1) { $0 + 1 + $1.count } }

    /// The name in presentation form, with its final dot; bytes that are not printable ASCII,
    /// and dots or backslashes inside a label, are escaped as in zone files (`\046`, `\.`).
    var description: String {
        guard !labels.isEmpty else { return "." }
        return labels.map { label in
            label.map { byte -> String in
                switch byte {
                case UInt8(ascii: "."), UInt8(ascii: "\\"): "\\" + String(UnicodeScalar(byte))
                case 0x21...0x7E: String(UnicodeScalar(byte))
                default: "\\" + threeDigits(byte)
                }
            }.joined()
        }.joined(separator: ".") + "."
    }

    static func == (lhs: DNSName, rhs: DNSName) -> Bool { lhs.folded == rhs.folded }
    func hash(into hasher: inout Hasher) { hasher.combine(folded) }

    /// The labels with ASCII letters in lower case.
    private var folded: [[UInt8]] {
        labels.map { $0.map { (0x41...0x5A).contains($0) ? $0 | 0x20 : $0 } }
    }
}

/// The one question of a query, and of its reply.
struct DNSQuestion: Hashable, Sendable, CustomStringConvertible {
    var name: DNSName
    var type: DNSType
    /// 1 is the Internet class, IN.
    var classValue: UInt16 = 1

    var description: String { "\(name) \(className(classValue)) \(type)" }
}

/// A reply's status (RCODE).
struct DNSResponseCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    var rawValue: UInt8
    init(rawValue: UInt8) { self.rawValue = rawValue }

    static let noError = DNSResponseCode(rawValue: 0)

    private static let names: [UInt8: (name: String, meaning: String)] = [
        0: ("NOERROR", "no error"), 1: ("FORMERR", "the server could not read the query"),
        2: ("SERVFAIL", "the server failed to answer"), 3: ("NXDOMAIN", "no such name"),
        4: ("NOTIMP", "the server does not do this kind of query"), 5: ("REFUSED", "the server refused to answer"),
    ]

    /// `NXDOMAIN (no such name)`.
    var description: String {
        guard let known = Self.names[rawValue] else { return "RCODE \(rawValue)" }
        return "\(known.name) (\(known.meaning))"
    }
}

/// The data of one record, decoded for the types this tool knows.
enum DNSRecordData: Hashable, Sendable, CustomStringConvertible {
    /// A or AAAA: the address as text.
    case address(String)
    /// CNAME, NS or PTR: a name.
    case name(DNSName)
    /// MX.
    case mailExchange(preference: UInt16, exchange: DNSName)
    /// TXT: its character strings.
    case text([[UInt8]])
    /// SOA.
    case startOfAuthority(primary: DNSName, mailbox: DNSName, serial: UInt32, refresh: UInt32, retry: UInt32,
                          expire: UInt32, minimum: UInt32)
    /// Any other type: the raw bytes.
    case other([UInt8])

    var description: String {
        switch self {
        case .address(let text): return text
        case .name(let name): return name.description
        case .mailExchange(let preference, let exchange): return "\(preference) \(exchange)"
        case .text(let strings): return strings.map(quoted).joined(separator: " ")
        case .startOfAuthority(let primary, let mailbox, let serial, let refresh, let retry, let expire, let minimum):
            return "\(primary) \(mailbox) \(serial) \(refresh) \(retry) \(expire) \(minimum)"
        case .other(let bytes):
            // RFC 3597's generic form: \# LENGTH HEX
            return "\\# \(bytes.count)" + (bytes.isEmpty ? "" : " " + bytes.map(hexByte).joined())
        }
    }
}

/// One resource record of a reply.
struct DNSRecord: Hashable, Sendable, CustomStringConvertible {
    var name: DNSName
    var type: DNSType
    var classValue: UInt16
    var ttl: UInt32
    var data: DNSRecordData

    /// `a.test. 300 IN A 192.0.2.1`, as in a zone file or dig's answer section.
    var description: String { "\(name) \(ttl) \(className(classValue)) \(type) \(data)" }
}

/// A parsed message: the header, the questions and the answer section. The authority and
/// additional sections are not read.
struct DNSMessage: Hashable, Sendable {
    var id: UInt16
    var flags: UInt16
    var questions: [DNSQuestion]
    var answers: [DNSRecord]

    var isResponse: Bool { flags & 0x8000 != 0 }
    var opcode: UInt8 { UInt8((flags >> 11) & 0xF) }
    /// TC: the reply did not fit in the datagram and lost records (TCP would carry them all).
    var isTruncated: Bool { flags & 0x0200 != 0 }
    var responseCode: DNSResponseCode { DNSResponseCode(rawValue: UInt8(flags & 0xF)) }

    /// A standard query for `question` (opcode 0, RD set unless `recursionDesired` is false).
    static func query(id: UInt16, question: DNSQuestion, recursionDesired: Bool = true) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(16 + question.name.wireLength)
        for field in [id, recursionDesired ? 0x0100 : 0, 1, 0, 0, 0] as [UInt16] { bytes.appendBigEndian(field) }
        for label in question.name.labels {
            bytes.append(UInt8(label.count))
            bytes.append(contentsOf: label)
        }
        bytes.append(0)
        bytes.appendBigEndian(question.type.rawValue)
        bytes.appendBigEndian(question.classValue)
        return bytes
    }

    /// Parses a message.
    ///
    /// - Throws: ``DNSError`` if the bytes end early, a name is malformed (a pointer that does
    ///   not point backwards, a label type other than 00 or 11, over 255 bytes), or a record's
    ///   data does not have the length its type needs.
    init(parsing bytes: [UInt8]) throws(DNSError) {
        var reader = DNSReader(bytes)
        id = try reader.uint16()
        flags = try reader.uint16()
        let questionCount = try reader.uint16()
        let answerCount = try reader.uint16()
        _ = try reader.uint16()  // authority records: not read
        _ = try reader.uint16()  // additional records: not read
        questions = []
        for _ in 0..<questionCount {
            questions.append(DNSQuestion(name: try reader.name(), type: DNSType(rawValue: try reader.uint16()),
                                         classValue: try reader.uint16()))
        }
        answers = []
        for _ in 0..<answerCount {
            answers.append(try reader.record())
        }
    }

    /// Whether this message is the reply to the query with `id` and `question`: a response, to a
    /// standard query, with the same ID and the same single question (names in any case).
    func isReply(toID id: UInt16, question: DNSQuestion) -> Bool {
        isResponse && opcode == 0 && self.id == id && questions == [question]
    }
}

/// Reads a message front to back. Every read checks its bounds and throws ``DNSError`` rather
/// than reading past the end.
struct DNSReader {
    let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func take(_ count: Int) throws(DNSError) -> ArraySlice<UInt8> {
        guard count <= bytes.count - offset else { throw DNSError("the message ends early, at byte \(bytes.count)") }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    mutating func uint8() throws(DNSError) -> UInt8 { try take(1).first! }

    mutating func uint16() throws(DNSError) -> UInt16 {
        try take(2).reduce(0) { $0 << 8 | UInt16($1) }
    }

    mutating func uint32() throws(DNSError) -> UInt32 {
        try take(4).reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// Reads a name, following compression pointers.
    ///
    /// Each pointer must point before the previous one (or, for the first, before the name's
    /// start), so a malicious message cannot make this loop.
    mutating func name() throws(DNSError) -> DNSName {
        var labels: [[UInt8]] = []
        var wireLength = 1
        var position = offset
        var pointerLimit = offset   // the next pointer must point below this
        var end: Int?               // where the name ends in the message: after its first pointer
        while true {
            guard position < bytes.count else { throw DNSError("a name runs past the end of the message") }
            let length = bytes[position]
            switch length & 0xC0 {
            case 0x00 where length == 0:
                offset = end ?? position + 1
                return DNSName(labels: labels)
            case 0x00:
                let start = position + 1
                guard start + Int(length) <= bytes.count else { throw DNSError("a label runs past the end of the message") }
                wireLength += 1 + Int(length)
                guard wireLength <= 255 else { throw DNSError("a name longer than 255 bytes") }
                labels.append(Array(bytes[start..<start + Int(length)]))
                position = start + Int(length)
            case 0xC0:
                guard position + 1 < bytes.count else { throw DNSError("a compression pointer runs past the end of the message") }
                let target = Int(length & 0x3F) << 8 | Int(bytes[position + 1])
                guard target < pointerLimit else { throw DNSError("a compression pointer to byte \(target) that does not point backwards") }
                if end == nil { end = position + 2 }
                pointerLimit = target
                position = target
            default:
                throw DNSError("a label of unknown type 0x\(hexByte(length & 0xC0))")
            }
        }
    }

    /// Reads one resource record and decodes its data.
    mutating func record() throws(DNSError) -> DNSRecord {
        let name = try name()
        let type = DNSType(rawValue: try uint16())
        let classValue = try uint16()
        let ttl = try uint32()
        let length = Int(try uint16())
        guard length <= bytes.count - offset else { throw DNSError("the data of a \(type) record runs past the end of the message") }
        let end = offset + length
        let data: DNSRecordData
        switch type {
        case .a:
            guard length == 4 else { throw DNSError("an A record with \(length) bytes of data, not 4") }
            data = .address(try take(4).map(String.init).joined(separator: "."))
        case .aaaa:
            guard length == 16 else { throw DNSError("an AAAA record with \(length) bytes of data, not 16") }
            data = .address(ipv6Text(try take(16)))
        case .cname, .ns, .ptr:
            data = .name(try self.name())
        case .mx:
            data = .mailExchange(preference: try uint16(), exchange: try self.name())
        case .txt:
            var strings: [[UInt8]] = []
            while offset < end {
                let count = Int(try uint8())
                guard count <= end - offset else { throw DNSError("a TXT string runs past its record's data") }
                strings.append(Array(try take(count)))
            }
            data = .text(strings)
        case .soa:
            data = .startOfAuthority(primary: try self.name(), mailbox: try self.name(), serial: try uint32(),
                                     refresh: try uint32(), retry: try uint32(), expire: try uint32(), minimum: try uint32())
        default:
            data = .other(Array(try take(length)))
        }
        guard offset == end else { throw DNSError("a \(type) record whose data is not the \(length) bytes its length says") }
        return DNSRecord(name: name, type: type, classValue: classValue, ttl: ttl, data: data)
    }
}

extension [UInt8] {
    mutating func appendBigEndian(_ value: UInt16) {
        append(UInt8(value >> 8))
        append(UInt8(value & 0xFF))
    }
}

/// `IN` for class 1, else RFC 3597's `CLASS<n>`.
func className(_ value: UInt16) -> String { value == 1 ? "IN" : "CLASS\(value)" }

/// An IPv6 address in its standard text form (RFC 5952), by `inet_ntop`.
func ipv6Text(_ bytes: ArraySlice<UInt8>) -> String {
    var address = in6_addr()
    withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: bytes) }
    var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
    guard inet_ntop(AF_INET6, &address, &text, socklen_t(text.count)) != nil else { return "?" }
    return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// A TXT string in zone-file form: in quotes, with `"` and `\` escaped and bytes that are not
/// printable ASCII as `\DDD`.
func quoted(_ bytes: [UInt8]) -> String {
    "\"" + bytes.map { byte -> String in
        switch byte {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"): "\\" + String(UnicodeScalar(byte))
        case 0x20...0x7E: String(UnicodeScalar(byte))
        default: "\\" + threeDigits(byte)
        }
    }.joined() + "\""
}

/// `7` as `007`.
func threeDigits(_ byte: UInt8) -> String {
    let digits = String(byte)
    return String(repeating: "0", count: 3 - digits.count) + digits
}

/// `10` as `0a`.
func hexByte(_ byte: UInt8) -> String {
    let digits = String(byte, radix: 16)
    return digits.count == 1 ? "0" + digits : digits
}
