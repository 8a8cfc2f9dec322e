import Dispatch
import Glibc

/// Waits for the first of `signals` and returns it; returns 0 if the task is cancelled first.
///
/// The signals are handled with a `DispatchSource` (the default action is turned off while
/// waiting and restored afterwards), so the program can close its sockets and exit cleanly
/// instead of being killed.
func firstSignal(of signals: [Int32]) async -> Int32 {
    let (stream, continuation) = AsyncStream<Int32>.makeStream()
    let sources = signals.map { number in
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler { continuation.yield(number) }
        source.resume()
        return source
    }
    defer {
        for (number, source) in zip(signals, sources) {
            source.cancel()
            signal(number, SIG_DFL)
        }
    }
    for await number in stream { return number }
    return 0
}
