import Crypto
import _CryptoExtras
import X509

/// Verifies JWS signatures (RSA PKCS#1 v1.5 / PSS, raw `r ‖ s` ECDSA) with swift-crypto.
public enum JWSVerifier {
    /// Whether `signature` is `publicKey`'s signature of `message` under `algorithm`.
    public static func verify(
        signature: [UInt8], message: [UInt8], algorithm: JWSAlgorithm, publicKey: Certificate.PublicKey
    ) throws -> Bool {
        switch algorithm.family {
        case .rsaPKCS1, .rsaPSS:
            guard let key = _RSA.Signing.PublicKey(publicKey) else { return false }
            let padding: _RSA.Signing.Padding = algorithm.family == .rsaPSS ? .PSS : .insecurePKCS1v1_5
            let sig = _RSA.Signing.RSASignature(rawRepresentation: signature)
            switch algorithm.hash {
            case .sha256: return key.isValidSignature(sig, for: SHA256.hash(data: message), padding: padding)
            case .sha384: return key.isValidSignature(sig, for: SHA384.hash(data: message), padding: padding)
            case .sha512: return key.isValidSignature(sig, for: SHA512.hash(data: message), padding: padding)
            }
        case .ecdsa:
            switch algorithm.curve {
            case .p256:
                guard let key = P256.Signing.PublicKey(publicKey) else { return false }
                return key.isValidSignature(try P256.Signing.ECDSASignature(rawRepresentation: signature), for: SHA256.hash(data: message))
            case .p384:
                guard let key = P384.Signing.PublicKey(publicKey) else { return false }
                return key.isValidSignature(try P384.Signing.ECDSASignature(rawRepresentation: signature), for: SHA384.hash(data: message))
            case .p521:
                guard let key = P521.Signing.PublicKey(publicKey) else { return false }
                return key.isValidSignature(try P521.Signing.ECDSASignature(rawRepresentation: signature), for: SHA512.hash(data: message))
            case nil:
                return false
            }
        }
    }
}
