import CP11Kit
import Crypto
import _CryptoExtras
import Foundation
import SwiftASN1
import X509

/// A public key as read from a token.
public enum PublicKey: Sendable, Hashable, CustomStringConvertible {
    /// Big-endian modulus and public exponent.
    case rsa(modulus: [UInt8], exponent: [UInt8])
    /// The uncompressed point (`04 ‖ x ‖ y`).
    case ec(curve: ECCurve, point: [UInt8])

    public var bits: Int {
        switch self {
        case .rsa(let modulus, _):
            let trimmed = modulus.drop(while: { $0 == 0 })
            guard let first = trimmed.first else { return 0 }
            return (trimmed.count - 1) * 8 + (8 - first.leadingZeroBitCount)
        case .ec(let curve, _):
            return curve.bits
        }
    }

    public var description: String {
        switch self {
        case .rsa: return "RSA \(bits)"
        case .ec(let curve, _): return "EC \(curve.rawValue)"
        }
    }

    /// The key as swift-certificates models it (for comparing with a certificate and for
    /// building certificates).
    public func certificatePublicKey() throws -> Certificate.PublicKey {
        do {
            switch self {
            case .rsa(let modulus, let exponent):
                return Certificate.PublicKey(try _RSA.Signing.PublicKey(n: modulus, e: exponent))
            case .ec(.p256, let point):
                return Certificate.PublicKey(try P256.Signing.PublicKey(x963Representation: point))
            case .ec(.p384, let point):
                return Certificate.PublicKey(try P384.Signing.PublicKey(x963Representation: point))
            case .ec(.p521, let point):
                return Certificate.PublicKey(try P521.Signing.PublicKey(x963Representation: point))
            }
        } catch {
            throw PKCS11Error(.invalidObject, "the token's \(description) public key is not usable: \(error)", cause: error)
        }
    }

    /// DER `SubjectPublicKeyInfo`.
    public func subjectPublicKeyInfo() throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(try certificatePublicKey())
        return serializer.serializedBytes
    }

    /// PEM `PUBLIC KEY`.
    public func pem() throws -> String {
        PEMDocument(type: "PUBLIC KEY", derBytes: try subjectPublicKeyInfo()).pemString
    }

    /// Reads an EC point attribute, which modules give either DER-wrapped (an OCTET STRING, as
    /// the standard says) or raw.
    static func ecPoint(_ bytes: [UInt8], curve: ECCurve) -> [UInt8]? {
        let rawLength = 1 + 2 * curve.coordinateLength
        if bytes.count == rawLength, bytes.first == 0x04 { return bytes }
        guard let wrapped = try? ASN1OctetString(derEncoded: bytes), wrapped.bytes.count == rawLength else { return nil }
        return Array(wrapped.bytes)
    }
}

/// Common attributes of an object on the token.
public struct ObjectIdentity: Sendable, Hashable {
    public let handle: CK_OBJECT_HANDLE
    public let objectClass: ObjectClass
    public let label: String?
    public let id: [UInt8]?
    /// A `pkcs11:` URI that selects this object.
    public let uri: String

    public var idHex: String? { id.map(hexString) }
}

/// A private key on the token.
public struct PrivateKeyObject: Sendable {
    public let identity: ObjectIdentity
    public let keyType: KeyType
    /// nil when the token does not expose it (EC private keys carry no point; see ``Token``).
    public let publicKey: PublicKey?
    /// For EC keys, even when the point is unknown.
    public let curve: ECCurve?
    /// RSA modulus bits.
    public let modulusBits: Int?
    public let canSign: Bool
    public let alwaysAuthenticate: Bool
    public let sensitive: Bool
    public let extractable: Bool

    public var label: String? { identity.label }
    public var id: [UInt8]? { identity.id }
    public var uri: String { identity.uri }

    public var typeDescription: String {
        if let publicKey { return publicKey.description }
        if keyType == .rsa { return "RSA \(modulusBits ?? 0)" }
        if let curve { return "EC \(curve.rawValue)" }
        return keyType == .ec ? "EC (unknown curve)" : "CKK_0x" + String(keyType.rawValue, radix: 16)
    }
}

/// A public key object on the token.
public struct PublicKeyObject: Sendable {
    public let identity: ObjectIdentity
    public let publicKey: PublicKey?
}

/// An X.509 certificate object on the token.
public struct CertificateObject: Sendable {
    public let identity: ObjectIdentity
    /// The certificate's DER encoding (`CKA_VALUE`).
    public let der: [UInt8]
    /// Parsed; nil when `CKA_VALUE` is not a certificate swift-certificates can read.
    public let certificate: Certificate?

    public var label: String? { identity.label }
    public var id: [UInt8]? { identity.id }
    public var uri: String { identity.uri }
}

/// Whether a key and a certificate belong together.
public enum Pairing: String, Sendable, Codable {
    /// Same `CKA_ID` (or label) and the certificate's public key is the key's.
    case matches
    /// Paired by `CKA_ID` / label but the certificate's public key is a different key.
    case mismatch
    /// No certificate with the key's `CKA_ID` or label.
    case noCertificate = "no-certificate"
}
