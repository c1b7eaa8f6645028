/// The named elliptic curves a token key can be on (`CKA_EC_PARAMS`), by their NIST names.
public enum ECCurve: String, Sendable, Hashable, Codable, CaseIterable {
    case p256 = "P-256", p384 = "P-384", p521 = "P-521"

    public var bits: Int {
        switch self {
        case .p256: return 256
        case .p384: return 384
        case .p521: return 521
        }
    }

    /// Bytes in one coordinate (and in each of an ECDSA signature's r and s).
    public var coordinateLength: Int { (bits + 7) / 8 }

    /// DER of the named-curve OID, as `CKA_EC_PARAMS` holds it.
    public var ecParameters: [UInt8] {
        switch self {
        case .p256: return [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        case .p384: return [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]
        case .p521: return [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]
        }
    }

    public init?(ecParameters: [UInt8]) {
        guard let curve = ECCurve.allCases.first(where: { $0.ecParameters == ecParameters }) else { return nil }
        self = curve
    }
}

/// Lower-case hex, for object ids in messages and listings.
func hexString(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0x0f)])
    }
    return String(decoding: out, as: UTF8.self)
}
