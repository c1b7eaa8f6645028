import Crypto
import Foundation
import JOSE

// What PKCS#11 needs to know about JWS algorithms and curves, beyond their names.

extension JWSAlgorithm.Hash {
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
    /// DER of the named-curve OID, as `CKA_EC_PARAMS` holds it.
    public var ecParameters: [UInt8] {
        switch self {
        case .p256: return [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        case .p384: return [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]
        case .p521: return [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]
        }
    }

    public init?(ecParameters: [UInt8]) {
        guard let curve = Curve.allCases.first(where: { $0.ecParameters == ecParameters }) else { return nil }
        self = curve
    }
}

// MARK: - Encodings done in this process

enum Encoding {
    /// EMSA-PSS-ENCODE (RFC 8017 §9.1.1) with MGF1 over the same hash and salt length = hash
    /// length, padded to the modulus length for a raw (`CKM_RSA_X_509`) RSA operation.
    static func emsaPSS(digest: [UInt8], hash: JWSAlgorithm.Hash, modulusBits: Int) throws -> [UInt8] {
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

/// ECDSA signature encodings: JWS wants raw r‖s (what `CKM_ECDSA` returns), X.509 and CSRs
/// want DER `ECDSA-Sig-Value`.
public enum ECDSASignatureEncoding {
    // ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }   (RFC 3279 §2.2.3)
    public static func der(fromRaw raw: [UInt8]) throws -> [UInt8] {
        guard raw.count % 2 == 0, !raw.isEmpty else {
            throw PKCS11Error(.invalidArgument, "raw ECDSA signature has odd length \(raw.count)")
        }
        let half = raw.count / 2
        func integer(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
            var value = Array(bytes.drop(while: { $0 == 0 }))
            if value.isEmpty { value = [0] }
            if value[0] & 0x80 != 0 { value.insert(0, at: 0) }
            return [0x02] + derLength(value.count) + value
        }
        let body = integer(raw[..<half]) + integer(raw[half...])
        return [0x30] + derLength(body.count) + body
    }

    public static func raw(fromDER der: [UInt8], coordinateLength: Int) throws -> [UInt8] {
        var reader = DERReader(der)
        let malformed = PKCS11Error(.invalidArgument, "malformed DER ECDSA signature")
        guard let sequence = reader.read(tag: 0x30), reader.isAtEnd else { throw malformed }
        var inner = DERReader(sequence)
        guard let r = inner.read(tag: 0x02), let s = inner.read(tag: 0x02), inner.isAtEnd else { throw malformed }
        func fixed(_ v: [UInt8]) throws -> [UInt8] {
            let trimmed = Array(v.drop(while: { $0 == 0 }))
            guard trimmed.count <= coordinateLength else { throw malformed }
            return [UInt8](repeating: 0, count: coordinateLength - trimmed.count) + trimmed
        }
        return try fixed(r) + fixed(s)
    }
}

func derLength(_ n: Int) -> [UInt8] {
    if n < 0x80 { return [UInt8(n)] }
    var bytes: [UInt8] = []
    var v = n
    while v > 0 { bytes.insert(UInt8(v & 0xff), at: 0); v >>= 8 }
    return [0x80 | UInt8(bytes.count)] + bytes
}

/// A minimal DER TLV reader (definite lengths only), for the few small structures parsed here.
struct DERReader {
    private let bytes: [UInt8]
    private var offset = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var isAtEnd: Bool { offset == bytes.count }

    mutating func read(tag: UInt8) -> [UInt8]? {
        guard offset + 2 <= bytes.count, bytes[offset] == tag else { return nil }
        var cursor = offset + 1
        var length = Int(bytes[cursor])
        cursor += 1
        if length & 0x80 != 0 {
            let count = length & 0x7f
            guard count > 0, count <= 4, cursor + count <= bytes.count else { return nil }
            length = 0
            for _ in 0..<count { length = length << 8 | Int(bytes[cursor]); cursor += 1 }
        }
        guard cursor + length <= bytes.count else { return nil }
        offset = cursor + length
        return Array(bytes[cursor..<cursor + length])
    }
}
