import ArgumentParser
import Entra
import Foundation

/// `fic list|add|remove`: an application's federated identity credentials, through Graph.
struct FICCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fic",
        abstract: "List, add and remove an application's federated identity credentials (so one hardware key can serve many apps).",
        discussion: """
            A federated identity credential on app B trusts tokens from an issuer for a subject: with \
            issuer <authority>/<tenant A>/v2.0 and subject app A's service principal id, A's token for \
            api://AzureADTokenExchange is B's client assertion ('p11jwt access-token --via-fic B'), so B \
            needs no certificate at all. Managing them needs Application.ReadWrite.OwnedBy (as owner) or \
            .All; the requests are signed by --key, a key of the calling app.

            EXAMPLES:
              p11jwt fic list --object-id 7777…
              p11jwt fic add --object-id 7777… --issuer "$ISSUER" --subject 8888…
              p11jwt fic remove --object-id 7777… --id from-orders
            """,
        subcommands: [List.self, Add.self, Remove.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list", abstract: "List an application's federated identity credentials.",
            discussion: """
                EXAMPLES:
                  p11jwt fic list --object-id 7777… --output json
                """)

        @OptionGroup var graph: GraphOptions
        @OptionGroup var agent: AgentOptions
        @OptionGroup var outputOptions: OutputOptions

        struct Report: CommandReport {
            var credentials: [FederatedCredentialInfo]
            var text: String? {
                credentials.isEmpty ? "no federated identity credentials"
                    : credentials.map { "\($0.name)  \($0.issuer)  \($0.subject)  \($0.audiences.joined(separator: ","))" }.joined(separator: "\n")
            }
            func encode(to encoder: Encoder) throws { try credentials.encode(to: encoder) }
        }

        func run() async throws {
            let credentials = try await graph.withClient(agent: agent) { prepared, client, signer in
                try await client.federatedCredentials(prepared.target, signer: signer)
            }
            try outputOptions.emit(Report(credentials: credentials))
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add", abstract: "Add a federated identity credential to an application.",
            discussion: """
                EXAMPLES:
                  p11jwt fic add --object-id 7777… --issuer "$ISSUER" --subject 8888…
                """)

        @Option(name: .long, help: ArgumentHelp("The trusted token issuer, e.g. https://login.microsoftonline.com/<tenant>/v2.0.", valueName: "url"))
        var issuer: String

        @Option(name: .long, help: "The subject the token must have (for an app: its service principal's object id).")
        var subject: String

        @Option(name: .long, help: ArgumentHelp("An audience the token may have (repeatable; default: api://AzureADTokenExchange).", valueName: "audience"))
        var audience: [String] = []

        @Option(name: .long, help: "The credential's name, unique on the application (default: derived from the subject).")
        var name: String?

        @Option(name: .long, help: "A description.")
        var description: String?

        @OptionGroup var graph: GraphOptions
        @OptionGroup var agent: AgentOptions
        @OptionGroup var outputOptions: OutputOptions

        struct Report: CommandReport {
            var credential: FederatedCredentialInfo
            var text: String? { "added federated credential \(credential.name) (\(credential.id ?? "?")): \(credential.issuer) \(credential.subject)" }
            func encode(to encoder: Encoder) throws { try credential.encode(to: encoder) }
        }

        func validate() throws {
            guard let url = URL(string: issuer), url.scheme == "https" || url.scheme == "http", url.host != nil else {
                throw ValidationError("--issuer must be a URL, e.g. https://login.microsoftonline.com/<tenant>/v2.0")
            }
        }

        func run() async throws {
            let credential = FederatedCredentialInfo(
                name: name ?? "fic-\(subject.prefix(36).filter { $0.isLetter || $0.isNumber || $0 == "-" })", issuer: issuer, subject: subject,
                audiences: audience.isEmpty ? [FederatedCredentialInfo.tokenExchangeAudience] : audience, description: description)
            let added = try await graph.withClient(agent: agent) { prepared, client, signer in
                try await client.addFederatedCredential(prepared.target, credential, signer: signer)
            }
            try outputOptions.emit(Report(credential: added))
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove", abstract: "Remove a federated identity credential from an application.",
            discussion: """
                EXAMPLES:
                  p11jwt fic remove --object-id 7777… --id from-orders
                """)

        @Option(name: .long, help: "The credential's id or name.")
        var id: String

        @OptionGroup var graph: GraphOptions
        @OptionGroup var agent: AgentOptions
        @OptionGroup var outputOptions: OutputOptions

        struct Report: CommandReport {
            var removed: String
            var text: String? { "removed federated credential \(removed)" }
        }

        func run() async throws {
            let id = self.id
            try await graph.withClient(agent: agent) { prepared, client, signer in
                try await client.removeFederatedCredential(prepared.target, id: id, signer: signer)
            }
            try outputOptions.emit(Report(removed: id))
        }
    }
}
