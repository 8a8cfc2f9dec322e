// swift-tools-version: 6.0
import PackageDescription

let strictSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "AsyncUDP",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "AsyncUDP", targets: ["AsyncUDP"]),
        // For test targets: a scripted peer, an impaired link, waits with deadlines.
        .library(name: "AsyncUDPTesting", targets: ["AsyncUDPTesting"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        // Examples only:
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        // Tests only:
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.0"),
        // Docs only (`make docs`): the `generate-documentation` command.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.4.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibUV",
            pkgConfig: "libuv",
            providers: [.apt(["libuv1-dev"])]
        ),
        // C helpers Swift cannot express: thread-local loop slot, recvmmsg/sendmmsg, CMSG macros.
        .target(name: "CUVShims"),
        .target(
            name: "UVCore",
            dependencies: [
                "CLibUV",
                "CUVShims",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "AsyncUDP",
            dependencies: [
                "UVCore",
                "CLibUV",
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: strictSettings
        ),
        .target(
            name: "AsyncUDPTesting",
            dependencies: ["AsyncUDP", "UVCore"],
            swiftSettings: strictSettings
        ),
        .target(
            name: "ExampleSupport",
            dependencies: [.product(name: "Logging", package: "swift-log")],
            path: "Examples/ExampleSupport",
            swiftSettings: strictSettings
        ),
        example("udp-echo"),
        example("udpcat"),
        example("multicast-chat"),
        example("statsd-collector"),
        example("dns-query"),
        .target(
            name: "TestSupport",
            dependencies: ["AsyncUDP", "AsyncUDPTesting"],
            path: "Tests/TestSupport",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "UVCoreTests",
            dependencies: ["UVCore", "CLibUV", "TestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "AsyncUDPTests",
            dependencies: ["AsyncUDP", "CLibUV", "TestSupport"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ReliabilityTests",
            dependencies: [
                "AsyncUDP", "CLibUV", "TestSupport", "reliability-tool",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            exclude: ["BAD-INPUTS.md"],
            swiftSettings: strictSettings
        ),
        .executableTarget(
            name: "reliability-tool",
            dependencies: [
                "AsyncUDP",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Tests/ReliabilityTool",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "AsyncUDPTestingTests",
            dependencies: ["AsyncUDP", "AsyncUDPTesting"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "ExampleTests",
            // Depending on the examples makes `swift test` build their binaries.
            dependencies: ["AsyncUDP", "AsyncUDPTesting", "udp-echo", "udpcat", "multicast-chat", "statsd-collector", "dns-query",
                           .product(name: "Logging", package: "swift-log")],
            swiftSettings: strictSettings
        ),
    ]
)

/// An example program: `Examples/<name>`, built by `swift build`, using the async layer with
/// swift-argument-parser and swift-log as users would.
func example(_ name: String) -> Target {
    .executableTarget(
        name: name,
        dependencies: [
            "AsyncUDP",
            "ExampleSupport",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ],
        path: "Examples/\(name)",
        exclude: ["README.md"],
        swiftSettings: strictSettings
    )
}
