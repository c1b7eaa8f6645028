import Foundation
import Testing
import TestSupport

@Suite("p11jwt token / add-key / remove-key against the emulator over HTTPS")
struct TokenAndKeyTests {
    @Test(arguments: TokenImplementation.available)
    func tokenExchangeWithPS256CachedIn0600File(_ implementation: TokenImplementation) throws {
        let f = try WorkflowFixture(implementation: implementation)
        // The assertion this key makes is PS256 + x5t#S256 (both implementations do PSS).
        let assertion = try f.cli(["assertion", "--key", f.keyURI, "--tenant", f.tenant, "--client-id", f.appId, "--pin-file", f.hsm.pinFile])
        #expect(try independentlyParse(assertion.stdout.trimmingCharacters(in: .whitespacesAndNewlines)).header["alg"] as? String == "PS256")

        let (first, json) = try f.token()
        #expect(first.status == 0, "\(first.stderr)")
        let token = try #require(json?["access_token"] as? String)
        #expect(json?["from_cache"] as? Bool == false)
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
        #expect(cached?["from_cache"] as? Bool == true)
        #expect(cached?["access_token"] as? String == token)
        let (third, fresh) = try f.token(extra: ["--no-cache"])
        #expect(third.status == 0)
        #expect(fresh?["from_cache"] as? Bool == false)
        #expect(fresh?["access_token"] as? String != token)

        // --output token prints the token alone; env prints export lines.
        let plain = try f.cli(["token", "--key", f.keyURI, "--no-cache"] + f.entraFlags)
        #expect(plain.stdout.split(separator: "\n").count == 1 && plain.stdout.split(separator: ".").count == 3)
        let env = try f.cli(["token", "--key", f.keyURI, "--output", "env"] + f.entraFlags)
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
        #expect(json?["access_token"] is String)
    }

    @Test func configFileThenEnvironmentThenFlags() throws {
        let f = try WorkflowFixture()
        try FileManager.default.createDirectory(atPath: f.dir.file("config/p11jwt"), withIntermediateDirectories: true)
        _ = try f.dir.write("config/p11jwt/config.toml", """
            # p11jwt settings
            tenant = "\(f.tenant)"
            client-id = "\(f.appId)"
            key = "\(f.keyURI)"
            authority-host = "\(f.emulator.url)"
            ca-file = "\(f.emulator.caFile)"
            """)
        let fromFile = try f.cli(["token", "--pin-file", f.hsm.pinFile, "--no-cache"])
        #expect(fromFile.status == 0, "\(fromFile.stderr)")
        // The environment wins over the file, and the flag over both.
        let wrongTenant = try f.cli(["token", "--pin-file", f.hsm.pinFile, "--no-cache"], environment: ["AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000009"])
        #expect(wrongTenant.status == 1)
        #expect(wrongTenant.stderr.contains("AADSTS90002"))
        #expect(wrongTenant.stderr.contains("wrong tenant") || wrongTenant.stderr.contains("was not found"))
        let flagWins = try f.cli(["token", "--pin-file", f.hsm.pinFile, "--no-cache", "--tenant", f.tenant], environment: ["AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000009"])
        #expect(flagWins.status == 0, "\(flagWins.stderr)")
        // A bad key in the file is named with its line.
        _ = try f.dir.write("bad.toml", "tenant = \"x\"\nkeyy = \"y\"\n")
        let bad = try f.cli(["token", "--config", f.dir.file("bad.toml")])
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("bad.toml:2") && bad.stderr.contains("keyy"))
    }

    @Test func refusalsNameTheCauseAndTheNextStep() throws {
        let f = try WorkflowFixture()
        let strangerPEM = try f.makeKey(label: "stranger")
        // A key whose certificate is not registered: AADSTS700027 with its thumbprint.
        let unregistered = try f.cli(["token", "--key", "pkcs11:token=wf;object=stranger", "--no-cache"] + f.entraFlags)
        #expect(unregistered.status == 1)
        #expect(unregistered.stderr.contains("AADSTS700027"))
        #expect(unregistered.stderr.contains(try opensslThumbprint(strangerPEM)))
        #expect(unregistered.stderr.contains("not registered on the app"))
        // Unknown client: 700016 with a hint about --client-id.
        let unknownClient = try f.cli(["token", "--key", f.keyURI, "--no-cache"] + f.entraFlags.map { $0 == f.appId ? "00000000-0000-0000-0000-00000000000a" : $0 })
        #expect(unknownClient.stderr.contains("AADSTS700016") && unknownClient.stderr.contains("--client-id"))
        // Clock far off: 700024 points at the clock.
        try f.setFaults(#"{"clockOffsetSeconds":3600}"#)
        let skewed = try f.cli(["token", "--key", f.keyURI, "--no-cache"] + f.entraFlags)
        #expect(skewed.stderr.contains("AADSTS700024") && skewed.stderr.contains("clock"))
        try f.setFaults("{}")
        // An untrusted server: TLS is verified, and the hint names --ca-file.
        let untrusted = try f.cli(["token", "--key", f.keyURI, "--no-cache"] + f.entraFlags.filter { $0 != "--ca-file" && $0 != f.emulator.caFile })
        #expect(untrusted.status == 1)
        #expect(untrusted.stderr.contains("--ca-file"))
        // Plain http on a non-loopback host is refused before anything is sent.
        let http = try f.cli(["token", "--key", f.keyURI, "--authority-host", "http://login.example.com"] + f.entraFlags.filter { $0 != "--authority-host" && $0 != f.emulator.url })
        #expect(http.status == 2)
    }

    @Test func throttlingAndUnavailabilityAreRetried() throws {
        let f = try WorkflowFixture()
        try f.setFaults(#"{"failures":[{"route":"token","count":2,"status":429,"retryAfter":1},{"route":"addKey","count":1,"status":503}]}"#)
        let started = Date()
        let (result, json) = try f.token(extra: ["--no-cache"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(json?["access_token"] is String)
        #expect(Date().timeIntervalSince(started) >= 2, "Retry-After was honoured")
        let pem = try f.makeKey(label: "second")
        let added = try f.cli(["add-key", "--key", f.keyURI, "--object-id", f.objectID, "--new-cert", pem, "--output", "json"] + f.entraFlags)
        #expect(added.status == 0, "\(added.stderr)")
        #expect(try f.credentials().count == 2)
    }

    @Test func addAndRemoveOnTheApplicationByIDAndByAppID() throws {
        let f = try WorkflowFixture()
        let pem = try f.makeKey(label: "next")
        let added = try f.cli(["add-key", "--key", f.keyURI, "--object-id", f.objectID, "--new-cert", pem, "--display-name", "next", "--output", "json"] + f.entraFlags)
        #expect(added.status == 0, "\(added.stderr)")
        let credential = try #require(try JSONSerialization.jsonObject(with: Data(added.stdout.utf8)) as? [String: Any])
        let keyID = try #require(credential["keyId"] as? String)
        #expect(credential["displayName"] as? String == "next")
        #expect(try f.registeredThumbprints() == [try opensslThumbprint(f.bootstrapCertificate), try opensslThumbprint(pem)])
        // The new key works at once (no propagation delay here).
        #expect(try f.token(key: "pkcs11:token=wf;object=next", extra: ["--no-cache"]).result.status == 0)

        // remove-key refuses the signing key's own credential without --force.
        let own = try f.cli(["remove-key", "--key", "pkcs11:token=wf;object=next", "--object-id", f.objectID, "--key-id", keyID] + f.entraFlags)
        #expect(own.status == 1)
        #expect(own.stderr.contains("signing key"))
        // By appId (the proof still names the object id), signed by the new key: the bootstrap credential goes.
        let removed = try f.cli(["remove-key", "--key", "pkcs11:token=wf;object=next", "--app-id", f.appId, "--object-id", f.objectID, "--key-id", f.bootstrapKeyID] + f.entraFlags)
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(try f.registeredThumbprints() == [try opensslThumbprint(pem)])
        let refused = try f.token(extra: ["--no-cache"])
        #expect(refused.result.stderr.contains("AADSTS700027"))
        // A key id that does not exist: Graph's 404, named.
        let missing = try f.cli(["remove-key", "--key", "pkcs11:token=wf;object=next", "--object-id", f.objectID, "--key-id", "00000000-0000-0000-0000-00000000000b"] + f.entraFlags)
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("Request_ResourceNotFound"))
    }

    @Test func addAndRemoveOnTheServicePrincipalByIDAndByAppID() throws {
        let f = try WorkflowFixture(roles: ["Application.ReadWrite.All"])
        let pem = try f.makeKey(label: "sp")
        // The service principal has no certificate yet: Graph says to use PATCH, and so does p11jwt.
        let first = try f.cli(["add-key", "--key", f.keyURI, "--object-id", f.servicePrincipalID, "--service-principal", "--new-cert", pem] + f.entraFlags)
        #expect(first.status == 1)
        #expect(first.stderr.contains("PATCH"))
        // An admin gives it the bootstrap certificate by PATCH; then keys roll with addKey/removeKey.
        let bearer = try #require(try f.token().json?["access_token"] as? String)
        let b64 = try run("sh", ["-c", "openssl x509 -in '\(f.bootstrapCertificate)' -outform DER | base64 -w0"]).stdout
        let patch = try run("curl", [
            "-sS", "--fail-with-body", "--cacert", f.emulator.caFile, "-X", "PATCH", "-H", "content-type: application/json",
            "-H", "authorization: Bearer \(bearer)",
            "-d", #"{"keyCredentials":[{"type":"AsymmetricX509Cert","usage":"Verify","key":"\#(b64)"}]}"#,
            "\(f.emulator.url)/v1.0/servicePrincipals/\(f.servicePrincipalID)",
        ])
        #expect(patch.status == 0, "\(patch.stdout) \(patch.stderr)")
        let added = try f.cli(["add-key", "--key", f.keyURI, "--app-id", f.appId, "--service-principal", "--object-id", f.servicePrincipalID, "--new-cert", pem, "--output", "json"] + f.entraFlags)
        #expect(added.status == 0, "\(added.stderr)")
        let keyID = try #require((try JSONSerialization.jsonObject(with: Data(added.stdout.utf8)) as? [String: Any])?["keyId"] as? String)
        // The service principal's own list (read with the role) has both; the application's is unchanged.
        let listed = try f.cli(["credentials", "--key", f.keyURI, "--object-id", f.servicePrincipalID, "--service-principal", "--output", "json"] + f.entraFlags)
        #expect(listed.status == 0, "\(listed.stderr)")
        let list = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]])
        #expect(list.count == 2)
        #expect(try f.credentials().count == 1)
        let removed = try f.cli(["remove-key", "--key", f.keyURI, "--object-id", f.servicePrincipalID, "--service-principal", "--key-id", keyID] + f.entraFlags)
        #expect(removed.status == 0, "\(removed.stderr)")
        let after = try f.cli(["credentials", "--key", f.keyURI, "--object-id", f.servicePrincipalID, "--service-principal", "--output", "json"] + f.entraFlags)
        #expect((try JSONSerialization.jsonObject(with: Data(after.stdout.utf8)) as? [[String: Any]])?.count == 1)
    }

    @Test func lostAnswersToAddKeyAndRemoveKeyAreResolvedWithoutDuplicates() throws {
        let f = try WorkflowFixture(roles: ["Application.ReadWrite.OwnedBy"])
        let pem = try f.makeKey(label: "next")
        try f.setFaults(#"{"failures":[{"route":"addKey","count":1,"dropAfterApply":true},{"route":"removeKey","count":1,"dropAfterApply":true}]}"#)
        let added = try f.cli(["add-key", "--key", f.keyURI, "--object-id", f.objectID, "--new-cert", pem, "--output", "json"] + f.entraFlags)
        #expect(added.status == 0, "\(added.stderr)")
        #expect(added.stderr.contains("answer was lost"))
        // Exactly one new credential, and its keyId was learnt from Graph.
        let credentials = try f.credentials()
        #expect(credentials.count == 2)
        let keyID = try #require((try JSONSerialization.jsonObject(with: Data(added.stdout.utf8)) as? [String: Any])?["keyId"] as? String)
        #expect(credentials.contains { $0["keyId"] as? String == keyID })
        let removed = try f.cli(["remove-key", "--key", "pkcs11:token=wf;object=next", "--object-id", f.objectID, "--key-id", f.bootstrapKeyID] + f.entraFlags)
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(try f.registeredThumbprints() == [try opensslThumbprint(pem)])
    }
}
