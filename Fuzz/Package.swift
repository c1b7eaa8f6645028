// swift-tools-version:6.0
// Coverage-guided fuzz targets (libFuzzer + AddressSanitizer) over p11jwt's parsers of untrusted
// input. Built and run by scripts/fuzz, never by a plain `swift build` of the main package.
import PackageDescription

let package = Package(
    name: "p11jwt-fuzz",
    dependencies: [.package(name: "p11jwt", path: "..")],
    targets: [
        .target(name: "FuzzSupport", path: "Sources/FuzzSupport"),
        .executableTarget(name: "FuzzURI", dependencies: ["FuzzSupport", .product(name: "PKCS11", package: "p11jwt")]),
        .executableTarget(name: "FuzzJSON", dependencies: ["FuzzSupport", .product(name: "JOSE", package: "p11jwt")]),
        .executableTarget(name: "FuzzJWS", dependencies: ["FuzzSupport", .product(name: "JOSE", package: "p11jwt")]),
    ],
    swiftLanguageModes: [.v6]
)
