// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "p11jwt",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "JOSE", targets: ["JOSE"]),
        .library(name: "PKCS11", targets: ["PKCS11"]),
        .library(name: "TokenSigning", targets: ["TokenSigning"]),
        .library(name: "Entra", targets: ["Entra"]),
        .library(name: "EntraEmulator", targets: ["EntraEmulator"]),
        .library(name: "DurableFiles", targets: ["DurableFiles"]),
        .library(name: "Rotation", targets: ["Rotation"]),
        .library(name: "Agent", targets: ["Agent"]),
        .executable(name: "p11jwt", targets: ["p11jwt"]),
        .executable(name: "entra-emulator", targets: ["entra-emulator"]),
        .executable(name: "bench-ceiling", targets: ["bench-ceiling"]),
        .executable(name: "p11jwt-bench", targets: ["p11jwt-bench"]),
        // A PKCS#11 module wrapping a real one with injected faults, for the tests (Sources/PKCS11Faults).
        .library(name: "p11jwt-faults", type: .dynamic, targets: ["PKCS11Faults"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        // Settings (flag → environment → config file); the YAML trait reads config.yaml.
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0", traits: ["YAML"]),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
    ],
    targets: [
        // p11-kit's pkcs11.h, uri.h and p11-kit.h, as a Swift module.
        .systemLibrary(
            name: "CP11Kit",
            pkgConfig: "p11-kit-1",
            providers: [.apt(["libp11-kit-dev"])]
        ),
        // The one error shape (code, message, hint, cause, location, settings) of every library.
        .target(name: "Diagnostics"),
        // The version (for --version and User-Agent) and the exit statuses, shared by the executables.
        .target(name: "BuildInfo"),
        // Both executables' main: parse, run, exit 0 / 1 / 2.
        .target(
            name: "CommandLineSupport",
            dependencies: ["BuildInfo", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // JWS compact tokens over an external signer: algorithms, base64url, JSON, thumbprints,
        // verification. Knows nothing of PKCS#11 or Entra.
        .target(
            name: "JOSE",
            dependencies: [
                "Diagnostics",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        // The typed, Sendable layer over the PKCS#11 C API: modules, URIs, tokens, logins,
        // objects, mechanisms with their parameters. Knows nothing of JOSE or Entra.
        .target(
            name: "PKCS11",
            dependencies: [
                "Diagnostics",
                "CP11Kit",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        // A token key as a JOSE signer (JWS algorithm → mechanism, DigestInfo, EMSA-PSS) and as
        // swift-certificates' external key for certificates and CSRs signed in the token.
        .target(
            name: "TokenSigning",
            dependencies: [
                "PKCS11",
                "JOSE",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        // Entra ID: client assertions, Graph proof-of-possession tokens, clouds, the token
        // endpoint and Graph key-credential clients (AsyncHTTPClient), the token cache, rotate.
        .target(
            name: "Entra",
            dependencies: [
                "Diagnostics",
                "BuildInfo",
                "JOSE",
                "DurableFiles",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // rotate: a new key and certificate made in the token, addKey, verify, removeKey, with a
        // journal that makes a killed run resumable.
        .target(
            name: "Rotation",
            dependencies: [
                "Diagnostics",
                "Entra",
                "PKCS11",
                "TokenSigning",
                "JOSE",
                "DurableFiles",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        // The signing agent: PIN once, serve many over a Unix socket; the App Service managed-
        // identity endpoint and a federated token file for unmodified Azure SDKs.
        .target(
            name: "Agent",
            dependencies: [
                "Diagnostics",
                "BuildInfo",
                "LocalCA",
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                "PKCS11",
                "TokenSigning",
                "JOSE",
                "Entra",
                "DurableFiles",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        // scripts/bench: the reference ceiling in C (no Swift in its hot loop), and the Swift side.
        .executableTarget(name: "bench-ceiling", dependencies: ["CP11Kit"], linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("pthread")]),
        // The fault-injecting wrapper module (C): tests load .build/…/libp11jwt-faults.so with --module.
        .target(name: "PKCS11Faults", dependencies: ["CP11Kit"], linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("pthread")]),
        .executableTarget(
            name: "p11jwt-bench",
            dependencies: [
                "PKCS11",
                "TokenSigning",
                "JOSE",
                "Entra",
                "Agent",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Blocking SIGTERM/SIGINT before threads start, so ServiceGroup sees them on Linux.
        .target(name: "ShutdownSignals"),
        // Not dumpable (no core file with a held PIN), secrets scrubbed from the environment block.
        .target(name: "CProcessHardening"),
        // Crash-safe files: atomic replacement and cross-process locks (state, cache, journal).
        .target(name: "DurableFiles", dependencies: ["Diagnostics"]),
        // An offline stand-in for the Entra token endpoint and Graph's key-credential API that
        // verifies what Entra verifies.
        .target(
            name: "LocalCA",
            dependencies: [
                "DurableFiles",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]),
        .target(
            name: "EntraEmulator",
            dependencies: [
                "DurableFiles",
                "LocalCA",
                "JOSE",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .executableTarget(
            name: "entra-emulator",
            dependencies: [
                "BuildInfo",
                "CommandLineSupport",
                "ShutdownSignals",
                "EntraEmulator",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "p11jwt",
            dependencies: [
                "Diagnostics",
                "BuildInfo",
                "CommandLineSupport",
                "Agent",
                "ShutdownSignals",
                "CProcessHardening",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                "Rotation",
                "JOSE",
                "PKCS11",
                "TokenSigning",
                "Entra",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // SoftHSM set-up, child processes and independent verifiers shared by the test targets.
        .target(
            name: "TestSupport",
            dependencies: [
                "JOSE",
                "PKCS11",
                "TokenSigning",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ],
            path: "Tests/TestSupport"
        ),
        .testTarget(
            name: "JOSETests",
            dependencies: [
                "JOSE",
                "TestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            // nst/JSONTestSuite's parsing corpus, read by JSONConformanceTests.
            exclude: ["JSONTestSuite"]
        ),
        .testTarget(
            name: "EntraTests",
            dependencies: [
                "Entra",
                "JOSE",
                "PKCS11",
                "TokenSigning",
                "TestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        .testTarget(
            name: "EntraEmulatorTests",
            dependencies: [
                "EntraEmulator",
                "JOSE",
                "TestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        .testTarget(
            name: "EntraWorkflowTests",
            dependencies: [
                "TestSupport",
                "JOSE",
                "Agent",
                .product(name: "Crypto", package: "swift-crypto"),
                "Entra",
                "DurableFiles",
            ]
        ),
        .testTarget(
            name: "PKCS11Tests",
            dependencies: [
                "JOSE",
                "PKCS11",
                "TokenSigning",
                "TestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
