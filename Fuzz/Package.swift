// swift-tools-version:6.0
// Coverage-guided fuzz targets (libFuzzer + AddressSanitizer) over p11jwt's parsers of untrusted
// input. Built and run by scripts/fuzz, never by a plain `swift build` of the main package.
import PackageDescription

let package = Package(
    name: "p11jwt-fuzz",
    dependencies: [
        .package(name: "p11jwt", path: ".."),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
    ],
    targets: [
        .target(name: "FuzzSupport", path: "Sources/FuzzSupport"),
        .executableTarget(name: "FuzzURI", dependencies: ["FuzzSupport", .product(name: "PKCS11", package: "p11jwt")]),
        .executableTarget(name: "FuzzJSON", dependencies: ["FuzzSupport", .product(name: "JOSE", package: "p11jwt")]),
        .executableTarget(name: "FuzzJWS", dependencies: ["FuzzSupport", .product(name: "JOSE", package: "p11jwt")]),
        // Internal parsers are reached with @testable (scripts/fuzz builds with -enable-testing).
        .executableTarget(name: "FuzzEmulator", dependencies: ["FuzzSupport", .product(name: "EntraEmulator", package: "p11jwt")]),
        .executableTarget(
            name: "FuzzAgent",
            dependencies: [
                "FuzzSupport", .product(name: "Agent", package: "p11jwt"), .product(name: "PKCS11", package: "p11jwt"),
                .product(name: "TokenSigning", package: "p11jwt"),
                .product(name: "Hummingbird", package: "hummingbird"), .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ]),
    ],
    swiftLanguageModes: [.v6]
)
