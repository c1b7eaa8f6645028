import Crypto
import Foundation
import JOSE
import Testing
import TestSupport

@Suite("p11jwt access-token / credential add / credential remove against the emulator over HTTPS")
struct TokenAndKeyTests {
    @Test(arguments: TokenImplementation.available)
    func tokenExchangeWithPS256CachedIn0600File(_ implementation: TokenImplementation) throws {
        let f = try WorkflowFixture(implementation: implementation)
        // The assertion this key makes is PS256 + x5t#S256 (both implementations do PSS).
        let assertion = try f.cli(["assertion", "--key", f.keyURI, "--tenant", f.tenant, "--client-id", f.appId, "--pin-file", f.hsm.pinFile])
        #expect(try independentlyParse(assertion.stdout.trimmingCharacters(in: .whitespacesAndNewlines)).header["alg"] as? String == "PS256")

        let (first, json) = try f.token()
        #expect(first.status == 0, "\(first.stderr)")
        let token = try #require(json?["accessToken"] as? String)
        #expect(json?["fromCache"] as? Bool == false)
        let claims = try independentlyParse(token).claims
        #expect(claims["appid"] as? String == f.appId)
        #expect(claims["tid"] as? String == f.tenant)
        #expect(claims["aud"] as? String == "https://graph.microsoft.com")
        #expect(claims["appidacr"] as? String == "2")
        // Never logged: the token appears on stdout only.
        #expect(!first.stderr.contains(token))

        let cacheFile = f.dir.file("cache/p11jwt/tokens.json")
        let attributes = try FileManager.default.attributesOfItem(atPath: cacheFile)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        let directoryAttributes = try FileManager.default.attributesOfItem(atPath: f.dir.file("cache/p11jwt"))
        #expect((directoryAttributes[.posixPermissions] as? NSNumber)?.intValue == 0o700)

        let (second, cached) = try f.token()
        #expect(second.status == 0)
        #expect(cached?["fromCache"] as? Bool == true)
        #expect(cached?["accessToken"] as? String == token)
        let (third, fresh) = try f.token(extra: ["--no-cache"])
        #expect(third.status == 0)
        #expect(fresh?["fromCache"] as? Bool == false)
        #expect(fresh?["accessToken"] as? String != token)

        // --output token prints the token alone; env prints export lines.
        let plain = try f.cli(["access-token", "--key", f.keyURI, "--no-cache"] + f.entraFlags)
        #expect(plain.stdout.split(separator: "\n").count == 1 && plain.stdout.split(separator: ".").count == 3)
        let env = try f.cli(["access-token", "--key", f.keyURI, "--output", "env"] + f.entraFlags)
        #expect(env.stdout.contains("export P11JWT_ACCESS_TOKEN='"))
    }

    @Test func tokenExchangeWithRS256WhenTheTokenCannotDoPSS() throws {
        // No CKM_RSA_PKCS_PSS and no CKM_RSA_X_509: the fallback is RS256 + x5t.
        let f = try WorkflowFixture(mechanisms: "CKM_RSA_PKCS,CKM_RSA_PKCS_KEY_PAIR_GEN,CKM_SHA256")
        let assertion = try f.cli(["assertion", "--key", f.keyURI, "--tenant", f.tenant, "--client-id", f.appId, "--pin-file", f.hsm.pinFile])
        let header = try independentlyParse(assertion.stdout.trimmingCharacters(in: .whitespacesAndNewlines)).header
        #expect(header["alg"] as? String == "RS256")
        #expect(header["x5t"] != nil)
        let (result, json) = try f.token()
        #expect(result.status == 0, "\(result.stderr)")
        #expect(json?["accessToken"] is String)
    }

    @Test func configFileThenEnvironmentThenFlags() throws {
        let f = try WorkflowFixture()
        try FileManager.default.createDirectory(atPath: f.dir.file("config/p11jwt"), withIntermediateDirectories: true)
        _ = try f.dir.write("config/p11jwt/config.yaml", """
            # p11jwt settings
            tenant: \(f.tenant)
            client-id: "\(f.appId)"
            key: "\(f.keyURI)"
            authority-host: \(f.emulator.url)
            ca-file: \(f.emulator.caFile)
            """)
        let fromFile = try f.cli(["access-token", "--pin-file", f.hsm.pinFile, "--no-cache"])
        #expect(fromFile.status == 0, "\(fromFile.stderr)")
        // The environment wins over the file, and the flag over both.
        let wrongTenant = try f.cli(["access-token", "--pin-file", f.hsm.pinFile, "--no-cache"], environment: ["AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000009"])
        #expect(wrongTenant.status == 1)
        #expect(wrongTenant.stderr.contains("AADSTS90002"))
        #expect(wrongTenant.stderr.contains("wrong tenant") || wrongTenant.stderr.contains("was not found"))
        let flagWins = try f.cli(["access-token", "--pin-file", f.hsm.pinFile, "--no-cache", "--tenant", f.tenant], environment: ["AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000009"])
        #expect(flagWins.status == 0, "\(flagWins.stderr)")
        // A bad key in the file is named with its file and line.
        _ = try f.dir.write("bad.yaml", "tenant: x\nkeyy: y\n")
        let bad = try f.cli(["access-token", "--config", f.dir.file("bad.yaml")])
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("bad.yaml:2") && bad.stderr.contains("keyy"), "\(bad.stderr)")
    }

    /// `--x5c` (MSAL's sendX5C) sends the certificate chain in the assertion: what a server
    /// receives is captured on loopback and decoded, and the emulator accepts it.
    @Test func x5cSendsTheCertificateChainInTheAssertion() throws {
        let f = try WorkflowFixture()
        let accepted = try f.token(extra: ["--x5c", "--no-cache"])
        #expect(accepted.result.status == 0, "\(accepted.result.stderr)")
        // A one-request loopback server records the form the token request sends.
        let capture = f.dir.file("form")
        let portFile = f.dir.file("port")
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["python3", "-c", """
            import http.server, sys
            class H(http.server.BaseHTTPRequestHandler):
                def do_POST(self):
                    open(sys.argv[1], "wb").write(self.rfile.read(int(self.headers["Content-Length"])))
                    body = b'{"error":"invalid_client","error_description":"AADSTS700027: captured","error_codes":[700027]}'
                    self.send_response(401); self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
                def log_message(self, *a): pass
            s = http.server.HTTPServer(("127.0.0.1", 0), H)
            open(sys.argv[2], "w").write(str(s.server_port))
            s.handle_request()
            """, capture, portFile]
        try server.run()
        defer { server.terminate() }
        let deadline = Date().addingTimeInterval(10)
        while (try? String(contentsOfFile: portFile, encoding: .utf8))?.isEmpty != false && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        let port = try String(contentsOfFile: portFile, encoding: .utf8)
        let sent = try f.cli(["access-token", "--key", f.keyURI, "--x5c", "--no-cache", "--tenant", f.tenant, "--client-id", f.appId,
                              "--authority-host", "http://127.0.0.1:\(port)", "--pin-file", f.hsm.pinFile])
        #expect(sent.status == 1 && sent.stderr.contains("AADSTS700027"), "\(sent.stderr)")
        let form = try String(contentsOfFile: capture, encoding: .utf8)
        let assertion = try #require(URLComponents(string: "?" + form)?.queryItems?.first { $0.name == "client_assertion" }?.value)
        let header = try #require(try JSONSerialization.jsonObject(with: Data(Base64URL.decode(String(assertion.split(separator: ".")[0]))!)) as? [String: Any])
        let x5c = try #require(header["x5c"] as? [String], "\(header)")
        let leaf = try #require(Data(base64Encoded: x5c[0]))
        let fingerprint = try run("openssl", ["x509", "-in", f.bootstrapCertificate, "-noout", "-fingerprint", "-sha256"]).stdout
            .split(separator: "=").last.map { $0.replacingOccurrences(of: ":", with: "").trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(Hex.encode(Array(SHA256.hash(data: leaf)), uppercase: true) == fingerprint, "the x5c leaf is the key's certificate")
    }

    @Test func refusalsNameTheCauseAndTheNextStep() throws {
        let f = try WorkflowFixture()
        let strangerPEM = try f.makeKey(label: "stranger")
        // A key whose certificate is not registered: AADSTS700027 with its thumbprint.
        let unregistered = try f.cli(["access-token", "--key", "pkcs11:token=wf;object=stranger", "--no-cache"] + f.entraFlags)
        #expect(unregistered.status == 1)
        #expect(unregistered.stderr.contains("AADSTS700027"))
        #expect(unregistered.stderr.contains(try opensslThumbprint(strangerPEM)))
        #expect(unregistered.stderr.contains("not registered on the app"))
        // Unknown client: 700016 with a hint about --client-id.
        let unknownClient = try f.cli(["access-token", "--key", f.keyURI, "--no-cache"] + f.entraFlags.map { $0 == f.appId ? "00000000-0000-0000-0000-00000000000a" : $0 })
        #expect(unknownClient.stderr.contains("AADSTS700016") && unknownClient.stderr.contains("--client-id"))
        // Clock far off: 700024 points at the clock.
        try f.setFaults(#"{"clockOffsetSeconds":3600}"#)
        let skewed = try f.cli(["access-token", "--key", f.keyURI, "--no-cache"] + f.entraFlags)
        #expect(skewed.stderr.contains("AADSTS700024") && skewed.stderr.contains("clock"))
        try f.setFaults("{}")
        // An untrusted server: TLS is verified, and the hint names --ca-file.
        let untrusted = try f.cli(["access-token", "--key", f.keyURI, "--no-cache"] + f.entraFlags.filter { $0 != "--ca-file" && $0 != f.emulator.caFile })
        #expect(untrusted.status == 1)
        #expect(untrusted.stderr.contains("--ca-file"))
        // Plain http on a non-loopback host is refused before anything is sent.
        let http = try f.cli(["access-token", "--key", f.keyURI, "--authority-host", "http://login.example.com"] + f.entraFlags.filter { $0 != "--authority-host" && $0 != f.emulator.url })
        #expect(http.status == 2)
    }

    @Test func throttlingAndUnavailabilityAreRetried() throws {
        let f = try WorkflowFixture()
        try f.setFaults(#"{"failures":[{"route":"token","count":2,"status":429,"retryAfter":1},{"route":"addKey","count":1,"status":503}]}"#)
        let started = Date()
        let (result, json) = try f.token(extra: ["--no-cache"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(json?["accessToken"] is String)
        #expect(Date().timeIntervalSince(started) >= 2, "Retry-After was honoured")
        let pem = try f.makeKey(label: "second")
        let added = try f.cli(["credential", "add", "--key", f.keyURI, "--object-id", f.objectID, "--new-cert", pem, "--output", "json"] + f.entraFlags)
        #expect(added.status == 0, "\(added.stderr)")
        #expect(try f.credentials().count == 2)
    }

    @Test func addAndRemoveOnTheApplicationByIDAndByAppID() throws {
        let f = try WorkflowFixture()
        let pem = try f.makeKey(label: "next")
        let added = try f.cli(["credential", "add", "--key", f.keyURI, "--object-id", f.objectID, "--new-cert", pem, "--display-name", "next", "--output", "json"] + f.entraFlags)
        #expect(added.status == 0, "\(added.stderr)")
        let credential = try #require(try JSONSerialization.jsonObject(with: Data(added.stdout.utf8)) as? [String: Any])
        let keyID = try #require(credential["keyId"] as? String)
        #expect(credential["displayName"] as? String == "next")
        #expect(try f.registeredThumbprints() == [try opensslThumbprint(f.bootstrapCertificate), try opensslThumbprint(pem)])
        // The new key works at once (no propagation delay here).
        #expect(try f.token(key: "pkcs11:token=wf;object=next", extra: ["--no-cache"]).result.status == 0)

        // remove-key refuses the signing key's own credential without --force.
        let own = try f.cli(["credential", "remove", "--key", "pkcs11:token=wf;object=next", "--object-id", f.objectID, "--key-id", keyID] + f.entraFlags)
        #expect(own.status == 1)
        #expect(own.stderr.contains("signing key"))
        // By appId (the proof still names the object id), signed by the new key: the bootstrap credential goes.
        let removed = try f.cli(["credential", "remove", "--key", "pkcs11:token=wf;object=next", "--app-id", f.appId, "--object-id", f.objectID, "--key-id", f.bootstrapKeyID] + f.entraFlags)
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(try f.registeredThumbprints() == [try opensslThumbprint(pem)])
        let refused = try f.token(extra: ["--no-cache"])
        #expect(refused.result.stderr.contains("AADSTS700027"))
        // A key id that does not exist: Graph's 404, named.
        let missing = try f.cli(["credential", "remove", "--key", "pkcs11:token=wf;object=next", "--object-id", f.objectID, "--key-id", "00000000-0000-0000-0000-00000000000b"] + f.entraFlags)
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("Request_ResourceNotFound"))
    }

    @Test func addAndRemoveOnTheServicePrincipalByIDAndByAppID() throws {
        let f = try WorkflowFixture(roles: ["Application.ReadWrite.All"])
        let pem = try f.makeKey(label: "sp")
        // The service principal has no certificate yet: Graph says to use PATCH, and so does p11jwt.
        let first = try f.cli(["credential", "add", "--key", f.keyURI, "--object-id", f.servicePrincipalID, "--service-principal", "--new-cert", pem] + f.entraFlags)
        #expect(first.status == 1)
        #expect(first.stderr.contains("PATCH"))
        // An admin gives it the bootstrap certificate by PATCH; then keys roll with addKey/removeKey.
        let bearer = try #require(try f.token().json?["accessToken"] as? String)
        let b64 = try run("sh", ["-c", "openssl x509 -in '\(f.bootstrapCertificate)' -outform DER | base64 -w0"]).stdout
        let patch = try run("curl", [
            "-sS", "--fail-with-body", "--cacert", f.emulator.caFile, "-X", "PATCH", "-H", "content-type: application/json",
            "-H", "authorization: Bearer \(bearer)",
            "-d", #"{"keyCredentials":[{"type":"AsymmetricX509Cert","usage":"Verify","key":"\#(b64)"}]}"#,
            "\(f.emulator.url)/v1.0/servicePrincipals/\(f.servicePrincipalID)",
        ])
        #expect(patch.status == 0, "\(patch.stdout) \(patch.stderr)")
        let added = try f.cli(["credential", "add", "--key", f.keyURI, "--app-id", f.appId, "--service-principal", "--object-id", f.servicePrincipalID, "--new-cert", pem, "--output", "json"] + f.entraFlags)
        #expect(added.status == 0, "\(added.stderr)")
        let keyID = try #require((try JSONSerialization.jsonObject(with: Data(added.stdout.utf8)) as? [String: Any])?["keyId"] as? String)
        // The service principal's own list (read with the role) has both; the application's is unchanged.
        let listed = try f.cli(["credential", "list", "--key", f.keyURI, "--object-id", f.servicePrincipalID, "--service-principal", "--output", "json"] + f.entraFlags)
        #expect(listed.status == 0, "\(listed.stderr)")
        let list = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]])
        #expect(list.count == 2)
        #expect(try f.credentials().count == 1)
        let removed = try f.cli(["credential", "remove", "--key", f.keyURI, "--object-id", f.servicePrincipalID, "--service-principal", "--key-id", keyID] + f.entraFlags)
        #expect(removed.status == 0, "\(removed.stderr)")
        let after = try f.cli(["credential", "list", "--key", f.keyURI, "--object-id", f.servicePrincipalID, "--service-principal", "--output", "json"] + f.entraFlags)
        #expect((try JSONSerialization.jsonObject(with: Data(after.stdout.utf8)) as? [[String: Any]])?.count == 1)
    }

    @Test func lostAnswersToAddKeyAndRemoveKeyAreResolvedWithoutDuplicates() throws {
        let f = try WorkflowFixture(roles: ["Application.ReadWrite.OwnedBy"])
        let pem = try f.makeKey(label: "next")
        try f.setFaults(#"{"failures":[{"route":"addKey","count":1,"dropAfterApply":true},{"route":"removeKey","count":1,"dropAfterApply":true}]}"#)
        let added = try f.cli(["credential", "add", "--key", f.keyURI, "--object-id", f.objectID, "--new-cert", pem, "--output", "json"] + f.entraFlags)
        #expect(added.status == 0, "\(added.stderr)")
        #expect(added.stderr.contains("answer was lost"))
        // Exactly one new credential, and its keyId was learnt from Graph.
        let credentials = try f.credentials()
        #expect(credentials.count == 2)
        let keyID = try #require((try JSONSerialization.jsonObject(with: Data(added.stdout.utf8)) as? [String: Any])?["keyId"] as? String)
        #expect(credentials.contains { $0["keyId"] as? String == keyID })
        let removed = try f.cli(["credential", "remove", "--key", "pkcs11:token=wf;object=next", "--object-id", f.objectID, "--key-id", f.bootstrapKeyID] + f.entraFlags)
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(try f.registeredThumbprints() == [try opensslThumbprint(pem)])
    }
}
