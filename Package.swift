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
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CLibUV",
            pkgConfig: "libuv",
            providers: [.apt(["libuv1-dev"])]
        ),
        .target(
            name: "UVCore",
            dependencies: [
                "CLibUV",
                .product(name: "DequeModule", package: "swift-collections"),
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
        .executableTarget(
            name: "udp-echo",
            dependencies: ["AsyncUDP"],
            path: "Examples/udp-echo",
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "UVCoreTests",
            dependencies: ["UVCore", "CLibUV"],
            swiftSettings: strictSettings
        ),
        .testTarget(
            name: "AsyncUDPTests",
            dependencies: ["AsyncUDP", "CLibUV"],
            swiftSettings: strictSettings
        ),
    ]
)
