import Crypto
import JOSE
import PKCS11

// How JWS algorithms map onto a token's mechanisms: which mechanism, and what is prepared here
// (a DigestInfo, an EMSA-PSS block) so that only a digest's worth of data goes to the token.

/// How a JWS algorithm is carried out on a particular token.
public enum SigningPath: String, Sendable, Hashable, Codable {
    /// `CKM_RSA_PKCS` over the DER DigestInfo (RS*).
    case rsaPKCS1 = "CKM_RSA_PKCS"
    /// `CKM_RSA_PKCS_PSS` over the raw digest (PS*).
    case rsaPSS = "CKM_RSA_PKCS_PSS"
    /// EMSA-PSS encoded here, then `CKM_RSA_X_509` (raw RSA) on the token (PS* fallback).
    case rsaPSSOverX509 = "CKM_RSA_X_509 (EMSA-PSS encoded in software)"
    /// `CKM_ECDSA` over the raw digest (ES*).
    case ecdsa = "CKM_ECDSA"

    /// The mechanism with its parameters for `algorithm`.
    func mechanism(_ algorithm: JWSAlgorithm) -> Mechanism {
        switch self {
        case .rsaPKCS1: return .rsaPKCS
        case .rsaPSS: return .rsaPSS(algorithm.hash.hashAlgorithm)
        case .rsaPSSOverX509: return .rsaX509
        case .ecdsa: return .ecdsa
        }
    }
}

extension JWSAlgorithm.Hash {
    /// The same hash in PKCS#11's terms.
    var hashAlgorithm: HashAlgorithm {
        switch self {
        case .sha256: return .sha256
        case .sha384: return .sha384
        case .sha512: return .sha512
        }
    }

    /// DER `DigestInfo` prefix (RFC 8017 §9.2 note 1); the digest follows it.
    var digestInfoPrefix: [UInt8] {
        switch self {
        case .sha256:
            return [0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20]
        case .sha384:
            return [0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30]
        case .sha512:
            return [0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40]
        }
    }
}

extension Curve {
    /// The JOSE curve of a token's EC curve (the same NIST curves).
    public init(_ curve: ECCurve) {
        switch curve {
        case .p256: self = .p256
        case .p384: self = .p384
        case .p521: self = .p521
        }
    }
}

extension ECCurve {
    /// The token's name for a JOSE curve.
    public init(_ curve: Curve) {
        switch curve {
        case .p256: self = .p256
        case .p384: self = .p384
        case .p521: self = .p521
        }
    }
}

extension PrivateKeyObject {
    /// The key as JOSE classifies it; `nil` for key types JWS has no algorithm for.
    public var jwsKeyType: JWSKeyType? {
        switch keyType {
        case .rsa: return .rsa(bits: modulusBits ?? publicKey?.bits ?? 0)
        case .ec: return curve.map { .ec(Curve($0)) }
        default: return nil
        }
    }

    /// The JWS algorithms this key's type allows (before asking what the token supports).
    public var algorithmsByKeyType: [JWSAlgorithm] { jwsKeyType?.algorithms ?? [] }
}

extension MechanismSet {
    /// The path this token would take for `algorithm` (nil: impossible here). `keyBits`
    /// narrows by the mechanism's key-size range when known.
    public func path(for algorithm: JWSAlgorithm, keyBits: Int? = nil) -> SigningPath? {
        switch algorithm.family {
        case .rsaPKCS1:
            return canSign(.rsaPKCS, keyBits: keyBits) ? .rsaPKCS1 : nil
        case .rsaPSS:
            if canSign(.rsaPKCSPSS, keyBits: keyBits) { return .rsaPSS }
            if canSign(.rsaX509, keyBits: keyBits) { return .rsaPSSOverX509 }
            return nil
        case .ecdsa:
            return canSign(.ecdsa) ? .ecdsa : nil
        }
    }
}

extension Token {
    /// How this token would sign `algorithm` with `key`; an error when it cannot.
    public func signingPath(_ algorithm: JWSAlgorithm, key: PrivateKeyObject) throws -> SigningPath {
        guard key.canSign else {
            throw PKCS11Error(
                .keyUnsuitable, "key \(key.uri) may not sign (CKA_SIGN is false)",
                hint: "use a key generated for signing (keys made here set CKA_SIGN)")
        }
        let possible = key.algorithmsByKeyType
        if algorithm.isRSA {
            guard key.keyType == .rsa else {
                throw PKCS11Error(
                    .keyUnsuitable, "\(algorithm.rawValue) needs an RSA key; \(key.uri) is \(key.typeDescription)",
                    hint: possible.isEmpty ? nil : "this key can do \(possible.map(\.rawValue).joined(separator: ", "))")
            }
        } else {
            guard key.keyType == .ec, let curve = key.curve, Curve(curve) == algorithm.curve else {
                throw PKCS11Error(
                    .keyUnsuitable,
                    "\(algorithm.rawValue) needs an EC \(algorithm.curve!.rawValue) key; \(key.uri) is \(key.typeDescription)",
                    hint: possible.isEmpty ? nil : "this key can do \(possible.map(\.rawValue).joined(separator: ", "))")
            }
        }
        guard let path = mechanisms.path(for: algorithm, keyBits: key.modulusBits) else {
            let needed: String
            switch algorithm.family {
            case .rsaPKCS1: needed = "CKM_RSA_PKCS"
            case .rsaPSS: needed = "CKM_RSA_PKCS_PSS or CKM_RSA_X_509"
            case .ecdsa: needed = "CKM_ECDSA"
            }
            let doable = possible.filter { mechanisms.path(for: $0, keyBits: key.modulusBits) != nil }
            throw PKCS11Error(
                .mechanismUnsupported,
                "token '\(info.label)' cannot do \(algorithm.rawValue) with \(key.typeDescription): it offers no \(needed) for signing",
                hint: doable.isEmpty ? "the token's mechanism list says what it can do" : "possible with this key: \(doable.map(\.rawValue).joined(separator: ", "))")
        }
        return path
    }

    /// The mechanism and the data to give the token for a JWS signature over `digest`: PKCS#1
    /// v1.5 over the DigestInfo, PSS (MGF1 = hash, salt = hash length) natively or EMSA-PSS
    /// encoded here for raw RSA, or ECDSA over the digest (raw `r ‖ s` back).
    public func jwsSigningInput(digest: [UInt8], algorithm: JWSAlgorithm, key: PrivateKeyObject) throws -> (Mechanism, [UInt8]) {
        guard digest.count == algorithm.digestLength else {
            throw PKCS11Error(
                .invalidDigest,
                "\(algorithm.rawValue) signs a \(algorithm.hash.rawValue) digest of \(algorithm.digestLength) bytes; got \(digest.count) bytes",
                hint: "hash the message with \(algorithm.hash.rawValue) and give its digest")
        }
        let path = try signingPath(algorithm, key: key)
        switch path {
        case .rsaPKCS1:
            return (.rsaPKCS, algorithm.hash.digestInfoPrefix + digest)
        case .rsaPSS:
            return (path.mechanism(algorithm), digest)
        case .rsaPSSOverX509:
            guard let bits = key.modulusBits else {
                throw PKCS11Error(.invalidObject, "the token does not give the modulus of \(key.uri)")
            }
            return (.rsaX509, try EMSAPSS.encode(digest: digest, hash: algorithm.hash, modulusBits: bits))
        case .ecdsa:
            return (.ecdsa, digest)
        }
    }
}

extension Token {
    /// A JWS signature of `algorithm` over `digest` with `key` (see ``jwsSigningInput(digest:algorithm:key:)``).
    /// Blocks while the token signs; async callers get the async overload.
    public func sign(digest: [UInt8], algorithm: JWSAlgorithm, key: PrivateKeyObject) throws -> [UInt8] {
        let (mechanism, data) = try jwsSigningInput(digest: digest, algorithm: algorithm, key: key)
        return try sign(data, mechanism: mechanism, key: key)
    }

    /// Whether `signature` is a JWS signature of `algorithm` over `digest` by `key`, checked by
    /// the token with the key's public key object. Not for keys whose PSS signatures are
    /// encoded here (a token without `CKM_RSA_PKCS_PSS`): the token cannot check those.
    public func verify(digest: [UInt8], signature: [UInt8], algorithm: JWSAlgorithm, key: PrivateKeyObject) throws -> Bool {
        guard digest.count == algorithm.hash.length else {
            throw PKCS11Error(.invalidArgument, "a \(algorithm.rawValue) digest is \(algorithm.hash.length) bytes, not \(digest.count)")
        }
        let path = try signingPath(algorithm, key: key)
        switch path {
        case .rsaPKCS1:
            return try verify(algorithm.hash.digestInfoPrefix + digest, signature: signature, mechanism: .rsaPKCS, key: key)
        case .rsaPSS:
            return try verify(digest, signature: signature, mechanism: path.mechanism(algorithm), key: key)
        case .ecdsa:
            return try verify(digest, signature: signature, mechanism: .ecdsa, key: key)
        case .rsaPSSOverX509:
            throw PKCS11Error(
                .mechanismUnsupported, "token '\(info.label)' has no CKM_RSA_PKCS_PSS to check a PS signature with",
                hint: "verify with the public key itself")
        }
    }

    /// The same on the token's executor.
    public func sign(digest: [UInt8], algorithm: JWSAlgorithm, key: PrivateKeyObject) async throws -> [UInt8] {
        let (mechanism, data) = try jwsSigningInput(digest: digest, algorithm: algorithm, key: key)
        return try await sign(data, mechanism: mechanism, key: key)
    }
}

/// EMSA-PSS-ENCODE (RFC 8017 §9.1.1), kept by hand: swift-crypto has no encoder that stops
/// before the RSA operation, and tokens without `CKM_RSA_PKCS_PSS` need exactly that.
enum EMSAPSS {
    /// MGF1 over the same hash and salt length = hash length, padded to the modulus length for
    /// a raw (`CKM_RSA_X_509`) RSA operation.
    static func encode(digest: [UInt8], hash: JWSAlgorithm.Hash, modulusBits: Int) throws -> [UInt8] {
        let hLen = hash.length
        let sLen = hLen
        let emBits = modulusBits - 1
        let emLen = (emBits + 7) / 8
        guard digest.count == hLen else {
            throw PKCS11Error(.invalidDigest, "EMSA-PSS: digest is \(digest.count) bytes, expected \(hLen)")
        }
        guard emLen >= hLen + sLen + 2 else {
            throw PKCS11Error(.keyUnsuitable, "the RSA key (\(modulusBits) bits) is too small for PSS with \(hash.rawValue)")
        }
        var salt = [UInt8](repeating: 0, count: sLen)
        var rng = SystemRandomNumberGenerator()
        for i in salt.indices { salt[i] = rng.next() }
        let h = hash.hash([UInt8](repeating: 0, count: 8) + digest + salt)
        var db = [UInt8](repeating: 0, count: emLen - sLen - hLen - 2) + [0x01] + salt
        let mask = mgf1(seed: h, length: emLen - hLen - 1, hash: hash)
        for i in db.indices { db[i] ^= mask[i] }
        let unusedBits = 8 * emLen - emBits
        db[0] &= UInt8(0xff) >> unusedBits
        let em = db + h + [0xbc]
        let k = (modulusBits + 7) / 8
        return [UInt8](repeating: 0, count: k - em.count) + em
    }

    /// MGF1 (RFC 8017 §B.2.1).
    static func mgf1(seed: [UInt8], length: Int, hash: JWSAlgorithm.Hash) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(length + hash.length)
        var counter: UInt32 = 0
        while output.count < length {
            let c = withUnsafeBytes(of: counter.bigEndian) { Array($0) }
            output += hash.hash(seed + c)
            counter += 1
        }
        return Array(output.prefix(length))
    }
}

/// ECDSA signature encodings: JWS wants raw `r ‖ s` (what `CKM_ECDSA` returns), X.509 and CSRs
/// want DER `ECDSA-Sig-Value`. Both conversions are swift-crypto's.
public enum ECDSASignatureEncoding {
    public static func der(fromRaw raw: [UInt8], curve: Curve) throws -> [UInt8] {
        do {
            switch curve {
            case .p256: return Array(try P256.Signing.ECDSASignature(rawRepresentation: raw).derRepresentation)
            case .p384: return Array(try P384.Signing.ECDSASignature(rawRepresentation: raw).derRepresentation)
            case .p521: return Array(try P521.Signing.ECDSASignature(rawRepresentation: raw).derRepresentation)
            }
        } catch {
            throw PKCS11Error(.moduleAnswerInvalid, "the token's \(curve.rawValue) ECDSA signature is \(raw.count) bytes, not r ‖ s", cause: error)
        }
    }

    public static func raw(fromDER der: [UInt8], curve: Curve) throws -> [UInt8] {
        do {
            switch curve {
            case .p256: return Array(try P256.Signing.ECDSASignature(derRepresentation: der).rawRepresentation)
            case .p384: return Array(try P384.Signing.ECDSASignature(derRepresentation: der).rawRepresentation)
            case .p521: return Array(try P521.Signing.ECDSASignature(derRepresentation: der).rawRepresentation)
            }
        } catch {
            throw PKCS11Error(.invalidArgument, "malformed DER ECDSA signature", cause: error)
        }
    }
}
