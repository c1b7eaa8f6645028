import ArgumentParser
import BuildInfo
import CommandLineSupport
import EntraEmulator
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import ShutdownSignals

@main
struct EntraEmulatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "entra-emulator",
        abstract: "An offline stand-in for the Entra ID token endpoint and Graph's key-credential API.",
        version: BuildInfo.version,
        subcommands: [Serve.self, App.self, Grant.self])

    /// p11jwt's exit statuses: 0 success, 1 failed, 2 usage (ArgumentParser's default for a
    /// usage error is 64).
    static func main() async {
        await runWithExitStatuses()
    }
}

/// `--state-dir`, as p11jwt spells a state directory. `--state` (its 0.9 name) is still taken,
/// not shown.
struct StateOption: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The state directory (apps, keys, CA, url).", valueName: "dir"))
    var stateDir: String?

    @Option(name: .customLong("state"), help: .hidden)
    var legacyState: String?

    func validate() throws {
        guard stateDir != nil || legacyState != nil else { throw ValidationError("Missing expected argument '--state-dir <dir>'") }
        if stateDir != nil && legacyState != nil { throw ValidationError("give --state-dir once (--state is its old name)") }
    }

    var state: String { stateDir ?? legacyState ?? "" }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve on loopback until SIGTERM / SIGINT; prints the base URL and writes it to <state>/url.")

    @OptionGroup var stateOption: StateOption

    @Option(name: .long, help: "Port (0: any free port).")
    var port: Int = 0

    @Option(name: .long, help: "127.0.0.1, ::1 or localhost.")
    var host = "127.0.0.1"

    @Flag(name: .long, help: "Plain HTTP instead of HTTPS (loopback only).")
    var http = false

    @Flag(name: .long, help: "Refuse a client assertion whose jti was already used.")
    var rejectReplay = false

    @Option(name: .long, help: ArgumentHelp("Seconds before a key added with addKey is accepted by the token endpoint.", valueName: "seconds"))
    var propagationDelay: Double = 0

    @Option(name: .long, help: ArgumentHelp("Seconds added to the emulator's clock.", valueName: "seconds"))
    var clockOffset: Double = 0

    @Option(name: .long, help: ArgumentHelp("Latency added to every response.", valueName: "ms"))
    var latency: Int = 0

    @Option(name: .long, help: "Log level.")
    var logLevel: String = "info"

    func run() async throws {
        ShutdownSignals.blockInAllThreads()
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var faults = Faults.Settings()
        faults.rejectReplay = rejectReplay
        faults.propagationDelaySeconds = propagationDelay
        faults.clockOffsetSeconds = clockOffset
        faults.latencyMilliseconds = latency
        let emulator = try Emulator(.init(stateDirectory: stateOption.state, host: host, port: port, http: http, faults: faults))
        var logger = Logger(label: "entra-emulator")
        logger.logLevel = level
        let app = try emulator.makeApplication(logger: logger) { url in
            FileHandle.standardOutput.write(Data((url + "\n").utf8))
        }
        let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        // A stale url would point clients at a port nobody serves.
        try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: stateOption.state).appendingPathComponent("url").path)
        logger.info("stopped")
    }
}

struct App: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage applications (works while the server runs).", subcommands: [Create.self, Show.self, FICAdd.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register an application and its service principal; prints {tenantId, appId, id, servicePrincipalId, keyId}.")

        @OptionGroup var stateOption: StateOption

        @Option(name: .long, help: "Display name.")
        var name: String

        @Option(name: .long, help: ArgumentHelp("A certificate (PEM or DER) to register as its first key credential.", valueName: "file"))
        var cert: String?

        @Option(name: .long, help: ArgumentHelp("A Graph application permission to grant (repeatable).", valueName: "role"))
        var role: [String] = []

        @Option(name: .long, help: ArgumentHelp("The appId of an owning application (repeatable).", valueName: "appId"))
        var owner: [String] = []

        @Option(name: .long, help: "Tenant id or domain (default: the first tenant; created if new).")
        var tenant: String?

        @Option(name: .long, help: ArgumentHelp("An App ID URI clients name this app by as a resource, e.g. api://orders (repeatable).", valueName: "uri"))
        var identifierUri: [String] = []

        @Option(name: .long, help: ArgumentHelp("An application permission this app defines as a resource, e.g. Orders.Read (repeatable).", valueName: "value"))
        var appRole: [String] = []

        @Option(name: .long, help: ArgumentHelp("The access-token version this app gets as a resource: 1 (Entra's default) or 2.", valueName: "1|2"))
        var accessTokenVersion: Int?

        func run() async throws {
            let store = try StateStore(directory: stateOption.state)
            var der: [UInt8]?
            if let cert {
                guard let data = FileManager.default.contents(atPath: cert) else { throw ValidationError("cannot read \(cert)") }
                der = try EmulatorCertificates.der(fromPEMOrDER: [UInt8](data), source: cert)
            }
            let created = try store.createApplication(
                name: name, certificate: der, roles: role, owners: owner, tenant: tenant,
                identifierURIs: identifierUri, appRoles: appRole, accessTokenVersion: accessTokenVersion)
            try printJSON(created)
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an application with its key credentials.")

        @OptionGroup var stateOption: StateOption

        @Option(name: .long, help: "The appId.")
        var appId: String?

        @Option(name: .long, help: "The object id.")
        var id: String?

        func validate() throws {
            if (appId == nil) == (id == nil) { throw ValidationError("give --app-id or --id") }
        }

        func run() async throws {
            let store = try StateStore(directory: stateOption.state)
            guard let (tenant, app) = try store.application(id: id, appId: appId) else {
                throw ValidationError("no application with \(id.map { "id \($0)" } ?? "appId \(appId!)")")
            }
            struct Shown: Encodable { var tenantId: String; var application: AppRegistration }
            try printJSON(Shown(tenantId: tenant.id, application: app))
        }
    }
}

extension App {
    struct FICAdd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "fic-add",
            abstract: "Add a federated identity credential to an application; prints it.",
            discussion: "A token from --issuer for --subject, with an audience of the credential, then authenticates the application as its client assertion. An app's token from this emulator for api://AzureADTokenExchange has iss <url>/<tenant id>/v2.0 and sub the app's service principal id.")

        @OptionGroup var stateOption: StateOption

        @Option(name: .long, help: "The application's object id.")
        var id: String

        @Option(name: .long, help: ArgumentHelp("The trusted token issuer (a URL).", valueName: "url"))
        var issuer: String

        @Option(name: .long, help: "The subject the token must have.")
        var subject: String

        @Option(name: .long, help: "An audience the token may have (repeatable; default: api://AzureADTokenExchange).")
        var audience: [String] = []

        @Option(name: .long, help: "The credential's name (default: a generated one).")
        var name: String?

        func run() async throws {
            let store = try StateStore(directory: stateOption.state)
            let credential = FederatedIdentityCredential(
                name: name ?? "fic-\(UUID().uuidString.prefix(8).lowercased())", issuer: issuer, subject: subject,
                audiences: audience.isEmpty ? [FederatedIdentityCredential.tokenExchangeAudience] : audience)
            try printJSON(try store.addFederatedCredential(applicationID: id, credential))
        }
    }
}

struct Grant: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Grant a client application an application permission (app role) on a resource; prints {client, resource, roles}.",
        discussion: "The resource is Graph (https://graph.microsoft.com, any role name) or an application of the client's tenant, by appId or App ID URI, whose app roles include each role.")

    @OptionGroup var stateOption: StateOption

    @Option(name: .long, help: ArgumentHelp("The client application's appId.", valueName: "appId"))
    var client: String

    @Option(name: .long, help: ArgumentHelp("The resource: an appId, an App ID URI, or https://graph.microsoft.com.", valueName: "appId|uri"))
    var resource: String

    @Option(name: .long, help: ArgumentHelp("The app role to grant (repeatable).", valueName: "role"))
    var role: [String] = []

    func run() async throws {
        let store = try StateStore(directory: stateOption.state)
        let resourceAppID = try store.grant(client: client, resource: resource, roles: role)
        struct Granted: Encodable { var client: String; var resource: String; var roles: [String] }
        try printJSON(Granted(client: client.lowercased(), resource: resourceAppID, roles: role))
    }
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    encoder.dateEncodingStrategy = .iso8601
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}
