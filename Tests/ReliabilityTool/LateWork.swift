import ArgumentParser
import AsyncUDP
import Glibc

/// Issue 9, defect 8: with the default (silent) logger, the library prints nothing by itself.
///
/// Shuts a loop down and gives it late work (which runs, and is logged through the loop's
/// logger only), shuts it down again, and asks `UVLoop.shared` to shut down (refused, logged
/// through the shared loop's logger only). Prints exactly one line,
/// `RESULT ranLate=<bool> sharedStillRuns=<bool>`: anything else on standard output or
/// standard error is the library writing on its own.
struct LateWork: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "late-work",
        abstract: "Give a shut-down loop work with the default logger; print nothing but the result.")

    func run() async throws {
        let loop = UVLoop(name: "late-work")
        await loop.shutdown()
        let ranLate = try await loop.submit { loop.inLoop }
        await loop.shutdown()
        await UVLoop.shared.shutdown()
        let sharedStillRuns = try await UVLoop.shared.submit { UVLoop.shared.inLoop }
        emit("RESULT ranLate=\(ranLate) sharedStillRuns=\(sharedStillRuns)")
    }
}
