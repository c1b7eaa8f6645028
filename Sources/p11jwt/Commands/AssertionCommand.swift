import ArgumentParser
import Entra
import Foundation
import JOSE
import PKCS11
import TokenSigning

extension EntraCloud: ExpressibleByArgument {}

struct AssertionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "assertion",
        abstract: "Make an Entra ID client assertion (private_key_jwt) signed by a key on the token.",
        discussion: """
            The header names the certificate by thumbprint: PS256 with x5t#S256 when the token can do \
            RSA-PSS (natively or over CKM_RSA_X_509), else RS256 with x5t. Only the SHA-256 digest of the \
            assertion goes to the token. Send it as client_assertion with this client_assertion_type:
              urn:ietf:params:oauth:client-assertion-type:jwt-bearer

            EXAMPLES:
              P11JWT_KEY="$KEY" p11jwt assertion --tenant T --client-id C
              p11jwt assertion --x5c --output json
            """)

    @Option(name: .long, help: "The directory (tenant) id or domain. Default: $AZURE_TENANT_ID, else the config file's tenant.")
    var tenant: String?

    @Option(name: .long, help: "The application (client) id. Default: $AZURE_CLIENT_ID, else the config file's client-id.")
    var clientID: String?

    @Option(name: .long, help: "auto (PS256 if the token can, else RS256), PS256 or RS256; ES* for EC keys (Entra refuses those).")
    var alg: AlgorithmArgument = .auto

    @OptionGroup var chain: ChainOptions

    @Option(name: .long, help: ArgumentHelp("Seconds the assertion is valid (1…3600).", valueName: "seconds"))
    var lifetime: Int = ClientAssertion.defaultLifetime

    @Option(name: .long, help: ArgumentHelp("The login host. Default: $AZURE_AUTHORITY_HOST, else the config file's authority-host, else that of --cloud.", valueName: "url"))
    var authorityHost: String?

    @Option(name: .long, help: "public, usgov, usgov-dod or china: picks the authority host.")
    var cloud: EntraCloud?

    @Option(name: .long, help: ArgumentHelp("An extra claim; the value is JSON if it parses as JSON, else a string. Repeatable.", valueName: "name=value"))
    var claim: [ClaimArgument] = []

    @Flag(name: .long, help: "Let --claim replace the claims p11jwt sets (aud, iss, sub, jti, nbf, iat, exp).")
    var override = false

    @Option(name: .long, help: ArgumentHelp("kid header member: thumbprint (hex SHA-1), none, or a value. Default: thumbprint.", valueName: "kid"))
    var kid: String?

    @OptionGroup var signing: SigningOptions
    @OptionGroup var outputOptions: OutputOptions

    func validate() throws {
        if cloud != nil && authorityHost != nil { throw ValidationError("give --cloud or --authority-host, not both") }
    }

    func run() throws {
        let settings = try signing.moduleOptions.settings()
        let authority: URL
        if let cloud {
            authority = cloud.authorityHost
        } else if let host = settings.value(.authorityHost, flag: authorityHost) {
            authority = try EntraValue.endpoint(host, what: "authority host")
        } else {
            authority = try EntraOptions.cloud(settings, flag: nil).authorityHost
        }
        let algorithm: ClientAssertion.AlgorithmChoice
        switch alg {
        case .auto: algorithm = .auto
        case .fixed(let a): algorithm = .fixed(a)
        }
        let parameters = ClientAssertion.Parameters(
            tenant: settings.value(.tenant, flag: tenant) ?? "", clientID: settings.value(.clientID, flag: clientID) ?? "",
            authorityHost: authority, lifetime: lifetime, algorithm: algorithm, x5c: chain.x5c,
            kid: keyIDArgument(kid, default: .thumbprint), extraClaims: ClaimArgument.object(claim), overrideClaims: override)
        // Check what needs no token before asking for a PIN.
        _ = try parameters.validated()
        let session = try signing.open(requireCertificate: true, chainFile: chain.chainFile)
        defer { session.close() }
        let jws = try ClientAssertion.make(parameters, signer: session.signer, logger: session.logger)
        try printToken(jws, format: outputOptions.output)
    }
}
