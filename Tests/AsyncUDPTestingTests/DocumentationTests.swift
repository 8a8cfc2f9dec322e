import AsyncUDP
import AsyncUDPTesting
import Foundation
import Testing

/// The DocC article shows the suite that CI runs, word for word.
@Suite("AsyncUDPTesting documentation", .timeLimit(.minutes(1)))
struct DocumentationTests {
    @Test("the article \"Testing your UDP code\" holds ArticleSuiteTests.swift from its first import on")
    func articleMatchesSuite() throws {
        let tests = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        let suite = try String(contentsOf: tests.appendingPathComponent("ArticleSuiteTests.swift"), encoding: .utf8)
        let article = try String(contentsOf: tests.appendingPathComponent(
            "../../Sources/AsyncUDPTesting/AsyncUDPTesting.docc/TestingYourUDPCode.md").standardizedFileURL, encoding: .utf8)
        let start = try #require(suite.range(of: "import AsyncUDP\n"))
        let code = String(suite[start.lowerBound...])
        #expect(article.contains("```swift\n" + code + "```\n"),
                "copy Tests/AsyncUDPTestingTests/ArticleSuiteTests.swift from `import AsyncUDP` on into the article's code block")
    }

    @Test("the README's example: a reply through a link that loses 30% each way, within 10 tries")
    func readmeExample() async throws {
        try await withTestPeer(script: .echo) { server in
            try await withImpairedLink(to: server.address, seed: 7, impairments: Impairments(dropRate: 0.3)) { link in
                try await withLoopbackSocket { client in
                    var reply: Datagram?
                    for _ in 1...10 where reply == nil {              // your retry logic under 30% loss
                        try await client.send(Array("ping".utf8), to: link.address)
                        reply = try await client.receive(timeout: .milliseconds(100))
                    }
                    #expect(reply?.string == "ping")
                }
            }
        }
    }
}
