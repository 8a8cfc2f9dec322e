// swift-tools-version: 6.0
// AsyncUDP's benchmarks: a package of its own so the main build never pays for SwiftNIO.
// `make bench` (or ./run.sh here) builds everything in release mode and runs the comparison.
import Foundation
import PackageDescription

// A path dependency is named after its directory, which differs between checkouts.
let rootPackage = URL(fileURLWithPath: Context.packageDirectory).deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "AsyncUDPBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.80.0"),
    ],
    targets: [
        .target(name: "CBenchShims"),
        .executableTarget(
            name: "udp-bench",
            dependencies: [
                "CBenchShims",
                .product(name: "AsyncUDP", package: rootPackage),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
