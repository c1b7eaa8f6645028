import CP11Kit
import JOSE

/// A `CKM_*` mechanism type, printable by name.
public struct MechanismType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: CK_MECHANISM_TYPE
    public init(rawValue: CK_MECHANISM_TYPE) { self.rawValue = rawValue }
    public init(_ rawValue: CK_MECHANISM_TYPE) { self.rawValue = rawValue }

    public static let rsaPKCSKeyPairGen = MechanismType(CKM_RSA_PKCS_KEY_PAIR_GEN)
    public static let rsaPKCS = MechanismType(CKM_RSA_PKCS)
    public static let rsaX509 = MechanismType(CKM_RSA_X_509)
    public static let rsaPKCSPSS = MechanismType(CKM_RSA_PKCS_PSS)
    public static let ecKeyPairGen = MechanismType(CKM_EC_KEY_PAIR_GEN)
    public static let ecdsa = MechanismType(CKM_ECDSA)
    public static let sha256 = MechanismType(CKM_SHA256)
    public static let sha384 = MechanismType(CKM_SHA384)
    public static let sha512 = MechanismType(CKM_SHA512)

    static let names: [CK_MECHANISM_TYPE: String] = [
        CK_MECHANISM_TYPE(CKM_RSA_PKCS_KEY_PAIR_GEN): "CKM_RSA_PKCS_KEY_PAIR_GEN",
        CK_MECHANISM_TYPE(CKM_RSA_PKCS): "CKM_RSA_PKCS",
        CK_MECHANISM_TYPE(CKM_RSA_X_509): "CKM_RSA_X_509",
        CK_MECHANISM_TYPE(CKM_RSA_PKCS_PSS): "CKM_RSA_PKCS_PSS",
        CK_MECHANISM_TYPE(CKM_SHA1_RSA_PKCS): "CKM_SHA1_RSA_PKCS",
        CK_MECHANISM_TYPE(CKM_SHA256_RSA_PKCS): "CKM_SHA256_RSA_PKCS",
        CK_MECHANISM_TYPE(CKM_SHA384_RSA_PKCS): "CKM_SHA384_RSA_PKCS",
        CK_MECHANISM_TYPE(CKM_SHA512_RSA_PKCS): "CKM_SHA512_RSA_PKCS",
        CK_MECHANISM_TYPE(CKM_SHA256_RSA_PKCS_PSS): "CKM_SHA256_RSA_PKCS_PSS",
        CK_MECHANISM_TYPE(CKM_SHA384_RSA_PKCS_PSS): "CKM_SHA384_RSA_PKCS_PSS",
        CK_MECHANISM_TYPE(CKM_SHA512_RSA_PKCS_PSS): "CKM_SHA512_RSA_PKCS_PSS",
        CK_MECHANISM_TYPE(CKM_EC_KEY_PAIR_GEN): "CKM_EC_KEY_PAIR_GEN",
        CK_MECHANISM_TYPE(CKM_ECDSA): "CKM_ECDSA",
        CK_MECHANISM_TYPE(CKM_ECDSA_SHA1): "CKM_ECDSA_SHA1",
        CK_MECHANISM_TYPE(CKM_ECDSA_SHA256): "CKM_ECDSA_SHA256",
        CK_MECHANISM_TYPE(CKM_ECDSA_SHA384): "CKM_ECDSA_SHA384",
        CK_MECHANISM_TYPE(CKM_ECDSA_SHA512): "CKM_ECDSA_SHA512",
        CK_MECHANISM_TYPE(CKM_SHA256): "CKM_SHA256",
        CK_MECHANISM_TYPE(CKM_SHA384): "CKM_SHA384",
        CK_MECHANISM_TYPE(CKM_SHA512): "CKM_SHA512",
        CK_MECHANISM_TYPE(CKM_SHA256_HMAC): "CKM_SHA256_HMAC",
        CK_MECHANISM_TYPE(CKM_SHA384_HMAC): "CKM_SHA384_HMAC",
        CK_MECHANISM_TYPE(CKM_SHA512_HMAC): "CKM_SHA512_HMAC",
    ]

    public var description: String {
        Self.names[rawValue] ?? "CKM_0x" + String(rawValue, radix: 16)
    }
}

/// A mechanism with what `C_GetMechanismInfo` says of it.
public struct MechanismInfo: Sendable, Hashable {
    public var type: MechanismType
    /// Bits for RSA and EC on most tokens (bytes on a few old ones).
    public var minKeySize: UInt
    public var maxKeySize: UInt
    public var flags: CK_FLAGS

    public var canSign: Bool { flags & CK_FLAGS(CKF_SIGN) != 0 }
    public var canGenerateKeyPair: Bool { flags & CK_FLAGS(CKF_GENERATE_KEY_PAIR) != 0 }
}

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

    public var mechanism: MechanismType {
        switch self {
        case .rsaPKCS1: return .rsaPKCS
        case .rsaPSS: return .rsaPKCSPSS
        case .rsaPSSOverX509: return .rsaX509
        case .ecdsa: return .ecdsa
        }
    }
}

extension MechanismInfo {
    /// Whether a key of `bits` is within the stated range (0 means no stated limit).
    public func allows(bits: UInt) -> Bool {
        (minKeySize == 0 || bits >= minKeySize) && (maxKeySize == 0 || bits <= maxKeySize)
    }
}

/// The mechanisms of a token, and which JWS algorithms they make possible.
public struct MechanismSet: Sendable {
    public let all: [MechanismInfo]

    public init(_ all: [MechanismInfo]) { self.all = all }

    public func info(_ type: MechanismType) -> MechanismInfo? { all.first { $0.type == type } }

    func canSign(_ type: MechanismType, keyBits: Int?) -> Bool {
        guard let info = info(type), info.canSign else { return false }
        guard let keyBits, type != .ecdsa else { return true }
        // RSA sizes are in bits (PKCS#11 2.40 §2.1).
        return info.allows(bits: UInt(keyBits))
    }

    /// The path this token would take for `algorithm` (nil: impossible here).
    /// `keyBits` narrows by the mechanism's key-size range when known.
    public func path(for algorithm: JWSAlgorithm, keyBits: Int? = nil) -> SigningPath? {
        switch algorithm.family {
        case .rsaPKCS1:
            return canSign(.rsaPKCS, keyBits: keyBits) ? .rsaPKCS1 : nil
        case .rsaPSS:
            if canSign(.rsaPKCSPSS, keyBits: keyBits) { return .rsaPSS }
            if canSign(.rsaX509, keyBits: keyBits) { return .rsaPSSOverX509 }
            return nil
        case .ecdsa:
            return canSign(.ecdsa, keyBits: nil) ? .ecdsa : nil
        }
    }
}
