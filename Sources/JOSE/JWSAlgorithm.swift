import Crypto
import Foundation

/// The JWS signature algorithms (RFC 7518 §3.1) an external key can produce from a digest —
/// the same names Azure Key Vault's `sign` operation takes.
public enum JWSAlgorithm: String, Sendable, Hashable, CaseIterable, Codable {
    case RS256, RS384, RS512
    case PS256, PS384, PS512
    case ES256, ES384, ES512

    public enum Family: Sendable, Hashable {
        /// RSASSA-PKCS1-v1_5.
        case rsaPKCS1
        /// RSASSA-PSS, MGF1 over the same hash, salt as long as the hash (RFC 7518 §3.5).
        case rsaPSS
        /// ECDSA with the signature as raw `r ‖ s` (RFC 7518 §3.4).
        case ecdsa
    }

    public enum Hash: String, Sendable, Hashable {
        case sha256 = "SHA-256", sha384 = "SHA-384", sha512 = "SHA-512"

        public var length: Int {
            switch self {
            case .sha256: return 32
            case .sha384: return 48
            case .sha512: return 64
            }
        }

        public func hash<D: DataProtocol>(_ data: D) -> [UInt8] {
            switch self {
            case .sha256: return Array(SHA256.hash(data: data))
            case .sha384: return Array(SHA384.hash(data: data))
            case .sha512: return Array(SHA512.hash(data: data))
            }
        }
    }

    public var family: Family {
        switch self {
        case .RS256, .RS384, .RS512: return .rsaPKCS1
        case .PS256, .PS384, .PS512: return .rsaPSS
        case .ES256, .ES384, .ES512: return .ecdsa
        }
    }

    public var hash: Hash {
        switch self {
        case .RS256, .PS256, .ES256: return .sha256
        case .RS384, .PS384, .ES384: return .sha384
        case .RS512, .PS512, .ES512: return .sha512
        }
    }

    /// The digest length this algorithm signs.
    public var digestLength: Int { hash.length }

    /// For ES*: the curve RFC 7518 pairs with it.
    public var curve: Curve? {
        switch self {
        case .ES256: return .p256
        case .ES384: return .p384
        case .ES512: return .p521
        default: return nil
        }
    }

    public var isRSA: Bool { family != .ecdsa }

    /// Parses a name case-insensitively (`ps256` is PS256).
    public init?(name: String) {
        guard let value = JWSAlgorithm(rawValue: name.uppercased()) else { return nil }
        self = value
    }
}

/// Named elliptic curves (the JWK `crv` names).
public enum Curve: String, Sendable, Hashable, Codable, CaseIterable {
    case p256 = "P-256", p384 = "P-384", p521 = "P-521"

    public var bits: Int {
        switch self {
        case .p256: return 256
        case .p384: return 384
        case .p521: return 521
        }
    }

    /// Bytes in one coordinate, and in each of r and s.
    public var coordinateLength: Int { (bits + 7) / 8 }

    /// The ES* algorithm for this curve.
    public var algorithm: JWSAlgorithm {
        switch self {
        case .p256: return .ES256
        case .p384: return .ES384
        case .p521: return .ES512
        }
    }
}

/// What kind of key a signer holds: it decides which algorithms can apply at all.
public enum JWSKeyType: Sendable, Hashable, CustomStringConvertible {
    case rsa(bits: Int)
    case ec(Curve)

    /// The algorithms this kind of key can produce, before asking what the signer supports.
    public var algorithms: [JWSAlgorithm] {
        switch self {
        case .rsa: return [.RS256, .RS384, .RS512, .PS256, .PS384, .PS512]
        case .ec(let curve): return [curve.algorithm]
        }
    }

    /// What a JWT is signed with when nobody chose: RS256 for RSA, the curve's ES* for EC.
    public var defaultAlgorithm: JWSAlgorithm {
        switch self {
        case .rsa: return .RS256
        case .ec(let curve): return curve.algorithm
        }
    }

    public var description: String {
        switch self {
        case .rsa(let bits): return "RSA \(bits)"
        case .ec(let curve): return "EC \(curve.rawValue)"
        }
    }
}
