/// Carries a value that is not `Sendable` from a loop's thread to a job that the same loop runs.
///
/// The value may only be read on the loop it was bound to (its thread, or after shutdown the
/// loop's single late-work drainer); debug builds check that on every read.
package struct LoopBound<Value>: @unchecked Sendable {
    // Safe: created on the loop thread and only unwrapped by code the same loop runs, which is
    // the same thread (or, after shutdown, the loop's single late-work drainer). `value` checks it
    // in debug builds.
    private let storage: Value
    /// The loop the value belongs to.
    package let loop: UVLoop

    /// Binds `value` to `loop`. Call it on the loop thread.
    package init(_ value: Value, on loop: UVLoop) {
        assert(loop.inLoop, "LoopBound created off UVLoop '\(loop.name)''s thread")
        storage = value
        self.loop = loop
    }

    /// The value; only on the loop it is bound to.
    package var value: Value {
        assert(loop.inLoop, "LoopBound read off UVLoop '\(loop.name)''s thread")
        return storage
    }
}

extension UVLoop {
    /// Runs a loop-thread closure on a later turn of the loop. Loop thread only.
    package func executeOnLoop(_ work: @escaping () -> Void) {
        let bound = LoopBound(work, on: self)
        execute { bound.value() }
    }
}
