import Foundation
import Logging
import Testing
@testable import PKCS11

/// The repository root (for hsm-config/ and the built binary).
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

let softHSMModulePath = "/usr/lib/softhsm/libsofthsm2.so"
let testSOPIN = "12345678"
let testPIN = "1234"

/// A directory removed when the value is released.
final class TemporaryDirectory: @unchecked Sendable {
    let url: URL
    var path: String { url.path }

    init(_ prefix: String = "p11jwt-test") {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: url) }

    func file(_ name: String) -> String { url.appendingPathComponent(name).path }

    func write(_ name: String, _ contents: String, mode: Int = 0o600) throws -> String {
        let path = file(name)
        try contents.write(toFile: path, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
        return path
    }
}

/// A SoftHSM token directory and config made by `hsm-config/init-softhsm`, with one or more
/// tokens. Each suite gets its own tokens; CLI tests get their own directory and config.
final class SoftHSMDirectory: @unchecked Sendable {
    let directory = TemporaryDirectory("p11jwt-softhsm")
    let config: String
    let pinFile: String

    init(labels: [String], mechanisms: String = "ALL") throws {
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
        pinFile = try directory.write("pin", testPIN + "\n")
    }

    /// Environment for a child process using this SoftHSM directory.
    var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["SOFTHSM2_CONF"] = config
        env.removeValue(forKey: "P11JWT_PIN")
        env.removeValue(forKey: "P11JWT_AGENT_SOCK")
        return env
    }
}

/// The process-wide SoftHSM the in-process tests share.
///
/// A PKCS#11 module is loaded and initialised once per process, and SoftHSM reads
/// `SOFTHSM2_CONF` at `C_Initialize`: so this process has one config, made for this run, with
/// one token per suite (tests never share a token across suites, and find it by label).
/// Tests that need a different SoftHSM configuration run the CLI in a child process.
enum SharedSoftHSM {
    static let labels = [
        "module", "login", "login-wrong", "signing", "objects", "pool", "keygen", "cert",
        "dup-a", "dup-b",
    ]

    static let state: (SoftHSMDirectory, Module) = {
        let hsm = try! SoftHSMDirectory(labels: labels)
        setenv("SOFTHSM2_CONF", hsm.config, 1)
        let module = try! Module.load(.path(softHSMModulePath), logger: testLogger)
        return (hsm, module)
    }()

    static var module: Module { state.1 }
    static var directory: SoftHSMDirectory { state.0 }

    static func token(_ label: String) throws -> Token {
        precondition(labels.contains(label), "add '\(label)' to SharedSoftHSM.labels")
        return try Token.open(try PKCS11URI("pkcs11:token=\(label)"), module: module, logger: testLogger)
    }

    /// A token of this run, logged in.
    static func loggedIn(_ label: String) throws -> Token {
        let token = try token(label)
        try token.login(pins: PINProvider(pinFile: directory.pinFile, environment: [:], allowPrompt: false))
        return token
    }
}

let testLogger: Logger = {
    var logger = Logger(label: "p11jwt-tests")
    logger.logLevel = .warning
    return logger
}()

/// The result of a child process.
struct ProcessResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a program to completion, capturing its output through files (no pipe deadlocks).
@discardableResult
func run(
    _ executable: String, _ arguments: [String], environment: [String: String]? = nil, stdin: String? = nil
) throws -> ProcessResult {
    let dir = TemporaryDirectory("p11jwt-proc")
    let outPath = dir.file("out"), errPath = dir.file("err"), inPath = dir.file("in")
    FileManager.default.createFile(atPath: outPath, contents: nil)
    FileManager.default.createFile(atPath: errPath, contents: nil)
    FileManager.default.createFile(atPath: inPath, contents: Data((stdin ?? "").utf8))
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

/// The `p11jwt` binary built by `scripts/setup` (or `swift build`).
var p11jwtBinary: String {
    get throws {
        let path = ProcessInfo.processInfo.environment["P11JWT_BIN"]
            ?? repositoryRoot.appendingPathComponent(".build/debug/p11jwt").path
        try #require(FileManager.default.isExecutableFile(atPath: path), "no p11jwt binary at \(path): run scripts/setup or swift build first")
        return path
    }
}

/// Runs `p11jwt` against a SoftHSM directory.
@discardableResult
func p11jwt(_ arguments: [String], hsm: SoftHSMDirectory, environment extra: [String: String] = [:]) throws -> ProcessResult {
    var env = hsm.environment
    for (k, v) in extra { env[k] = v }
    return try run(try p11jwtBinary, arguments, environment: env)
}

/// SoftHSM reuses session handle numbers, so a test that closes a session behind the pool's
/// back must not overlap with tests that open sessions. In-process tests run their bodies
/// under `sharedHSM`; such a test runs under `exclusiveHSM`.
private let hsmLock = ReadWriteLock()

func sharedHSM<R>(_ body: () throws -> R) rethrows -> R { try hsmLock.withReadLock(body) }

func exclusiveHSM<R>(_ body: () throws -> R) rethrows -> R { try hsmLock.withWriteLock(body) }
