import JOSE
import X509

/// A key on a token as a JOSE signer: the JWS is built and hashed in this process and only the
/// digest goes to the token.
public struct TokenSigner: JWSSigner {
    public let token: Token
    public let key: PrivateKeyObject
    public let keyType: JWSKeyType
    public let certificateChain: [JWSCertificate]

    /// A signer for `key`. `certificateChain` (leaf first) defaults to what the token holds for
    /// the key; a leaf that is not the key's certificate is refused.
    public init(token: Token, key: PrivateKeyObject, certificateChain: [JWSCertificate]? = nil) throws {
        guard let keyType = key.jwsKeyType else {
            throw PKCS11Error(
                .keyUnsuitable, "key \(key.uri) is \(key.typeDescription): no JWS algorithm signs with it",
                hint: "use an RSA key or an EC P-256 / P-384 / P-521 key")
        }
        let chain = try certificateChain ?? token.certificateChain(for: key)
        if let leaf = chain.first, !token.isKey(key, publicKey: leaf.publicKey) {
            throw PKCS11Error(
                .certificateMismatch,
                "certificate \(leaf.thumbprint.hexSHA1) (\(leaf.certificate.subject)) does not belong to key \(key.uri): its public key is a different key",
                hint: "point --cert / --cert-file at the key's own certificate, or store it on the token with the key's CKA_ID")
        }
        self.token = token
        self.key = key
        self.keyType = keyType
        self.certificateChain = chain
    }

    public var publicKey: Certificate.PublicKey? {
        (try? key.publicKey?.certificatePublicKey()) ?? certificateChain.first?.publicKey
    }

    public func canSign(_ algorithm: JWSAlgorithm) -> Bool {
        (try? token.signingPath(algorithm, key: key)) != nil
    }

    public func sign(digest: [UInt8], algorithm: JWSAlgorithm) throws -> [UInt8] {
        try token.sign(digest: digest, algorithm: algorithm, key: key)
    }
}
