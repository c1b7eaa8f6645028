import Foundation
import Logging
import PKCS11
import TokenSigning
import Testing

/// The repository root (for hsm-config/ and the built binary).
public let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

public let softHSMModulePath = "/usr/lib/softhsm/libsofthsm2.so"
public let testSOPIN = "12345678"
public let testPIN = "1234"

/// A directory removed when the value is released.
public final class TemporaryDirectory: @unchecked Sendable {
    public let url: URL
    public var path: String { url.path }

    public init(_ prefix: String = "p11jwt-test") {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: url) }

    public func file(_ name: String) -> String { url.appendingPathComponent(name).path }

    public func write(_ name: String, _ contents: String, mode: Int = 0o600) throws -> String {
        let path = file(name)
        try contents.write(toFile: path, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
        return path
    }
}

/// Tokens for one test (or suite), on one implementation: a SoftHSM token directory and config
/// made by `hsm-config/init-softhsm`, or a tpm2-pkcs11 store of its own on the run's software
/// TPM (`hsm-config/tpm2-token`). Child processes get `environment`, which selects these tokens.
public final class TokenDirectory: @unchecked Sendable {
    public let implementation: TokenImplementation
    public let directory = TemporaryDirectory("p11jwt-tokens")
    /// The SoftHSM config (empty for tpm2).
    public let config: String
    public let pinFile: String
    private let implementationEnvironment: [String: String]

    /// `mechanisms` limits what SoftHSM offers (a SoftHSM feature: tests of mechanism fallbacks
    /// run on SoftHSM only).
    public init(labels: [String], mechanisms: String = "ALL", implementation: TokenImplementation = .softHSM) throws {
        self.implementation = implementation
        switch implementation {
        case .softHSM:
            var conf = ""
            for label in labels {
                let result = try run(
                    repositoryRoot.appendingPathComponent("hsm-config/init-softhsm").path,
                    ["--dir", directory.path, "--mechanisms", mechanisms, label, testSOPIN, testPIN])
                try #require(result.status == 0, "init-softhsm failed: \(result.stderr)")
                conf = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
                    .replacingOccurrences(of: "export SOFTHSM2_CONF=", with: "")
            }
            config = conf
            implementationEnvironment = ["SOFTHSM2_CONF": conf]
        case .tpm2:
            precondition(mechanisms == "ALL", "mechanism lists are a SoftHSM test feature")
            config = ""
            implementationEnvironment = try TPM2TestBed.started.get().addTokens(labels, store: directory.file("store"))
        }
        pinFile = try directory.write("pin", testPIN + "\n")
    }

    /// Environment for a child process using these tokens.
    public var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "P11JWT_PIN")
        env.removeValue(forKey: "P11JWT_AGENT_SOCK")
        env.removeValue(forKey: "P11JWT_MODULE")
        for (key, value) in TPM2TestBed.quietEnvironment { env[key] = value }
        for (key, value) in implementationEnvironment { env[key] = value }
        return env
    }

    /// The module file, for tools (pkcs11-tool) that need one.
    public var modulePath: String { implementation.modulePath }
}

/// Most tests make SoftHSM tokens.
public typealias SoftHSMDirectory = TokenDirectory

/// The process-wide SoftHSM the in-process tests share.
///
/// A PKCS#11 module is loaded and initialised once per process, and SoftHSM reads
/// `SOFTHSM2_CONF` at `C_Initialize`: so this process has one config, made for this run, with
/// one token per suite (tests never share a token across suites, and find it by label).
/// Tests that need a different SoftHSM configuration run the CLI in a child process.
public enum SharedSoftHSM {
    public static let labels = [
        "module", "login", "login-wrong", "signing", "objects", "pool", "keygen", "cert",
        "dup-a", "dup-b", "entra", "entra-imported", "inventory",
    ]

    public static let state: (SoftHSMDirectory, Module) = {
        let hsm = try! SoftHSMDirectory(labels: labels)
        setenv("SOFTHSM2_CONF", hsm.config, 1)
        let module = try! Module.load(.path(softHSMModulePath), logger: testLogger)
        return (hsm, module)
    }()

    public static var module: Module { state.1 }
    public static var directory: SoftHSMDirectory { state.0 }

    public static func token(_ label: String) throws -> Token { try SharedTokens.token(label, on: .softHSM) }

    /// A token of this run, logged in.
    public static func loggedIn(_ label: String) throws -> Token { try SharedTokens.loggedIn(label, on: .softHSM) }
}

public let testLogger: Logger = {
    var logger = Logger(label: "p11jwt-tests")
    logger.logLevel = .warning
    return logger
}()

/// The result of a child process.
public struct ProcessResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// Runs a program to completion, capturing its output through files (no pipe deadlocks).
@discardableResult
public func run(
    _ executable: String, _ arguments: [String], environment: [String: String]? = nil, stdin: String? = nil
) throws -> ProcessResult {
    let dir = TemporaryDirectory("p11jwt-proc")
    let outPath = dir.file("out"), errPath = dir.file("err"), inPath = dir.file("in")
    _ = FileManager.default.createFile(atPath: outPath, contents: nil)
    _ = FileManager.default.createFile(atPath: errPath, contents: nil)
    _ = FileManager.default.createFile(atPath: inPath, contents: Data((stdin ?? "").utf8))
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable.hasPrefix("/") ? executable : "/usr/bin/env")
    process.arguments = executable.hasPrefix("/") ? arguments : [executable] + arguments
    if let environment { process.environment = environment }
    let out = FileHandle(forWritingAtPath: outPath)!, err = FileHandle(forWritingAtPath: errPath)!
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle(forReadingAtPath: inPath)!
    try process.run()
    process.waitUntilExit()
    try out.close()
    try err.close()
    return ProcessResult(
        status: process.terminationStatus,
        stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
        stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
}

/// A product built by `scripts/setup` (or `swift build`): `$variable` (scripts/test sets it),
/// else the debug build.
public func builtBinary(_ name: String, variable: String) throws -> String {
    let path = ProcessInfo.processInfo.environment[variable] ?? repositoryRoot.appendingPathComponent(".build/debug/\(name)").path
    try #require(FileManager.default.isExecutableFile(atPath: path), "no \(name) binary at \(path): run scripts/setup or swift build first")
    return path
}

/// The `p11jwt` binary.
public var p11jwtBinary: String {
    get throws { try builtBinary("p11jwt", variable: "P11JWT_BIN") }
}

/// Runs `p11jwt` against a SoftHSM directory.
@discardableResult
public func p11jwt(_ arguments: [String], hsm: TokenDirectory, environment extra: [String: String] = [:]) throws -> ProcessResult {
    var env = hsm.environment
    for (k, v) in extra { env[k] = v }
    return try run(try p11jwtBinary, arguments, environment: env)
}

/// SoftHSM reuses session handle numbers, so a test that closes a session behind the pool's
/// back must not overlap with tests that open sessions. In-process tests run their bodies
/// under `sharedHSM`; such a test runs under `exclusiveHSM`.
private let hsmQueue = DispatchQueue(label: "p11jwt-tests.hsm", attributes: .concurrent)

public func sharedHSM<R>(_ body: () throws -> R) rethrows -> R { try hsmQueue.sync(execute: body) }

public func exclusiveHSM<R>(_ body: () throws -> R) rethrows -> R { try hsmQueue.sync(flags: .barrier, execute: body) }

/// `sharedHSM` on SoftHSM; `exclusiveHSM` on tpm2, whose module answers a C_Login with
/// CKR_GENERAL_ERROR while another thread of the process generates a key (p11jwt's commands and
/// agent log in once, before any other work; tests that log in and generate keys side by side
/// would race).
public func onToken<R>(_ implementation: TokenImplementation, _ body: () throws -> R) rethrows -> R {
    implementation == .tpm2 ? try exclusiveHSM(body) : try sharedHSM(body)
}

/// An RSA key and certificate made by openssl and put on a token with softhsm2-util (key) and
/// pkcs11-tool (certificate): a key whose private half is known, for byte-for-byte comparisons.
public struct ImportedKey: Sendable {
    public let keyPEM: String
    public let certificatePEM: String
    public let certificateDER: [UInt8]
    public let uri: String
}

public func importOpenSSLKey(
    into hsm: SoftHSMDirectory, token: String, label: String, id: String, in dir: TemporaryDirectory, bits: Int = 2048
) throws -> ImportedKey {
    let key = dir.file("\(label).key.pem"), pem = dir.file("\(label).cert.pem"), der = dir.file("\(label).cert.der")
    var r = try run("openssl", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:\(bits)", "-out", key])
    try #require(r.status == 0, "\(r.stderr)")
    r = try run("openssl", ["req", "-x509", "-new", "-key", key, "-subj", "/CN=p11jwt \(label)", "-days", "30", "-out", pem])
    try #require(r.status == 0, "\(r.stderr)")
    r = try run("openssl", ["x509", "-in", pem, "-outform", "DER", "-out", der])
    try #require(r.status == 0, "\(r.stderr)")
    r = try run("softhsm2-util", ["--import", key, "--token", token, "--label", label, "--id", id, "--pin", testPIN], environment: hsm.environment)
    try #require(r.status == 0, "softhsm2-util --import: \(r.stderr)")
    r = try run("pkcs11-tool", [
        "--module", softHSMModulePath, "--token-label", token, "--login", "--pin", testPIN,
        "--write-object", der, "--type", "cert", "--id", id, "--label", label,
    ], environment: hsm.environment)
    try #require(r.status == 0, "pkcs11-tool --write-object: \(r.stderr)")
    return ImportedKey(
        keyPEM: key, certificatePEM: pem, certificateDER: [UInt8](try Data(contentsOf: URL(fileURLWithPath: der))),
        uri: "pkcs11:token=\(token);object=\(label);type=private")
}

/// The fault-injecting PKCS#11 module built beside `p11jwt` (Sources/PKCS11Faults): it wraps
/// SoftHSM and answers as `P11JWT_FAULTS` tells it.
public var faultsModulePath: String {
    get throws {
        let path = URL(fileURLWithPath: try p11jwtBinary).deletingLastPathComponent().appendingPathComponent("libp11jwt-faults.so").path
        try #require(FileManager.default.fileExists(atPath: path), "no fault-injecting module at \(path): run swift build first")
        return path
    }
}
