import AsyncUDP
import Testing

extension Array where Element == UInt8 {
    init(_ text: String) { self = Array(text.utf8) }
}

/// Opens a socket on 127.0.0.1 (or `ip`), ephemeral port.
func openSocket(_ ip: String = "127.0.0.1", loop: UVLoop = .shared,
                configuration: UDPSocket.Configuration = .init()) async throws -> UDPSocket {
    try await UDPSocket(bindingTo: SocketAddress(ip: ip, port: 0), loop: loop, configuration: configuration)
}

/// Waits until `condition` holds, polling every millisecond; the suite's time limit bounds it.
/// Used only where the event to wait for has no notification of its own (a kernel counter).
func waitUntil(_ what: String, _ condition: () async throws -> Bool) async throws {
    while try await !condition() {
        try await Task.sleep(for: .milliseconds(1))
    }
}

/// Reads `count` datagrams from a socket's stream.
func receive(_ count: Int, from socket: UDPSocket) async throws -> [Datagram] {
    var got: [Datagram] = []
    for try await datagram in socket.datagrams {
        got.append(datagram)
        if got.count == count { break }
    }
    return got
}

/// 8-byte little-endian sequence number payloads.
func payload(_ value: Int, size: Int = 8) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: max(size, 8))
    withUnsafeBytes(of: UInt64(value).littleEndian) { bytes.replaceSubrange(0..<8, with: $0) }
    return bytes
}

func sequence(of datagram: Datagram) -> Int {
    datagram.payload.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
}
