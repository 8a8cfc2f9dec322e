// Helpers the example programs share: output that reaches pipes at once, logging to standard
// error, clean shutdown on signals, line input off the cooperative pool, and one-line usage
// errors. Each is small; they live here so every example uses the same, tested version.
import Dispatch
import Glibc
import Logging

/// Writes a line to standard output at once, with `write(2)`: a pipe (a test, `tee`) sees each
/// line when it is printed. (Not `fflush(nil)`: that also waits for the lock of a `FILE` another
/// thread is blocked reading, such as standard input.)
public func say(_ text: String, terminator: String = "\n") {
    var bytes = Array((text + terminator).utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}

/// Sends logs to standard error, at debug level when `verbose`.
public func bootstrapOutput(verbose: Bool) {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = verbose ? .debug : .info
        return handler
    }
}

/// Waits for the first of `signals` and returns it; returns 0 if the task is cancelled first.
///
/// The signals are handled with a `DispatchSource` (the default action is turned off while
/// waiting and restored afterwards), so the program can close its sockets and exit cleanly.
public func firstSignal(of signals: [Int32]) async -> Int32 {
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

/// Lines of a file or of standard input, as bytes without their newline.
///
/// Reading blocks, so it happens on a dispatch queue of its own, never on the cooperative pool
/// that runs the program's tasks.
public struct LineSource: Sendable {
    private let path: String?

    /// Standard input, read line by line.
    public static let standardInput = LineSource(standardInput: ())
    private init(standardInput: Void) { path = nil }

    /// A source reading `path`; `nil` if it cannot be read.
    public init?(path: String) {
        guard access(path, R_OK) == 0 else { return nil }
        self.path = path
    }

    /// The lines, read on a dispatch queue of their own.
    public func lines() -> AsyncThrowingStream<[UInt8], any Error> {
        let (stream, continuation) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
        let path = path
        DispatchQueue(label: "examples.lines").async {
            guard let file = path.map({ fopen($0, "r") }) ?? fdopen(dup(0), "r") else {
                continuation.finish(throwing: UsageError("cannot open \(path ?? "standard input")"))
                return
            }
            defer { fclose(file) }
            var buffer: UnsafeMutablePointer<CChar>?
            var capacity = 0
            defer { free(buffer) }
            while true {
                let length = getline(&buffer, &capacity, file)
                guard length >= 0, let buffer else { break }
                var line = UnsafeRawBufferPointer(start: buffer, count: length)
                if line.last == UInt8(ascii: "\n") { line = UnsafeRawBufferPointer(rebasing: line.dropLast()) }
                if case .terminated = continuation.yield(Array(line)) { break }
            }
            continuation.finish()
        }
        return stream
    }
}

/// Runs `body` and returns its outcome, so cleanup can run before an error is rethrown.
public func capture<T>(_ body: () async throws -> T) async -> Result<T, any Error> {
    do { return .success(try await body()) } catch { return .failure(error) }
}

/// A one-line reason why the command line or input is unusable; the examples print it and exit 1.
public struct UsageError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
