internal import CLibUV
internal import CUVShims
internal import Glibc

// Addresses, the descriptor, and the send queue's size.
extension UDPHandle {
    /// The address the handle is bound to.
    ///
    /// - Throws: ``UVError/badFileDescriptor`` if the handle has no socket yet;
    ///   ``ClosedHandleError``.
    public func localAddress() throws -> SocketAddress {
        try checkOpen("localAddress")
        return try readAddress { sa, length throws(UVError) in
            try UVError.check(uv_udp_getsockname(udp, sa, length), "localAddress")
        }
    }

    /// The peer set by ``connect(_:)`` (or found on an adopted socket); `nil` when not connected.
    ///
    /// - Throws: ``ClosedHandleError``.
    public func remoteAddress() throws -> SocketAddress? {
        try checkOpen("remoteAddress")
        return try? readAddress { sa, length throws(UVError) in
            try UVError.check(uv_udp_getpeername(udp, sa, length), "remoteAddress")
        }
    }

    private func readAddress(_ read: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<Int32>) throws(UVError) -> Void) throws -> SocketAddress {
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        return try withUnsafeMutablePointer(to: &storage) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                try read(sa, &length)
                guard let address = SocketAddress(UnsafePointer(sa)) else {
                    throw UVError.addressFamilyNotSupported.with(context: "socket has a non-IP address")
                }
                return address
            }
        }
    }

    /// The socket's file descriptor (libuv's `uv_fileno`). It stays owned by the handle.
    ///
    /// - Throws: ``UVError/badFileDescriptor`` if the handle has no socket yet;
    ///   ``ClosedHandleError``.
    public func fileDescriptor() throws -> Int32 {
        try checkOpen("fileDescriptor")
        return try requireDescriptor("fileDescriptor")
    }

    /// The number of payload bytes waiting in the send queue (for the kernel's buffer to have
    /// room); 0 once closed.
    public var sendQueueSize: Int {
        loop.preconditionInLoop("UDPHandle.sendQueueSize")
        return sendQueueBytes
    }

    /// The number of datagrams waiting in the send queue; 0 once closed.
    public var sendQueueCount: Int {
        loop.preconditionInLoop("UDPHandle.sendQueueCount")
        return sendQueue.count
    }

    /// The kernel's count of datagrams it dropped for this socket because its receive buffer
    /// was full (`SO_MEMINFO`); `nil` without a socket or where the kernel does not report it.
    package var kernelDrops: Int? {
        guard let fd = descriptor() else { return nil }
        return Syscall.kernelDrops(fd)
    }
}
