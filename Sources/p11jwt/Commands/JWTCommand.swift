import ArgumentParser
import Foundation
import JOSE
import PKCS11
import TokenSigning

struct JWTCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jwt",
        abstract: "Sign arbitrary JWT claims with a key on the token.",
        discussion: """
            Claims are a JSON object: inline, @FILE, or - for standard input (default {}). The header is \
            alg, typ JWT and kid (the certificate's hex SHA-1 when there is a certificate), plus what \
            --x5t, --x5t-s256, --x5c and --header add.

            EXAMPLES:
              p11jwt jwt --key "$KEY" --claims '{"sub":"me"}' --lifetime 300
              echo '{"aud":"api"}' | p11jwt jwt --claims - --alg ES256 --x5t-s256
            """)

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("The claims: JSON, @file or - (stdin).", valueName: "json|@file|-"))
    var claims: String = "{}"

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Extra header members: a JSON object, or @file.", valueName: "json|@file"))
    var header: String?

    @Option(name: .long, help: "auto (RS256 for RSA keys, ES256/384/512 by curve), or a JWS algorithm.")
    var alg: AlgorithmArgument = .auto

    @Option(name: .long, help: ArgumentHelp("Set iat and nbf to now and exp to now + this many seconds (unless the claims have them).", valueName: "seconds"))
    var lifetime: Int?

    @Option(name: .long, help: ArgumentHelp("kid: thumbprint (hex SHA-1), none, or a value. Default: thumbprint when there is a certificate.", valueName: "kid"))
    var kid: String?

    @Option(name: .long, help: "The typ header member; 'none' leaves it out.")
    var typ: String = "JWT"

    @Flag(name: .long, help: "Add x5t (SHA-1 thumbprint).")
    var x5t = false

    @Flag(name: .customLong("x5t-s256"), help: "Add x5t#S256 (SHA-256 thumbprint).")
    var x5tS256 = false

    @OptionGroup var chain: ChainOptions

    @OptionGroup var signing: SigningOptions
    @OptionGroup var outputOptions: OutputOptions

    func validate() throws {
        if let lifetime, lifetime <= 0 { throw ValidationError("--lifetime must be positive") }
    }

    func run() throws {
        var claimObject = try JSONObject(parsing: try readArgument(claims, what: "--claims"), what: "the claims")
        let extraHeader = try header.map { try JSONObject(parsing: try readArgument($0, what: "--header"), what: "--header") } ?? JSONObject()
        let needsCertificate = x5t || x5tS256 || chain.x5c || kid == "thumbprint"
        let session = try signing.open(requireCertificate: needsCertificate, chainFile: chain.chainFile)
        defer { session.close() }
        let signer = session.signer
        let algorithm: JWSAlgorithm
        switch alg {
        case .fixed(let a): algorithm = a
        case .auto: algorithm = signer.keyType.defaultAlgorithm
        }
        guard signer.canSign(algorithm) else {
            if let tokenSigner = signer as? TokenSigner {
                _ = try tokenSigner.token.signingPath(algorithm, key: tokenSigner.key)  // throws the reason
            }
            throw CLIError(message: "the key cannot sign \(algorithm.rawValue) (it can: \(signer.supportedAlgorithms.map(\.rawValue).joined(separator: " ")))")
        }
        if let lifetime {
            let now = Int64(Date().timeIntervalSince1970)
            var times = JSONObject()
            times["iat"] = .int(now)
            times["nbf"] = .int(now)
            times["exp"] = .int(now + Int64(lifetime))
            claimObject.merge(times, overwrite: false)
        }
        let fields = JWSHeaderFields(
            type: typ == "none" ? nil : typ, x5t: x5t, x5tS256: x5tS256,
            kid: keyIDArgument(kid, default: signer.certificate == nil ? .none : .thumbprint), x5c: chain.x5c,
            extra: extraHeader)
        let jws = try JWS.sign(
            header: try fields.header(algorithm: algorithm, certificateChain: signer.certificateChain),
            claims: claimObject, signer: signer)
        try printToken(jws, format: outputOptions.output)
    }
}

/// An argument that is inline text, `@file`, or `-` for standard input.
func readArgument(_ text: String, what: String) throws -> [UInt8] {
    if text == "-" {
        return [UInt8](FileHandle.standardInput.readDataToEndOfFile())
    }
    if text.hasPrefix("@") {
        let path = String(text.dropFirst())
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CLIError(message: "cannot read \(what) file \(path)")
        }
        return [UInt8](data)
    }
    return Array(text.utf8)
}
