import Glibc

/// A mutex over `pthread_mutex_t`.
///
/// The executor queue uses this rather than `Synchronization.Mutex` because ThreadSanitizer
/// understands pthread mutexes but not the futex-based `Mutex`, and reports false races on it.
package final class PThreadLock: @unchecked Sendable {
    // Safe to share: `mutex` is only touched through pthread_mutex_* calls, which synchronise.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    package init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    package func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A value guarded by a ``PThreadLock``.
final class LockedBox<Value>: @unchecked Sendable {
    // Safe to share: `value` is only read or written while `lock` is held.
    private let lock = PThreadLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    @inline(__always)
    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        try lock.withLock { try body(&value) }
    }
}
