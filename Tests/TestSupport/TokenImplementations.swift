import Foundation
import Logging
import PKCS11
import TokenSigning
import Testing

/// A PKCS#11 implementation the token-facing tests run on. Tests take it as an argument
/// (`@Test(arguments: TokenImplementation.available)`), so results are reported per
/// implementation; where one cannot do something, the test asserts its clear refusal.
public enum TokenImplementation: String, Sendable, Hashable, CustomTestStringConvertible {
    /// SoftHSM v2 (the forgiving one).
    case softHSM = "SoftHSM"
    /// tpm2-pkcs11 over a software TPM (swtpm + tpm2-abrmd).
    case tpm2

    public var testDescription: String { rawValue }

    /// The implementations this run tests: `P11JWT_TEST_MODULES` (comma-separated `softhsm`,
    /// `tpm2`; scripts/test sets both), else SoftHSM, plus tpm2 where its tools are installed.
    /// A named implementation that cannot be set up fails its tests; it is never skipped.
    public static let available: [TokenImplementation] = {
        if let chosen = ProcessInfo.processInfo.environment["P11JWT_TEST_MODULES"], !chosen.isEmpty {
            return chosen.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.map { name in
                switch name {
                case "softhsm", "softhsm2": return .softHSM
                case "tpm2", "tpm2-pkcs11": return .tpm2
                default: preconditionFailure("P11JWT_TEST_MODULES: unknown implementation '\(name)' (softhsm, tpm2)")
                }
            }
        }
        return TPM2TestBed.toolsInstalled ? [.softHSM, .tpm2] : [.softHSM]
    }()

    /// The module file.
    public var modulePath: String {
        switch self {
        case .softHSM: return softHSMModulePath
        case .tpm2: return tpm2ModulePath
        }
    }

    /// The largest RSA key it makes (tpm2-pkcs11: 3072, the TPM's limit).
    public var maximumRSABits: Int { self == .tpm2 ? 3072 : 4096 }

    /// tpm2-pkcs11 1.9 makes P-521 keys whose public point it cannot return and that it
    /// cannot sign with (CKR_HOST_MEMORY at C_SignInit).
    public var signsWithP521: Bool { self != .tpm2 }
}

/// tpm2-pkcs11's module file, as p11-kit registers it.
public let tpm2ModulePath: String = {
    for dir in ["/usr/lib/x86_64-linux-gnu/pkcs11", "/usr/lib/aarch64-linux-gnu/pkcs11", "/usr/lib/pkcs11", "/usr/lib64/pkcs11"] {
        let path = dir + "/libtpm2_pkcs11.so"
        if FileManager.default.fileExists(atPath: path) { return path }
    }
    return "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"
}()

/// The run's software TPM: swtpm, a private D-Bus and tpm2-abrmd started once per test process
/// by `hsm-config/tpm2-token` (which stops them when this process is gone). Each
/// `TokenDirectory` on tpm2 has a store of its own on it.
public final class TPM2TestBed: @unchecked Sendable {
    public static let toolsInstalled = ["swtpm", "tpm2-abrmd", "tpm2_ptool", "dbus-daemon"].allSatisfy { tool in
        ["/usr/bin", "/usr/sbin", "/usr/local/bin"].contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }
    } && FileManager.default.fileExists(atPath: tpm2ModulePath)

    /// For processes that load tpm2-pkcs11 without using it (through the p11-kit proxy while
    /// testing SoftHSM): the test bed's TPM with a store that has no tokens, so the module
    /// finds what it looks for and says nothing (without a TPM it reports every TCTI it tried
    /// on stderr). Empty where tpm2-pkcs11 is not installed.
    public static var quietEnvironment: [String: String] {
        guard toolsInstalled else { return [:] }
        return (try? started.get())?.emptyStore ?? ["TSS2_LOG": "all+NONE"]
    }

    /// The bed, started on first use; a failure to start fails the tests that need it.
    public static let started = Result { try TPM2TestBed() }

    let directory = TemporaryDirectory("p11jwt-tpm2")
    private let script = repositoryRoot.appendingPathComponent("hsm-config/tpm2-token").path
    private let lock = NSLock()

    /// The environment of the bed's own store, which has no tokens.
    let emptyStore: [String: String]

    private init() throws {
        try #require(Self.toolsInstalled, "tpm2 tests need swtpm, tpm2-abrmd, tpm2-pkcs11 and its tools: run scripts/setup")
        let up = try run(script, ["up", "--dir", directory.path, "--watch", "\(getpid())"])
        try #require(up.status == 0, "hsm-config/tpm2-token up: \(up.stderr)")
        emptyStore = Self.parseExports(up.stdout).merging(["TPM2_PKCS11_LOG_LEVEL": "0"]) { $1 }
    }

    /// Adds tokens (SO PIN `testSOPIN`, user PIN `testPIN`) to a new store; returns the client
    /// environment that selects it.
    func addTokens(_ labels: [String], store: String) throws -> [String: String] {
        // tpm2_ptool is serialised: its first call on a store creates the store's primary key.
        try lock.withLock {
            var environment: [String: String] = [:]
            for label in labels.isEmpty ? [nil] : labels.map(Optional.some) {
                let made = try run(script, ["up", "--dir", directory.path, "--store", store] + (label.map { [$0, testSOPIN, testPIN] } ?? []))
                try #require(made.status == 0, "hsm-config/tpm2-token up \(label ?? ""): \(made.stderr)")
                environment = Self.parseExports(made.stdout)
            }
            environment["TPM2_PKCS11_LOG_LEVEL"] = "0"
            return environment
        }
    }

    public static func parseExports(_ text: String) -> [String: String] {
        var environment: [String: String] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("export ") {
            let assignment = line.dropFirst("export ".count)
            guard let equals = assignment.firstIndex(of: "=") else { continue }
            environment[String(assignment[..<equals])] = String(assignment[assignment.index(after: equals)...])
        }
        return environment
    }
}

/// The tokens the in-process tests share, per implementation: one module per process, one
/// token per suite, found by label (see `SharedSoftHSM`).
public enum SharedTokens {
    private static let tpm2: Result<(TokenDirectory, Module), any Error> = Result {
        let tokens = try TokenDirectory(labels: SharedSoftHSM.labels, implementation: .tpm2)
        // tpm2-pkcs11 reads its store and TCTI from the environment at C_Initialize.
        for (key, value) in tokens.environment where key.hasPrefix("TPM2") || key.hasPrefix("TSS2") || key == "DBUS_SESSION_BUS_ADDRESS" {
            setenv(key, value, 1)
        }
        return (tokens, try Module.load(.path(tpm2ModulePath), logger: testLogger))
    }

    public static func module(_ implementation: TokenImplementation) throws -> Module {
        switch implementation {
        case .softHSM: return SharedSoftHSM.module
        case .tpm2: return try tpm2.get().1
        }
    }

    public static func directory(_ implementation: TokenImplementation) throws -> TokenDirectory {
        switch implementation {
        case .softHSM: return SharedSoftHSM.directory
        case .tpm2: return try tpm2.get().0
        }
    }

    public static func token(_ label: String, on implementation: TokenImplementation) throws -> Token {
        precondition(SharedSoftHSM.labels.contains(label), "add '\(label)' to SharedSoftHSM.labels")
        return try Token.open(try PKCS11URI("pkcs11:token=\(label)"), module: try module(implementation), logger: testLogger)
    }

    /// A token of this run, logged in.
    public static func loggedIn(_ label: String, on implementation: TokenImplementation) throws -> Token {
        let token = try token(label, on: implementation)
        try token.login(pins: PINProvider(pinFile: try directory(implementation).pinFile, environment: [:], allowPrompt: false))
        return token
    }
}
