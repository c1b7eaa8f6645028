import Agent
import ArgumentParser
import CProcessHardening
import Entra
import Foundation
import Logging
import PKCS11
import TokenSigning
import ServiceLifecycle
import ShutdownSignals

/// `p11jwt agent`: run the agent (`run`, the default subcommand, so `p11jwt agent --key …` runs
/// it) or ask a running one how it is doing (`status`).
struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Log in once and serve signatures, assertions and tokens to other processes over a Unix socket.",
        discussion: """
            p11jwt agent OPTIONS runs the agent (agent run, the default); p11jwt agent status asks a \
            running one what it serves and how it is doing.
            """,
        subcommands: [AgentRunCommand.self, AgentStatusCommand.self],
        defaultSubcommand: AgentRunCommand.self)

    static func defaultSocket() -> String {
        if let runtime = ProcessInfo.processInfo.environment["XDG_RUNTIME_DIR"], !runtime.isEmpty {
            return runtime + "/p11jwt/agent.sock"
        }
        return "/tmp/p11jwt-\(getuid())/agent.sock"
    }
}

struct AgentRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Log in once and serve signatures, assertions and tokens to other processes over a Unix socket (the default).",
        discussion: """
            Runs in the foreground until SIGTERM / SIGINT; SIGHUP reloads the config file's identities \
            (the same token and login). The socket is 0600 in a 0700 directory (0666 in a \
            0711 one with --allow-uid/--allow-gid), and a connection from another uid is closed unless --allow-uid names it or \
            --allow-gid names its effective gid; another uid may hold at most 16 connections. With P11JWT_AGENT_SOCK set, \
            every p11jwt command that signs goes through the agent (--no-agent bypasses it). \
            Started by systemd socket activation (p11jwt-agent.socket), it serves the listening socket \
            systemd passes (LISTEN_FDS): the file, its mode and its removal stay systemd's, and --socket, \
            if given, must name the same path. \
            --managed-identity serves the App Service managed-identity protocol on 127.0.0.1 and \
            --assertion-file keeps a fresh client assertion in a file, so unmodified Azure SDKs \
            (ManagedIdentityCredential, WorkloadIdentityCredential, DefaultAzureCredential) use the key. \
            A config file (--config) with an identities list serves several applications from one process: \
            the managed-identity endpoint picks one by client_id, object_id / principal_id or mi_res_id (the \
            default one when none is named), the socket API by "identity", and an identity's allowUids / \
            allowGids keep other users from it and its key. \
            --key-vault serves the Azure Key Vault keys API (get, list, sign, verify) for the token's keys \
            on 127.0.0.1 over HTTPS, a key's name being its label, so code written for Key Vault's sign \
            (CryptographyClient with ManagedIdentityCredential) works with only the vault URL changed; \
            its bearer tokens come from the managed-identity endpoint, which it starts. \
            --print-env prints the environment for clients, like ssh-agent -s, once it listens (with \
            --output json: one JSON object on one line).

            EXAMPLES:
              p11jwt agent --key "$KEY" --pin-file pin --print-env > agent.env &
              p11jwt agent --tenant T --client-id C --managed-identity --print-env
              p11jwt agent --key "$KEY" --pin-file pin --key-vault --print-env
            """)

    @Option(name: .long, help: ArgumentHelp("The socket (default: $XDG_RUNTIME_DIR/p11jwt/agent.sock, else /tmp/p11jwt-<uid>/agent.sock).", valueName: "path"))
    var socket: String?

    @Option(name: .long, help: ArgumentHelp("Also accept connections from this uid (repeatable).", valueName: "uid"))
    var allowUID: [UInt32] = []

    @Option(name: .long, help: ArgumentHelp("Also accept connections from processes whose effective gid is this (repeatable).", valueName: "gid"))
    var allowGID: [UInt32] = []

    @Flag(name: .long, help: "Print export lines for clients (P11JWT_AGENT_SOCK, and the Azure SDK variables) once listening.")
    var printEnv = false

    @Flag(name: .long, help: "Serve the App Service managed-identity endpoint on 127.0.0.1 (needs --tenant and --client-id).")
    var managedIdentity = false

    @Option(name: .long, help: ArgumentHelp("Port of the managed-identity endpoint (0: any free port).", valueName: "port"))
    var port: Int = 0

    @Option(name: .long, help: ArgumentHelp("Require the secret in this file (its first line; 0600) in X-IDENTITY-HEADER, instead of a new one per start: for apps given IDENTITY_HEADER ahead of time (a Kubernetes secret).", valueName: "file"))
    var identityHeaderFile: String?

    @Option(name: .long, help: ArgumentHelp("Keep a fresh client assertion in this file (0600) for AZURE_FEDERATED_TOKEN_FILE.", valueName: "path"))
    var assertionFile: String?

    @Option(name: .long, help: ArgumentHelp("Lifetime of the assertions in --assertion-file (more than 330 s; renewed 330 s before expiry).", valueName: "seconds"))
    var assertionLifetime: Int = ClientAssertion.defaultLifetime

    @Flag(name: .long, help: "Serve the Key Vault keys API for the token's keys on 127.0.0.1 over HTTPS (and the managed-identity endpoint its tokens come from).")
    var keyVault = false

    @Option(name: .long, help: ArgumentHelp("Port of the Key Vault endpoint (0: any free port).", valueName: "port"))
    var keyVaultPort: Int = 0

    @Option(name: .long, help: ArgumentHelp("Where the Key Vault endpoint keeps its CA (ca.pem for clients) and server key (default: the state directory's key-vault).", valueName: "dir"))
    var keyVaultDir: String?

    @Option(name: .long, help: ArgumentHelp("Serve only these keys, under these names (NAME=URI, repeatable; default: every key under its label).", valueName: "name=uri"))
    var keyVaultKey: [String] = []

    @OptionGroup var entra: EntraOptions
    @OptionGroup var keyOptions: KeyOptions
    @OptionGroup var outputOptions: OutputOptions

    func run() async throws {
        // SIGHUP reloads the config file's identities (HangupReloader).
        ShutdownSignals.blockInAllThreads(also: [SIGHUP])
        // The agent holds the PIN for its whole life: no core file may carry it, and no other
        // process of this user may read its memory or environment through /proc.
        if p11jwt_set_not_dumpable() != 0 {
            throw CLIError(message: "cannot make the agent non-dumpable (prctl PR_SET_DUMPABLE): \(String(cString: strerror(errno)))")
        }
        // A daemon logs each request (operation, key, latency) at info unless told otherwise.
        let logger = try keyOptions.moduleOptions.makeLogger(defaultLevel: "info")
        let settings = try keyOptions.moduleOptions.settings()
        // Entra settings are optional: without tenant and client id the agent only signs.
        let entraConfiguration = try entra.clientConfiguration(settings, cacheFile: nil)
        // One agent, many applications: the config file's identities.
        let identities = try settings.filePath.map { try AgentIdentities.read(path: $0, defaults: entraConfiguration) } ?? []
        // The agent's application: with identities, the default one (else the first: flags and
        // settings then only give the identities' defaults); without, the flags' tenant and client.
        var agentEntra: EntraClient.Configuration?
        if let identity = identities.first(where: \.isDefault) ?? identities.first {
            agentEntra = identity.entra
        } else if !entraConfiguration.tenant.isEmpty && !entraConfiguration.clientID.isEmpty {
            _ = try entraConfiguration.validated()
            agentEntra = entraConfiguration
        }
        var identitySecret: String?
        if let identityHeaderFile {
            guard managedIdentity || keyVault else { throw CLIError.usage("--identity-header-file needs --managed-identity (or --key-vault)") }
            let secret = try PINProvider.readSecretFile(identityHeaderFile, what: "the identity header file")
            let text = secret.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            guard text.count >= 16, text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
                throw CLIError.usage("the identity header file \(identityHeaderFile) must hold at least 16 printable characters, no spaces, on its first line (e.g. openssl rand -hex 32)")
            }
            identitySecret = text
        }
        if (managedIdentity || assertionFile != nil) && agentEntra == nil {
            throw CLIError.usage("--managed-identity and --assertion-file need --tenant and --client-id (or AZURE_TENANT_ID / AZURE_CLIENT_ID)")
        }
        if assertionFile != nil && (assertionLifetime <= 330 || assertionLifetime > ClientAssertion.maximumLifetime) {
            throw CLIError.usage("--assertion-lifetime must be 331…\(ClientAssertion.maximumLifetime) seconds: readers cache the file up to 5 minutes")
        }
        var keyVaultNames: [String: String] = [:]
        for entry in keyVaultKey {
            guard let equals = entry.firstIndex(of: "="), case let name = String(entry[..<equals]), !name.isEmpty,
                  name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }),
                  case let uri = String(entry[entry.index(after: equals)...]), uri.hasPrefix("pkcs11:") else {
                throw CLIError.usage("--key-vault-key takes NAME=pkcs11:URI, the name of letters, digits and dashes (got '\(entry.split(separator: "=").first ?? "")')")
            }
            keyVaultNames[name] = uri
        }
        if !keyVault && (!keyVaultNames.isEmpty || keyVaultDir != nil) {
            throw CLIError.usage("--key-vault-key and --key-vault-dir need --key-vault")
        }
        let keyVaultDirectory = keyVaultDir.map { URL(fileURLWithPath: $0) }
            ?? CredentialRecords.defaultDirectory().appendingPathComponent("key-vault")
        // Socket activation (p11jwt-agent.socket): systemd's listening socket, checked before the
        // PIN is asked for. --socket, when given too, must name the same path.
        let inherited = try InheritedSocket.fromEnvironment()
        if let inherited, let socket, (socket as NSString).standardizingPath != (inherited.path as NSString).standardizingPath {
            throw CLIError.usage("--socket \(socket) is not the socket systemd passed (\(inherited.path)): drop --socket or make it the socket unit's ListenStream=")
        }
        let socketPath = inherited?.path ?? socket ?? AgentCommand.defaultSocket()
        // With identities and no --key: the default identity's key (its token is the agent's).
        let keyURI = try keyOptions.configuredKey() ?? (identities.first(where: \.isDefault) ?? identities.first)?.key ?? keyOptions.keyURI()
        // The PIN is asked for here, once.
        let context = try await TokenContext.open(keyURI, moduleOptions: keyOptions.moduleOptions, pins: keyOptions.pinOptions, login: true)
        // Read once: the PIN no longer sits in the environment block (/proc/PID/environ).
        _ = p11jwt_scrub_environment(keyOptions.pinOptions.provider(settings).environmentVariable)
        let agent: Agent
        do {
            var configuration = Agent.Configuration(
                socketPath: socketPath, defaultKey: keyURI, allowedUIDs: Set(allowUID), entra: agentEntra,
                managedIdentityPort: managedIdentity ? port : nil, assertionFile: assertionFile, assertionLifetime: assertionLifetime)
            configuration.allowedGIDs = Set(allowGID)
            configuration.identities = identities
            configuration.identitySecret = identitySecret
            configuration.inheritedSocket = inherited
            if keyVault {
                configuration.keyVaultPort = keyVaultPort
                configuration.keyVaultDirectory = keyVaultDirectory
                configuration.keyVaultNames = keyVaultNames
            }
            agent = try Agent(configuration: configuration, token: context.token, module: context.module, logger: logger)
        } catch {
            context.close()
            throw error
        }
        let printEnv = self.printEnv
        let json = outputOptions.output == .json
        do {
            var reload: (@Sendable () throws -> [Agent.Identity])?
            if let path = settings.filePath {
                let defaults = entraConfiguration
                reload = { @Sendable in try AgentIdentities.read(path: path, defaults: defaults) }
            }
            let services = try agent.services(reloadIdentities: reload) { environment in
                guard printEnv else { return }
                if json {
                    // One line of JSON: a reader can take it as soon as the agent listens.
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                    FileHandle.standardOutput.write((try? encoder.encode(environment)).map { $0 + Data("\n".utf8) } ?? Data())
                    return
                }
                var lines = ""
                for (name, value) in environment.sorted(by: { $0.key < $1.key }) {
                    lines += "export \(name)=\(shellQuoted(value))\n"
                }
                FileHandle.standardOutput.write(Data(lines.utf8))
            }
            let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
        } catch {
            await agent.shutdown()
            throw error
        }
        await agent.shutdown()
    }
}
