import Crypto
import _CryptoExtras
import Foundation
import JOSE
import SwiftASN1
import X509

/// The in-memory software signer JOSE is tested against, and that hardware results are compared
/// with. EC keys sign through swift-crypto; RSA keys through `openssl pkeyutl` (swift-crypto
/// signs RSA digests only of its own digest types), which keeps the reference independent of
/// the PKCS#11 code under test.
public final class ReferenceSigner: JWSSigner, @unchecked Sendable {
    public enum Key {
        case rsa(_RSA.Signing.PrivateKey)
        case p256(P256.Signing.PrivateKey)
        case p384(P384.Signing.PrivateKey)
        case p521(P521.Signing.PrivateKey)
    }

    public let key: Key
    public let certificateChain: [JWSCertificate]
    /// Algorithms this signer refuses, to stand in for a device without them.
    public var unsupported: Set<JWSAlgorithm> = []
    private let lock = NSLock()
    private var signed: [[UInt8]] = []
    /// Every digest it was asked to sign.
    public var digests: [[UInt8]] { lock.withLock { signed } }

    public init(_ key: Key, certificateChain: [JWSCertificate] = []) {
        self.key = key
        self.certificateChain = certificateChain
    }

    /// A fresh key with a self-signed certificate.
    public static func make(_ type: JWSKeyType, subject: String = "CN=p11jwt reference") throws -> ReferenceSigner {
        let key: Key
        switch type {
        case .rsa(let bits): key = .rsa(try _RSA.Signing.PrivateKey(keySize: .init(bitCount: bits)))
        case .ec(.p256): key = .p256(P256.Signing.PrivateKey())
        case .ec(.p384): key = .p384(P384.Signing.PrivateKey())
        case .ec(.p521): key = .p521(P521.Signing.PrivateKey())
        }
        let signer = ReferenceSigner(key)
        let der = try TestCertificates.issue(
            publicKey: signer.certificatePublicKey, subject: subject, issuer: .selfSigned(signer.certificatePrivateKey))
        return ReferenceSigner(key, certificateChain: [try JWSCertificate(der: der)])
    }

    public var keyType: JWSKeyType {
        switch key {
        case .rsa(let k): return .rsa(bits: k.keySizeInBits)
        case .p256: return .ec(.p256)
        case .p384: return .ec(.p384)
        case .p521: return .ec(.p521)
        }
    }

    public var certificatePublicKey: Certificate.PublicKey {
        switch key {
        case .rsa(let k): return Certificate.PublicKey(k.publicKey)
        case .p256(let k): return Certificate.PublicKey(k.publicKey)
        case .p384(let k): return Certificate.PublicKey(k.publicKey)
        case .p521(let k): return Certificate.PublicKey(k.publicKey)
        }
    }

    public var certificatePrivateKey: Certificate.PrivateKey {
        switch key {
        case .rsa(let k): return Certificate.PrivateKey(k)
        case .p256(let k): return Certificate.PrivateKey(k)
        case .p384(let k): return Certificate.PrivateKey(k)
        case .p521(let k): return Certificate.PrivateKey(k)
        }
    }

    public var publicKey: Certificate.PublicKey? { certificatePublicKey }

    public var privateKeyPEM: String {
        switch key {
        case .rsa(let k): return k.pemRepresentation
        case .p256(let k): return k.pemRepresentation
        case .p384(let k): return k.pemRepresentation
        case .p521(let k): return k.pemRepresentation
        }
    }

    public func canSign(_ algorithm: JWSAlgorithm) -> Bool {
        keyType.algorithms.contains(algorithm) && !unsupported.contains(algorithm)
    }

    public func sign(digest: [UInt8], algorithm: JWSAlgorithm) throws -> [UInt8] {
        precondition(digest.count == algorithm.digestLength, "the builder must pass a digest of the algorithm's length")
        lock.withLock { signed.append(digest) }
        let d = PrecomputedDigest(bytes: digest)
        switch key {
        case .p256(let k): return Array(try k.signature(for: d).rawRepresentation)
        case .p384(let k): return Array(try k.signature(for: d).rawRepresentation)
        case .p521(let k): return Array(try k.signature(for: d).rawRepresentation)
        case .rsa:
            let directory = TemporaryDirectory("p11jwt-reference")
            let keyPath = try directory.write("key.pem", privateKeyPEM)
            let inPath = directory.file("digest"), outPath = directory.file("sig")
            try Data(digest).write(to: URL(fileURLWithPath: inPath))
            var args = ["pkeyutl", "-sign", "-inkey", keyPath, "-in", inPath, "-out", outPath,
                        "-pkeyopt", "digest:\(algorithm.hash.rawValue.replacingOccurrences(of: "-", with: "").lowercased())"]
            if algorithm.family == .rsaPSS {
                args += ["-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:digest"]
            }
            let result = try run("openssl", args)
            guard result.status == 0 else { throw JOSEError(.invalidValue, "openssl pkeyutl -sign: \(result.stderr)") }
            return [UInt8](try Data(contentsOf: URL(fileURLWithPath: outPath)))
        }
    }
}

/// A digest computed elsewhere, for swift-crypto's ECDSA `signature(for:)`.
struct PrecomputedDigest: Digest {
    static var byteCount: Int { 0 }
    let bytes: [UInt8]
    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { try bytes.withUnsafeBytes(body) }
    func makeIterator() -> IndexingIterator<[UInt8]> { bytes.makeIterator() }
    var description: String { "PrecomputedDigest(\(bytes.count) bytes)" }
}

/// Certificates for test keys, made with swift-certificates.
public enum TestCertificates {
    public enum Issuer {
        case selfSigned(Certificate.PrivateKey)
        case ca(name: String, key: Certificate.PrivateKey)
    }

    /// A DER certificate for `publicKey`.
    public static func issue(
        publicKey: Certificate.PublicKey, subject: String, issuer: Issuer, isCA: Bool = false,
        notBefore: Date = Date().addingTimeInterval(-3600), notAfter: Date = Date().addingTimeInterval(30 * 86400)
    ) throws -> [UInt8] {
        let subjectName = try DistinguishedName { CommonName(subject.replacingOccurrences(of: "CN=", with: "")) }
        let issuerName: DistinguishedName
        let signingKey: Certificate.PrivateKey
        switch issuer {
        case .selfSigned(let key):
            issuerName = subjectName
            signingKey = key
        case .ca(let name, let key):
            issuerName = try DistinguishedName { CommonName(name.replacingOccurrences(of: "CN=", with: "")) }
            signingKey = key
        }
        let preferred: [Certificate.SignatureAlgorithm] = [.sha256WithRSAEncryption, .ecdsaWithSHA256, .ecdsaWithSHA384, .ecdsaWithSHA512]
        let signatureAlgorithm = preferred.first(where: signingKey.supportedSignatureAlgorithms.contains)!
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
            notValidBefore: notBefore, notValidAfter: notAfter, issuer: issuerName, subject: subjectName,
            signatureAlgorithm: signatureAlgorithm,
            extensions: isCA
                ? try Certificate.Extensions { Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil)) }
                : Certificate.Extensions(),
            issuerPrivateKey: signingKey)
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return serializer.serializedBytes
    }
}
