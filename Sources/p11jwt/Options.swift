import ArgumentParser
import Foundation
import Synchronization
import JOSE
import Logging
import PKCS11
import TokenSigning

/// `--module`, `--config` and logging: every command that talks to a token has these.
struct ModuleOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "PKCS#11 module: a .so path or a p11-kit module name (default: module-path/module-name in the URI, else $P11JWT_MODULE, else the config file's module, else the p11-kit proxy).",
            valueName: "path|name"))
    var module: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical (default: $P11JWT_LOG_LEVEL, else the config file's log-level, else warning).")
    var logLevel: String?

    @Flag(name: [.short, .long], help: "Shorthand for --log-level debug.")
    var verbose = false

    @OptionGroup var configOptions: ConfigOptions

    /// The settings of this run (flags are resolved by each option group against them).
    func settings() throws -> Settings { try configOptions.settings() }

    /// The module to load for `uri`: `--module` wins, then the URI's own module, then
    /// `$P11JWT_MODULE` / the config file, then the proxy (which loads every registered module: one
    /// that has no device to talk to may complain on stderr, e.g. tpm2-pkcs11 without a TPM).
    func spec(for uri: PKCS11URI?) throws -> ModuleSpec {
        if let module { return ModuleSpec(module) }
        let configured = try settings().value(.module).map(ModuleSpec.init) ?? .proxy
        if let uri { return ModuleSpec(uri: uri, fallback: configured) }
        return configured
    }

    /// The executable's logger; `defaultLevel` unless --log-level, -v, $P11JWT_LOG_LEVEL or the
    /// config file say otherwise (commands: warning; the agent, a daemon: info).
    func makeLogger(defaultLevel: String = "warning") throws -> Logger {
        let text = verbose ? "debug" : (try settings().value(.logLevel, flag: logLevel) ?? defaultLevel)
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw CLIError(message: "unknown log level '\(text)'", exitCode: 2, hint: "use trace, debug, info, notice, warning, error or critical")
        }
        LoggingBootstrap.once(level: level)
        var logger = Logger(label: "p11jwt")
        logger.logLevel = level
        return logger
    }
}

/// Logging is configured once per process, by the executable only.
enum LoggingBootstrap {
    private static let done = Mutex(false)

    static func once(level: Logger.Level) {
        done.withLock { done in
            guard !done else { return }
            done = true
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        }
    }
}

/// How to find the PIN. There is no `--pin VALUE`: argv is visible to every user.
struct PINOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Read the user PIN from this file (first line; mode 0600). Default: $P11JWT_PIN_FILE, else the config file's pin-file; else $P11JWT_PIN holds the PIN, else a prompt.", valueName: "file"))
    var pinFile: String?

    /// Not an option: there so that `--pin VALUE` gets an answer that says why not and what to do.
    @Option(name: .long, help: .hidden)
    var pin: String?

    func validate() throws {
        if pin != nil {
            throw ValidationError(
                "there is no --pin: a PIN on the command line is readable by every user of the machine (ps, /proc). Give it with --pin-file FILE (mode 0600), $P11JWT_PIN, pin-source=file:PATH in the URI, or at the prompt")
        }
    }

    /// Where the PIN comes from: --pin-file / $P11JWT_PIN_FILE / the config file's pin-file, then
    /// $P11JWT_PIN, then a prompt.
    func provider(_ settings: Settings) -> PINProvider { PINProvider(pinFile: settings.value(.pinFile, flag: pinFile)) }
}

/// `--output text|json` on every command. `raw` (sign) and `token` (token) were the text format's
/// names in 0.9: still taken, not shown.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json

    init?(argument: String) {
        switch argument.lowercased() {
        case "text", "raw", "token": self = .text
        case "json": self = .json
        default: return nil
        }
    }
}

struct OutputOptions: ParsableArguments {
    @Option(name: .long, help: "Output format: text or json (errors too, on stderr).")
    var output: OutputFormat = .text

    /// Prints `report` as this command's output: its text, or its JSON.
    func emit(_ report: some CommandReport) throws {
        switch output {
        case .json: try printJSON(report)
        case .text: if let text = report.text { print(text, terminator: text.hasSuffix("\n") ? "" : "\n") }
        }
    }
}

/// What a command reports: JSON as it encodes (camelCase keys, ISO 8601 dates, durations in
/// seconds rounded to the millisecond), and the text people read (nil: nothing to print).
protocol CommandReport: Encodable {
    var text: String? { get }
}

/// Prints a value as pretty, key-sorted JSON.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    // Dates as ISO 8601 in every command's JSON (Foundation's default is seconds since 2001).
    encoder.dateEncodingStrategy = .iso8601
    let data = try encoder.encode(value)
    print(String(decoding: data, as: UTF8.self))
}

/// Refuses a URI whose `pin-value` came on the command line: every user on the machine can read
/// a process's arguments (`ps`) for as long as it runs. From a file or the environment it is the
/// caller's choice.
func refusePINInArguments(_ uri: PKCS11URI, _ text: String) throws {
    guard uri.pinValue != nil, CommandLine.arguments.dropFirst().contains(where: { $0.contains(text) }) else { return }
    throw CLIError.usage(
        "a pin-value in a URI on the command line is visible to every user (ps): \(uri.redacted); use pin-source=file:PATH in the URI, --pin-file FILE or $P11JWT_PIN instead")
}

/// A module, a token and (optionally) a login, released together.
struct TokenContext {
    let logger: Logger
    let module: Module
    let token: Token
    let uri: PKCS11URI

    /// Parses `uriText`, loads the module, opens the one token it selects and, when `login`,
    /// logs in with the first PIN source that has a PIN.
    static func open(
        _ uriText: String, moduleOptions: ModuleOptions, pins: PINOptions?, login: Bool
    ) throws -> TokenContext {
        let logger = try moduleOptions.makeLogger()
        let uri = try PKCS11URI(uriText)
        try refusePINInArguments(uri, uriText)
        let spec = try moduleOptions.spec(for: uri)
        var module = try Module.load(spec, logger: logger)
        let token: Token
        do {
            token = try Token.open(uri, module: module, logger: logger)
        } catch let error as PKCS11Error where error.code == .tokenNotFound {
            // A module reads its tokens when initialised: SoftHSM loses a token whose store
            // another process is rewriting at that moment. This process is the module's only
            // user, so initialise it once more and look again.
            module.finalize()
            Thread.sleep(forTimeInterval: Token.labelSettleTime)
            module = try Module.load(spec, logger: logger)
            token = try Token.open(uri, module: module, logger: logger)
        }
        if login, let pins {
            do {
                try token.login(pins: pins.provider(try moduleOptions.settings()), uri: uri)
            } catch {
                token.close()
                throw error
            }
        }
        return TokenContext(logger: logger, module: module, token: token, uri: uri)
    }

    func close() {
        token.close()
        module.finalize()
    }

    /// ``open(_:moduleOptions:pins:login:)`` for async commands, on the token executor's threads.
    static func open(_ uriText: String, moduleOptions: ModuleOptions, pins: PINOptions?, login: Bool) async throws -> TokenContext {
        try await BlockingExecutor.shared.run { try open(uriText, moduleOptions: moduleOptions, pins: pins, login: login) }
    }
}

extension Array where Element == UInt8 {
    var hex: String { Hex.encode(self) }
}

/// A POSIX shell word for `text`: single-quoted, each `'` as `'\''`, so `eval` of it (the
/// agent's `--print-env`) or a paste of it (a URI with `;` and `?`) runs nothing.
func shellQuoted(_ text: String) -> String {
    "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
