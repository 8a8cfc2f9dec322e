
import Glibc
import Testing

let ipCommand: String = {
    let candidates: [String] = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
    return candidates.first { access($0, X_OK) == 0 } ?? "/usr/sbin/ip"
}()

/// Whether this process can make network namespaces (root, `ip` present, netns supported):
/// checked once by creating and deleting one.
let namespacesAvailable: Bool = {
    guard geteuid() == 0, access(ipCommand, X_OK) == 0 else { return false }
    removeStaleNamespaces()
    let name = "aurel-probe-\(getpid())"
    guard runSync([ipCommand, "netns", "add", name]) == 0 else { return false }
    runSync([ipCommand, "netns", "del", name])
    return true
}()

/// Deletes namespaces left by an earlier test process that died before its cleanup ran (a crash
/// or a kill): "aurel-<pid>x<n>-<role>" whose process no longer exists.
func removeStaleNamespaces() {
    guard let dir = opendir("/run/netns") else { return }
    var stale: [String] = []
    while let entry = readdir(dir) {
        // Read the name up to its NUL only: copying the whole `d_name` can read past the end of
        // readdir's buffer (the Foundation bug described in Subprocess.swift).
        let offset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        let name = String(cString: (UnsafeRawPointer(entry) + offset).assumingMemoryBound(to: CChar.self))
        guard name.hasPrefix("aurel-"), let x = name.firstIndex(of: "x"),
              let pid = Int32(name[name.index(name.startIndex, offsetBy: 6)..<x]) else { continue }
        if pid != getpid() % 100_000, kill(pid, 0) != 0, errno == ESRCH { stale.append(name) }
    }
    closedir(dir)
    for name in stale { runSync([ipCommand, "netns", "del", name]) }
}

let namespaceSkipReason: Comment = "needs root and `ip netns` (network namespaces) to build a private network"

private let nameCounter = LockedCounter()

final class LockedCounter: @unchecked Sendable {
    // Safe to share: `value` is only touched under `lock`.
    private let lock = PosixLock()
    private var value = 0
    func next() -> Int { lock.withLock { value += 1; return value } }
}

struct NamespaceError: Error, CustomStringConvertible {
    let command: [String]
    let status: Int32
    var description: String { "`\(command.joined(separator: " "))` exited with \(status)" }
}

/// Private networks made of namespaces, with unique names; everything is deleted by `destroy()`,
/// which `withNamespaces` calls on every exit path.
final class PrivateNetwork: @unchecked Sendable {
    // Safe to share: `namespaces` is written only while the network is being built, before
    // the body that uses it runs, and read afterwards.
    let tag: String
    private(set) var namespaces: [String] = []

    init() {
        tag = "\(getpid() % 100_000)x\(nameCounter.next())"
    }

    func ip(_ arguments: String...) throws {
        let command = [ipCommand] + arguments
        let status = runSync(command)
        guard status == 0 else { throw NamespaceError(command: command, status: status) }
    }

    /// Creates a namespace with only `lo` (up), on a thread of its own (see ``offPool(_:)``).
    func addNamespace(_ role: String) async throws -> String {
        try await offPool { try self.addNamespaceNow(role) }
    }

    func addNamespaceNow(_ role: String) throws -> String {
        let name = "aurel-\(tag)-\(role)"
        try ip("netns", "add", name)
        namespaces.append(name)
        try ip("-n", name, "link", "set", "lo", "up")
        // No duplicate address detection: addresses are usable at once.
        for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
            runSync([ipCommand, "netns", "exec", name, "sysctl", "-qw", "\(key)=0"])
        }
        return name
    }

    func destroy() {
        for name in namespaces.reversed() { runSync([ipCommand, "netns", "del", name]) }
        namespaces.removeAll()
    }

    /// The command line that runs `reliability-tool` inside `namespace`.
    func tool(in namespace: String, _ arguments: [String]) -> [String] {
        [ipCommand, "netns", "exec", namespace, reliabilityTool] + arguments
    }
}

/// Two namespaces joined by a veth pair: A has 10.N.M.1/24 (and .3) and fd00:N:M::1/64 on its
/// end, B has 10.N.M.2/24 and fd00:N:M::2/64; both have default routes through the veth.
struct VethPair: Sendable {
    let a: String
    let b: String
    let linkA: String
    let linkB: String
    let subnet: String  // "10.N.M"
    let subnet6: String // "fd00:N:M"
    var a4: String { "\(subnet).1" }
    var a4second: String { "\(subnet).3" }
    var b4: String { "\(subnet).2" }
    var broadcast4: String { "\(subnet).255" }
    var a6: String { "\(subnet6)::1" }
    var b6: String { "\(subnet6)::2" }
}

/// Builds a private network, runs `body`, and deletes the namespaces whatever happens.
func withNamespaces<T>(_ body: (PrivateNetwork) async throws -> T) async throws -> T {
    let network = PrivateNetwork()
    do {
        let result = try await body(network)
        _ = try? await offPool { network.destroy() }
        return result
    } catch {
        _ = try? await offPool { network.destroy() }
        throw error
    }
}

extension PrivateNetwork {
    /// Builds the pair on a thread of its own (see ``offPool(_:)``).
    func makeVethPair() async throws -> VethPair {
        try await offPool { try self.makeVethPairNow() }
    }

    private func makeVethPairNow() throws -> VethPair {
        let a = try addNamespaceNow("a")
        let b = try addNamespaceNow("b")
        let n = Int(getpid() % 200) + 20
        let m = nameCounter.next() % 250 + 1
        let linkA = "ara\(tag)".prefix(15), linkB = "arb\(tag)".prefix(15)
        try ip("link", "add", String(linkA), "netns", a, "type", "veth", "peer", "name", String(linkB), "netns", b)
        let pair = VethPair(a: a, b: b, linkA: String(linkA), linkB: String(linkB),
                            subnet: "10.\(n).\(m)", subnet6: "fd00:\(n):\(m)")
        try ip("-n", a, "addr", "add", "\(pair.a4)/24", "broadcast", pair.broadcast4, "dev", pair.linkA)
        try ip("-n", a, "addr", "add", "\(pair.a4second)/24", "dev", pair.linkA)
        try ip("-n", b, "addr", "add", "\(pair.b4)/24", "broadcast", pair.broadcast4, "dev", pair.linkB)
        try ip("-n", a, "-6", "addr", "add", "\(pair.a6)/64", "dev", pair.linkA, "nodad")
        try ip("-n", b, "-6", "addr", "add", "\(pair.b6)/64", "dev", pair.linkB, "nodad")
        try ip("-n", a, "link", "set", pair.linkA, "up")
        try ip("-n", b, "link", "set", pair.linkB, "up")
        try ip("-n", a, "route", "add", "default", "dev", pair.linkA)
        try ip("-n", b, "route", "add", "default", "dev", pair.linkB)
        try ip("-n", a, "-6", "route", "add", "default", "dev", pair.linkA)
        try ip("-n", b, "-6", "route", "add", "default", "dev", pair.linkB)
        return pair
    }
}
