import Agent
import ArgumentParser
import Foundation
import JOSE
import PKCS11
import TokenSigning

extension JWSAlgorithm: ExpressibleByArgument {
    /// Any case, as `jwt --alg` takes it: `ps256` is PS256.
    public init?(argument: String) { self.init(name: argument) }
}

struct SignCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sign",
        abstract: "Sign a digest with a key on the token (the Azure Key Vault 'sign' operation).",
        discussion: """
            The digest is the hash of your message (SHA-256 for *256, SHA-384 for *384, SHA-512 for *512),
            base64url-encoded. Only the digest goes to the token. The signature is printed base64url;
            ES* signatures are raw r||s as JWS wants them.
            """)

    @Option(name: .long, help: ArgumentHelp("The private key (a pkcs11: URI).", valueName: "uri"))
    var key: String

    @Option(name: .long, help: "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or ES512.")
    var alg: JWSAlgorithm

    // Unconditional: a base64url value may start with "-".
    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("The digest, base64url.", valueName: "b64url"))
    var digest: String

    enum Output: String, ExpressibleByArgument { case raw, json }

    @Option(name: .long, help: "raw: the base64url signature; json: {\"kid\",\"alg\",\"value\"}.")
    var output: Output = .raw

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var pinOptions: PINOptions

    @Flag(name: .long, help: "Open the token here even when $P11JWT_AGENT_SOCK names a running agent.")
    var noAgent = false

    struct Result: Encodable {
        var kid: String
        var alg: String
        var value: String
    }

    func validate() throws {
        guard let bytes = Base64URL.decode(digest) else {
            throw ValidationError("--digest is not base64url (no '=' padding): '\(digest)'")
        }
        guard bytes.count == alg.digestLength else {
            throw ValidationError("--digest is \(bytes.count) bytes; \(alg.rawValue) signs a \(alg.hash.rawValue) digest of \(alg.digestLength) bytes")
        }
    }

    func run() throws {
        if let socket = runningAgentSocket(noAgent: noAgent) {
            let answer = try AgentClient(socketPath: socket).sign(.init(key: key, alg: alg.rawValue, value: digest))
            return try show(kid: answer.kid, value: answer.value)
        }
        let context = try TokenContext.open(key, moduleOptions: moduleOptions, pins: pinOptions, login: true)
        defer { context.close() }
        let key = try context.token.signingKey(context.uri)
        let signature = try context.token.sign(digest: Base64URL.decode(digest)!, algorithm: alg, key: key)
        try show(kid: key.uri, value: Base64URL.encode(signature))
    }

    func show(kid: String, value: String) throws {
        switch output {
        case .raw: print(value)
        case .json: try printJSON(Result(kid: kid, alg: alg.rawValue, value: value))
        }
    }
}
