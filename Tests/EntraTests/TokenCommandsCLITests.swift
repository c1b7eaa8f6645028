import Foundation
import JOSE
import Testing
import TestSupport

/// `p11jwt assertion`, `pop`, `jwt`, `decode` and `thumbprint`, run as a user would, each test
/// with its own SoftHSM directory (and mechanism list, where the test is about mechanisms).
@Suite("p11jwt assertion, pop, jwt, decode and thumbprint")
struct TokenCommandsCLITests {
    /// A SoftHSM directory with one token holding an openssl-made RSA key and its certificate.
    struct Setup {
        let hsm: SoftHSMDirectory
        let key: ImportedKey
        let dir = TemporaryDirectory()
        var pin: [String] { ["--pin-file", hsm.pinFile] }

        init(_ token: String, mechanisms: String = "ALL") throws {
            hsm = try SoftHSMDirectory(labels: [token], mechanisms: mechanisms)
            key = try importOpenSSLKey(into: hsm, token: token, label: "app", id: "a1", in: dir)
        }

        func p11(_ arguments: [String], stdin: String? = nil) throws -> ProcessResult {
            try run(try p11jwtBinary, arguments, environment: hsm.environment, stdin: stdin)
        }

        /// openssl's verdict on a compact JWS, with the certificate's public key.
        func opensslVerifies(_ compact: String) throws -> Bool {
            let parsed = try independentlyParse(compact)
            let input = dir.file("input"), sig = dir.file("sig"), pub = dir.file("pub.pem")
            try Data(parsed.signingInput).write(to: URL(fileURLWithPath: input))
            try Data(parsed.signature).write(to: URL(fileURLWithPath: sig))
            _ = try run("openssl", ["x509", "-in", key.certificatePEM, "-pubkey", "-noout", "-out", pub])
            var args = ["dgst", "-sha256", "-verify", pub, "-signature", sig]
            if parsed.header["alg"] as? String == "PS256" { args += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"] }
            return try run("openssl", args + [input]).stdout.contains("Verified OK")
        }
    }

    let entra = ["--tenant", "72f988bf-86f1-41af-91ab-2d7cd011db47", "--client-id", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"]

    @Test func assertionPrintsOneLinePS256TokenThatOpenSSLVerifies() throws {
        let s = try Setup("cli-assert")
        let result = try s.p11(["assertion", "--key", s.key.uri] + entra + s.pin)
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.count == 1)
        let token = String(lines[0])
        let parsed = try independentlyParse(token)
        #expect(parsed.header["alg"] as? String == "PS256")
        #expect(parsed.claims["aud"] as? String == "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token")
        #expect(try s.opensslVerifies(token))
        #expect(result.stderr.isEmpty, "nothing on stderr: \(result.stderr)")

        // --output json, settings from the environment, sovereign cloud, extra claims.
        var env = s.hsm.environment
        env["AZURE_TENANT_ID"] = "contoso.onmicrosoft.com"
        env["AZURE_CLIENT_ID"] = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
        env["P11JWT_KEY"] = s.key.uri
        let json = try run(try p11jwtBinary, ["assertion", "--cloud", "usgov", "--claim", "ctx={\"a\":1}", "--claim", "note=hi", "--output", "json"] + s.pin, environment: env)
        #expect(json.status == 0, "\(json.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let claims = try #require(report["claims"] as? [String: Any])
        #expect(claims["aud"] as? String == "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token")
        #expect((claims["ctx"] as? [String: Any])?["a"] as? Int == 1)
        #expect(claims["note"] as? String == "hi")
        #expect(try s.opensslVerifies(try #require(report["token"] as? String)))
    }

    @Test func withoutPSSOrRawRSATheAssertionFallsBackToRS256AndX5t() throws {
        let s = try Setup("cli-nopss", mechanisms: "CKM_RSA_PKCS,CKM_RSA_PKCS_KEY_PAIR_GEN,CKM_SHA256")
        let result = try s.p11(["assertion", "--key", s.key.uri] + entra + s.pin)
        #expect(result.status == 0, "\(result.stderr)")
        let token = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let parsed = try independentlyParse(token)
        #expect(parsed.header["alg"] as? String == "RS256")
        #expect(parsed.header["x5t"] != nil && parsed.header["x5t#S256"] == nil)
        #expect(try s.opensslVerifies(token))
        // Forcing PS256 on this token is a clear error, not a bad signature.
        let forced = try s.p11(["assertion", "--key", s.key.uri, "--alg", "PS256"] + entra + s.pin)
        #expect(forced.status == 1)
        #expect(forced.stderr.contains("PS256") && forced.stderr.contains("RS256"), "\(forced.stderr)")
    }

    @Test func withRawRSAButNoPSSMechanismAutoStillGivesPS256() throws {
        let s = try Setup("cli-x509", mechanisms: "CKM_RSA_PKCS,CKM_RSA_X_509,CKM_RSA_PKCS_KEY_PAIR_GEN,CKM_SHA256")
        let result = try s.p11(["assertion", "--key", s.key.uri] + entra + s.pin)
        #expect(result.status == 0, "\(result.stderr)")
        let token = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try independentlyParse(token).header["alg"] as? String == "PS256")
        #expect(try s.opensslVerifies(token))
    }

    @Test func popDecodeVerifyAndThumbprint() throws {
        let s = try Setup("cli-pop")
        let pop = try s.p11(["pop", "--key", s.key.uri, "--object-id", "a0b1c2d3-e4f5-4607-9809-1a2b3c4d5e6f"] + s.pin)
        #expect(pop.status == 0, "\(pop.stderr)")
        let token = pop.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let parsed = try independentlyParse(token)
        #expect(parsed.header["alg"] as? String == "RS256")
        #expect(parsed.claims["aud"] as? String == "00000002-0000-0000-c000-000000000000")
        #expect(parsed.claims["iss"] as? String == "a0b1c2d3-e4f5-4607-9809-1a2b3c4d5e6f")
        #expect(try s.opensslVerifies(token))

        // decode finds the certificate on the token by thumbprint and verifies.
        let decoded = try s.p11(["decode", token, "--token", "pkcs11:token=cli-pop", "--verify", "--output", "json"])
        #expect(decoded.status == 0, "\(decoded.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(decoded.stdout.utf8)) as? [String: Any])
        #expect(report["signature"] as? String == "valid")
        #expect(((report["expiresIn"] as? Int) ?? 0) > 590)
        #expect((report["certificate"] as? [String: Any])?["uri"] as? String != nil)
        // From stdin, verified with the PEM file, in text form.
        let text = try s.p11(["decode", "-", "--verify", "--cert", s.key.certificatePEM], stdin: token)
        #expect(text.status == 0, "\(text.stderr)")
        #expect(text.stdout.contains("signature: valid") && text.stdout.contains("expires in"))
        // A token whose payload was changed fails verification with exit status 1.
        let parts = token.split(separator: ".")
        let forged = "\(parts[0]).\(Base64URL.encode(#"{"aud":"00000002-0000-0000-c000-000000000000","iss":"someone-else"}"#)).\(parts[2])"
        let bad = try s.p11(["decode", forged, "--verify", "--cert", s.key.certificatePEM])
        #expect(bad.status == 1)
        #expect(bad.stdout.contains("signature: invalid"))
        // Padding is refused.
        let padded = try s.p11(["decode", "\(parts[0])=.\(parts[1]).\(parts[2])"])
        #expect(padded.status == 1)
        #expect(padded.stderr.contains("padding"))

        // thumbprint of the file and of the object on the token agree with openssl.
        let sha1 = try run("openssl", ["x509", "-in", s.key.certificatePEM, "-noout", "-fingerprint", "-sha1"]).stdout
            .split(separator: "=").last!.trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: ":", with: "")
        for cert in [s.key.certificatePEM, "pkcs11:token=cli-pop;object=app;type=cert"] {
            let t = try s.p11(["thumbprint", "--cert", cert, "--output", "json"])
            #expect(t.status == 0, "\(t.stderr)")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(t.stdout.utf8)) as? [String: Any])
            #expect(json["sha1"] as? String == sha1)
            #expect(json["x5t"] as? String == parsed.header["x5t"] as? String)
        }
    }

    @Test func jwtSignsClaimsFromArgumentFileOrStdin() throws {
        let s = try Setup("cli-jwt")
        let claimsFile = try s.dir.write("claims.json", #"{"sub":"from-file","roles":["a","b"]}"#)
        for (arg, stdin, sub) in [(#"{"sub":"inline"}"#, nil, "inline"), ("@" + claimsFile, nil, "from-file"), ("-", #"{"sub":"stdin"}"#, "stdin")] {
            let r = try s.p11(["jwt", "--key", s.key.uri, "--claims", arg, "--header", #"{"cty":"test"}"#, "--x5t-s256", "--lifetime", "60"] + s.pin, stdin: stdin)
            #expect(r.status == 0, "\(r.stderr)")
            let token = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let parsed = try independentlyParse(token)
            #expect(parsed.claims["sub"] as? String == sub)
            #expect((parsed.claims["exp"] as? Int ?? 0) - (parsed.claims["iat"] as? Int ?? 0) == 60)
            #expect(parsed.header["alg"] as? String == "RS256")
            #expect(parsed.header["cty"] as? String == "test")
            #expect((parsed.header["kid"] as? String)?.count == 40)
            #expect(parsed.header["x5t#S256"] != nil)
            #expect(try s.opensslVerifies(token))
        }
        let malformed = try s.p11(["jwt", "--key", s.key.uri, "--claims", "{not json"] + s.pin)
        #expect(malformed.status == 1)
        #expect(malformed.stderr.contains("not valid JSON"), "\(malformed.stderr)")
        let notObject = try s.p11(["jwt", "--key", s.key.uri, "--claims", "[1]"] + s.pin)
        #expect(notObject.stderr.contains("not a JSON object"))
        let ps = try s.p11(["jwt", "--key", s.key.uri, "--alg", "ES256"] + s.pin)
        #expect(ps.status == 1)
        #expect(ps.stderr.contains("ES256"))
    }

    @Test func badInputGetsAClearErrorAndTheRightExitStatus() throws {
        let s = try Setup("cli-bad")
        let cases: [([String], Int32, String)] = [
            (["assertion", "--key", s.key.uri, "--lifetime", "3601"] + entra, 2, "outside 1…3600"),
            (["assertion", "--key", s.key.uri, "--tenant", "", "--client-id", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"], 2, "tenant is empty"),
            (["assertion", "--key", s.key.uri, "--tenant", "t", "--client-id", ""], 2, "client id is empty"),
            (["assertion", "--key", s.key.uri, "--authority-host", "http://login.example.com"] + entra, 2, "plain http"),
            (["assertion", "--key", s.key.uri, "--cloud", "public", "--authority-host", "https://x"] + entra, 2, "not both"),
            (["pop", "--key", s.key.uri, "--object-id", "my-app"], 2, "not a GUID"),
            (["assertion", "--key", s.key.uri, "--claim", "aud=https://elsewhere"] + entra, 2, "--override"),
            (["assertion", "--key", "pkcs11:token=cli-bad;object=nothing"] + entra, 1, "no private key matches"),
        ]
        for (args, status, message) in cases {
            let r = try s.p11(args + s.pin)
            #expect(r.status == status, "\(args): \(r.stderr)")
            #expect(r.stderr.contains(message), "\(args): \(r.stderr)")
            #expect(r.stdout.isEmpty)
        }
        // A certificate that is not the key's.
        let other = try importOpenSSLKey(into: s.hsm, token: "cli-bad", label: "other", id: "b2", in: s.dir)
        let mismatch = try s.p11(["assertion", "--key", s.key.uri, "--cert-file", other.certificatePEM] + entra + s.pin)
        #expect(mismatch.status == 1)
        #expect(mismatch.stderr.contains("does not belong to key"), "\(mismatch.stderr)")
        let mismatchURI = try s.p11(["pop", "--key", s.key.uri, "--cert", "pkcs11:token=cli-bad;object=other;type=cert", "--object-id", "a0b1c2d3-e4f5-4607-9809-1a2b3c4d5e6f"] + s.pin)
        #expect(mismatchURI.stderr.contains("does not belong to key"), "\(mismatchURI.stderr)")
        // A key with no certificate on the token.
        let keygen = try s.p11(["keygen", "--token", "pkcs11:token=cli-bad", "--label", "bare", "--key-type", "rsa:2048"] + s.pin)
        #expect(keygen.status == 0, "\(keygen.stderr)")
        let bare = try s.p11(["assertion", "--key", "pkcs11:token=cli-bad;object=bare;type=private"] + entra + s.pin)
        #expect(bare.status == 1)
        #expect(bare.stderr.contains("no certificate for key") && bare.stderr.contains("--cert-file"), "\(bare.stderr)")
    }
}
