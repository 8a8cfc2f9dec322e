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
}
