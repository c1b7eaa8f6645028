import Foundation
import X509

/// A JWS in compact serialisation (RFC 7515 §7.1): `base64url(header).base64url(payload).base64url(signature)`.
///
/// Built with ``sign(header:payload:signer:)``, which hashes the signing input here and asks the
/// signer only for a signature over the digest; or parsed strictly with ``init(compact:)``.
public struct JWS: Sendable, Hashable {
    public let header: JSONObject
    public let payload: [UInt8]
    public let signature: [UInt8]
    /// `base64url(header) "." base64url(payload)`: what the signature covers.
    public let signingInput: String
    public let compact: String

    /// The header's `alg`, when it names an algorithm this library knows.
    public var algorithm: JWSAlgorithm? { header["alg"]?.stringValue.flatMap(JWSAlgorithm.init(rawValue:)) }

    /// The payload as JWT claims, when it is a JSON object.
    public var claims: JSONObject? { try? JSONObject(parsing: payload) }

    /// Parses a compact JWS. Refuses anything Entra would: not three parts, characters outside
    /// base64url (including `=` padding), a header that is not a JSON object or has no `alg`.
    public init(compact text: String) throws {
        let compact = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let parts = compact.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else {
            throw JOSEError(
                .malformed, "not a compact JWS: \(parts.count) part(s) separated by '.', expected 3",
                hint: parts.count == 5 ? "this looks like an encrypted JWE, which is not signed" : nil)
        }
        let names = ["header", "payload", "signature"]
        var decoded: [[UInt8]] = []
        for (part, name) in zip(parts, names) {
            if part.contains("=") {
                throw JOSEError(.malformed, "the JWS \(name) has '=' padding; JWS base64url has none (RFC 7515 §2)")
            }
            guard let bytes = Base64URL.decode(part) else {
                throw JOSEError(.malformed, "the JWS \(name) is not base64url")
            }
            decoded.append(bytes)
        }
        let header = try JSONObject(parsing: decoded[0], what: "the JWS header")
        guard header["alg"]?.stringValue != nil else {
            throw JOSEError(.malformed, "the JWS header has no \"alg\"")
        }
        self.header = header
        self.payload = decoded[1]
        self.signature = decoded[2]
        self.signingInput = "\(parts[0]).\(parts[1])"
        self.compact = compact
    }

    private init(header: JSONObject, payload: [UInt8], signature: [UInt8], signingInput: String) {
        self.header = header
        self.payload = payload
        self.signature = signature
        self.signingInput = signingInput
        self.compact = signingInput + "." + Base64URL.encode(signature)
    }

    /// Signs `payload` under `header`, whose `alg` names the algorithm. The signing input is
    /// hashed here; the signer sees only the digest. Errors the signer throws are rethrown as they are.
    public static func sign(header: JSONObject, payload: [UInt8], signer: some JWSSigner) throws -> JWS {
        let algorithm = try algorithm(of: header, for: signer)
        return try sign(header: header, payload: payload) { signingInput in
            // The signer's own errors (PKCS#11 function, CKR_* value) pass through unchanged.
            try signer.sign(digest: algorithm.hash.hash(signingInput), algorithm: algorithm)
        }
    }

    /// Signs as ``sign(header:payload:signer:)`` does, awaiting the signer's async `sign`: a
    /// signer that blocks (a token) runs its work off the caller's thread.
    public static func sign(header: JSONObject, payload: [UInt8], signer: some JWSSigner) async throws -> JWS {
        let algorithm = try algorithm(of: header, for: signer)
        let signingInput = Base64URL.encode(Array(header.serialized.utf8)) + "." + Base64URL.encode(payload)
        let signature = try await signer.sign(digest: algorithm.hash.hash(Array(signingInput.utf8)), algorithm: algorithm)
        return JWS(header: header, payload: payload, signature: signature, signingInput: signingInput)
    }

    /// Signs JWT `claims`, awaiting the signer.
    public static func sign(header: JSONObject, claims: JSONObject, signer: some JWSSigner) async throws -> JWS {
        try await sign(header: header, payload: Array(claims.serialized.utf8), signer: signer)
    }

    private static func algorithm(of header: JSONObject, for signer: some JWSSigner) throws -> JWSAlgorithm {
        let algorithm = try algorithm(of: header)
        guard signer.keyType.algorithms.contains(algorithm) else {
            throw JOSEError(
                .unsupportedAlgorithm, "\(algorithm.rawValue) cannot be made with a \(signer.keyType) key",
                hint: "this key can do \(signer.keyType.algorithms.map(\.rawValue).joined(separator: ", "))")
        }
        return algorithm
    }

    /// Signs with a key held in this process, which is handed the whole signing input (for
    /// software keys, such as the emulator's token-signing key).
    public static func sign(header: JSONObject, payload: [UInt8], signMessage: ([UInt8]) throws -> [UInt8]) throws -> JWS {
        _ = try algorithm(of: header)
        let signingInput = Base64URL.encode(Array(header.serialized.utf8)) + "." + Base64URL.encode(payload)
        let signature = try signMessage(Array(signingInput.utf8))
        return JWS(header: header, payload: payload, signature: signature, signingInput: signingInput)
    }

    private static func algorithm(of header: JSONObject) throws -> JWSAlgorithm {
        guard let name = header["alg"]?.stringValue, let algorithm = JWSAlgorithm(rawValue: name) else {
            throw JOSEError(.invalidValue, "the header's alg must be one of \(JWSAlgorithm.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return algorithm
    }

    /// Signs JWT `claims` (the payload is their compact JSON).
    public static func sign(header: JSONObject, claims: JSONObject, signer: some JWSSigner) throws -> JWS {
        try sign(header: header, payload: Array(claims.serialized.utf8), signer: signer)
    }

    /// Whether the signature verifies with `publicKey` under the header's `alg`.
    public func isValid(publicKey: Certificate.PublicKey) -> Bool {
        guard let algorithm else { return false }
        return (try? JWSVerifier.verify(
            signature: signature, message: Array(signingInput.utf8), algorithm: algorithm, publicKey: publicKey)) ?? false
    }
}

/// The header members that name the signing certificate and key.
public struct JWSHeaderFields: Sendable {
    /// What to put in `kid`.
    public enum KeyID: Sendable, Hashable {
        case none
        /// Uppercase hex SHA-1 of the certificate, as Microsoft.IdentityModel writes it.
        case thumbprint
        case value(String)
    }

    public var type: String?
    public var x5t: Bool
    public var x5tS256: Bool
    public var kid: KeyID
    /// Include `x5c`: the signer's certificate chain, leaf first.
    public var x5c: Bool
    /// More members. They may not replace the ones above with a different value.
    public var extra: JSONObject

    public init(
        type: String? = "JWT", x5t: Bool = false, x5tS256: Bool = false, kid: KeyID = .none, x5c: Bool = false,
        extra: JSONObject = JSONObject()
    ) {
        self.type = type
        self.x5t = x5t
        self.x5tS256 = x5tS256
        self.kid = kid
        self.x5c = x5c
        self.extra = extra
    }

    /// The header for `algorithm`, in the order `alg`, `typ`, `kid`, `x5t`, `x5t#S256`, `x5c`,
    /// then the extra members.
    public func header(algorithm: JWSAlgorithm, certificateChain: [JWSCertificate]) throws -> JSONObject {
        var header = JSONObject()
        header["alg"] = .string(algorithm.rawValue)
        if let type { header["typ"] = .string(type) }
        let needsCertificate = x5t || x5tS256 || x5c || kid == .thumbprint
        let leaf = certificateChain.first
        if needsCertificate && leaf == nil {
            throw JOSEError(
                .certificateMissing, "the header needs the signing certificate (for x5t, x5t#S256, kid or x5c) and there is none",
                hint: "store the certificate on the token with the key's CKA_ID, or give it", settings: ["cert"])
        }
        switch kid {
        case .none: break
        case .thumbprint: header["kid"] = .string(leaf!.thumbprint.hexSHA1)
        case .value(let v): header["kid"] = .string(v)
        }
        if x5t { header["x5t"] = .string(leaf!.thumbprint.x5t) }
        if x5tS256 { header["x5t#S256"] = .string(leaf!.thumbprint.x5tS256) }
        if x5c { header["x5c"] = .array(certificateChain.map { .string($0.x5cValue) }) }
        for (key, value) in extra {
            if let existing = header[key], existing != value {
                throw JOSEError(
                    .invalidValue, "header member \"\(key)\" is set by p11jwt (\(existing.serialized)); it cannot be \(value.serialized)",
                    hint: key == "alg" ? "choose the algorithm" : nil, settings: key == "alg" ? ["alg"] : [])
            }
            header[key] = value
        }
        return header
    }
}
