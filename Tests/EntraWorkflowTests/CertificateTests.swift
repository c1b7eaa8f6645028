import Foundation
import JOSE
import Testing
import TestSupport

@Suite("p11jwt cert: made in the token, checked by openssl")
struct CertificateTests {
    @Test(arguments: TokenImplementation.available, ["rsa:2048", "ec:p256", "ec:p384"])
    func selfSignedCertificateAndCSRVerifyWithOpenSSL(implementation: TokenImplementation, type: String) throws {
        let hsm = try TokenDirectory(labels: ["certs"], implementation: implementation)
        let dir = TemporaryDirectory("p11jwt-certs")
        let keygen = try p11jwt(["keygen", "--token", "pkcs11:token=certs", "--label", "k", "--key-type", type, "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(keygen.status == 0, "\(keygen.stderr)")
        let key = "pkcs11:token=certs;object=k"

        let pem = dir.file("k.pem")
        let created = try p11jwt(["cert", "create", "--key", key, "--subject", "CN=my app,O=Contoso\\, Ltd,C=US", "--days", "30", "--out", pem, "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(created.status == 0, "\(created.stderr)")
        let text = try run("openssl", ["x509", "-in", pem, "-noout", "-text"])
        #expect(text.status == 0, "\(text.stderr)")
        #expect(text.stdout.contains("CN = my app") || text.stdout.contains("CN=my app"))
        #expect(text.stdout.contains("Contoso, Ltd") || text.stdout.contains("Contoso\\, Ltd"))
        #expect(text.stdout.contains(type.hasPrefix("rsa") ? "sha256WithRSAEncryption" : type == "ec:p256" ? "ecdsa-with-SHA256" : "ecdsa-with-SHA384"))
        #expect(text.stdout.contains("CA:FALSE"))
        // The signature is the key's own: openssl checks the self-signed certificate.
        let verified = try run("openssl", ["verify", "-CAfile", pem, pem])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        // Its public key is the token key's: a JWT the token key signs verifies (openssl) with it.
        let fromCert = try run("openssl", ["x509", "-in", pem, "-noout", "-pubkey"]).stdout
        let jwt = try p11jwt(["jwt", "--key", key, "--cert-file", pem, "--claims", #"{"sub":"x"}"#, "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(jwt.status == 0, "\(jwt.stderr)")
        let parsed = try independentlyParse(jwt.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        let algorithm = try #require(JWSAlgorithm(rawValue: parsed.header["alg"] as? String ?? ""))
        #expect(try IndependentVerifier.openssl(parsed.signature, message: parsed.signingInput, algorithm: algorithm, publicKeyPEM: fromCert))

        let csr = dir.file("k.csr")
        let requested = try p11jwt(["cert", "csr", "--key", key, "--subject", "CN=my app", "--out", csr, "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(requested.status == 0, "\(requested.stderr)")
        let checked = try run("openssl", ["req", "-in", csr, "-noout", "-verify", "-subject"])
        #expect(checked.status == 0, "\(checked.stderr)")
        #expect((checked.stdout + checked.stderr).contains("verify OK") || (checked.stdout + checked.stderr).contains("Certificate request self-signature verify OK"))

        // A CA (openssl) issues a certificate from the CSR; cert import stores it next to the key.
        _ = try run("openssl", ["req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", dir.file("ca.key"),
                                "-subj", "/CN=test CA", "-days", "5", "-out", dir.file("ca.pem")])
        let issued = try run("openssl", ["x509", "-req", "-in", csr, "-CA", dir.file("ca.pem"), "-CAkey", dir.file("ca.key"), "-days", "5", "-out", dir.file("issued.pem")])
        #expect(issued.status == 0, "\(issued.stderr)")
        let chain = try String(contentsOfFile: dir.file("issued.pem"), encoding: .utf8) + String(contentsOfFile: dir.file("ca.pem"), encoding: .utf8)
        let chainFile = try dir.write("chain.pem", chain, mode: 0o644)
        let imported = try p11jwt(["cert", "import", "--token", "pkcs11:token=certs", "--cert-file", chainFile, "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(imported.stdout.contains("type=cert"))
        let thumbprint = try p11jwt(["thumbprint", "--cert", "pkcs11:token=certs;object=k;type=cert"], hsm: hsm)
        #expect(thumbprint.stdout.contains(try opensslThumbprint(dir.file("issued.pem"))))
        // Importing again changes nothing; a certificate for no key on the token is refused.
        #expect(try p11jwt(["cert", "import", "--token", "pkcs11:token=certs", "--cert-file", chainFile, "--pin-file", hsm.pinFile], hsm: hsm).stdout.contains("already"))
        let stranger = try p11jwt(["cert", "import", "--token", "pkcs11:token=certs", "--cert-file", dir.file("ca.pem"), "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(stranger.status == 1)
        #expect(stranger.stderr.contains("no private key"))
    }

    @Test func badSubjectsAndLifetimesAreRefusedBeforeThePIN() throws {
        let hsm = try SoftHSMDirectory(labels: ["certs2"])
        for (arguments, needle) in [
            (["--subject", "my app"], "NAME=value"),
            (["--subject", "CN=a,XX=b"], "unknown attribute XX"),
            (["--subject", "C=USA"], "two-letter"),
            (["--subject", "CN=a", "--days", "0"], "--days"),
        ] {
            let r = try p11jwt(["cert", "create", "--key", "pkcs11:token=certs2;object=none"] + arguments, hsm: hsm)
            #expect(r.status != 0)
            #expect(r.stderr.contains(needle), "\(arguments): \(r.stderr)")
        }
    }
}

@Suite("p11jwt import --pfx")
struct PFXImportTests {
    @Test(arguments: ["rsa", "ec"])
    func importThenSignNonExtractable(kind: String) throws {
        let hsm = try SoftHSMDirectory(labels: ["pfx"])
        let dir = TemporaryDirectory("p11jwt-pfx")
        let keyArguments = kind == "rsa" ? ["-newkey", "rsa:2048"] : ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        var r = try run("openssl", ["req", "-x509"] + keyArguments + ["-nodes", "-keyout", dir.file("k.pem"), "-subj", "/CN=pfx", "-days", "5", "-out", dir.file("c.pem")])
        #expect(r.status == 0, "\(r.stderr)")
        r = try run("openssl", ["pkcs12", "-export", "-inkey", dir.file("k.pem"), "-in", dir.file("c.pem"), "-out", dir.file("k.pfx"), "-passout", "pass:s3cret pw"])
        #expect(r.status == 0, "\(r.stderr)")
        let password = try dir.write("pw", "s3cret pw\n")

        // A wrong password is named as such and imports nothing.
        let wrong = try dir.write("wrong", "nope\n")
        let refused = try p11jwt(["import-pfx", "--token", "pkcs11:token=pfx", "--pfx", dir.file("k.pfx"), "--label", "migrated", "--password-file", wrong, "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("password"))

        let imported = try p11jwt(["import-pfx", "--token", "pkcs11:token=pfx", "--pfx", dir.file("k.pfx"), "--label", "migrated", "--password-file", password, "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(imported.status == 0, "\(imported.stderr)")
        // On the token: sensitive, not extractable, paired with its certificate.
        let objects = try p11jwt(["objects", "--token", "pkcs11:token=pfx", "--pin-file", hsm.pinFile, "--output", "json"], hsm: hsm)
        let report = try #require(try JSONSerialization.jsonObject(with: Data(objects.stdout.utf8)) as? [String: Any])
        let key = try #require((report["privateKeys"] as? [[String: Any]])?.first)
        #expect(key["sensitive"] as? Bool == true)
        #expect(key["extractable"] as? Bool == false)
        #expect(key["pairing"] as? String == "matches")
        // Certificate dates in JSON are ISO 8601, the same instant openssl reads.
        let certificate = try #require((report["certificates"] as? [[String: Any]])?.first, "\(report)")
        let notAfter = try #require(ISO8601DateFormatter().date(from: certificate["notAfter"] as? String ?? ""), "\(certificate)")
        let endDate = try run("openssl", ["x509", "-in", dir.file("c.pem"), "-noout", "-enddate", "-dateopt", "iso_8601"]).stdout
        let opensslEnd = endDate.split(separator: "=").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: " ", with: "T") } ?? ""
        #expect(ISO8601DateFormatter().date(from: opensslEnd) == notAfter, "\(endDate) vs \(certificate["notAfter"] ?? "")")
        // It signs; openssl verifies with the PFX's certificate.
        let jwt = try p11jwt(["jwt", "--key", "pkcs11:token=pfx;object=migrated", "--claims", #"{"sub":"migrated"}"#, "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(jwt.status == 0, "\(jwt.stderr)")
        let parsed = try independentlyParse(jwt.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        let algorithm = try #require(JWSAlgorithm(rawValue: parsed.header["alg"] as? String ?? ""))
        let publicKey = try run("openssl", ["x509", "-in", dir.file("c.pem"), "-noout", "-pubkey"]).stdout
        #expect(try IndependentVerifier.openssl(parsed.signature, message: parsed.signingInput, algorithm: algorithm, publicKeyPEM: publicKey))
        // The password never reaches argv: there is no option taking it as a value.
        let help = try p11jwt(["import-pfx", "--help"], hsm: hsm)
        #expect(help.status == 0)
        #expect(!help.stdout.contains("--password "))
    }
}
