import Diagnostics
import Entra
import Foundation
import Synchronization
import Hummingbird
import JOSE
import Logging
import NIOCore
import PKCS11
import TokenSigning

/// The Unix-socket API: `/v1/sign`, `/v1/assertion`, `/v1/pop`, `/v1/jwt`, `/v1/token`,
/// `/v1/keys`, `/v1/health`, `/v1/status`. Every request is logged with an id, the operation, the key and the
/// latency — never a PIN, a token or an assertion.
struct AgentRoutes: Sendable {
    let agent: Agent

    func router() -> Router<AgentRequestContext> {
        let router = Router(context: AgentRequestContext.self)
        router.get("/v1/health") { _, _ -> Response in
            let token = try? agent.keeper.current()
            return try json(AgentAPI.Health(
                status: token == nil ? "tokenUnavailable" : "ok", token: agent.keeper.label, loggedIn: token?.isLoggedIn ?? false, pid: getpid()))
        }
        router.get("/v1/status") { _, _ -> Response in
            try json(await agent.status())
        }
        router.get("/v1/keys") { request, context -> Response in
            try await handle("keys", request, context) {
                let query = request.uri.queryParameters
                let signers: [TokenSigner]
                if let selected = query.get("key") {
                    signers = [try await agent.signer(selected)]
                } else if query.has("default") {
                    signers = [try await agent.signer(nil)]
                } else {
                    let token = try agent.keeper.current()
                    signers = try await token.run { token in try token.privateKeys().compactMap { try? TokenSigner(token: token, key: $0) } }
                }
                return AgentAPI.KeysResponse(keys: signers.map(Self.info))
            }
        }
        router.post("/v1/sign") { request, context -> Response in
            try await handle("sign", request, context) { (body: AgentAPI.SignRequest) in
                let signer = try await signer(body.key, context)
                guard let algorithm = JWSAlgorithm(name: body.alg) else {
                    throw AgentError("badRequest", "unknown alg '\(body.alg)'", hint: "RS256 … PS512, ES256 … ES512")
                }
                guard let digest = Base64URL.decode(body.value) else {
                    throw AgentError("badRequest", "value is not base64url", hint: "send the digest base64url-encoded, without padding")
                }
                let signature = try await signer.sign(digest: digest, algorithm: algorithm)
                return AgentAPI.SignResponse(kid: signer.key.uri, value: Base64URL.encode(signature))
            }
        }
        router.post("/v1/assertion") { request, context -> Response in
            try await handle("assertion", request, context) { (body: AgentAPI.AssertionRequest) in
                let served = try identity(body.identity)
                try agent.authorize(await context.peerCredential(), identity: body.identity == nil ? nil : served, key: nil)
                let signer = try await signer(body.key ?? served?.identity.key, context)
                let entra = served?.identity.entra ?? agent.configuration.entra
                let algorithm: ClientAssertion.AlgorithmChoice = try body.alg.map { name in
                    guard let a = JWSAlgorithm(name: name) else { throw AgentError("badRequest", "unknown alg '\(name)'") }
                    return .fixed(a)
                } ?? .auto
                let parameters = ClientAssertion.Parameters(
                    tenant: body.tenant ?? entra?.tenant ?? "", clientID: body.clientId ?? entra?.clientID ?? "",
                    authorityHost: entra?.endpoints.authorityHost ?? EntraCloud.global.authorityHost,
                    lifetime: body.lifetime ?? ClientAssertion.defaultLifetime, algorithm: algorithm)
                return AgentAPI.TokenResponse(token: try await ClientAssertion.make(parameters, signer: signer, logger: context.logger).compact)
            }
        }
        router.post("/v1/pop") { request, context -> Response in
            try await handle("pop", request, context) { (body: AgentAPI.PopRequest) in
                let signer = try await signer(body.key, context)
                return AgentAPI.TokenResponse(token: try await ProofOfPossession.make(objectID: body.objectId, signer: signer, logger: context.logger).compact)
            }
        }
        router.post("/v1/jwt") { request, context -> Response in
            try await handle("jwt", request, context) { (body: AgentAPI.JWTRequest) in
                let signer = try await signer(body.key, context)
                let claims = try JSONObject(parsing: Array(body.claims.utf8), what: "claims")
                let algorithm: JWSAlgorithm
                if let name = body.alg {
                    guard let a = JWSAlgorithm(name: name) else { throw AgentError("badRequest", "unknown alg '\(name)'") }
                    algorithm = a
                } else {
                    algorithm = signer.keyType.defaultAlgorithm
                }
                let header = try JWSHeaderFields(type: "JWT").header(algorithm: algorithm, certificateChain: signer.certificateChain)
                return AgentAPI.TokenResponse(token: try await JWS.sign(header: header, claims: claims, signer: signer).compact)
            }
        }
        router.post("/v1/token") { request, context -> Response in
            try await handle("token", request, context) { (body: AgentAPI.AccessTokenRequest) in
                guard let served = try identity(body.identity) else {
                    throw AgentError("notConfigured", "this agent was started without a tenant and client id", hint: "start it with a tenant and a client id")
                }
                let keyURI = body.key ?? served.identity.key
                try agent.authorize(await context.peerCredential(), identity: served, key: try await agent.signer(keyURI))
                let scope = body.scope ?? served.broker.graphScope
                let token = try await agent.accessToken(
                    broker: served.broker, scope: scope, keyURI: keyURI, federation: body.viaFic.map { ($0, body.viaFicTenant) })
                return AgentAPI.AccessTokenResponse(
                    access_token: token.accessToken, token_type: token.tokenType, expires_on: Int(token.expiresOn.timeIntervalSince1970), scope: scope)
            }
        }
        return router
    }

    /// The signer for a request's key, for a peer the key's identity allows.
    func signer(_ key: String?, _ context: AgentRequestContext) async throws -> TokenSigner {
        let signer = try await agent.signer(key)
        try agent.authorize(await context.peerCredential(), identity: nil, key: signer)
        return signer
    }

    /// The identity a request names (nil: the default); an error for a name the agent does not serve.
    func identity(_ selector: String?) throws -> Agent.Served? {
        if let selector, agent.identity(selector) == nil {
            throw AgentError(
                "unknownIdentity", "this agent serves no identity '\(selector)'",
                hint: "identities served: \(agent.served.map { "\($0.identity.name) (\($0.identity.entra.clientID))" }.joined(separator: ", "))")
        }
        return agent.identity(selector)
    }

    static func info(_ signer: TokenSigner) -> AgentAPI.KeyInfo {
        let keyType: String
        switch signer.keyType {
        case .rsa(let bits): keyType = "rsa:\(bits)"
        case .ec(let curve): keyType = "ec:\(curve.rawValue.lowercased().replacingOccurrences(of: "-", with: ""))"
        }
        return AgentAPI.KeyInfo(
            uri: signer.key.uri, label: signer.key.label, id: signer.key.identity.idHex,
            keyType: keyType, algorithms: signer.supportedAlgorithms.map(\.rawValue),
            certificates: signer.certificateChain.map(\.x5cValue),
            publicKey: (try? signer.key.publicKey?.subjectPublicKeyInfo()).map { Data($0).base64EncodedString() })
    }

    /// Decodes the body, runs `body`, encodes the answer; errors become ``AgentAPI/ErrorBody`` (see ``failure(_:_:_:)``).
    func handle<In: AgentKeyedRequest, Out: Encodable>(
        _ operation: String, _ request: Request, _ context: AgentRequestContext, _ body: (In) async throws -> Out
    ) async throws -> Response {
        var request = request
        let bytes = try await request.collectBody(upTo: Agent.maximumBody)
        let input: In
        do {
            input = try JSONDecoder().decode(In.self, from: Data(buffer: bytes))
        } catch {
            return try failure(AgentError("badRequest", "the \(operation) request is not valid JSON for it: \(error)"), operation, context)
        }
        return try await handle(operation, request, context, key: input.key ?? agent.configuration.defaultKey) { try await body(input) }
    }

    func handle<Out: Encodable>(
        _ operation: String, _ request: Request, _ context: AgentRequestContext, key: String? = nil, _ body: () async throws -> Out
    ) async throws -> Response {
        let started = ContinuousClock.now
        var logger = context.logger
        logger[metadataKey: "op"] = "\(operation)"
        // Redacted: a URI may carry pin-value.
        if let key { logger[metadataKey: "key"] = "\((try? PKCS11URI(key).redacted) ?? "(not a pkcs11: URI)")" }
        do {
            let output = try await body()
            agent.record(operation)
            let elapsed = ContinuousClock.now - started
            logger.info("ok", metadata: ["ms": "\(elapsed.components.attoseconds / 1_000_000_000_000_000 + elapsed.components.seconds * 1000)"])
            return try json(output)
        } catch let error as PKCS11Error where agent.keeper.noteFailure(error) {
            return try failure(
                AgentError(
                    "tokenUnavailable", "token '\(agent.keeper.label)' is gone: \(error)",
                    hint: "insert the token again / bring the HSM back: the agent logs in again by itself"),
                operation, context)
        } catch let error as any DiagnosticError {
            return try failure(error, operation, context)
        }
    }

    /// The one mapping from a library's error to the agent's answer: its code (the agent's own,
    /// or the library's qualified one), message and hint, and an HTTP status saying whose fault
    /// it is — the request's (400), the token's (503) or Entra's (502).
    func failure(_ error: any DiagnosticError, _ operation: String, _ context: AgentRequestContext) throws -> Response {
        var message = error.message
        if let function = error.details["function"] {
            message += " (\(function)\(error.details["returnValue"].map { ": \($0)" } ?? ""))"
        }
        let body = AgentAPI.ErrorBody(error: error.domain == "agent" ? error.codeName : error.qualifiedCode, message: message, hint: error.hint)
        context.logger.notice("refused", metadata: ["op": "\(operation)", "error": "\(body.error)"])
        agent.record(operation, error: (body.error, message))
        return try json(body, status: Self.status(of: error))
    }

    static func status(of error: any DiagnosticError) -> HTTPResponse.Status {
        switch error {
        case let error as AgentError:
            if error.codeName == "forbidden" { return .forbidden }
            return error.meansUnavailable ? .serviceUnavailable : .badRequest
        case let error as PKCS11Error:
            // The request's fault, or the token's (removed, logged out, failing).
            let requestFaults: [PKCS11Error.Code] = [
                .objectNotFound, .objectAmbiguous, .invalidURI, .invalidArgument, .mechanismUnsupported, .keyUnsuitable, .invalidDigest,
                .certificateMismatch,
            ]
            return requestFaults.contains(error.code) ? .badRequest : .serviceUnavailable
        case let error as EntraError:
            return error.code == .invalidParameter || error.code == .unsupportedKey ? .badRequest : .badGateway
        default:
            return .badRequest
        }
    }
}

func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(value))))
}

/// The socket API's request context: Hummingbird's, plus the connection's peer credentials
/// (`SO_PEERCRED`), which identity allow lists are checked against.
struct AgentRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    private let peer: EventLoopFuture<PeerCredential>?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        peer = (source.channel as? SocketOptionProvider)?.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
    }

    /// nil when the connection's credentials cannot be read (not a Unix socket).
    func peerCredential() async -> PeerCredential? {
        try? await peer?.get()
    }
}
