import Foundation
import Testing
import TestSupport

/// `p11jwt fleet rotate MANIFEST` (issue 17): many applications on one token, each resumable,
/// throttling shared, failures reported without holding up the others.
@Suite("p11jwt fleet rotate against the emulator")
struct FleetTests {
    /// `count` applications, each with a key on the fixture's token whose certificate expires in
    /// 10 days (so `ifExpiringWithin: 30d` rotates it once), registered on its own new app.
    static func fleet(_ f: WorkflowFixture, count: Int, prefix: String) throws -> [(name: String, app: [String: String])] {
        try (0..<count).map { n in
            let name = "\(prefix)\(n)"
            #expect(try f.cli(["keygen", "--token", "pkcs11:token=\(f.tokenLabel)", "--label", name, "--key-type", "rsa:2048", "--pin-file", f.hsm.pinFile]).status == 0)
            let pem = f.dir.file("\(name).pem")
            let made = try f.cli(["cert", "create", "--key", "pkcs11:token=\(f.tokenLabel);object=\(name)", "--subject", "CN=\(name)", "--days", "10",
                                  "--store", "--out", pem, "--pin-file", f.hsm.pinFile])
            try #require(made.status == 0, "\(made.stderr)")
            return (name, try f.emulator.createApplication(name: name, certificateFile: pem, roles: ["Application.ReadWrite.OwnedBy"]))
        }
    }

    /// A manifest for the apps (JSON, YAML's subset); `edit` changes an app's entry.
    static func manifest(_ f: WorkflowFixture, _ apps: [(name: String, app: [String: String])], file: String,
                         edit: (Int, inout [String: Any]) -> Void = { _, _ in }) throws -> String {
        let entries: [[String: Any]] = apps.enumerated().map { n, app in
            var entry: [String: Any] = ["name": app.name, "clientId": app.app["appId"]!, "objectId": app.app["id"]!,
                                        "key": "pkcs11:token=\(f.tokenLabel);object=\(app.name)"]
            edit(n, &entry)
            return entry
        }
        let document: [String: Any] = [
            "defaults": ["tenant": f.tenant, "authorityHost": f.emulator.url, "graphEndpoint": f.emulator.url, "caFile": f.emulator.caFile,
                         "pinFile": f.hsm.pinFile, "keyType": "rsa:2048", "ifExpiringWithin": "30d", "deleteOld": true],
            "apps": entries,
        ]
        let data = try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])
        return try f.dir.write(file, String(decoding: data, as: UTF8.self))
    }

    static func report(_ result: ProcessResult) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result.stdout) \(result.stderr)")
    }

    /// Thumbprints registered on an app, as Entra (the emulator) holds them.
    static func registered(_ f: WorkflowFixture, _ app: [String: String]) throws -> Set<String> {
        Set(try f.emulator.keyCredentials(applicationID: app["id"]!).compactMap {
            ($0["customKeyIdentifier"] as? String).flatMap { Data(base64Encoded: $0) }?.map { String(format: "%02X", $0) }.joined()
        })
    }

    /// 20 apps, one of them broken (its key is not on the token): the other 19 are rotated —
    /// each app then has exactly its new credential, the token's certificate for its label — the
    /// broken one is reported, and the exit status says so. A second run skips what is done.
    @Test func aManifestWithOneBrokenEntryRotatesTheOthers() throws {
        let f = try WorkflowFixture()
        let apps = try Self.fleet(f, count: 20, prefix: "fl")
        let file = try Self.manifest(f, apps, file: "fleet.json") { n, entry in
            if n == 7 { entry["key"] = "pkcs11:token=\(f.tokenLabel);object=no-such-key" }
        }
        let result = try f.cli(["fleet", "rotate", file, "--output", "json"])
        #expect(result.status == 1, "\(result.stderr)")
        let report = try Self.report(result)
        let results = try #require(report["apps"] as? [[String: Any]])
        #expect(results.count == 20 && report["rotated"] as? Int == 19 && report["failed"] as? Int == 1, "\(report)")
        let broken = try #require(results.first { $0["name"] as? String == "fl7" })
        #expect(broken["outcome"] as? String == "failed" && (broken["reason"] as? String)?.contains("no-such-key") == true, "\(broken)")
        #expect(broken["code"] as? String == "pkcs11.objectNotFound")
        #expect(result.stderr.contains("1 of 20 apps failed: fl7"), "\(result.stderr)")
        for (n, app) in apps.enumerated() where n != 7 {
            let entry = try #require(results.first { $0["name"] as? String == app.name })
            #expect(entry["outcome"] as? String == "rotated", "\(app.name): \(entry)")
            #expect(try Self.registered(f, app.app) == [try f.thumbprintOnToken(label: app.name)], "\(app.name): not exactly its new credential")
            #expect(entry["oldKeyId"] as? String == app.app["keyId"], "\(app.name): the old credential's keyId")
        }
        // The broken app kept its credential; the others are not rotated twice.
        #expect(try Self.registered(f, apps[7].app).count == 1)
        let again = try f.cli(["fleet", "rotate", file, "--output", "json"])
        let second = try Self.report(again)
        #expect(second["skipped"] as? Int == 19 && second["rotated"] as? Int == 0, "\(second)")
        // An unknown field is an error that names its entry, before anything is done.
        let typo = try Self.manifest(f, apps, file: "typo.json") { n, entry in if n == 3 { entry["keytype"] = "rsa:2048" } }
        let refused = try f.cli(["fleet", "rotate", typo])
        #expect(refused.status == 2 && refused.stderr.contains("apps[3] (fl3): unknown field 'keytype'"), "\(refused.stderr)")
    }

    /// A 429 storm on the token endpoint and Graph slows the fleet (one backoff for all) but
    /// loses nothing: every app ends rotated with exactly its new credential.
    @Test func aThrottlingStormSlowsTheFleetButLosesNothing() throws {
        let f = try WorkflowFixture()
        let apps = try Self.fleet(f, count: 6, prefix: "st")
        let file = try Self.manifest(f, apps, file: "storm.json")
        try f.setFaults(#"{"failures":[{"route":"token","count":12,"status":429,"retryAfter":1},{"route":"addKey","count":4,"status":429,"retryAfter":1}]}"#)
        let started = Date()
        let result = try f.cli(["fleet", "rotate", file, "--output", "json", "--concurrency-per-token", "3"])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try Self.report(result)
        #expect(report["rotated"] as? Int == 6, "\(report)")
        #expect((report["throttled"] as? Int ?? 0) >= 1, "the storm was not seen: \(report)")
        #expect(Date().timeIntervalSince(started) >= 2, "Retry-After was not honoured")
        for app in apps {
            #expect(try Self.registered(f, app.app) == [try f.thumbprintOnToken(label: app.name)], "\(app.name)")
        }
    }

    /// The whole fleet process is killed (SIGKILL) when the first app reaches a step; the same
    /// command then finishes every app from where it was, each with exactly one new credential.
    @Test func aKilledFleetResumesEachAppWhereItWas() throws {
        let f = try WorkflowFixture()
        let apps = try Self.fleet(f, count: 5, prefix: "kf")
        let file = try Self.manifest(f, apps, file: "killed.json")
        let keysBefore = try f.privateKeys().count
        let killed = try f.cli(["fleet", "rotate", file], environment: ["P11JWT_TEST_CRASH_AT": "addKey.recorded"])
        #expect(killed.status == 9, "\(killed.stderr)")
        let resumed = try f.cli(["fleet", "rotate", file, "--output", "json"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let report = try Self.report(resumed)
        #expect(report["rotated"] as? Int == 5, "\(report)")
        #expect(((report["apps"] as? [[String: Any]]) ?? []).contains { $0["resumed"] as? Bool == true }, "no app resumed: \(report)")
        for app in apps {
            #expect(try Self.registered(f, app.app) == [try f.thumbprintOnToken(label: app.name)], "\(app.name)")
        }
        #expect(try f.privateKeys().count == keysBefore, "a second new key was made, or an old one lingers")
    }
}
