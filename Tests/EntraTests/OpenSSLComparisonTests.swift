import Entra
import Foundation
import JOSE
import PKCS11
import TokenSigning
import Testing
import TestSupport

@Suite("RS256 on the token is byte-identical to openssl")
struct OpenSSLComparisonTests {
    static let imported = Result { () -> (TemporaryDirectory, ImportedKey) in
        let dir = TemporaryDirectory()
        let key = try importOpenSSLKey(into: SharedSoftHSM.directory, token: "entra-imported", label: "known", id: "b1c2", in: dir)
        return (dir, key)
    }

    @Test func tokenRS256MatchesOpenSSLDgstSignAndTheCertificateComesFromTheToken() throws {
        let (dir, imported) = try Self.imported.get()
        try sharedHSM {
            let token = try SharedSoftHSM.loggedIn("entra-imported")
            defer { token.close() }
            let signer = try TokenSigner(token: token, key: try token.signingKey(try PKCS11URI(imported.uri)))
            #expect(signer.certificate?.der == imported.certificateDER)
            let header = try JWSHeaderFields(x5t: true).header(algorithm: .RS256, certificateChain: signer.certificateChain)
            let claims = JSONObject(["iss": "fixed", "n": .int(42)])
            let jws = try JWS.sign(header: header, claims: claims, signer: signer)
            // The same signing input, signed by openssl with the PEM the token key came from.
            let input = dir.file("input"), signature = dir.file("sig")
            try Data(jws.signingInput.utf8).write(to: URL(fileURLWithPath: input))
            let r = try run("openssl", ["dgst", "-sha256", "-sign", imported.keyPEM, "-out", signature, input])
            try #require(r.status == 0, "\(r.stderr)")
            #expect(jws.signature == [UInt8](try Data(contentsOf: URL(fileURLWithPath: signature))))
            // Signing twice gives the same token: nothing random in RS256.
            #expect(try JWS.sign(header: header, claims: claims, signer: signer).compact == jws.compact)
            // And an RS256 assertion verifies with openssl against the certificate's key.
            let assertion = try ClientAssertion.make(
                .init(tenant: tenantID, clientID: clientID, algorithm: .fixed(.RS256)), signer: signer, logger: testLogger)
            try Data(assertion.signingInput.utf8).write(to: URL(fileURLWithPath: input))
            try Data(assertion.signature).write(to: URL(fileURLWithPath: signature))
            let pub = dir.file("pub.pem")
            #expect(try run("openssl", ["x509", "-in", imported.certificatePEM, "-pubkey", "-noout", "-out", pub]).status == 0)
            let verified = try run("openssl", ["dgst", "-sha256", "-verify", pub, "-signature", signature, input])
            #expect(verified.stdout.contains("Verified OK"))
        }
    }
}
