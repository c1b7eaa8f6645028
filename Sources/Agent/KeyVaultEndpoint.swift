import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import JOSE
import LocalCA
import Logging
import NIOCore
import PKCS11
import ServiceLifecycle
import Synchronization
import TokenSigning

/// The Key Vault keys REST surface over the agent's token, on loopback HTTPS, so code written
/// for Azure Key Vault's `sign` (azure-keyvault-keys' `CryptographyClient`, the REST recipe that
/// signs a client assertion's digest) runs against the HSM with only the vault URL changed:
///
///     GET  /keys?api-version=…                      the keys (label = key name)
///     GET  /keys/{name}[/{version}]?api-version=…   the public key as a JWK, key_ops sign/verify
///     POST /keys/{name}[/{version}]/sign            {"alg","value": base64url digest} → {"kid","value"}
///     POST /keys/{name}[/{version}]/verify          {"alg","digest","value"} → {"value": bool}
///
/// A key's name is its label and its version the hex of its `CKA_ID`. Every request needs a
/// bearer token the agent's own managed-identity endpoint issued for ``resource``; without one
/// the answer is Key Vault's challenge (401, `WWW-Authenticate: Bearer authorization=…,
/// resource=…`). Errors have Key Vault's body: `{"error":{"code","message"}}`.
struct KeyVaultEndpoint: Sendable {
    let agent: Agent
    let vault: KeyVault
    let identity: ServerIdentity
    let logger: Logger

    func application(onListening: @escaping @Sendable (Int) async -> Void) throws -> some ServiceLifecycle.Service {
        let router = Router(context: LoopbackRequestContext.self)
        for method in [HTTPRequest.Method.get, .post, .put, .patch, .delete] {
            router.on("/**", method: method) { request, context -> Response in
                await answer(request, peerUID: { context.peerUID })
            }
        }
        return Application(
            router: router,
            server: try .tls(
                .http1(configuration: .init(additionalChannelHandlers: [OversizedRequestCloser(limit: 1 << 16)], idleTimeout: Agent.idleTimeout)),
                tlsConfiguration: identity.tlsConfiguration()),
            configuration: .init(
                address: .hostname("127.0.0.1", port: vault.port), serverName: "p11jwt-agent-key-vault",
                availableConnectionsDelegate: MaximumAvailableConnections(Agent.maximumConnections, logger: logger)),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? vault.port
                vault.boundPort.withLock { $0 = port }
                logger.info("Key Vault endpoint listening", metadata: ["url": "https://127.0.0.1:\(port)/"])
                await onListening(port)
            },
            logger: logger)
    }

    /// A Key Vault error answer.
    struct Failure: Error {
        let status: HTTPResponse.Status
        let code: String
        let message: String
        var challenge = false
    }

    /// `peerUID`: the connecting process's uid, asked for when the key is an identity's that is
    /// limited to some users (``LoopbackPeer``).
    func answer(_ request: Request, peerUID: () -> uid_t? = { nil }) async -> Response {
        do {
            let response = try await route(request, peerUID: peerUID)
            agent.record("key-vault")
            return response
        } catch let failure as Failure {
            // The challenge to an unauthenticated first request is how every SDK starts: not an error.
            if !failure.challenge || request.headers[.authorization] != nil {
                agent.record("key-vault", error: (failure.code, failure.message))
            }
            return respond(failure)
        } catch let error as PKCS11Error {
            agent.keeper.noteFailure(error)
            logger.notice("key vault: token error", metadata: ["error": "\(error.code)", "function": "\(error.function ?? "-")"])
            let failure = Failure(status: .badGateway, code: "HSMError", message: "\(error.message) (\(error.returnValue?.name ?? "\(error.code)"))")
            agent.record("key-vault", error: (failure.code, failure.message))
            return respond(failure)
        } catch {
            agent.record("key-vault", error: ("InternalError", "\(error)"))
            return respond(Failure(status: .internalServerError, code: "InternalError", message: "\(error)"))
        }
    }

    func respond(_ failure: Failure) -> Response {
        var response = (try? json(["error": ["code": failure.code, "message": failure.message]], status: failure.status))
            ?? Response(status: .internalServerError)
        if failure.challenge {
            response.headers[HTTPField.Name("WWW-Authenticate")!] = vault.challenge
        }
        return response
    }

    func route(_ request: Request, peerUID: () -> uid_t?) async throws -> Response {
        var request = request
        try vault.authorize(request.headers[.authorization])
        let query = request.uri.queryParameters
        guard let version = query.get("api-version") else {
            throw Failure(status: .badRequest, code: "BadParameter", message: "The request is missing the api-version query parameter.")
        }
        guard KeyVault.apiVersions.contains(version) else {
            throw Failure(
                status: .badRequest, code: "BadParameter",
                message: "The specified version (\(version)) is not recognized. Consider using the latest supported version (\(KeyVault.apiVersions.last!)).")
        }
        // /keys, /keys/{name}, /keys/{name}/{version}, …/{version}/sign|verify; an empty version
        // (`/keys/name//sign`, as SDKs send for "latest") is the latest.
        var parts = request.uri.path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        if parts.first == "" { parts.removeFirst() }
        if parts.last == "" && parts.count > 1 { parts.removeLast() }
        guard parts.first == "keys" else {
            throw Failure(status: .notFound, code: "NotFound", message: "This vault serves only the keys API (/keys).")
        }
        let method = request.method
        switch (method, parts.count) {
        case (.get, 1):
            return try json(["value": try await vault.list(agent: agent)])
        case (.get, 2), (.get, 3):
            let key = try await vault.key(agent: agent, name: parts[1], version: parts.count == 3 ? parts[2] : nil)
            return try json(KeyVault.KeyBundle(key: key.jwk, attributes: .init()))
        case (.post, 3), (.post, 4):
            let operation = parts.last!
            let key = try await vault.key(agent: agent, name: parts[1], version: parts.count == 4 ? parts[2] : nil)
            let body = try await request.collectBody(upTo: 1 << 16)
            switch operation {
            case "sign":
                // The key of an identity limited to some uids signs only for them, as on the socket.
                do {
                    try agent.authorize(uid: peerUID, gid: nil, identity: nil, key: key.signer)
                } catch let error as AgentError {
                    throw Failure(status: .forbidden, code: "Forbidden", message: error.messageWithHint)
                }
                return try await sign(key, body: Data(buffer: body))
            case "verify": return try await verify(key, body: Data(buffer: body))
            default:
                throw Failure(status: .badRequest, code: "BadParameter", message: "Operation '\(operation)' is not supported: this vault signs and verifies.")
            }
        default:
            throw Failure(status: .methodNotAllowed, code: "BadParameter", message: "\(method) \(request.uri.path) is not part of the keys API this vault serves.")
        }
    }

    struct SignRequest: Decodable {
        var alg: String?
        var value: String?
    }

    struct VerifyRequest: Decodable {
        var alg: String?
        var digest: String?
        var value: String?
    }

    /// The algorithm and digest of a request, refused the way Key Vault refuses them.
    func checked(_ alg: String?, _ digest: String?, for key: KeyVault.Key) throws -> (JWSAlgorithm, [UInt8]) {
        guard let alg, let algorithm = JWSAlgorithm(name: alg) else {
            throw Failure(status: .badRequest, code: "BadParameter", message: "Invalid algorithm '\(alg ?? "")': use one of \(key.algorithms.map(\.rawValue).joined(separator: ", ")).")
        }
        guard key.algorithms.contains(algorithm) else {
            throw Failure(status: .badRequest, code: "BadParameter", message: "Algorithm \(alg) is not valid for key type \(key.jwk.kty): use one of \(key.algorithms.map(\.rawValue).joined(separator: ", ")).")
        }
        guard let digest, let bytes = try? Base64URL.decode(digest) else {
            throw Failure(status: .badRequest, code: "BadParameter", message: "The digest must be base64url.")
        }
        guard bytes.count == algorithm.hash.length else {
            throw Failure(
                status: .badRequest, code: "BadParameter",
                message: "Invalid digest length \(bytes.count) for \(alg): it takes a \(algorithm.hash.length)-byte digest.")
        }
        return (algorithm, bytes)
    }

    func decode<T: Decodable>(_ type: T.Type, _ body: Data) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: body)
        } catch {
            throw Failure(status: .badRequest, code: "BadParameter", message: "The request body is not valid JSON for this operation.")
        }
    }

    func sign(_ key: KeyVault.Key, body: Data) async throws -> Response {
        let request = try decode(SignRequest.self, body)
        let (algorithm, digest) = try checked(request.alg, request.value, for: key)
        let signature = try await key.signer.sign(digest: digest, algorithm: algorithm)
        logger.info("key vault: signed", metadata: ["key": "\(key.name)", "alg": "\(algorithm.rawValue)"])
        return try json(["kid": key.jwk.kid, "value": Base64URL.encode(signature)])
    }

    func verify(_ key: KeyVault.Key, body: Data) async throws -> Response {
        let request = try decode(VerifyRequest.self, body)
        let (algorithm, digest) = try checked(request.alg, request.digest, for: key)
        guard let value = request.value, let signature = try? Base64URL.decode(value) else {
            throw Failure(status: .badRequest, code: "BadParameter", message: "The signature value must be base64url.")
        }
        let signer = key.signer
        let valid = try await signer.token.run { try $0.verify(digest: digest, signature: signature, algorithm: algorithm, key: signer.key) }
        return try json(["value": valid])
    }
}

/// What the agent's Key Vault surface knows: its port, the resource its tokens are for, the
/// tokens issued, and which token keys it serves under which names.
public final class KeyVault: Sendable {
    /// The `api-version`s answered: Key Vault's 7.x versions and the dated one current SDKs send.
    static let apiVersions: [String] = ["7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01"]
    /// How long an issued bearer token is valid.
    static let tokenLifetime: TimeInterval = 3600

    let port: Int
    let tenant: String
    /// Names → key URIs; empty: every private key whose label is a valid Key Vault name.
    let names: [String: String]
    let boundPort = Mutex<Int?>(nil)
    private let tokens = Mutex<[String: Date]>([:])

    public init(port: Int, tenant: String?, names: [String: String]) {
        self.port = port
        self.tenant = tenant ?? "common"
        self.names = names
    }

    /// The vault URL clients use.
    public var url: String? { boundPort.withLock { $0 }.map { "https://127.0.0.1:\($0)/" } }

    /// The resource the managed-identity endpoint issues this vault's tokens for. Azure SDKs
    /// accept a challenge only when the vault's host ends with "." + the resource's host, so
    /// for a vault at 127.0.0.1:PORT the resource is https://0.0.1:PORT.
    public var resource: String? { boundPort.withLock { $0 }.map { "https://0.0.1:\($0)" } }

    var challenge: String {
        "Bearer authorization=\"https://login.microsoftonline.com/\(tenant)\", resource=\"\(resource ?? "")\""
    }

    /// Whether `resource` (as the managed-identity endpoint got it) is this vault's.
    func isResource(_ candidate: String) -> Bool {
        guard let resource else { return false }
        var candidate = candidate
        while candidate.hasSuffix("/") { candidate.removeLast() }
        return candidate.lowercased() == resource
    }

    /// A new bearer token for this vault.
    func issueToken() -> (token: String, expiresOn: Date) {
        var rng = SystemRandomNumberGenerator()
        let token = "p11jwt-kv." + Base64URL.encode((0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) })
        let expiresOn = Date().addingTimeInterval(Self.tokenLifetime)
        tokens.withLock { tokens in
            tokens = tokens.filter { $0.value > Date() }
            tokens[token] = expiresOn
        }
        return (token, expiresOn)
    }

    func authorize(_ header: String?) throws {
        guard let header, header.lowercased().hasPrefix("bearer ") else {
            throw KeyVaultEndpoint.Failure(
                status: .unauthorized, code: "Unauthorized", message: "AKV10000: Request is missing a Bearer or PoP token.", challenge: true)
        }
        let presented = String(header.dropFirst("bearer ".count)).trimmingCharacters(in: .whitespaces)
        let known = tokens.withLock { tokens in
            tokens.contains { constantTimeEquals(Array($0.key.utf8), Array(presented.utf8)) && $0.value > Date() }
        }
        guard known else {
            throw KeyVaultEndpoint.Failure(
                status: .unauthorized, code: "Unauthorized",
                message: "The bearer token was not issued for this vault or has expired: get one from the agent's managed-identity endpoint for \(resource ?? "the vault's resource").",
                challenge: true)
        }
    }

    struct JWK: Encodable {
        var kid: String
        var kty: String
        var key_ops: [String] = ["sign", "verify"]
        var n: String?
        var e: String?
        var crv: String?
        var x: String?
        var y: String?
    }

    struct Attributes: Encodable {
        var enabled = true
        var exportable = false
        var recoveryLevel = "Purgeable"
    }

    struct KeyBundle: Encodable {
        var key: JWK
        var attributes: Attributes
    }

    struct KeyItem: Encodable {
        var kid: String
        var attributes: Attributes
    }

    struct Key {
        let name: String
        let signer: TokenSigner
        let jwk: JWK
        let algorithms: [JWSAlgorithm]
    }

    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 127 && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
    }

    func keyURI(name: String, version: String?) throws -> String {
        guard Self.isValidName(name) else {
            throw KeyVaultEndpoint.Failure(status: .badRequest, code: "BadParameter", message: "'\(name)' is not a valid key name: 1-127 letters, digits and dashes.")
        }
        var uri: String
        if names.isEmpty {
            uri = "pkcs11:object=\(name)"
        } else if let mapped = names[name] {
            uri = mapped
        } else {
            throw Self.notFound(name)
        }
        if let version, !version.isEmpty {
            guard version.count % 2 == 0, let id = Hex.decode(version), !id.isEmpty else { throw Self.notFound(name + "/" + version) }
            // The id goes into the path part, before any `?module-…` query.
            let query = uri.firstIndex(of: "?").map { String(uri[$0...]) } ?? ""
            uri = String(uri.dropLast(query.count)) + ";id=" + id.map { String(format: "%%%02X", $0) }.joined() + query
        }
        return uri
    }

    static func notFound(_ what: String) -> KeyVaultEndpoint.Failure {
        KeyVaultEndpoint.Failure(status: .notFound, code: "KeyNotFound", message: "A key with (name/id) \(what) was not found in this key vault.")
    }

    func key(agent: Agent, name: String, version: String?) async throws -> Key {
        let uri = try keyURI(name: name, version: version)
        let signer: TokenSigner
        do {
            signer = try await agent.signer(uri)
        } catch let error as PKCS11Error where [.objectNotFound, .objectAmbiguous, .invalidArgument].contains(error.code) {
            throw Self.notFound(version.map { "\(name)/\($0)" } ?? name)
        } catch is AgentError {
            throw Self.notFound(name)
        }
        return try describe(signer, name: name)
    }

    func describe(_ signer: TokenSigner, name: String) throws -> Key {
        let version = Hex.encode(signer.key.id ?? []).lowercased()
        let kid = "\(url ?? "https://127.0.0.1/")keys/\(name)/\(version)"
        var jwk = JWK(kid: kid, kty: "RSA-HSM")
        switch signer.key.publicKey {
        case .rsa(let modulus, let exponent)?:
            jwk.n = Base64URL.encode(Array(modulus.drop(while: { $0 == 0 })))
            jwk.e = Base64URL.encode(Array(exponent.drop(while: { $0 == 0 })))
        case .ec(let curve, let point)?:
            jwk.kty = "EC-HSM"
            jwk.crv = curve.rawValue
            let length = (point.count - 1) / 2
            jwk.x = Base64URL.encode(Array(point[1...length]))
            jwk.y = Base64URL.encode(Array(point[(1 + length)...]))
        case nil:
            throw KeyVaultEndpoint.Failure(status: .badRequest, code: "BadParameter", message: "The token gives no public key for '\(name)'.")
        }
        return Key(name: name, signer: signer, jwk: jwk, algorithms: signer.key.algorithmsByKeyType)
    }

    func list(agent: Agent) async throws -> [KeyItem] {
        let token = try agent.keeper.current()
        let keys: [(String, PrivateKeyObject)]
        if names.isEmpty {
            keys = try await token.run { token in
                try token.privateKeys().compactMap { key in key.label.flatMap { Self.isValidName($0) ? ($0, key) : nil } }
            }
        } else {
            var found: [(String, PrivateKeyObject)] = []
            for (name, uri) in names.sorted(by: { $0.key < $1.key }) {
                if let signer = try? await agent.signer(uri) { found.append((name, signer.key)) }
            }
            keys = found
        }
        return keys.filter { $0.1.id?.isEmpty == false }.map { name, key in
            KeyItem(kid: "\(url ?? "https://127.0.0.1/")keys/\(name)/\(Hex.encode(key.id ?? []).lowercased())", attributes: .init())
        }
    }
}
