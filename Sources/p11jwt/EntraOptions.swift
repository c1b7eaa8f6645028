import ArgumentParser
import Entra
import Foundation
import Logging

/// Where an Entra setting comes from, in order: the flag, the environment, the config file.
struct EntraOptions: ParsableArguments {
    @Option(name: .long, help: "The directory (tenant) id or domain. Default: $AZURE_TENANT_ID, else the config file.")
    var tenant: String?

    @Option(name: .long, help: "The application (client) id. Default: $AZURE_CLIENT_ID, else the config file.")
    var clientID: String?

    @Option(name: .long, help: "public, usgov, usgov-dod or china: the login and Graph hosts of that cloud (default: public).")
    var cloud: EntraCloud?

    @Option(name: .long, help: ArgumentHelp("The login host, e.g. an emulator's URL. Default: $AZURE_AUTHORITY_HOST, else that of --cloud.", valueName: "url"))
    var authorityHost: String?

    @Option(name: .long, help: ArgumentHelp("The Microsoft Graph endpoint (default: that of --cloud).", valueName: "url"))
    var graphEndpoint: String?

    @Option(name: .long, help: ArgumentHelp("An extra CA certificate (PEM) to trust, e.g. the emulator's <state>/ca.pem. TLS is always verified.", valueName: "file"))
    var caFile: String?

    @Option(name: .long, help: ArgumentHelp("Config file (default: ~/.config/p11jwt/config.toml if it exists).", valueName: "file"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("Seconds each HTTP request may take.", valueName: "seconds"))
    var timeout: Int = 30

    var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// The config file's settings (empty when there is none).
    func configFile() throws -> ConfigFile {
        if let config { return try ConfigFile(path: config, required: true) }
        let base = environment["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".config")
        return try ConfigFile(path: base.appendingPathComponent("p11jwt/config.toml").path, required: false)
    }

    /// flag, then environment variable, then config file key.
    func setting(_ flag: String?, env: String?, key: String, _ file: ConfigFile) -> String? {
        if let flag { return flag }
        if let env, let value = environment[env], !value.isEmpty { return value }
        return file[key]
    }

    /// The Entra settings from the flags, the environment and `file` (read once by the command).
    func clientConfiguration(
        _ file: ConfigFile, cacheFile: URL?, algorithm: ClientAssertion.AlgorithmChoice = .auto
    ) throws -> EntraClient.Configuration {
        let cloudName = cloud?.rawValue ?? file["cloud"]
        guard let cloud = EntraCloud(rawValue: cloudName ?? "public") else {
            throw CLIError.usage("unknown cloud '\(cloudName ?? "")' in \(file.path ?? "the config file"): use public, usgov, usgov-dod or china")
        }
        var endpoints = EntraEndpoints(cloud: cloud)
        if let host = setting(authorityHost, env: "AZURE_AUTHORITY_HOST", key: "authority-host", file) {
            endpoints.authorityHost = try EntraValue.endpoint(host, what: "authority host")
        }
        if let graph = setting(graphEndpoint, env: nil, key: "graph-endpoint", file) {
            endpoints.graphEndpoint = try EntraValue.endpoint(graph, what: "Graph endpoint")
        }
        guard timeout >= 1 && timeout <= 600 else { throw CLIError.usage("--timeout must be 1…600 seconds") }
        return EntraClient.Configuration(
            tenant: setting(tenant, env: "AZURE_TENANT_ID", key: "tenant", file) ?? "",
            clientID: setting(clientID, env: "AZURE_CLIENT_ID", key: "client-id", file) ?? "",
            cloud: cloud, endpoints: endpoints, caFile: setting(caFile, env: nil, key: "ca-file", file),
            retry: RetryPolicy(requestTimeout: Int64(timeout)), cacheFile: cacheFile, algorithm: algorithm)
    }
}

/// `--no-cache` and `--state-dir`: commands that get tokens and record credentials.
struct StateOptions: ParsableArguments {
    @Flag(name: .long, help: "Neither read nor write the token cache.")
    var noCache = false

    @Option(name: .long, help: ArgumentHelp("Where rotate journals and credential records live (default: $XDG_STATE_HOME/p11jwt or ~/.local/state/p11jwt).", valueName: "dir"))
    var stateDir: String?

    var cacheFile: URL? { noCache ? nil : TokenCache.defaultFile() }

    var stateDirectory: URL { stateDir.map { URL(fileURLWithPath: $0) } ?? CredentialRecords.defaultDirectory() }
}

/// The config file: `key = "value"` lines (TOML's basic strings, integers and booleans),
/// `#` comments; section headers are ignored, so keys are flat:
///
///     tenant = "contoso.onmicrosoft.com"
///     client-id = "11111111-2222-3333-4444-555555555555"
///     key = "pkcs11:token=ops;object=app"
///     cloud = "public"
struct ConfigFile {
    let path: String?
    private var values: [String: String] = [:]

    static let keys: Set<String> = ["tenant", "client-id", "key", "object-id", "cloud", "authority-host", "graph-endpoint", "ca-file", "state-dir"]

    init(path: String, required: Bool) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            if required { throw CLIError.usage("cannot read the config file \(path)") }
            self.path = nil
            return
        }
        self.path = path
        for (number, raw) in String(decoding: data, as: UTF8.self).components(separatedBy: .newlines).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix("[") { continue }
            guard let eq = line.firstIndex(of: "=") else {
                throw CLIError.usage("\(path):\(number + 1): expected key = value")
            }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "_", with: "-").lowercased()
            guard Self.keys.contains(key) else {
                throw CLIError.usage("\(path):\(number + 1): unknown key '\(key)' (known: \(Self.keys.sorted().joined(separator: ", ")))")
            }
            values[key] = try Self.value(String(line[line.index(after: eq)...]).trimmingCharacters(in: .whitespaces), at: "\(path):\(number + 1)")
        }
    }

    static func value(_ text: String, at place: String) throws -> String {
        if let quote = text.first, quote == "\"" || quote == "'" {
            var body = ""
            var escaped = false
            for ch in text.dropFirst() {
                if escaped {
                    body.append(ch == "n" ? "\n" : ch == "t" ? "\t" : ch)
                    escaped = false
                } else if ch == "\\" && quote == "\"" {
                    escaped = true
                } else if ch == quote {
                    return body
                } else {
                    body.append(ch)
                }
            }
            throw CLIError.usage("\(place): unterminated string")
        }
        let bare = text.split(separator: "#", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard !bare.isEmpty, bare == "true" || bare == "false" || Int(bare) != nil else {
            throw CLIError.usage("\(place): a value must be a quoted string, a number or true/false")
        }
        return bare
    }

    subscript(key: String) -> String? { values[key] }
}

/// Runs an async body with an Entra client, shutting it down after.
func withEntraClient<R>(_ configuration: EntraClient.Configuration, logger: Logger, _ body: (EntraClient) async throws -> R) async throws -> R {
    let client = try EntraClient(configuration, logger: logger)
    do {
        let result = try await body(client)
        await client.shutdown()
        return result
    } catch {
        await client.shutdown()
        throw error
    }
}
