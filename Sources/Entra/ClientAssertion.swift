import Foundation
import JOSE
import Logging

/// The client assertion (`private_key_jwt`, RFC 7523) an application presents to the Entra
/// token endpoint instead of a secret.
///
/// Header: `alg`, `typ: JWT` and the certificate thumbprint — `x5t#S256` with PS256 (the current
/// documented form), `x5t` with RS256 (the legacy form Entra still accepts). Claims: `aud` = the
/// tenant's token endpoint, `iss` = `sub` = the client id, a fresh `jti`, `nbf` = `iat` = now,
/// `exp` = now + lifetime.
public enum ClientAssertion {
    public static let defaultLifetime = 600
    public static let maximumLifetime = 3600
    /// The claims the assertion must carry; extra claims may replace them only when asked to.
    public static let requiredClaims: Set<String> = ["aud", "iss", "sub", "jti", "nbf", "iat", "exp"]

    /// The algorithm to use: `auto` picks PS256 when the token can do PSS, else RS256.
    public enum AlgorithmChoice: Sendable, Hashable {
        case auto
        case fixed(JWSAlgorithm)
    }

    public struct Parameters: Sendable {
        public var tenant: String
        public var clientID: String
        public var authorityHost: URL
        public var lifetime: Int
        public var algorithm: AlgorithmChoice
        /// Send the certificate chain as `x5c` (Subject Name + Issuer authentication).
        public var x5c: Bool
        /// `kid` in the header: by default the uppercase hex SHA-1 thumbprint, as Microsoft.IdentityModel writes it.
        public var kid: JWSHeaderFields.KeyID
        public var extraClaims: JSONObject
        /// Let `extraClaims` replace required claims.
        public var overrideClaims: Bool

        public init(
            tenant: String, clientID: String, authorityHost: URL = EntraCloud.global.authorityHost,
            lifetime: Int = ClientAssertion.defaultLifetime, algorithm: AlgorithmChoice = .auto, x5c: Bool = false,
            kid: JWSHeaderFields.KeyID = .thumbprint, extraClaims: JSONObject = JSONObject(), overrideClaims: Bool = false
        ) {
            self.tenant = tenant
            self.clientID = clientID
            self.authorityHost = authorityHost
            self.lifetime = lifetime
            self.algorithm = algorithm
            self.x5c = x5c
            self.kid = kid
            self.extraClaims = extraClaims
            self.overrideClaims = overrideClaims
        }

        /// Checks tenant, client id and lifetime — everything that needs no key — and returns
        /// the tenant and the client id as the assertion carries them.
        public func validated() throws -> (tenant: String, clientID: String) {
            let tenant = try EntraValue.tenant(self.tenant)
            let clientID = try EntraValue.guid(
                self.clientID, what: "client id",
                hint: "give the application (client) id GUID from the app registration", settings: ["client-id"])
            guard lifetime > 0, lifetime <= ClientAssertion.maximumLifetime else {
                throw EntraError(
                    .invalidParameter, "assertion lifetime \(lifetime)s is outside 1…\(ClientAssertion.maximumLifetime)s",
                    hint: "Microsoft documents 5–10 minutes; the default is \(ClientAssertion.defaultLifetime)s")
            }
            return (tenant, clientID)
        }
    }

    /// `{authorityHost}/{tenant}/oauth2/v2.0/token`: the assertion's audience and where it is sent.
    public static func tokenEndpoint(authorityHost: URL, tenant: String) -> String {
        var host = authorityHost.absoluteString
        while host.hasSuffix("/") { host.removeLast() }
        return "\(host)/\(tenant)/oauth2/v2.0/token"
    }

    /// The algorithm `choice` resolves to for this signer.
    public static func algorithm(_ choice: AlgorithmChoice, signer: some JWSSigner) throws -> JWSAlgorithm {
        switch choice {
        case .fixed(let algorithm):
            guard signer.keyType.algorithms.contains(algorithm) else {
                throw EntraError(
                    .unsupportedKey, "\(algorithm.rawValue) cannot be made with a \(signer.keyType) key",
                    hint: "this key can do \(signer.keyType.algorithms.map(\.rawValue).joined(separator: ", "))")
            }
            guard signer.canSign(algorithm) else {
                throw EntraError(
                    .unsupportedKey, "the token cannot sign \(algorithm.rawValue) with this \(signer.keyType) key",
                    hint: signer.supportedAlgorithms.isEmpty
                        ? "the token's mechanism list says what it can do"
                        : "it can do \(signer.supportedAlgorithms.map(\.rawValue).joined(separator: ", ")); let the algorithm be chosen automatically")
            }
            return algorithm
        case .auto:
            switch signer.keyType {
            case .rsa:
                if signer.canSign(.PS256) { return .PS256 }
                if signer.canSign(.RS256) { return .RS256 }
                throw EntraError(
                    .unsupportedKey, "the token can sign neither PS256 nor RS256 with this RSA key",
                    hint: "it offers none of CKM_RSA_PKCS_PSS, CKM_RSA_X_509, CKM_RSA_PKCS")
            case .ec(let curve):
                guard signer.canSign(curve.algorithm) else {
                    throw EntraError(.unsupportedKey, "the token cannot sign \(curve.algorithm.rawValue) with this EC key")
                }
                return curve.algorithm
            }
        }
    }

    /// Whether Entra's token endpoint accepts client assertions signed with `algorithm`.
    public static func entraAccepts(_ algorithm: JWSAlgorithm) -> Bool {
        algorithm == .RS256 || algorithm == .PS256
    }

    /// Builds and signs an assertion. The signer needs a certificate (for the thumbprint).
    public static func make(
        _ parameters: Parameters, signer: some JWSSigner, now: Date = Date(), jti: UUID = UUID(), logger: Logger
    ) throws -> JWS {
        let (header, claims) = try unsigned(parameters, signer: signer, now: now, jti: jti, logger: logger)
        return try JWS.sign(header: header, claims: claims, signer: signer)
    }

    /// Builds an assertion and awaits the signer (a token signs on its own threads).
    public static func make(
        _ parameters: Parameters, signer: some JWSSigner, now: Date = Date(), jti: UUID = UUID(), logger: Logger
    ) async throws -> JWS {
        let (header, claims) = try unsigned(parameters, signer: signer, now: now, jti: jti, logger: logger)
        return try await JWS.sign(header: header, claims: claims, signer: signer)
    }

    static func unsigned(
        _ parameters: Parameters, signer: some JWSSigner, now: Date, jti: UUID, logger: Logger
    ) throws -> (header: JSONObject, claims: JSONObject) {
        let (tenant, clientID) = try parameters.validated()
        let algorithm = try algorithm(parameters.algorithm, signer: signer)
        if !entraAccepts(algorithm) {
            logger.warning(
                "Entra accepts only RS256 and PS256 client assertions, so app credentials need an RSA key; this \(algorithm.rawValue) assertion will be refused by Entra")
        }
        let fields = JWSHeaderFields(
            type: "JWT", x5t: algorithm.family != .rsaPSS, x5tS256: algorithm.family == .rsaPSS,
            kid: parameters.kid, x5c: parameters.x5c)
        let header = try fields.header(algorithm: algorithm, certificateChain: signer.certificateChain)

        let issued = Int64(now.timeIntervalSince1970.rounded(.down))
        var claims = JSONObject()
        claims["aud"] = .string(tokenEndpoint(authorityHost: parameters.authorityHost, tenant: tenant))
        claims["iss"] = .string(clientID)
        claims["sub"] = .string(clientID)
        claims["jti"] = .string(jti.uuidString.lowercased())
        claims["nbf"] = .int(issued)
        claims["iat"] = .int(issued)
        claims["exp"] = .int(issued + Int64(parameters.lifetime))
        try mergeExtra(parameters.extraClaims, into: &claims, override: parameters.overrideClaims)
        logger.debug("client assertion", metadata: [
            "alg": "\(algorithm.rawValue)", "aud": "\(claims["aud"]!.stringValue!)", "client_id": "\(clientID)",
        ])
        return (header, claims)
    }

    /// Adds `extra` to `claims`; a different value for a claim already there is refused unless
    /// `override`.
    static func mergeExtra(_ extra: JSONObject, into claims: inout JSONObject, override: Bool) throws {
        var check = claims
        let conflicts = check.merge(extra, overwrite: override)
        if !conflicts.isEmpty && !override {
            throw EntraError(
                .invalidParameter,
                "claim\(conflicts.count > 1 ? "s" : "") \(conflicts.map { "'\($0)'" }.joined(separator: ", ")) set by p11jwt cannot be replaced",
                hint: "allow overriding to replace required claims (Entra will refuse an assertion whose aud, iss, sub or times are wrong)", settings: ["override"])
        }
        claims = check
    }
}
