internal import CLibUV
internal import CUVShims
internal import Glibc

/// The one funnel for the system calls AsyncUDP makes itself (socket options, `getsockname`,
/// `socket`, `dup`...; the send and receive paths use ``SocketIO``).
///
/// Every call is retried on `EINTR`; a failure becomes a ``UVError`` with the call named in its
/// context. `EBADF` and `EFAULT` can only mean a bug in this library (a descriptor or pointer it
/// owns is wrong), so they trap with a message instead of being thrown at a user.
enum Syscall {
    /// Runs `body` (which returns -1 and sets `errno` on failure) until it does not fail with
    /// `EINTR`; returns its non-negative result or throws.
    ///
    /// - Parameter foreign: The descriptor is the caller's (``UDPHandle/open(_:)``), not one this
    ///   library owns: `EBADF` is then the caller's mistake and is thrown.
    @discardableResult
    static func call(_ name: @autoclosure () -> String, foreign: Bool = false, _ body: () -> Int32) throws(UVError) -> Int32 {
        while true {
            let result = body()
            if result >= 0 { return result }
            let code = errno
            if code == EINTR { continue }
            if foreign && code == EBADF { throw UVError.badFileDescriptor.with(context: name()) }
            throw error(code, name())
        }
    }

    /// The ``UVError`` for `errno` value `code`; traps on the values that mean a bug here.
    static func error(_ code: Int32, _ name: @autoclosure () -> String) -> UVError {
        precondition(code != EBADF && code != EFAULT,
                     "AsyncUDP bug: \(name()) failed with \(code == EBADF ? "EBADF" : "EFAULT") on a descriptor it owns")
        return UVError(code: -code, context: name())
    }

    /// Reads an `Int32` socket option.
    static func socketOption(_ fd: Int32, _ level: Int32, _ option: Int32, _ name: @autoclosure () -> String,
                             foreign: Bool = false) throws(UVError) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        try call("getsockopt(\(name()))", foreign: foreign) { getsockopt(fd, level, option, &value, &length) }
        return value
    }

    /// Sets an `Int32` socket option.
    static func setSocketOption(_ fd: Int32, _ level: Int32, _ option: Int32, _ value: Int32, _ name: @autoclosure () -> String) throws(UVError) {
        var value = value
        try call("setsockopt(\(name()))") { setsockopt(fd, level, option, &value, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// Sets a socket option whose value is a C struct.
    static func setSocketOption<T: BitwiseCopyable>(_ fd: Int32, _ level: Int32, _ option: Int32, value: T, _ name: @autoclosure () -> String) throws(UVError) {
        var value = value
        try call("setsockopt(\(name()))") { setsockopt(fd, level, option, &value, socklen_t(MemoryLayout<T>.size)) }
    }

    /// The socket's own address (`getsockname`), or `nil` for a non-IP socket.
    static func localAddress(_ fd: Int32, foreign: Bool = false) throws(UVError) -> (family: Int32, address: SocketAddress?) {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        try withUnsafeMutablePointer(to: &storage) { (pointer) throws(UVError) in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(UVError) in
                _ = try call("getsockname", foreign: foreign) { getsockname(fd, sa, &length) }
            }
        }
        let address = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddress($0) }
        }
        return (Int32(storage.ss_family), address)
    }

    /// `SO_MEMINFO`'s drop counter (`SK_MEMINFO_DROPS`): datagrams the kernel dropped for this
    /// socket because its receive buffer was full. `nil` where the kernel does not report it.
    static func kernelDrops(_ fd: Int32) -> Int? {
        var info = [UInt32](repeating: 0, count: Int(CUV_SK_MEMINFO_VARS))
        var length = socklen_t(info.count * MemoryLayout<UInt32>.size)
        let status = info.withUnsafeMutableBytes { getsockopt(fd, SOL_SOCKET, CUV_SO_MEMINFO, $0.baseAddress, &length) }
        let index = Int(CUV_SK_MEMINFO_DROPS)
        guard status == 0, Int(length) > index * MemoryLayout<UInt32>.size else { return nil }
        return Int(info[index])
    }
}

/// The descriptors that open handles own, process-wide: one socket may be adopted by one handle
/// of one loop only (libuv only notices a second adoption on the same loop, and only once the
/// first handle's watcher has started).
enum DescriptorRegistry {
    private static let owned = LockedBox(Set<Int32>())

    /// Claims `fd`; false if an open handle (on any loop) owns it already.
    static func claim(_ fd: Int32) -> Bool {
        owned.withLock { $0.insert(fd).inserted }
    }

    /// Gives `fd` up; call it right after the descriptor is closed.
    static func release(_ fd: Int32) {
        _ = owned.withLock { $0.remove(fd) }
    }

    /// Whether an open handle owns `fd`.
    static func isOwned(_ fd: Int32) -> Bool {
        owned.withLock { $0.contains(fd) }
    }
}
