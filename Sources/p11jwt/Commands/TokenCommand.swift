import ArgumentParser
import Entra
import Foundation
import JOSE
import PKCS11
import TokenSigning

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Get an access token (client credentials) with a client assertion signed by the token key.",
        discussion: """
            The assertion is signed in the HSM (PS256 + x5t#S256 when the token can do PSS, else RS256 + x5t)
            and exchanged at {authority}/{tenant}/oauth2/v2.0/token. Tokens are cached per authority, tenant,
            client, scope and certificate in a 0600 file under ~/.cache/p11jwt and reused until 5 minutes
            before they expire (--no-cache bypasses the cache).
            """)

    enum Output: String, ExpressibleByArgument, CaseIterable { case token, json, env }

    @Option(name: .long, help: "The scope: <resource>/.default (default: Microsoft Graph of the cloud).")
    var scope: String?

    @Option(name: .long, help: "token (the access token alone), json, or env (export lines).")
    var output: Output = .token

    @Option(name: .long, help: "auto (PS256 if the token can, else RS256), PS256 or RS256.")
    var alg: AlgorithmArgument = .auto

    @OptionGroup var entra: EntraOptions
    @OptionGroup var state: StateOptions
    @OptionGroup var signing: SigningOptions

    func run() async throws {
        let algorithm: ClientAssertion.AlgorithmChoice
        switch alg {
        case .auto: algorithm = .auto
        case .fixed(let a): algorithm = .fixed(a)
        }
        let file = try entra.configFile()
        let configuration = try entra.clientConfiguration(file, cacheFile: state.cacheFile, algorithm: algorithm)
        let scope = self.scope ?? configuration.graphScope
        guard scope.hasSuffix("/.default") else {
            throw CLIError.usage("scope '\(scope)' is not <resource>/.default: app-only tokens carry the app's granted permissions, e.g. https://graph.microsoft.com/.default")
        }
        // The tenant and client id are checked before a PIN is asked for.
        _ = try configuration.validated()
        let session = try await signing.open(requireCertificate: true, configKey: file["key"])
        defer { session.close() }
        func exchange(_ signer: some JWSSigner) async throws -> AccessToken {
            try await withEntraClient(configuration, logger: session.logger) { client in
                try await client.token(scope: scope, signer: signer)
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
        case .token:
            print(token.accessToken)
        case .json:
            struct Shown: Encodable {
                var token_type: String
                var access_token: String
                var expires_on: Int
                var expires_in: Int
                var scope: String
                var from_cache: Bool
            }
            try printJSON(Shown(
                token_type: token.tokenType, access_token: token.accessToken, expires_on: Int(token.expiresOn.timeIntervalSince1970),
                expires_in: max(0, Int(token.expiresOn.timeIntervalSinceNow)), scope: scope, from_cache: token.fromCache))
        case .env:
            print("export P11JWT_ACCESS_TOKEN='\(token.accessToken)'")
            print("export P11JWT_ACCESS_TOKEN_EXPIRES_ON=\(Int(token.expiresOn.timeIntervalSince1970))")
        }
    }
}
