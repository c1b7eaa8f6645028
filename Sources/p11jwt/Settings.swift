import ArgumentParser
import Configuration
import Foundation
import PKCS11
import Synchronization
import Yams

/// One setting every command resolves the same way: its flag, then its environment variable,
/// then its key in the config file, then its default.
struct Setting: Sendable, Hashable {
    /// The config file's key (also the name libraries use in their errors' `settings`).
    let key: String
    /// The environment variable, when there is one.
    let environment: String?
    /// What it is, for `config show`.
    let summary: String
    /// The flag, when it is not `--` + key.
    var flagName: String?

    var flag: String { flagName ?? "--\(key)" }

    static let tenant = Setting(key: "tenant", environment: "AZURE_TENANT_ID", summary: "directory (tenant) id or domain")
    static let clientID = Setting(key: "client-id", environment: "AZURE_CLIENT_ID", summary: "application (client) id")
    static let objectID = Setting(key: "object-id", environment: "P11JWT_OBJECT_ID", summary: "the application's object id (Graph)")
    static let key = Setting(key: "key", environment: "P11JWT_KEY", summary: "the signing key (pkcs11: URI)")
    static let module = Setting(key: "module", environment: "P11JWT_MODULE", summary: "PKCS#11 module (path or p11-kit name)")
    static let pinFile = Setting(key: "pin-file", environment: "P11JWT_PIN_FILE", summary: "file holding the user PIN")
    static let cloud = Setting(key: "cloud", environment: nil, summary: "public, usgov, usgov-dod or china")
    static let authorityHost = Setting(key: "authority-host", environment: "AZURE_AUTHORITY_HOST", summary: "login host")
    static let graphEndpoint = Setting(key: "graph-endpoint", environment: nil, summary: "Microsoft Graph endpoint")
    static let caFile = Setting(key: "ca-file", environment: nil, summary: "extra CA certificate (PEM) to trust")
    static let stateDir = Setting(key: "state-dir", environment: "P11JWT_STATE_DIR", summary: "rotate journals and credential records")
    static let timeout = Setting(key: "timeout", environment: nil, summary: "seconds each HTTP request may take")
    static let logLevel = Setting(key: "log-level", environment: "P11JWT_LOG_LEVEL", summary: "trace … critical")
    static let agentSocket = Setting(key: "agent-socket", environment: "P11JWT_AGENT_SOCK", summary: "a running agent's socket", flagName: "--socket")

    /// Every setting the config file may hold, in `config show`'s order.
    static let all: [Setting] = [
        .tenant, .clientID, .objectID, .key, .module, .pinFile, .cloud, .authorityHost, .graphEndpoint, .caFile, .timeout, .stateDir, .logLevel,
    ]

    static func named(_ key: String) -> Setting? { (all + [.agentSocket]).first { $0.key == key } }
}

/// Where a setting's value came from.
enum SettingSource: Sendable, Equatable, CustomStringConvertible {
    case flag(String)
    case environment(String)
    case file(String)
    case defaultValue

    var description: String {
        switch self {
        case .flag(let flag): return "flag \(flag)"
        case .environment(let name): return "environment $\(name)"
        case .file(let path): return "file \(path)"
        case .defaultValue: return "default"
        }
    }
}

/// The settings of one run: the environment and the config file, read through
/// swift-configuration, with the flags given to ``resolve(_:flag:)``.
///
/// The file is `--config FILE`, else `$P11JWT_CONFIG`, else `$XDG_CONFIG_HOME/p11jwt/config.yaml`
/// (`$HOME/.config` when XDG_CONFIG_HOME is unset). It is YAML (JSON too, as YAML's subset) with
/// flat `key: value` lines; an unknown key, a section or a list is an error naming the key, the
/// file and the line. The `config.toml` of earlier releases is read, with a warning, when there is
/// no `config.yaml` beside it.
struct Settings: Sendable {
    /// The config file read, if any.
    let filePath: String?
    /// Said once on stderr by the executable (the old TOML file).
    let warnings: [String]
    private let environment: ConfigReader
    private let file: ConfigReader

    /// Resolves `setting`: `flag` (the command's value for it), then its environment variable,
    /// then the file. nil: none of them has it.
    func resolve(_ setting: Setting, flag: String?) -> (value: String, source: SettingSource)? {
        if let flag { return (flag, .flag(setting.flag)) }
        if let name = setting.environment, let value = environment.string(forKey: ConfigKey([name])) {
            return (value, .environment(name))
        }
        if let value = file.string(forKey: ConfigKey([setting.key])), let filePath {
            return (value, .file(filePath))
        }
        return nil
    }

    func value(_ setting: Setting, flag: String? = nil) -> String? { resolve(setting, flag: flag)?.value }

    // MARK: Loading

    private static let cache = Mutex<[String: Settings]>([:])

    /// The settings for `configPath` (`--config`), read once per process.
    static func load(configPath: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Settings {
        let cacheKey = configPath ?? ""
        if let cached = cache.withLock({ $0[cacheKey] }) { return cached }
        let settings = try read(configPath: configPath, environment: environment)
        cache.withLock { $0[cacheKey] = settings }
        for warning in settings.warnings {
            FileHandle.standardError.write(Data("p11jwt: warning: \(warning)\n".utf8))
        }
        return settings
    }

    /// The default config file's directory: `$XDG_CONFIG_HOME/p11jwt`, else `$HOME/.config/p11jwt`.
    static func defaultDirectory(environment: [String: String]) -> String {
        if let xdg = environment["XDG_CONFIG_HOME"], xdg.hasPrefix("/") { return xdg + "/p11jwt" }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? FileManager.default.homeDirectoryForCurrentUser.path
        return home + "/.config/p11jwt"
    }

    static func read(configPath: String?, environment: [String: String]) throws -> Settings {
        var path = configPath ?? environment["P11JWT_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        var warnings: [String] = []
        if path == nil {
            let directory = defaultDirectory(environment: environment)
            if FileManager.default.fileExists(atPath: directory + "/config.yaml") {
                path = directory + "/config.yaml"
            } else if FileManager.default.fileExists(atPath: directory + "/config.toml") {
                path = directory + "/config.toml"
            }
        }
        var values: [(key: String, value: String)] = []
        if let path {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw CLIError(message: "cannot read the config file \(path)", exitCode: 2, hint: "check the path given with --config or $P11JWT_CONFIG")
            }
            let text = String(decoding: data, as: UTF8.self)
            if path.hasSuffix(".toml") {
                let yaml = (path as NSString).deletingPathExtension + ".yaml"
                warnings.append("\(path) is the old config format, read for this release only: move its settings to \(yaml) (same keys, written 'key: value')")
                values = try LegacyTOMLConfig.parse(text, path: path)
            } else {
                values = try parseYAML(text, path: path)
            }
        }
        let fileValues = Dictionary(values.map { (AbsoluteConfigKey([$0.key]), ConfigValue(.string($0.value), isSecret: false)) }, uniquingKeysWith: { $1 })
        return Settings(
            filePath: path, warnings: warnings,
            environment: ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: environment.filter { !$0.value.isEmpty })),
            file: ConfigReader(provider: InMemoryProvider(name: path, values: fileValues)))
    }

    /// Flat `key: value` YAML: every key known, every value a single scalar.
    static func parseYAML(_ text: String, path: String) throws -> [(key: String, value: String)] {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw CLIError(message: "\(path) is not valid YAML: \(error)", exitCode: 2)
        }
        guard let root else { return [] }
        guard let mapping = root.mapping else {
            throw CLIError(message: "\(path) must be a mapping of settings ('tenant: …' lines)", exitCode: 2)
        }
        var values: [(key: String, value: String)] = []
        for (keyNode, valueNode) in mapping {
            let place = "\(path):\(keyNode.mark?.line ?? 0)"
            guard let key = keyNode.string else { throw CLIError(message: "\(place): a key must be a name", exitCode: 2) }
            // The agent's list of applications (AgentIdentities reads it); not a setting.
            if key == AgentIdentities.key { continue }
            guard Setting.named(key).map({ Setting.all.contains($0) }) == true else {
                throw CLIError(
                    message: "\(place): unknown key '\(key)'", exitCode: 2,
                    hint: "known keys: \(Setting.all.map(\.key).joined(separator: ", "))")
            }
            guard let scalar = valueNode.scalar else {
                throw CLIError(message: "\(place): '\(key)' must be a single value, not a section or a list (the file is flat)", exitCode: 2)
            }
            guard valueNode.null == nil, !scalar.string.isEmpty else {
                throw CLIError(message: "\(place): '\(key)' has no value", exitCode: 2)
            }
            values.append((key, scalar.string))
        }
        return values
    }
}

/// The `key = "value"` TOML subset of earlier releases, read for one more release.
enum LegacyTOMLConfig {
    static func parse(_ text: String, path: String) throws -> [(key: String, value: String)] {
        var values: [(key: String, value: String)] = []
        for (number, raw) in text.components(separatedBy: .newlines).enumerated() {
            let place = "\(path):\(number + 1)"
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[") {
                throw CLIError(message: "\(place): sections are not settings: the file is flat (\(line))", exitCode: 2)
            }
            guard let eq = line.firstIndex(of: "=") else {
                throw CLIError(message: "\(place): expected key = value", exitCode: 2)
            }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "_", with: "-").lowercased()
            guard let setting = Setting.named(key), Setting.all.contains(setting) else {
                throw CLIError(message: "\(place): unknown key '\(key)'", exitCode: 2, hint: "known keys: \(Setting.all.map(\.key).joined(separator: ", "))")
            }
            values.append((key, try value(String(line[line.index(after: eq)...]).trimmingCharacters(in: .whitespaces), at: place)))
        }
        return values
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
            throw CLIError(message: "\(place): unterminated string", exitCode: 2)
        }
        let bare = text.split(separator: "#", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard !bare.isEmpty, bare == "true" || bare == "false" || Int(bare) != nil else {
            throw CLIError(message: "\(place): a value must be a quoted string, a number or true/false", exitCode: 2)
        }
        return bare
    }
}

/// `--config FILE`: every command that reads settings has it (through ``ModuleOptions``).
struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Config file (default: $P11JWT_CONFIG, else $XDG_CONFIG_HOME/p11jwt/config.yaml, else ~/.config/p11jwt/config.yaml).", valueName: "file"))
    var config: String?

    func settings() throws -> Settings { try Settings.load(configPath: config) }
}
