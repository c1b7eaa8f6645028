import CP11Kit

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

    public var description: String {
        Self.standardNames[UInt(rawValue)] ?? (rawValue & 0x8000_0000 != 0 ? "CKM_VENDOR_0x" : "CKM_0x") + String(rawValue, radix: 16)
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

/// A hash function, as PSS parameters name it.
public enum HashAlgorithm: String, Sendable, Hashable, Codable, CaseIterable {
    case sha256 = "SHA-256", sha384 = "SHA-384", sha512 = "SHA-512"

    /// Digest length in bytes.
    public var length: Int {
        switch self {
        case .sha256: return 32
        case .sha384: return 48
        case .sha512: return 64
        }
    }

    /// `CKM_SHA*`.
    public var mechanism: MechanismType {
        switch self {
        case .sha256: return .sha256
        case .sha384: return .sha384
        case .sha512: return .sha512
        }
    }

    /// `CKG_MGF1_SHA*`.
    var mgf: CK_RSA_PKCS_MGF_TYPE {
        switch self {
        case .sha256: return CK_RSA_PKCS_MGF_TYPE(CKG_MGF1_SHA256)
        case .sha384: return CK_RSA_PKCS_MGF_TYPE(CKG_MGF1_SHA384)
        case .sha512: return CK_RSA_PKCS_MGF_TYPE(CKG_MGF1_SHA512)
        }
    }
}

/// A signing mechanism with its parameters: what `C_SignInit` is given.
public enum Mechanism: Sendable, Hashable, CustomStringConvertible {
    /// `CKM_RSA_PKCS`: PKCS#1 v1.5 padding over the data given (a DER `DigestInfo` for a signature).
    case rsaPKCS
    /// `CKM_RSA_PKCS_PSS` over a digest: MGF1 with the same hash, the salt as long as the hash.
    case rsaPSS(HashAlgorithm)
    /// `CKM_RSA_X_509`: raw RSA over data as long as the modulus (padding done by the caller).
    case rsaX509
    /// `CKM_ECDSA` over a digest; the signature is raw `r ‖ s`.
    case ecdsa

    public var type: MechanismType {
        switch self {
        case .rsaPKCS: return .rsaPKCS
        case .rsaPSS: return .rsaPKCSPSS
        case .rsaX509: return .rsaX509
        case .ecdsa: return .ecdsa
        }
    }

    /// The mechanism's parameter bytes (`CK_RSA_PKCS_PSS_PARAMS` for PSS), nil for none.
    var parameter: [UInt8]? {
        guard case .rsaPSS(let hash) = self else { return nil }
        var params = CK_RSA_PKCS_PSS_PARAMS()
        params.hashAlg = hash.mechanism.rawValue
        params.mgf = hash.mgf
        params.sLen = CK_ULONG(hash.length)
        return withUnsafeBytes(of: params) { Array($0) }
    }

    /// Whether the key is RSA (else EC).
    public var isRSA: Bool { self != .ecdsa }

    public var description: String {
        if case .rsaPSS(let hash) = self { return "\(type) (\(hash.rawValue), MGF1, salt \(hash.length))" }
        return type.description
    }
}

extension MechanismInfo {
    /// Whether a key of `bits` is within the stated range (0 means no stated limit).
    public func allows(bits: UInt) -> Bool {
        (minKeySize == 0 || bits >= minKeySize) && (maxKeySize == 0 || bits <= maxKeySize)
    }
}

/// The mechanisms of a token.
public struct MechanismSet: Sendable {
    public let all: [MechanismInfo]

    public init(_ all: [MechanismInfo]) { self.all = all }

    public func info(_ type: MechanismType) -> MechanismInfo? { all.first { $0.type == type } }

    /// Whether the token signs with `type`, for an RSA key of `keyBits` when given (EC key sizes
    /// are not checked: tokens state them inconsistently).
    public func canSign(_ type: MechanismType, keyBits: Int? = nil) -> Bool {
        guard let info = info(type), info.canSign else { return false }
        guard let keyBits, type != .ecdsa else { return true }
        // RSA sizes are in bits (PKCS#11 2.40 §2.1).
        return info.allows(bits: UInt(keyBits))
    }
}
