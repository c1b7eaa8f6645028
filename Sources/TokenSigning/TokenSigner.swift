import JOSE
import PKCS11
import X509

/// A key on a token as a JOSE signer: the JWS is built and hashed in this process and only the
/// digest goes to the token.
///
/// The synchronous `sign` blocks while the token works; the async one (what async callers get)
/// runs on the token's ``BlockingExecutor``.
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
                hint: "use the key's own certificate, or store it on the token with the key's CKA_ID")
        }
        self.token = token
        self.key = key
        self.keyType = keyType
        self.certificateChain = chain
    }

    /// ``init(token:key:certificateChain:)`` on the token's executor (it reads the token's
    /// certificates, and may sign to pair an EC key with its certificate).
    public static func make(token: Token, key: PrivateKeyObject, certificateChain: [JWSCertificate]? = nil) async throws -> TokenSigner {
        try await token.run { try TokenSigner(token: $0, key: key, certificateChain: certificateChain) }
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

    public func sign(digest: [UInt8], algorithm: JWSAlgorithm) async throws -> [UInt8] {
        try await token.sign(digest: digest, algorithm: algorithm, key: key)
    }
}

extension Token {
    /// The certificate chain for `key` from what the token holds: its certificate (same
    /// `CKA_ID`, else label), then its issuers. Empty when the token has no certificate for the key.
    public func certificateChain(for key: PrivateKeyObject) throws -> [JWSCertificate] {
        // By CKA_ID first, with a search that reads only the key's own certificate; every
        // certificate is read only when that finds none or the leaf has issuers to look for.
        if let id = key.id, !id.isEmpty,
           let own = try certificates(matching: try PKCS11URI(PKCS11URI.format(token: info, id: id, objectClass: .certificate))).first,
           let leaf = try? JWSCertificate(der: own.der), leaf.isSelfIssued {
            return [leaf]
        }
        return Self.certificateChain(for: key, in: try certificates())
    }

    /// ``certificateChain(for:)`` from certificates already read from the token.
    public static func certificateChain(for key: PrivateKeyObject, in certificates: [CertificateObject]) -> [JWSCertificate] {
        guard let leafObject = certificate(for: key, in: certificates), let leaf = try? JWSCertificate(der: leafObject.der) else {
            return []
        }
        return [leaf] + issuers(of: leaf, in: certificates)
    }

    /// `leaf` followed by each issuer the token holds, found by subject name, up to a
    /// self-issued certificate.
    public func certificateChain(startingWith leaf: JWSCertificate) throws -> [JWSCertificate] {
        [leaf] + Self.issuers(of: leaf, in: try certificates())
    }

    static func issuers(of leaf: JWSCertificate, in objects: [CertificateObject]) -> [JWSCertificate] {
        let others = objects.compactMap { try? JWSCertificate(der: $0.der) }.filter { $0.der != leaf.der }
        var chain = [leaf]
        while let last = chain.last, !last.isSelfIssued, chain.count < 10,
              let issuer = others.first(where: { $0.certificate.subject == last.certificate.issuer && !chain.contains($0) }) {
            chain.append(issuer)
        }
        return Array(chain.dropFirst())
    }
}
