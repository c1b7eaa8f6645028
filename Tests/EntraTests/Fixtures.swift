import Crypto
import Foundation
import JOSE
import PKCS11
import TokenSigning
import Testing
import TestSupport
import X509

let tenantID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
let clientID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
let objectID = "a0b1c2d3-e4f5-4607-9809-1a2b3c4d5e6f"

/// Keys generated on the shared token "entra", each with a certificate issued by a software CA
/// that is stored on the token too (so chains can be built from the token).
enum EntraFixture {
    static let ca = P256.Signing.PrivateKey()
    static let caName = "CN=p11jwt test CA"

    /// Label → (key, DER certificate), made once per process.
    static let keys: Result<[String: [UInt8]], any Error> = Result {
        try sharedHSM {
            let token = try SharedSoftHSM.loggedIn("entra")
            defer { token.close() }
            var certs: [String: [UInt8]] = [:]
            for (label, spec) in [("rsa", Token.KeySpec.rsa(bits: 2048)), ("ec", .ec(.p256))] {
                let key = try token.generateKeyPair(spec, label: label)
                let publicKey = try #require(key.publicKey).certificatePublicKey()
                let der = try TestCertificates.issue(publicKey: publicKey, subject: "CN=p11jwt \(label)", issuer: .ca(name: caName, key: .init(ca)))
                _ = try token.storeCertificate(der: der, label: label, id: try #require(key.id))
                certs[label] = der
            }
            let caDER = try TestCertificates.issue(publicKey: .init(ca.publicKey), subject: caName, issuer: .selfSigned(.init(ca)), isCA: true)
            _ = try token.storeCertificate(der: caDER, label: "ca", id: [0xca])
            certs["ca"] = caDER
            return certs
        }
    }

    /// Runs `body` with a signer for the fixture key `label` on a fresh, logged-in token handle.
    static func withSigner<R>(_ label: String, certificateChain: [JWSCertificate]? = nil, _ body: (TokenSigner) throws -> R) throws -> R {
        _ = try keys.get()
        return try sharedHSM {
            let token = try SharedSoftHSM.loggedIn("entra")
            defer { token.close() }
            let key = try token.signingKey(try PKCS11URI("pkcs11:token=entra;object=\(label);type=private"))
            return try body(try TokenSigner(token: token, key: key, certificateChain: certificateChain))
        }
    }

    static func certificate(_ label: String) throws -> [UInt8] { try #require(try keys.get()[label]) }
}

/// Checks a token's signature with swift-crypto and openssl, from the key's raw public material.
func verifyIndependently(_ jws: JWS, signer: TokenSigner, openssl: Bool = true) throws {
    let parsed = try independentlyParse(jws.compact)
    let algorithm = try #require(JWSAlgorithm(rawValue: parsed.header["alg"] as? String ?? ""))
    let publicKey = try #require(signer.key.publicKey)
    #expect(try IndependentVerifier.swiftCrypto(parsed.signature, message: parsed.signingInput, algorithm: algorithm, key: publicKey))
    if openssl {
        #expect(try IndependentVerifier.openssl(
            parsed.signature, message: parsed.signingInput, algorithm: algorithm, publicKeyPEM: try IndependentVerifier.publicKeyPEM(publicKey)))
    }
}

/// Header and claims read with Foundation's JSON parser, not JOSE's.
func foundationJSON(_ jws: JWS) throws -> (header: [String: Any], claims: [String: Any]) {
    let parsed = try independentlyParse(jws.compact)
    return (parsed.header, parsed.claims)
}

func sha(_ der: [UInt8], sha256: Bool) -> String {
    sha256 ? base64url(Array(SHA256.hash(data: der))) : base64url(Array(Insecure.SHA1.hash(data: der)))
}
