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
        abstract: "Sign a digest, or a file hashed here, with a key on the token (the Azure Key Vault 'sign' operation).",
        discussion: """
            The digest is the hash of your message (SHA-256 for *256, SHA-384 for *384, SHA-512 for *512), \
            base64url-encoded; or give the message with --in FILE and it is hashed here. Only the digest \
            goes to the token. The signature is printed base64url; ES* signatures are raw r||s as JWS \
            wants them. With $P11JWT_AGENT_SOCK set the running agent signs (its default key when no \
            key is given).

            EXAMPLES:
              p11jwt sign --key "$KEY" --alg PS256 --in msg
              digest=$(openssl dgst -sha256 -binary msg | basenc --base64url | tr -d =)
              p11jwt sign --alg ES256 --digest "$digest" --output json
            """)

    @Option(name: .long, help: "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or ES512 (any case).")
    var alg: JWSAlgorithm

    // Unconditional: a base64url value may start with "-".
    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("The digest, base64url.", valueName: "b64url"))
    var digest: String?

    @Option(name: .customLong("in"), help: ArgumentHelp("Hash this file here (the algorithm's hash; - for standard input) and sign its digest.", valueName: "file"))
    var input: String?

    enum Output: String, ExpressibleByArgument, CaseIterable { case raw, json }

    @Option(name: .long, help: "raw: the base64url signature; json: {\"kid\",\"alg\",\"value\"}.")
    var output: Output = .raw

    @OptionGroup var keyOptions: KeyOptions
    @OptionGroup var agentOptions: AgentOptions

    struct Result: Encodable {
        var kid: String
        var alg: String
        var value: String
    }

    func validate() throws {
        guard (digest == nil) != (input == nil) else { throw ValidationError("give --digest or --in, one of them") }
        guard let digest else { return }
        guard let bytes = Base64URL.decode(digest) else {
            throw ValidationError("--digest is not base64url (no '=' padding): '\(digest)'")
        }
        guard bytes.count == alg.digestLength else {
            throw ValidationError("--digest is \(bytes.count) bytes; \(alg.rawValue) signs a \(alg.hash.rawValue) digest of \(alg.digestLength) bytes")
        }
    }

    /// The digest to sign: --digest, or the hash of --in's bytes.
    func digestBytes() throws -> [UInt8] {
        if let digest { return Base64URL.decode(digest)! }
        let path = input!
        let data: Data?
        if path == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            data = FileManager.default.contents(atPath: path)
        }
        guard let data else { throw CLIError(message: "cannot read \(path)", exitCode: 2, hint: "check the file given with --in") }
        return alg.hash.hash(data)
    }

    func run() throws {
        let digest = try digestBytes()
        if let socket = agentOptions.socket {
            let request = AgentAPI.SignRequest(key: try keyOptions.configuredKey(), alg: alg.rawValue, value: Base64URL.encode(digest))
            let answer = try AgentClient(socketPath: socket).sign(request)
            return try show(kid: answer.kid, value: answer.value)
        }
        let context = try keyOptions.open()
        defer { context.close() }
        let key = try context.token.signingKey(context.uri)
        let signature = try context.token.sign(digest: digest, algorithm: alg, key: key)
        try show(kid: key.uri, value: Base64URL.encode(signature))
    }

    func show(kid: String, value: String) throws {
        switch output {
        case .raw: print(value)
        case .json: try printJSON(Result(kid: kid, alg: alg.rawValue, value: value))
        }
    }
}
