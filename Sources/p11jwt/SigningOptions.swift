import Agent
import Entra
import ArgumentParser
import Foundation
import JOSE
import Logging
import PKCS11
import TokenSigning
import X509

/// The signer a command uses, and what to release after: the agent's key when
/// `P11JWT_AGENT_SOCK` is set (and not `--no-agent`), else the token opened in this process.
struct SignerSession: Sendable {
    let signer: any JWSSigner
    let logger: Logger
    /// The token, when this process opened it (nil through the agent).
    let context: TokenContext?
    /// The certificate came from the token with the key (no --cert / --cert-file / chain).
    var certificateFromToken = false

    func close() { context?.close() }

    /// When Entra refused the key as unregistered (AADSTS700027) and the key URI selects by
    /// label (no `id=`), the key the URI selects now, if it is another one: a `rotate` moved
    /// the label between this process's lookup and its request. nil: nothing else to try.
    func rotatedSigner() throws -> TokenSigner? {
        guard let context, certificateFromToken, context.uri.objectID == nil, let current = signer as? TokenSigner else { return nil }
        let key = try context.token.signingKey(context.uri)
        guard key.id != current.key.id else { return nil }
        logger.notice("the key URI now selects another key (rotated while this command ran); trying once with it", metadata: ["key": "\(context.uri.redacted)"])
        return try TokenSigner(token: context.token, key: key)
    }
}

/// `--key` with its module and PIN: every command that uses one key on a token.
struct KeyOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("The private key (a pkcs11: URI). Default: $P11JWT_KEY, else the config file's key.", valueName: "uri"))
    var key: String?

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var pinOptions: PINOptions

    /// --key, then $P11JWT_KEY, then the config file's `key`; nil when none has one.
    func configuredKey() throws -> String? { try moduleOptions.settings().value(.key, flag: key) }

    /// ``configuredKey()``, or an error that says how to give one.
    func keyURI() throws -> String {
        if let key = try configuredKey() { return key }
        throw CLIError(
            message: "no key: give --key pkcs11:…, set $P11JWT_KEY, or put key: in the config file", exitCode: 2,
            hint: "list keys with 'p11jwt objects'")
    }

    /// The key's token, opened and logged in to.
    func open() throws -> TokenContext {
        try TokenContext.open(try keyURI(), moduleOptions: moduleOptions, pins: pinOptions, login: true)
    }

    func open() async throws -> TokenContext {
        try await TokenContext.open(try keyURI(), moduleOptions: moduleOptions, pins: pinOptions, login: true)
    }
}

/// `--cert` / `--cert-file`: the certificate of a key that has one already.
struct CertificateOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The key's certificate: a pkcs11: URI of a certificate object, or a PEM/DER file (default: the certificate on the token with the key's CKA_ID).",
            valueName: "uri|file"))
    var cert: String?

    @Option(name: .long, help: ArgumentHelp("The key's certificate as a PEM or DER file (a PEM may go on with its chain, leaf first).", valueName: "file"))
    var certFile: String?

    func validate() throws {
        if cert != nil && certFile != nil { throw ValidationError("give --cert or --cert-file, not both") }
    }

    /// The certificate file given, if any (a `--cert` that is not a pkcs11: URI is a file).
    var file: String? { certFile ?? cert.flatMap { $0.hasPrefix("pkcs11:") ? nil : $0 } }

    var isGiven: Bool { cert != nil || certFile != nil }
}

/// `--no-agent`: commands that may sign through a running agent.
struct AgentOptions: ParsableArguments {
    @Flag(name: .long, help: "Open the token here even when $P11JWT_AGENT_SOCK names a running agent.")
    var noAgent = false

    var socket: String? { runningAgentSocket(noAgent: noAgent) }
}

/// The key that signs, the certificate that names it, and whether an agent may sign: every
/// command that makes a JWS has these.
struct SigningOptions: ParsableArguments {
    @OptionGroup var keyOptions: KeyOptions
    @OptionGroup var certificateOptions: CertificateOptions
    @OptionGroup var agentOptions: AgentOptions

    var moduleOptions: ModuleOptions { keyOptions.moduleOptions }
    var pinOptions: PINOptions { keyOptions.pinOptions }

    func open(requireCertificate: Bool, chainFile: String? = nil) throws -> SignerSession {
        try SignerSetup(keyOptions: keyOptions, certificate: certificateOptions, agentSocket: agentOptions.socket)
            .open(requireCertificate: requireCertificate, chainFile: chainFile)
    }

    func open(requireCertificate: Bool, chainFile: String? = nil) async throws -> SignerSession {
        let options = self
        return try await BlockingExecutor.shared.run { try options.open(requireCertificate: requireCertificate, chainFile: chainFile) }
    }
}

/// A key and an agent, no certificate option: commands that make the key's certificate.
struct UncertifiedSigningOptions: ParsableArguments {
    @OptionGroup var keyOptions: KeyOptions
    @OptionGroup var agentOptions: AgentOptions

    func open() throws -> SignerSession {
        try SignerSetup(keyOptions: keyOptions, certificate: nil, agentSocket: agentOptions.socket).open(requireCertificate: false)
    }
}

/// How a command gets its signer: the agent's when one runs (the certificate options still
/// apply), else the token's, logged in here.
struct SignerSetup {
    var keyOptions: KeyOptions
    var certificate: CertificateOptions?
    var agentSocket: String?

    func open(requireCertificate: Bool, chainFile: String? = nil) throws -> SignerSession {
        let logger = try keyOptions.moduleOptions.makeLogger()
        let fromToken = certificate?.isGiven != true && chainFile == nil
        guard let socket = agentSocket else {
            let context = try keyOptions.open()
            do {
                let signer = try self.signer(in: context, requireCertificate: requireCertificate, chainFile: chainFile)
                return SignerSession(signer: signer, logger: logger, context: context, certificateFromToken: fromToken)
            } catch {
                context.close()
                throw error
            }
        }
        let keyText = try keyOptions.configuredKey()
        var signer: any JWSSigner = try AgentClient(socketPath: socket).signer(key: keyText)
        if let file = certificate?.file {
            signer = try ChainedSigner(signer, chain: try readCertificates(file) + (try chainFile.map(readCertificates) ?? []))
        } else if let chainFile, let leaf = signer.certificate {
            signer = try ChainedSigner(signer, chain: [leaf] + (try readCertificates(chainFile)).filter { $0.der != leaf.der })
        }
        if requireCertificate && signer.certificate == nil {
            throw CLIError(message: "the agent's key \(keyText ?? "(its default key)") has no certificate\nhint: store the key's certificate on the token with the same CKA_ID, or give it with --cert-file FILE.pem")
        }
        logger.debug("signing through the agent", metadata: ["socket": "\(socket)"])
        return SignerSession(signer: signer, logger: logger, context: nil)
    }

    /// The signer for the key `context` was opened for, with its certificate chain: from --cert
    /// (a certificate object's URI or a file) / --cert-file (plus `chainFile`), else from the token.
    func signer(in context: TokenContext, requireCertificate: Bool, chainFile: String? = nil) throws -> TokenSigner {
        let key = try context.token.signingKey(context.uri)
        var chain: [JWSCertificate]?
        if let file = certificate?.file {
            chain = try readCertificates(file)
        } else if let uri = certificate?.cert {
            let leaf = try Self.certificate(uri: uri, context: context)
            chain = try context.token.certificateChain(startingWith: leaf)
        }
        if let chainFile {
            let extra = try readCertificates(chainFile)
            let leaf = try chain?.first ?? context.token.certificateChain(for: key).first
            chain = (leaf.map { [$0] } ?? []) + extra.filter { $0.der != leaf?.der }
        }
        let signer = try TokenSigner(token: context.token, key: key, certificateChain: chain)
        if requireCertificate && signer.certificate == nil {
            throw CLIError(message: """
                no certificate for key \(key.uri) on token '\(context.token.info.label)'
                hint: store the key's certificate on the token with the same CKA_ID, or give it with --cert pkcs11:… or --cert-file FILE.pem
                """)
        }
        return signer
    }

    /// The one certificate object a URI selects, on the key's token when the URI names it (or
    /// names no token), else on the token the URI names.
    private static func certificate(uri text: String, context: TokenContext) throws -> JWSCertificate {
        let uri = try PKCS11URI(text)
        let sameToken = uri.matches(token: context.token.info)
        let token = sameToken ? context.token : try Token.open(uri, module: context.module, logger: context.logger)
        defer { if !sameToken { token.close() } }
        return try JWSCertificate(der: try token.certificate(matching: uri).der)
    }
}

/// The agent's socket, when commands should sign through it: `$P11JWT_AGENT_SOCK`, unless
/// `--no-agent`.
func runningAgentSocket(noAgent: Bool) -> String? {
    guard !noAgent, let path = ProcessInfo.processInfo.environment["P11JWT_AGENT_SOCK"], !path.isEmpty else { return nil }
    return path
}

/// A signer with a certificate chain given on the command line instead of its own.
struct ChainedSigner: JWSSigner {
    let base: any JWSSigner
    let certificateChain: [JWSCertificate]

    init(_ base: any JWSSigner, chain: [JWSCertificate]) throws {
        if let leaf = chain.first, let key = base.publicKey, leaf.publicKey != key {
            throw CLIError(message: "certificate \(leaf.thumbprint.hexSHA1) (\(leaf.certificate.subject)) does not belong to the agent's key: its public key is a different key")
        }
        self.base = base
        self.certificateChain = chain
    }

    var keyType: JWSKeyType { base.keyType }
    var publicKey: Certificate.PublicKey? { base.publicKey }
    func canSign(_ algorithm: JWSAlgorithm) -> Bool { base.canSign(algorithm) }
    func sign(digest: [UInt8], algorithm: JWSAlgorithm) throws -> [UInt8] { try base.sign(digest: digest, algorithm: algorithm) }
}

/// `--x5c [--chain-file PEM]`: send the certificate chain in the header.
struct ChainOptions: ParsableArguments {
    @Flag(name: .long, help: "Send the certificate chain as x5c, leaf first (Subject Name + Issuer authentication).")
    var x5c = false

    @Option(name: .long, help: ArgumentHelp("More certificates for x5c after the leaf (PEM, issuer first; default: the issuers on the token).", valueName: "file"))
    var chainFile: String?

    func validate() throws {
        if chainFile != nil && !x5c { throw ValidationError("--chain-file is for x5c: add --x5c") }
    }
}

/// The certificates in a PEM or DER file.
func readCertificates(_ path: String) throws -> [JWSCertificate] {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw CLIError(message: "cannot read certificate file \(path)")
    }
    return try JWSCertificate.all(fromPEMOrDER: [UInt8](data), source: path)
}

/// A certificate given as a pkcs11: URI (opened without login) or a PEM/DER file.
func readCertificate(_ argument: String, moduleOptions: ModuleOptions) throws -> JWSCertificate {
    guard argument.hasPrefix("pkcs11:") else { return try readCertificates(argument)[0] }
    let context = try TokenContext.open(argument, moduleOptions: moduleOptions, pins: nil, login: false)
    defer { context.close() }
    return try JWSCertificate(der: try context.token.certificate(matching: context.uri).der)
}

/// `--claim name=value`: the value is JSON when it parses as JSON, else a string.
struct ClaimArgument: ExpressibleByArgument {
    var name: String
    var value: JSONValue

    init?(argument: String) {
        guard let eq = argument.firstIndex(of: "="), eq != argument.startIndex else { return nil }
        name = String(argument[..<eq])
        let text = String(argument[argument.index(after: eq)...])
        value = (try? JSONValue(parsing: text)) ?? .string(text)
    }

    static func object(_ claims: [ClaimArgument]) -> JSONObject {
        var object = JSONObject()
        for claim in claims { object[claim.name] = claim.value }
        return object
    }
}

/// `--alg auto|RS256|…`.
enum AlgorithmArgument: ExpressibleByArgument, Equatable {
    case auto
    case fixed(JWSAlgorithm)

    init?(argument: String) {
        if argument.lowercased() == "auto" { self = .auto; return }
        guard let algorithm = JWSAlgorithm(name: argument) else { return nil }
        self = .fixed(algorithm)
    }

    static var allValueStrings: [String] { ["auto"] + JWSAlgorithm.allCases.map(\.rawValue) }
}

/// `--alg auto|PS256|RS256`: what Entra takes in a client assertion (any case).
enum AssertionAlgorithmArgument: String, ExpressibleByArgument, CaseIterable {
    case auto, PS256, RS256

    init?(argument: String) {
        guard let value = Self.allCases.first(where: { $0.rawValue.lowercased() == argument.lowercased() }) else { return nil }
        self = value
    }

    var choice: ClientAssertion.AlgorithmChoice {
        switch self {
        case .auto: return .auto
        case .PS256: return .fixed(.PS256)
        case .RS256: return .fixed(.RS256)
        }
    }
}

/// `--alg RS256|PS256`: what Graph takes in a proof of possession (any case).
enum ProofAlgorithmArgument: String, ExpressibleByArgument, CaseIterable {
    case RS256, PS256

    init?(argument: String) {
        guard let value = Self.allCases.first(where: { $0.rawValue.lowercased() == argument.lowercased() }) else { return nil }
        self = value
    }

    var algorithm: JWSAlgorithm { self == .RS256 ? .RS256 : .PS256 }
}

/// `--kid thumbprint|none|VALUE`.
func keyIDArgument(_ text: String?, default fallback: JWSHeaderFields.KeyID) -> JWSHeaderFields.KeyID {
    switch text {
    case nil: return fallback
    case "thumbprint": return .thumbprint
    case "none": return .none
    case let value?: return .value(value)
    }
}

/// A signed token as `--output json` prints it.
struct TokenReport: Encodable {
    var header: JSONObject
    var claims: JSONValue
    var token: String

    init(_ jws: JWS) {
        header = jws.header
        claims = jws.claims.map { .object($0) } ?? .string(String(decoding: jws.payload, as: UTF8.self))
        token = jws.compact
    }
}

/// Prints a token: compact on one line, or JSON.
func printToken(_ jws: JWS, format: OutputFormat) throws {
    switch format {
    case .text: print(jws.compact)
    case .json: try printJSON(TokenReport(jws))
    }
}
