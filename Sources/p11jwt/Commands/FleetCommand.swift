import ArgumentParser
import Entra
import Foundation
import Logging
import PKCS11
import Rotation
import Synchronization
import TokenSigning
import Yams

struct FleetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "Many applications at once, from a manifest.",
        discussion: """
            EXAMPLES:
              p11jwt fleet rotate apps.yaml --dry-run
              p11jwt fleet rotate apps.yaml --output json > report.json
            """,
        subcommands: [FleetRotateCommand.self])
}

struct FleetRotateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Rotate every application a manifest lists, resumably, with bounded concurrency per token.",
        discussion: """
            The manifest is YAML (or JSON) with 'defaults' and 'apps'; every default can be overridden per \
            app, and apps may sit on different tokens and modules:

              defaults:
                tenant: contoso.onmicrosoft.com
                module: softhsm2
                keyType: rsa:2048
                days: 365
                ifExpiringWithin: 30d
                pinFile: /etc/p11jwt/pin
              apps:
                - name: orders
                  clientId: 11111111-2222-3333-4444-555555555555
                  objectId: 66666666-7777-8888-9999-000000000000
                  key: "pkcs11:token=ops;object=orders"

            Fields: name, clientId, objectId, key (per app); tenant, cloud, authorityHost, graphEndpoint, \
            caFile, module, pinFile, stateDir, timeout, keyType, days, subject, displayName, \
            ifExpiringWithin, propagationTimeout, deleteOld (either place). An unknown field is an error \
            naming its entry. Settings not in the manifest come from the environment and the config file, \
            as for every command. Each app keeps its own rotate journal: a run killed at any moment resumes \
            each app where it was. A 429 or 503 from Entra or Graph holds back every app's requests (one \
            backoff for the fleet). An app that fails is reported and does not stop the others; the exit \
            status is 1 when any failed.

            EXAMPLES:
              p11jwt fleet rotate apps.yaml --dry-run
              p11jwt fleet rotate apps.yaml --concurrency-per-token 4 --output json
            """)

    @Argument(help: ArgumentHelp("The manifest (YAML or JSON).", valueName: "manifest"))
    var manifest: String

    @Option(name: .long, help: "Rotations running at once on one token (key generation dominates).")
    var concurrencyPerToken: Int = 2

    @Flag(name: .long, help: "Print each app's plan and change nothing.")
    var dryRun = false

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var outputOptions: OutputOptions

    func validate() throws {
        guard (1...64).contains(concurrencyPerToken) else { throw ValidationError("--concurrency-per-token must be 1…64") }
    }

    struct Report: CommandReport {
        var apps: [Fleet.Result]
        var rotated: Int
        var skipped: Int
        var planned: Int
        var failed: Int
        /// Times a throttling answer held the whole fleet back.
        var throttled: Int

        var text: String? {
            let width = max(4, apps.map(\.name.count).max() ?? 0)
            var lines = apps.map { app -> String in
                let name = app.name.padding(toLength: width, withPad: " ", startingAt: 0)
                let outcome = app.outcome.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0)
                switch app.outcome {
                case .rotated: return "\(name)  \(outcome)  keyId \(app.oldKeyId ?? "?") → \(app.newKeyId ?? "?")\(app.resumed ? " (resumed)" : "")"
                case .planned: return "\(name)  \(outcome)  " + (app.plan ?? []).filter { !$0.done }.map(\.step).joined(separator: " → ")
                case .skipped, .failed: return "\(name)  \(outcome)  \(app.reason?.split(separator: "\n").first.map(String.init) ?? "")"
                }
            }
            lines.append("\(apps.count) apps: \(rotated) rotated, \(skipped) skipped, \(planned) planned, \(failed) failed")
            return lines.joined(separator: "\n")
        }
    }

    func run() async throws {
        let logger = try moduleOptions.makeLogger()
        let settings = try moduleOptions.settings()
        let parsed = try FleetManifest.load(manifest)
        let gate = ThrottleGate()
        var apps: [Fleet.App] = []
        var failures: [Int: Fleet.Result] = [:]
        var openPlan: [(index: Int, spec: ModuleSpec, uri: PKCS11URI, pinFile: String?)] = []
        for (index, entry) in parsed.apps.enumerated() {
            do {
                let (app, spec, uri, pinFile) = try parsed.resolve(entry, settings: settings, gate: gate, dryRun: dryRun)
                apps.append(app)
                openPlan.append((apps.count - 1, spec, uri, pinFile))
            } catch {
                var result = Fleet.Result(name: entry.name ?? "apps[\(index)]", objectID: entry.objectId ?? "", outcome: .failed)
                result.reason = "\(error)"
                failures[index] = result
            }
        }
        let (tokens, unavailable, keys) = try await openTokens(openPlan, logger: logger)
        for (i, key) in keys { apps[i].tokenKey = key }
        let progress = FleetProgress(names: apps.map(\.name), live: outputOptions.output == .text && isatty(STDERR_FILENO) == 1)
        var results = await Fleet.run(
            apps, tokens: tokens.mapValues(\.token), unavailable: unavailable, concurrencyPerToken: concurrencyPerToken, logger: logger,
            progress: { progress.update($0, $1) })
        for opened in tokens.values { opened.token.close() }
        FleetTokens.finalizeAll()
        // Entries that never got as far as a rotation keep their place in the manifest's order.
        for index in failures.keys.sorted() { results.insert(failures[index]!, at: min(index, results.count)) }
        let report = Report(
            apps: results, rotated: results.filter { $0.outcome == .rotated }.count, skipped: results.filter { $0.outcome == .skipped }.count,
            planned: results.filter { $0.outcome == .planned }.count, failed: results.filter { $0.outcome == .failed }.count,
            throttled: gate.timesClosed)
        try outputOptions.emit(report)
        if report.failed > 0 {
            throw CLIError(
                message: "\(report.failed) of \(results.count) apps failed: \(results.filter { $0.outcome == .failed }.map(\.name).joined(separator: ", "))",
                hint: "fix what the report says and run the same command again: the others are done or resume where they were")
        }
    }

    // MARK: Tokens

    struct OpenedToken {
        var token: Token
        var moduleKey: String
    }

    /// Loads each module once and opens (and logs in to) each token once, however many apps use
    /// it. An app whose token cannot be opened fails with the reason; the others go on.
    private func openTokens(
        _ plan: [(index: Int, spec: ModuleSpec, uri: PKCS11URI, pinFile: String?)], logger: Logger
    ) async throws -> (tokens: [String: OpenedToken], unavailable: [String: any Error], keys: [Int: String]) {
        try await BlockingExecutor.shared.run {
            var tokens: [String: OpenedToken] = [:]
            var unavailable: [String: any Error] = [:]
            var keys: [Int: String] = [:]
            for (index, spec, uri, pinFile) in plan {
                let moduleKey = spec.description
                do {
                    let module = try FleetTokens.module(spec, logger: logger)
                    if let (key, _) = tokens.first(where: { $0.value.moduleKey == moduleKey && uri.matches(token: $0.value.token.info) }) {
                        keys[index] = key
                        continue
                    }
                    let token = try Token.open(uri, module: module, logger: logger)
                    let key = "\(moduleKey)|\(token.info.serialNumber)|\(token.info.label)"
                    if tokens[key] == nil {
                        try token.login(pins: PINProvider(pinFile: pinFile), uri: uri)
                        tokens[key] = OpenedToken(token: token, moduleKey: moduleKey)
                    }
                    keys[index] = key
                } catch {
                    let key = "unavailable|\(index)"
                    unavailable[key] = error
                    keys[index] = key
                }
            }
            return (tokens, unavailable, keys)
        }
    }
}

/// The modules a fleet run loaded, once each.
enum FleetTokens {
    static let modules = Mutex<[String: Module]>([:])

    static func module(_ spec: ModuleSpec, logger: Logger) throws -> Module {
        if let loaded = modules.withLock({ $0[spec.description] }) { return loaded }
        let module = try Module.load(spec, logger: logger)
        modules.withLock { $0[spec.description] = module }
        return module
    }

    static func finalizeAll() {
        for module in modules.withLock({ loaded in defer { loaded = [:] }; return Array(loaded.values) }) { module.finalize() }
    }
}

/// A live line per app on a terminal; plain lines otherwise.
final class FleetProgress: Sendable {
    private let names: [String]
    private let live: Bool
    private let state: Mutex<[String: String]>

    init(names: [String], live: Bool) {
        self.names = names
        self.live = live
        state = Mutex(Dictionary(names.map { ($0, "waiting") }, uniquingKeysWith: { a, _ in a }))
        if live { FileHandle.standardError.write(Data(String(repeating: "\n", count: names.count).utf8)) }
    }

    func update(_ name: String, _ line: String) {
        state.withLock { statuses in
            statuses[name] = line
            guard live else {
                FileHandle.standardError.write(Data("fleet: \(name): \(line)\n".utf8))
                return
            }
            let width = names.map(\.count).max() ?? 0
            var screen = "\u{1B}[\(names.count)A"
            for app in names {
                let status = String((statuses[app] ?? "").prefix(100))
                screen += "\u{1B}[2K\(app.padding(toLength: width, withPad: " ", startingAt: 0))  \(status)\n"
            }
            FileHandle.standardError.write(Data(screen.utf8))
        }
    }
}

/// The fleet manifest: `defaults` and `apps`, each field overridable per app.
struct FleetManifest {
    /// One entry: the defaults, or an app.
    struct Entry: Decodable {
        var name: String?
        var clientId: String?
        var objectId: String?
        var key: String?
        var tenant: String?
        var cloud: String?
        var authorityHost: String?
        var graphEndpoint: String?
        var caFile: String?
        var module: String?
        var pinFile: String?
        var stateDir: String?
        var timeout: Int?
        var keyType: String?
        var days: Int?
        var subject: String?
        var displayName: String?
        var ifExpiringWithin: Duration?
        var propagationTimeout: Duration?
        var deleteOld: Bool?

        /// `30d`, `12h`, `10m`, `90s` or a number of seconds.
        struct Duration: Decodable {
            var seconds: Double
            init(from decoder: Decoder) throws {
                let container = try decoder.singleValueContainer()
                if let number = try? container.decode(Double.self) {
                    seconds = number
                } else if let parsed = DurationArgument(argument: try container.decode(String.self)) {
                    seconds = parsed.seconds
                } else {
                    throw DecodingError.dataCorruptedError(in: container, debugDescription: "a duration is like 30d, 12h, 10m, 90s or seconds")
                }
            }
        }

        /// This entry's field, else the default's.
        func merged(with defaults: Entry) -> Entry {
            Entry(
                name: name, clientId: clientId ?? defaults.clientId, objectId: objectId ?? defaults.objectId, key: key ?? defaults.key,
                tenant: tenant ?? defaults.tenant, cloud: cloud ?? defaults.cloud, authorityHost: authorityHost ?? defaults.authorityHost,
                graphEndpoint: graphEndpoint ?? defaults.graphEndpoint, caFile: caFile ?? defaults.caFile, module: module ?? defaults.module,
                pinFile: pinFile ?? defaults.pinFile, stateDir: stateDir ?? defaults.stateDir, timeout: timeout ?? defaults.timeout,
                keyType: keyType ?? defaults.keyType, days: days ?? defaults.days, subject: subject ?? defaults.subject,
                displayName: displayName ?? defaults.displayName, ifExpiringWithin: ifExpiringWithin ?? defaults.ifExpiringWithin,
                propagationTimeout: propagationTimeout ?? defaults.propagationTimeout, deleteOld: deleteOld ?? defaults.deleteOld)
        }
    }

    struct Document: Decodable {
        var defaults: Entry?
        var apps: [Entry]
    }

    static let appOnlyFields: Set<String> = ["name", "clientId", "objectId", "key"]
    static let sharedFields: Set<String> = [
        "tenant", "cloud", "authorityHost", "graphEndpoint", "caFile", "module", "pinFile", "stateDir", "timeout", "keyType", "days",
        "subject", "displayName", "ifExpiringWithin", "propagationTimeout", "deleteOld",
    ]

    let path: String
    let defaults: Entry
    let apps: [Entry]

    /// Reads and checks a manifest: a mapping with `apps` (and `defaults`), every field known.
    static func load(_ path: String) throws -> FleetManifest {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CLIError(message: "cannot read the manifest \(path)", exitCode: 2)
        }
        let text = String(decoding: data, as: UTF8.self)
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch {
            throw CLIError(message: "\(path) is not valid YAML or JSON: \(error)", exitCode: 2)
        }
        guard let mapping = root?.mapping else { throw CLIError(message: "\(path) must be a mapping with 'apps' (and 'defaults')", exitCode: 2) }
        for (key, value) in mapping {
            let place = "\(path):\(key.mark?.line ?? 0)"
            switch key.string {
            case "defaults":
                try check(value, allowed: sharedFields, entry: "defaults", place: place, path: path)
            case "apps":
                guard let list = value.sequence else { throw CLIError(message: "\(place): 'apps' must be a list", exitCode: 2) }
                for (index, app) in list.enumerated() {
                    let name = app.mapping?["name"]?.string.map { "apps[\(index)] (\($0))" } ?? "apps[\(index)]"
                    try check(app, allowed: sharedFields.union(appOnlyFields), entry: name, place: "\(path):\(app.mark?.line ?? 0)", path: path)
                }
            default:
                throw CLIError(message: "\(place): unknown top-level field '\(key.string ?? "?")'", exitCode: 2, hint: "a manifest has 'defaults' and 'apps'")
            }
        }
        let document: Document
        do {
            document = try YAMLDecoder().decode(Document.self, from: text)
        } catch {
            throw CLIError(message: "\(path): \(describe(error))", exitCode: 2)
        }
        var names = Set<String>()
        for (index, app) in document.apps.enumerated() {
            guard let name = app.name, !name.isEmpty else { throw CLIError(message: "\(path): apps[\(index)] has no name", exitCode: 2) }
            guard names.insert(name).inserted else { throw CLIError(message: "\(path): two apps are named '\(name)'", exitCode: 2) }
        }
        return FleetManifest(path: path, defaults: document.defaults ?? Entry(), apps: document.apps)
    }

    private static func check(_ node: Node, allowed: Set<String>, entry: String, place: String, path: String) throws {
        guard let fields = node.mapping else { throw CLIError(message: "\(place): \(entry) must be a mapping of fields", exitCode: 2) }
        for (key, _) in fields {
            guard let name = key.string, allowed.contains(name) else {
                throw CLIError(
                    message: "\(path):\(key.mark?.line ?? 0): \(entry): unknown field '\(key.string ?? "?")'", exitCode: 2,
                    hint: "fields: \(allowed.sorted().joined(separator: ", "))")
            }
        }
    }

    private static func describe(_ error: any Error) -> String {
        guard let decoding = error as? DecodingError else { return "\(error)" }
        switch decoding {
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .keyNotFound(_, let context), .dataCorrupted(let context):
            let where_ = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return "\(where_.isEmpty ? "" : "\(where_): ")\(context.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }

    /// One app with the defaults, the environment and the config file applied.
    func resolve(_ entry: Entry, settings: Settings, gate: ThrottleGate, dryRun: Bool) throws -> (Fleet.App, ModuleSpec, PKCS11URI, String?) {
        let app = entry.merged(with: defaults)
        let name = app.name ?? "?"
        func required(_ value: String?, _ field: String) throws -> String {
            guard let value, !value.isEmpty else { throw CLIError(message: "\(name): no \(field) (in the app or the defaults)") }
            return value
        }
        let objectID = try ProofOfPossession.validated(objectID: try required(app.objectId, "objectId"))
        let keyText = try required(app.key, "key")
        let uri = try PKCS11URI(keyText)
        let cloud = try EntraOptions.cloud(settings, flag: app.cloud.map { EntraCloud(rawValue: $0) ?? .global })
        var endpoints = EntraEndpoints(cloud: cloud)
        if let host = settings.value(.authorityHost, flag: app.authorityHost) { endpoints.authorityHost = try EntraValue.endpoint(host, what: "authority host") }
        if let graph = settings.value(.graphEndpoint, flag: app.graphEndpoint) { endpoints.graphEndpoint = try EntraValue.endpoint(graph, what: "Graph endpoint") }
        // A fleet rides out a throttling storm together: more attempts than one command makes.
        let retry = RetryPolicy(maxAttempts: 12, requestTimeout: Int64(app.timeout ?? 30), gate: gate)
        let configuration = EntraClient.Configuration(
            tenant: try required(settings.value(.tenant, flag: app.tenant), "tenant"), clientID: try required(app.clientId, "clientId"),
            cloud: cloud, endpoints: endpoints, caFile: settings.value(.caFile, flag: app.caFile), retry: retry, cacheFile: nil)
        _ = try configuration.validated()
        var options = Rotation.Options()
        options.keySpec = try app.keyType.map { try Token.KeySpec($0) }
        options.days = app.days ?? 365
        options.subject = app.subject
        if let subject = app.subject { _ = try TokenCertificates.distinguishedName(subject) }
        options.displayName = app.displayName
        options.ifExpiringWithin = app.ifExpiringWithin?.seconds
        options.propagationTimeout = app.propagationTimeout?.seconds ?? 600
        options.deleteOld = app.deleteOld ?? false
        options.dryRun = dryRun
        options.checkpoint = testCrashHook()
        let configured = settings.value(.module, flag: app.module).map(ModuleSpec.init) ?? .proxy
        let spec = app.module.map(ModuleSpec.init) ?? ModuleSpec(uri: uri, fallback: configured)
        let stateDirectory = settings.value(.stateDir, flag: app.stateDir).map { URL(fileURLWithPath: $0) } ?? CredentialRecords.defaultDirectory()
        let fleetApp = Fleet.App(
            name: name, configuration: configuration, objectID: objectID, keyURI: keyText, tokenKey: "", options: options,
            stateDirectory: stateDirectory)
        return (fleetApp, spec, uri, settings.value(.pinFile, flag: app.pinFile))
    }
}
