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

    @Option(name: .long, help: ArgumentHelp("Seconds each HTTP request may take, 1…600 (default: the config file's timeout, else 30).", valueName: "seconds"))
    var timeout: Int?

    /// The Entra settings from the flags, the environment and the config file.
    func clientConfiguration(
        _ settings: Settings, cacheFile: URL?, algorithm: ClientAssertion.AlgorithmChoice = .auto
    ) throws -> EntraClient.Configuration {
        let cloud = try Self.cloud(settings, flag: cloud)
        var endpoints = EntraEndpoints(cloud: cloud)
        if let host = settings.value(.authorityHost, flag: authorityHost) {
            endpoints.authorityHost = try EntraValue.endpoint(host, what: "authority host")
        }
        if let graph = settings.value(.graphEndpoint, flag: graphEndpoint) {
            endpoints.graphEndpoint = try EntraValue.endpoint(graph, what: "Graph endpoint")
        }
        let resolved = settings.resolve(.timeout, flag: timeout.map(String.init)) ?? ("30", .defaultValue)
        guard let timeout = Int(resolved.value), timeout >= 1 && timeout <= 600 else {
            throw CLIError(message: "the timeout must be 1…600 seconds, not '\(resolved.value)' (from \(resolved.source))", exitCode: 2)
        }
        return EntraClient.Configuration(
            tenant: settings.value(.tenant, flag: tenant) ?? "",
            clientID: settings.value(.clientID, flag: clientID) ?? "",
            cloud: cloud, endpoints: endpoints, caFile: settings.value(.caFile, flag: caFile),
            retry: RetryPolicy(requestTimeout: Int64(timeout)), cacheFile: cacheFile, algorithm: algorithm)
    }

    /// `--cloud`, else the config file's `cloud`, else public.
    static func cloud(_ settings: Settings, flag: EntraCloud?) throws -> EntraCloud {
        guard let resolved = settings.resolve(.cloud, flag: flag?.rawValue) else { return .global }
        guard let cloud = EntraCloud(rawValue: resolved.value) else {
            throw CLIError(message: "unknown cloud '\(resolved.value)' (from \(resolved.source))", exitCode: 2, hint: "use public, usgov, usgov-dod or china")
        }
        return cloud
    }
}

/// `--no-cache`: commands that get tokens.
struct StateOptions: ParsableArguments {
    @Flag(name: .long, help: "Neither read nor write the token cache.")
    var noCache = false

    var cacheFile: URL? { noCache ? nil : TokenCache.defaultFile() }
}

/// `--state-dir`: commands that keep rotate journals and credential records.
struct StateDirectoryOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Where rotate journals and credential records live (default: $P11JWT_STATE_DIR, else the config file's state-dir, else $XDG_STATE_HOME/p11jwt or ~/.local/state/p11jwt).", valueName: "dir"))
    var stateDir: String?

    func stateDirectory(_ settings: Settings) -> URL {
        settings.value(.stateDir, flag: stateDir).map { URL(fileURLWithPath: $0) } ?? CredentialRecords.defaultDirectory()
    }
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
