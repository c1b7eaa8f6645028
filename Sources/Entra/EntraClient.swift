import Foundation
import JOSE
import Logging

/// One application's view of Entra and Graph, with a key that signs its client assertions and
/// proofs: tokens (cached), and `addKey` / `removeKey` on its objects.
public final class EntraClient: Sendable {
    public struct Configuration: Sendable {
        public var tenant: String
        public var clientID: String
        public var cloud: EntraCloud
        public var endpoints: EntraEndpoints
        /// An extra CA to trust (the emulator's `ca.pem`).
        public var caFile: String?
        public var retry: RetryPolicy
        /// nil: no cache.
        public var cacheFile: URL?
        public var algorithm: ClientAssertion.AlgorithmChoice
        /// Send the certificate chain as `x5c` in client assertions (MSAL's `sendX5C`), for apps
        /// that trust a certificate by subject name and issuer.
        public var sendX5C = false

        public init(
            tenant: String, clientID: String, cloud: EntraCloud = .global, endpoints: EntraEndpoints? = nil, caFile: String? = nil,
            retry: RetryPolicy = RetryPolicy(), cacheFile: URL? = nil, algorithm: ClientAssertion.AlgorithmChoice = .auto
        ) {
            self.tenant = tenant
            self.clientID = clientID
            self.cloud = cloud
            self.endpoints = endpoints ?? EntraEndpoints(cloud: cloud)
            self.caFile = caFile
            self.retry = retry
            self.cacheFile = cacheFile
            self.algorithm = algorithm
        }

        /// The tenant and client id, checked (before any PIN is asked for).
        public func validated() throws -> (tenant: String, clientID: String) {
            let tenant = try EntraValue.tenant(tenant)
            let clientID = try EntraValue.guid(
                clientID, what: "client id", hint: "give the application (client) id GUID", settings: ["client-id"])
            return (tenant, clientID)
        }

        /// Microsoft Graph's `.default` scope in this cloud.
        public var graphScope: String { EntraEndpoints.graphScope(cloud: cloud) }
    }

    public let configuration: Configuration
    public let tenant: String
    public let clientID: String
    let http: EntraHTTP
    let tokens: TokenClient
    public let graph: GraphClient
    let cache: TokenCache?
    let logger: Logger

    public init(_ configuration: Configuration, logger: Logger) throws {
        (tenant, clientID) = try configuration.validated()
        self.configuration = configuration
        http = try EntraHTTP(caFile: configuration.caFile, retry: configuration.retry, logger: logger)
        tokens = TokenClient(http: http, authorityHost: configuration.endpoints.authorityHost)
        graph = GraphClient(http: http, graphEndpoint: configuration.endpoints.graphEndpoint, logger: logger)
        cache = configuration.cacheFile.map { TokenCache(file: $0) }
        self.logger = logger
    }

    public func shutdown() async {
        await http.shutdown()
    }

    /// A client assertion signed by `signer` (PS256 + x5t#S256 where the key can, else RS256 + x5t).
    public func assertion(signer: some JWSSigner, now: Date = Date()) async throws -> JWS {
        let parameters = ClientAssertion.Parameters(
            tenant: tenant, clientID: clientID, authorityHost: configuration.endpoints.authorityHost, algorithm: configuration.algorithm,
            x5c: configuration.sendX5C)
        return try await ClientAssertion.make(parameters, signer: signer, now: now, logger: logger)
    }

    /// An access token for `scope`, from the cache unless `useCache` is false, else from the token
    /// endpoint with a fresh assertion from `signer` (then cached).
    public func token(scope: String, signer: some JWSSigner, useCache: Bool = true) async throws -> AccessToken {
        guard let certificate = signer.certificate else {
            throw EntraError(.invalidParameter, "the signing key has no certificate", hint: "store the key's certificate on the token or give it", settings: ["cert"])
        }
        let key = TokenCache.Key(
            authority: configuration.endpoints.authorityHost.absoluteString, tenant: tenant, clientID: clientID, scope: scope,
            thumbprint: certificate.thumbprint.hexSHA1)
        if useCache, let cache, let cached = try cache.lookup(key) {
            logger.debug("token from cache", metadata: ["scope": "\(scope)"])
            return cached
        }
        let token: AccessToken
        do {
            token = try await tokens.acquire(tenant: tenant, clientID: clientID, scope: scope, assertion: try await assertion(signer: signer).compact)
        } catch var error as EntraError where error.aadsts == 700027 && !error.message.contains("signature validation") {
            // Entra echoes the header's thumbprint (SHA-256 for x5t#S256); name the certificate as
            // the portal lists it, by SHA-1.
            error.hint = "this certificate is not registered on the app: thumbprint \(certificate.thumbprint.hexSHA1) (SHA-1; SHA-256 \(certificate.thumbprint.hexSHA256)); register it (Certificates & secrets, or addKey) or sign with the registered key. Right after addKey, Entra may take minutes to replicate a new key."
            throw error
        }
        if let cache { try cache.store(token, for: key) }
        return token
    }

    /// Forgets cached tokens obtained with `thumbprint` for `scope`.
    public func forgetToken(scope: String, thumbprint: String) throws {
        try cache?.remove(TokenCache.Key(
            authority: configuration.endpoints.authorityHost.absoluteString, tenant: tenant, clientID: clientID, scope: scope, thumbprint: thumbprint))
    }

    /// The object id a proof for `target` must name: `given`, the target's own, or read from
    /// Graph (which needs a read permission) for the appId forms.
    public func objectID(of target: GraphKeyTarget, given: String? = nil, signer: some JWSSigner) async throws -> String {
        if let id = given ?? target.objectID { return try ProofOfPossession.validated(objectID: id) }
        let bearer = try await token(scope: configuration.graphScope, signer: signer).accessToken
        do {
            guard let id = try await graph.read(target, bearer: bearer).id else {
                throw EntraError(.protocolViolation, "Graph's answer for \(target) has no id")
            }
            return id
        } catch let error as EntraError where error.code == .graphRefused {
            throw EntraError(
                .invalidParameter, "the proof needs the object id of \(target), and Graph would not say it (\(error.message))",
                hint: "give the object id as well (the 'Object ID' of the application or service principal)", settings: ["object-id"])
        }
    }

    /// `addKey` with a Graph token and a proof both from `signer` (a key registered on the object).
    public func addKey(
        _ target: GraphKeyTarget, objectID: String, certificateDER: [UInt8], displayName: String?, signer: some JWSSigner
    ) async throws -> KeyCredentialInfo {
        let bearer = try await token(scope: configuration.graphScope, signer: signer).accessToken
        let proof = try await ProofOfPossession.make(objectID: objectID, signer: signer, logger: logger).compact
        return try await graph.addKey(target, certificateDER: certificateDER, displayName: displayName, proof: proof, bearer: bearer)
    }

    /// `removeKey` with a Graph token and a proof both from `signer` (a key registered on the object).
    public func removeKey(
        _ target: GraphKeyTarget, objectID: String, keyID: String, signer: some JWSSigner
    ) async throws {
        let keyID = try EntraValue.guid(keyID, what: "key id", hint: "give the keyId GUID of the credential (the application's key credentials list it)", settings: ["key-id"])
        let bearer = try await token(scope: configuration.graphScope, signer: signer).accessToken
        let proof = try await ProofOfPossession.make(objectID: objectID, signer: signer, logger: logger).compact
        try await graph.removeKey(target, keyID: keyID, proof: proof, bearer: bearer)
    }

    /// The target's key credentials (needs a Graph read permission).
    public func keyCredentials(_ target: GraphKeyTarget, signer: some JWSSigner) async throws -> [KeyCredentialInfo] {
        let bearer = try await token(scope: configuration.graphScope, signer: signer).accessToken
        return try await graph.keyCredentials(target, bearer: bearer)
    }
}
