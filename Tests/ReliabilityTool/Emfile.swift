import ArgumentParser
import AsyncUDP
import Glibc

/// Issue 9, defect 7: what AsyncUDP does when the process has no file descriptor left.
///
/// Lowers the soft `RLIMIT_NOFILE`, fills the descriptor table with /dev/null until `open`
/// fails with `EMFILE`, and checks that nothing traps: starting a loop throws, a loop made with
/// `UVLoop(name:)` reports `startError` and refuses sockets, the first socket on `UVLoop.shared`
/// throws, and parsing a scoped IPv6 address blames the lookup rather than the input. Then it
/// frees some descriptors and checks that `UVLoop.shared` starts and carries traffic.
///
/// Prints one line per check, `CHECK <name> ok|FAIL <detail>`, then
/// `RESULT checks=<n> failed=<n> failures=<names>`; exits 1 unless every check holds.
struct Emfile: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "emfile",
        abstract: "Check that running out of file descriptors throws instead of trapping.")

    @Option(help: "The soft RLIMIT_NOFILE to set.")
    var limit = 64

    @Flag(help: "Start and shut down one loop before running out (libuv opens a process-wide pipe on its first loop).")
    var warmUp = false

    func run() async throws {
        var rlim = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rlim)
        rlim.rlim_cur = rlim_t(limit)
        guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &rlim) == 0 else {
            emit("RESULT checks=0 failed=1 failures=setrlimit")
            throw ExitCode(1)
        }
        if warmUp {
            let loop = try UVLoop.start(name: "emfile-warmup")
            await loop.shutdown()
        }
        var report = Report()
        let filler = Filler()

        // 1. Scoped IPv6 address: the interface lookup needs a socket.
        filler.fill()
        do {
            let address = try SocketAddress("[::1%lo]:9")
            report.check("scope-lookup", false, "parsed as \(address) with no descriptor left")
        } catch {
            // `SocketAddress.init` throws only `SocketAddressError`.
            let description = "\(error)"
            report.check("scope-lookup",
                         error.underlyingError == .tooManyOpenFiles && description.contains("EMFILE")
                             && !description.contains("no such interface"),
                         "underlyingError=\(error.underlyingError.map { $0.name } ?? "nil") description=\(description)")
        }

        // 2. UVLoop.start throws.
        filler.fill()
        do {
            let loop = try UVLoop.start(name: "emfile-start")
            report.check("loop-start-throws", false, "a loop started with no descriptor left")
            await loop.shutdown()
        } catch {
            report.check("loop-start-throws", Self.isOutOfDescriptors(error), "threw \(error)")
        }

        // 3. UVLoop(name:) returns a stopped loop with startError; sockets on it throw it.
        filler.fill()
        let stopped = UVLoop(name: "emfile-init")
        report.check("loop-init-start-error", stopped.startError.map(Self.isOutOfDescriptors) == true,
                     "startError=\(stopped.startError.map { "\($0)" } ?? "nil")")
        do {
            let socket = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"), loop: stopped)
            report.check("socket-on-stopped-loop-throws", false, "opened \(socket.localAddress)")
            await socket.close()
        } catch {
            report.check("socket-on-stopped-loop-throws", Self.isOutOfDescriptors(error), "threw \(error)")
        }
        await stopped.shutdown()  // harmless on a loop that never ran
        report.check("stopped-loop-shutdown-returns", stopped.isShutDown, "isShutDown=\(stopped.isShutDown)")

        // 4. The first socket on UVLoop.shared throws (the shared loop cannot start).
        filler.fill()
        do {
            let socket = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"))
            report.check("shared-first-socket-throws", false, "opened \(socket.localAddress)")
            await socket.close()
        } catch {
            report.check("shared-first-socket-throws", Self.isOutOfDescriptors(error), "threw \(error)")
        }

        // 5. With descriptors free again, UVLoop.shared starts and carries traffic.
        filler.release(16)
        do {
            let socket = try await UDPSocket(bindingTo: SocketAddress("127.0.0.1:0"))
            try await socket.send(Array("after EMFILE".utf8), to: socket.localAddress)
            let reply = try await socket.receive(timeout: .seconds(30))
            report.check("shared-works-after-release", reply.map { String(decoding: $0.payload, as: UTF8.self) } == "after EMFILE",
                         "reply=\(reply.map { "\($0.payload.count) bytes" } ?? "none")")
            await socket.close()
        } catch {
            report.check("shared-works-after-release", false, "threw \(error)")
        }
        do {
            let loop = try UVLoop.start(name: "emfile-after")
            await loop.shutdown()
            report.check("loop-start-after-release", true, "started and shut down")
        } catch {
            report.check("loop-start-after-release", false, "threw \(error)")
        }
        filler.release(Int.max)

        emit("RESULT checks=\(report.count) failed=\(report.failures.count) failures=\(report.failures.isEmpty ? "none" : report.failures.joined(separator: ","))")
        if !report.failures.isEmpty { throw ExitCode(1) }
    }

    static func isOutOfDescriptors(_ error: any Error) -> Bool {
        guard let error = error as? UVError else { return false }
        return error == .tooManyOpenFiles || error == .tooManyOpenFilesInSystem
    }

    struct Report {
        var count = 0
        var failures: [String] = []

        mutating func check(_ name: String, _ holds: Bool, _ detail: String) {
            count += 1
            if !holds { failures.append(name) }
            emit("CHECK \(name) \(holds ? "ok" : "FAIL") \(detail.split(separator: "\n").joined(separator: " "))")
        }
    }

    /// Holds /dev/null descriptors so that the table is full.
    final class Filler {
        private var held: [Int32] = []

        /// Opens descriptors until `open` fails with `EMFILE`.
        func fill() {
            while true {
                let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
                if fd < 0 {
                    precondition(errno == EMFILE, "open(/dev/null): \(String(cString: strerror(errno)))")
                    return
                }
                held.append(fd)
            }
        }

        /// Closes up to `count` of the held descriptors.
        func release(_ count: Int) {
            for _ in 0..<min(count, held.count) { close(held.removeLast()) }
        }
    }
}
