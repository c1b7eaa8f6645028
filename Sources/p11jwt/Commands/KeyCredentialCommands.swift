import ArgumentParser
import Entra
import Foundation
import JOSE
import Logging
import PKCS11
import TokenSigning

/// Which object: `--object-id` or `--app-id` (the `(appId='…')` form).
struct TargetOptions: ParsableArguments {
    @Option(name: .long, help: "The object id of the application (or service principal). Default: $P11JWT_OBJECT_ID, else the config file's object-id.")
    var objectID: String?

    @Option(name: .long, help: "Address the object by its appId: applications(appId='…').")
    var appID: String?

    func target(_ settings: Settings, servicePrincipal: Bool) throws -> (GraphKeyTarget, objectID: String?) {
        let objectID = try settings.value(.objectID, flag: self.objectID).map { try ProofOfPossession.validated(objectID: $0) }
        if let appID {
            let appID = try EntraValue.guid(appID, what: "appId", hint: "give --app-id as the application (client) id GUID")
            return (servicePrincipal ? .servicePrincipalByAppID(appID) : .applicationByAppID(appID), objectID)
        }
        guard let objectID else {
            throw CLIError.usage("give --object-id (the application's or service principal's object id) or --app-id")
        }
        return (servicePrincipal ? .servicePrincipal(id: objectID) : .application(id: objectID), objectID)
    }
}

/// `--service-principal`: the commands that can work on a service principal's credentials.
struct ServicePrincipalOption: ParsableArguments {
    @Flag(name: .long, help: "The service principal's key credentials instead of the application's.")
    var servicePrincipal = false
}

/// What every Graph command has: the object, the Entra settings, the state directory and the
/// signing key, checked in that order so bad values are refused before the PIN is asked for.
struct GraphOptions: ParsableArguments {
    @OptionGroup var targetOptions: TargetOptions
    @OptionGroup var entra: EntraOptions
    @OptionGroup var state: StateOptions
    @OptionGroup var stateDirectoryOptions: StateDirectoryOptions
    @OptionGroup var keyOptions: KeyOptions
    @OptionGroup var certificateOptions: CertificateOptions

    struct Prepared {
        var settings: Settings
        var configuration: EntraClient.Configuration
        var target: GraphKeyTarget
        /// The object id when given (else read from Graph for the appId forms).
        var objectID: String?
        var stateDirectory: URL
    }

    func prepare(servicePrincipal: Bool = false) throws -> Prepared {
        let settings = try keyOptions.moduleOptions.settings()
        let configuration = try entra.clientConfiguration(settings, cacheFile: state.cacheFile)
        _ = try configuration.validated()
        let (target, objectID) = try targetOptions.target(settings, servicePrincipal: servicePrincipal)
        return Prepared(
            settings: settings, configuration: configuration, target: target, objectID: objectID,
            stateDirectory: stateDirectoryOptions.stateDirectory(settings))
    }

    /// The signing key (the agent's, unless `agent` is nil or says --no-agent, else the
    /// token's after a login), which must have a certificate.
    func open(_ prepared: Prepared, agent: AgentOptions?) async throws -> SignerSession {
        let setup = SignerSetup(keyOptions: keyOptions, certificate: certificateOptions, agentSocket: agent?.socket)
        return try await BlockingExecutor.shared.run { try setup.open(requireCertificate: true) }
    }

    /// Prepares, opens the signing key and runs `body` with an Entra client for it; the key and
    /// the client are released after.
    func withClient<R: Sendable>(
        servicePrincipal: Bool = false, agent: AgentOptions?,
        _ body: @Sendable (Prepared, EntraClient, any JWSSigner) async throws -> R
    ) async throws -> R {
        let prepared = try prepare(servicePrincipal: servicePrincipal)
        let session = try await open(prepared, agent: agent)
        defer { session.close() }
        let signer = session.signer
        return try await withEntraClient(prepared.configuration, logger: session.logger) { client in
            try await body(prepared, client, signer)
        }
    }
}

/// One key credential as the key-credential commands print it.
func printKeyCredential(_ credential: KeyCredentialInfo, format: OutputFormat, verb: String) throws {
    switch format {
    case .json:
        try printJSON(credential)
    case .text:
        print("\(verb) keyId \(credential.keyId ?? "(unknown)") thumbprint \(credential.thumbprintHex ?? "?")"
              + (credential.endDateTime.map { " valid until \($0)" } ?? ""))
    }
}

struct AddKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Register a certificate on an application or service principal (Graph addKey), proven by the current key.",
        discussion: """
            The Graph token and the proof of possession are both signed by --key, whose certificate must \
            already be registered on the object. An application needs no Graph permission to add keys to \
            itself.

            EXAMPLES:
              p11jwt credential add --object-id 6666… --new-cert next.pem
            """)

    @Option(name: .long, help: ArgumentHelp("The certificate to add: a pkcs11: URI of a certificate object, or a PEM/DER file.", valueName: "uri|file"))
    var newCert: String

    @Option(name: .long, help: "A display name for the credential.")
    var displayName: String?

    @OptionGroup var graph: GraphOptions
    @OptionGroup var servicePrincipal: ServicePrincipalOption
    @OptionGroup var agent: AgentOptions
    @OptionGroup var outputOptions: OutputOptions

    func run() async throws {
        let prepared = try graph.prepare(servicePrincipal: servicePrincipal.servicePrincipal)
        let certificate = try readCertificate(newCert, moduleOptions: graph.keyOptions.moduleOptions)
        let session = try await graph.open(prepared, agent: agent)
        defer { session.close() }
        let signer = session.signer
        let added = try await withEntraClient(prepared.configuration, logger: session.logger) { client in
            let objectID = try await client.objectID(of: prepared.target, given: prepared.objectID, signer: signer)
            let credential = try await client.addKey(
                prepared.target, objectID: objectID, certificateDER: certificate.der, displayName: displayName, signer: signer)
            return (credential: credential, objectID: objectID)
        }
        if let keyID = added.credential.keyId {
            try CredentialRecords(directory: prepared.stateDirectory).record(
                objectID: added.objectID, thumbprint: certificate.thumbprint.hexSHA1, keyID: keyID, displayName: displayName)
        }
        try printKeyCredential(added.credential, format: outputOptions.output, verb: "added")
    }
}

struct RemoveKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove",
        abstract: "Remove a key credential from an application or service principal (Graph removeKey), proven by the current key.",
        discussion: """
            Refuses to remove the credential of the key doing the signing (the application would lose the \
            credential it authenticates with) unless --force.

            EXAMPLES:
              p11jwt credential remove --object-id 6666… --key-id 0a1b2c3d-…
            """)

    @Option(name: .long, help: "The keyId (GUID) of the credential to remove.")
    var keyID: String

    @Flag(name: .long, help: "Remove it even if it is the signing key's own credential.")
    var force = false

    @OptionGroup var graph: GraphOptions
    @OptionGroup var servicePrincipal: ServicePrincipalOption
    @OptionGroup var agent: AgentOptions
    @OptionGroup var outputOptions: OutputOptions

    func run() async throws {
        let prepared = try graph.prepare(servicePrincipal: servicePrincipal.servicePrincipal)
        let keyID = try EntraValue.guid(keyID, what: "key id", hint: "give the credential's keyId GUID", settings: ["key-id"])
        let target = prepared.target
        let session = try await graph.open(prepared, agent: agent)
        defer { session.close() }
        let signer = session.signer
        let records = CredentialRecords(directory: prepared.stateDirectory)
        let thumbprint = signer.certificate!.thumbprint.hexSHA1
        try await withEntraClient(prepared.configuration, logger: session.logger) { client in
            let objectID = try await client.objectID(of: target, given: prepared.objectID, signer: signer)
            if !force {
                var own = try records.keyID(objectID: objectID, thumbprint: thumbprint)
                if own == nil {
                    own = (try? await client.keyCredentials(target, signer: signer))?.first { $0.thumbprintHex == thumbprint }?.keyId
                }
                if own?.lowercased() == keyID {
                    throw CLIError(message: """
                        keyId \(keyID) is the credential of the signing key (certificate \(thumbprint)): removing it leaves this key unable to authenticate
                        hint: sign with another registered key (--key), or add --force if that is what you want
                        """)
                }
            }
            try await client.removeKey(target, objectID: objectID, keyID: keyID, signer: signer)
            try? records.forget(objectID: objectID, keyID: keyID)
        }
        switch outputOptions.output {
        case .json: try printJSON(["removed": keyID])
        case .text: print("removed keyId \(keyID)")
        }
    }
}

struct CredentialsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the key credentials of an application or service principal (needs a Graph read permission).",
        discussion: """
            EXAMPLES:
              p11jwt credential list --object-id 6666…
              p11jwt credential list --app-id 1111… --service-principal --output json
            """)

    @OptionGroup var graph: GraphOptions
    @OptionGroup var servicePrincipal: ServicePrincipalOption
    @OptionGroup var agent: AgentOptions
    @OptionGroup var outputOptions: OutputOptions

    func run() async throws {
        let (credentials, own) = try await graph.withClient(servicePrincipal: servicePrincipal.servicePrincipal, agent: agent) { prepared, client, signer in
            (try await client.keyCredentials(prepared.target, signer: signer), signer.certificate!.thumbprint.hexSHA1)
        }
        switch outputOptions.output {
        case .json:
            try printJSON(credentials)
        case .text:
            for c in credentials {
                print("\(c.keyId ?? "?")  \(c.thumbprintHex ?? "?")  \(c.startDateTime ?? "?") … \(c.endDateTime ?? "?")  \(c.displayName ?? "")\(c.thumbprintHex == own ? "  (signing key)" : "")")
            }
        }
    }
}

/// `credential list|add|remove`: the key credentials of an application or service principal, as
/// `az ad app credential list|reset|delete` users think of them.
struct CredentialCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "credential",
        abstract: "List, add and remove the key credentials (certificates) of an application or service principal.",
        discussion: """
            Every request is signed by --key, whose certificate must already be registered on the object: \
            the Graph token and the proof of possession both come from it. To replace the key itself, use \
            'p11jwt rotate'.

            EXAMPLES:
              p11jwt credential list --object-id 6666… --output json
              p11jwt credential add --object-id 6666… --new-cert next.pem
              p11jwt credential remove --object-id 6666… --key-id 0a1b…
            """,
        subcommands: [CredentialsCommand.self, AddKeyCommand.self, RemoveKeyCommand.self])
}
