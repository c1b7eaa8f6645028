import Foundation
import JOSE
import Logging

/// The proof-of-possession JWT Graph's `addKey` and `removeKey` require: signed by a key whose
/// certificate is already on the application or service principal.
///
/// Header `alg` (RS256 as in every Microsoft sample; PS256 only if forced), `typ`, `x5t`, `kid`;
/// claims `aud` = Azure AD Graph's id `00000002-0000-0000-c000-000000000000`, `iss` = the
/// object's **id** (not its appId), `nbf` = now, `exp` = nbf + 10 minutes, `jti`.
public enum ProofOfPossession {
    public static let audience = "00000002-0000-0000-c000-000000000000"
    /// Graph refuses proofs valid for longer.
    public static let lifetime = 600

    /// The object id as the proof carries it; an error unless it is a GUID.
    public static func validated(objectID: String) throws -> String {
        try EntraValue.guid(
            objectID, what: "object id",
            hint: "give the application's (or service principal's) object id — 'id' in Graph, 'Object ID' in the portal — not its appId")
    }

    public static func make(
        objectID: String, signer: some JWSSigner, algorithm: JWSAlgorithm = .RS256, now: Date = Date(),
        jti: UUID = UUID(), logger: Logger
    ) throws -> JWS {
        let (header, claims) = try unsigned(objectID: objectID, signer: signer, algorithm: algorithm, now: now, jti: jti, logger: logger)
        return try JWS.sign(header: header, claims: claims, signer: signer)
    }

    /// Builds a proof and awaits the signer (a token signs on its own threads).
    public static func make(
        objectID: String, signer: some JWSSigner, algorithm: JWSAlgorithm = .RS256, now: Date = Date(),
        jti: UUID = UUID(), logger: Logger
    ) async throws -> JWS {
        let (header, claims) = try unsigned(objectID: objectID, signer: signer, algorithm: algorithm, now: now, jti: jti, logger: logger)
        return try await JWS.sign(header: header, claims: claims, signer: signer)
    }

    static func unsigned(
        objectID: String, signer: some JWSSigner, algorithm: JWSAlgorithm, now: Date, jti: UUID, logger: Logger
    ) throws -> (header: JSONObject, claims: JSONObject) {
        let objectID = try validated(objectID: objectID)
        guard case .rsa = signer.keyType else {
            throw EntraError(
                .unsupportedKey, "Graph proofs of possession are RSA-signed; this key is \(signer.keyType)",
                hint: "Entra application credentials need an RSA key and certificate")
        }
        guard algorithm == .RS256 || algorithm == .PS256 else {
            throw EntraError(.invalidParameter, "a Graph proof is RS256 (or PS256 if forced), not \(algorithm.rawValue)")
        }
        guard signer.canSign(algorithm) else {
            throw EntraError(.unsupportedKey, "the token cannot sign \(algorithm.rawValue) with this key", hint: "the token's mechanism list says what it can do")
        }
        let header = try JWSHeaderFields(type: "JWT", x5t: true, kid: .thumbprint)
            .header(algorithm: algorithm, certificateChain: signer.certificateChain)
        let nbf = Int64(now.timeIntervalSince1970.rounded(.down))
        var claims = JSONObject()
        claims["aud"] = .string(audience)
        claims["iss"] = .string(objectID)
        claims["nbf"] = .int(nbf)
        claims["exp"] = .int(nbf + Int64(lifetime))
        claims["jti"] = .string(jti.uuidString.lowercased())
        logger.debug("proof of possession", metadata: ["alg": "\(algorithm.rawValue)", "iss": "\(objectID)"])
        return (header, claims)
    }
}
