import X509

/// The one seam between JOSE and a key it cannot see: something that signs digests.
///
/// The JWS builder hashes the signing input itself and hands over only the digest — the Azure
/// Key Vault `sign` model. A PKCS#11 token key implements this; tests have an in-memory one as
/// a reference.
public protocol JWSSigner: Sendable {
    /// The kind of key, which decides the algorithms that can apply.
    var keyType: JWSKeyType { get }
    /// The public key, when known (used to check certificates and signatures).
    var publicKey: Certificate.PublicKey? { get }
    /// The key's certificate, leaf first, then any chain for `x5c`; empty when there is none.
    var certificateChain: [JWSCertificate] { get }
    /// Whether this signer can produce `algorithm` (key type, and what the device supports).
    func canSign(_ algorithm: JWSAlgorithm) -> Bool
    /// Signs a digest of `algorithm.digestLength` bytes. RSA signatures are the modulus length;
    /// ECDSA signatures are raw `r ‖ s`.
    func sign(digest: [UInt8], algorithm: JWSAlgorithm) throws -> [UInt8]
    /// The same, for async callers. A signer whose `sign` blocks (a token, a remote key) runs
    /// it off the cooperative threads; the default calls the synchronous `sign` in place, which
    /// suits signers that compute in memory.
    func sign(digest: [UInt8], algorithm: JWSAlgorithm) async throws -> [UInt8]
}

extension JWSSigner {
    public func sign(digest: [UInt8], algorithm: JWSAlgorithm) async throws -> [UInt8] {
        // A synchronous closure selects the synchronous overload.
        let signNow = { try self.sign(digest: digest, algorithm: algorithm) }
        return try signNow()
    }

    /// The leaf certificate.
    public var certificate: JWSCertificate? { certificateChain.first }

    /// The algorithms this signer can produce, in `JWSKeyType.algorithms` order.
    public var supportedAlgorithms: [JWSAlgorithm] { keyType.algorithms.filter(canSign) }
}
