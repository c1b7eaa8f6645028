import ArgumentParser
import Entra
import Foundation
import JOSE
import PKCS11
import TokenSigning

struct AccessTokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "access-token",
        abstract: "Get an Entra access token (client credentials) with a client assertion signed by the key.",
        discussion: """
            The assertion is signed in the HSM (PS256 + x5t#S256 when the token can do PSS, else RS256 + x5t) \
            and exchanged at {authority}/{tenant}/oauth2/v2.0/token. Tokens are cached per authority, tenant, \
            client, scope and certificate in a 0600 file under ~/.cache/p11jwt and reused until 5 minutes \
            before they expire (--no-cache bypasses the cache).

            EXAMPLES:
              p11jwt access-token --tenant contoso.com --client-id 1111… --key "$KEY"
              p11jwt access-token --scope api://orders/.default --output json
              eval "$(p11jwt access-token --output env)"
              p11jwt access-token --via-fic 2222…   # for app 2222…, which trusts this one
            """)

    /// text: the access token alone; `token` was its name in 0.9 (still taken, not shown).
    enum Output: String, ExpressibleByArgument, CaseIterable {
        case text, json, env

        init?(argument: String) {
            if argument.lowercased() == "token" { self = .text; return }
            guard let value = Self(rawValue: argument.lowercased()) else { return nil }
            self = value
        }
    }

    @Option(name: .long, help: "The scope: <resource>/.default (default: Microsoft Graph of the cloud).")
    var scope: String?

    @Option(name: .long, help: "text (the access token alone), json, or env (export lines).")
    var output: Output = .text

    @Option(name: .long, help: "auto (PS256 if the token can, else RS256), PS256 or RS256.")
    var alg: AssertionAlgorithmArgument = .auto

    @Flag(name: .long, help: "Send the certificate chain as x5c in the assertion (MSAL's sendX5C: Subject Name + Issuer authentication).")
    var x5c = false

    @Option(name: .long, help: ArgumentHelp("Get the token for this other application, which trusts this one through a federated identity credential: this app's token for api://AzureADTokenExchange is its client assertion.", valueName: "client-id"))
    var viaFic: String?

    @Option(name: .long, help: ArgumentHelp("With --via-fic: the other application's tenant (default: this one's).", valueName: "tenant"))
    var viaFicTenant: String?

    @OptionGroup var entra: EntraOptions
    @OptionGroup var state: StateOptions
    @OptionGroup var signing: SigningOptions

    func run() async throws {
        var configuration = try entra.clientConfiguration(
            try signing.moduleOptions.settings(), cacheFile: state.cacheFile, algorithm: alg.choice)
        configuration.sendX5C = x5c
        let scope = self.scope ?? configuration.graphScope
        guard scope.hasSuffix("/.default") else {
            throw CLIError.usage("scope '\(scope)' is not <resource>/.default: app-only tokens carry the app's granted permissions, e.g. https://graph.microsoft.com/.default")
        }
        // The tenant and client id are checked before a PIN is asked for.
        _ = try configuration.validated()
        let session = try await signing.open(requireCertificate: true)
        defer { session.close() }
        let viaFic = self.viaFic, viaFicTenant = self.viaFicTenant
        func exchange(_ signer: some JWSSigner) async throws -> AccessToken {
            try await withEntraClient(configuration, logger: session.logger) { client in
                if let viaFic {
                    return try await client.tokenViaFederation(clientID: viaFic, tenant: viaFicTenant, scope: scope, signer: signer)
                }
                return try await client.token(scope: scope, signer: signer)
            }
        }
        let token: AccessToken
        do {
            token = try await exchange(session.signer)
        } catch let error as EntraError where error.aadsts == 700027 {
            // As the agent does: a label that moved to a rotated key is looked up once more.
            guard let rotated = try session.rotatedSigner() else { throw error }
            token = try await exchange(rotated)
        }
        switch output {
        case .text:
            print(token.accessToken)
        case .json:
            struct Shown: Encodable {
                var tokenType: String
                var accessToken: String
                var expiresOn: Date
                var expiresIn: Int
                var scope: String
                var fromCache: Bool
            }
            try printJSON(Shown(
                tokenType: token.tokenType, accessToken: token.accessToken, expiresOn: token.expiresOn,
                expiresIn: max(0, Int(token.expiresOn.timeIntervalSinceNow)), scope: scope, fromCache: token.fromCache))
        case .env:
            print("export P11JWT_ACCESS_TOKEN='\(token.accessToken)'")
            print("export P11JWT_ACCESS_TOKEN_EXPIRES_ON=\(Int(token.expiresOn.timeIntervalSince1970))")
        }
    }
}
