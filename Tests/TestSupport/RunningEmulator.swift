import Foundation
import Testing

/// The `entra-emulator` binary.
public var entraEmulatorBinary: String {
    get throws { try builtBinary("entra-emulator", variable: "ENTRA_EMULATOR_BIN") }
}

/// A child process stopped with SIGTERM by `stop()`, and killed if it still runs when released.
public final class BackgroundProcess: @unchecked Sendable {
    public let process = Process()

    public init() {}

    /// SIGTERM, then waits; returns the exit status.
    @discardableResult
    public func stop() -> Int32 {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// An `entra-emulator serve` process (the real executable, over HTTPS unless `--http`), its
/// state directory and the URL it wrote once listening. Stopped with SIGTERM by `stop()`,
/// killed on deinit if still running.
public final class RunningEmulator: @unchecked Sendable {
    public let state: String
    public let url: String
    private let child = BackgroundProcess()
    public var process: Process { child.process }
    private let keepState: TemporaryDirectory?
    private let logPath: String

    public var caFile: String { state + "/ca.pem" }
    /// The bearer `POST /_emulator/faults` needs.
    public var adminToken: String {
        ((try? String(contentsOfFile: state + "/admin-token", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }
    /// The emulator's stderr (its log) so far.
    public var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Starts a server on `state` (a new temporary directory when nil) with extra `serve` flags.
    public init(state: String? = nil, arguments: [String] = []) throws {
        let owned = state == nil ? TemporaryDirectory("p11jwt-emulator") : nil
        self.keepState = owned
        self.state = state ?? owned!.path
        let urlFile = self.state + "/url"
        try? FileManager.default.removeItem(atPath: urlFile)
        logPath = self.state + "/serve-\(UUID().uuidString.prefix(6)).log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let process = child.process
        process.executableURL = URL(fileURLWithPath: try entraEmulatorBinary)
        process.arguments = ["serve", "--state-dir", self.state] + arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: logPath)
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        var url: String?
        while Date() < deadline, process.isRunning {
            if let text = try? String(contentsOfFile: urlFile, encoding: .utf8), text.hasSuffix("\n") {
                url = text.trimmingCharacters(in: .whitespacesAndNewlines)
                break
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        guard let url else {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            throw RunningEmulatorError(message: "entra-emulator did not start: \(log)")
        }
        self.url = url
    }

    /// Runs an admin command (`app create`, `app show`, …) on this state directory.
    public func admin(_ arguments: [String]) throws -> ProcessResult {
        try run(try entraEmulatorBinary, arguments + ["--state-dir", state])
    }

    /// `app create`, returning its JSON (`tenantId`, `appId`, `id`, `servicePrincipalId`, `keyId`).
    public func createApplication(name: String, certificateFile: String?, roles: [String] = [], owners: [String] = []) throws -> [String: String] {
        var arguments = ["app", "create", "--name", name]
        if let certificateFile { arguments += ["--cert", certificateFile] }
        for role in roles { arguments += ["--role", role] }
        for owner in owners { arguments += ["--owner", owner] }
        let result = try admin(arguments)
        guard result.status == 0, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] else {
            throw RunningEmulatorError(message: "app create failed: \(result.stderr)")
        }
        return object.compactMapValues { $0 as? String }
    }

    /// `app show --id`, parsed: the application's key credentials.
    public func keyCredentials(applicationID: String) throws -> [[String: Any]] {
        let result = try admin(["app", "show", "--id", applicationID])
        guard result.status == 0, let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
              let application = object["application"] as? [String: Any] else {
            throw RunningEmulatorError(message: "app show failed: \(result.stderr)")
        }
        return application["keyCredentials"] as? [[String: Any]] ?? []
    }

    /// SIGTERM, then waits; returns the exit status.
    @discardableResult
    public func stop() -> Int32 { child.stop() }
}

public struct RunningEmulatorError: Error, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
