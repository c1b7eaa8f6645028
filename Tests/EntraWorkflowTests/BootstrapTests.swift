import Foundation
import Testing
import TestSupport

/// `p11jwt bootstrap` (issue 17): from a temporary credential a central step made — here a 2-day
/// certificate and key made by openssl, as a password-protected PFX, registered on a new app —
/// to a key generated in the token, with the temporary credential gone from the app and the token.
@Suite("p11jwt bootstrap against the emulator")
struct BootstrapTests {
    /// A new application registered with a fresh 2-day certificate, and its PFX.
    struct Temporary {
        let app: [String: String]
        let pfx: String
        let password: String
        let thumbprint: String
        var objectID: String { app["id"]! }
        var keyID: String { app["keyId"]! }
        var appID: String { app["appId"]! }
    }

    static func temporary(_ f: WorkflowFixture, name: String) throws -> Temporary {
        let key = f.dir.file("\(name).key"), pem = f.dir.file("\(name).pem"), pfx = f.dir.file("\(name).pfx")
        let made = try run("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", pem, "-days", "2", "-subj", "/CN=\(name) temporary"])
        try #require(made.status == 0, "\(made.stderr)")
        let password = try f.dir.write("\(name).password", "pfx secret \(name)\n")
        let exported = try run("openssl", ["pkcs12", "-export", "-inkey", key, "-in", pem, "-out", pfx, "-passout", "file:\(password)"])
        try #require(exported.status == 0, "\(exported.stderr)")
        let app = try f.emulator.createApplication(name: name, certificateFile: pem)
        let sha1 = try run("openssl", ["x509", "-in", pem, "-noout", "-fingerprint", "-sha1"]).stdout
            .split(separator: "=").last.map { $0.replacingOccurrences(of: ":", with: "").trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
        return Temporary(app: app, pfx: pfx, password: password, thumbprint: sha1)
    }

    func bootstrap(_ f: WorkflowFixture, _ t: Temporary, label: String, crashAt: String? = nil, extra: [String] = []) throws -> ProcessResult {
        try f.cli(
            ["bootstrap", "--pfx", t.pfx, "--password-file", t.password, "--token", "pkcs11:token=\(f.tokenLabel)", "--label", label,
             "--object-id", t.objectID, "--temporary-key-id", t.keyID, "--tenant", f.tenant, "--client-id", t.appID,
             "--authority-host", f.emulator.url, "--graph-endpoint", f.emulator.url, "--ca-file", f.emulator.caFile,
             "--pin-file", f.hsm.pinFile] + extra,
            environment: crashAt.map { ["P11JWT_TEST_CRASH_AT": $0] } ?? [:])
    }

    /// The end state: exactly the new credential on the app, which is the certificate the token
    /// holds for `label` (compared through openssl), it gets a token, and nothing of the
    /// temporary key is left on the token.
    func expectBootstrapped(_ f: WorkflowFixture, _ t: Temporary, label: String, _ context: String) throws {
        let registered = Set(try f.emulator.keyCredentials(applicationID: t.objectID).compactMap {
            ($0["customKeyIdentifier"] as? String).flatMap { Data(base64Encoded: $0) }?.map { String(format: "%02X", $0) }.joined()
        })
        let onToken = try f.thumbprintOnToken(label: label)
        #expect(registered == [onToken], "\(context): registered \(registered), token has \(onToken)")
        #expect(!registered.contains(t.thumbprint), "\(context): the temporary credential is still registered")
        let exported = try f.cli(["export", "pkcs11:token=\(f.tokenLabel);object=\(label);type=cert"])
        let fingerprint = try run("openssl", ["x509", "-noout", "-fingerprint", "-sha1"], stdin: exported.stdout).stdout
        #expect(fingerprint.replacingOccurrences(of: ":", with: "").contains(onToken), "\(context): \(fingerprint)")
        let keys = try f.privateKeys().filter { $0.label.hasPrefix(label) }
        #expect(keys.count == 1 && keys.first?.label == label, "\(context): keys \(keys)")
        let certificates = try f.cli(["objects", "--token", "pkcs11:token=\(f.tokenLabel)", "--pin-file", f.hsm.pinFile, "--output", "json"]).stdout
        #expect(!certificates.contains(t.thumbprint), "\(context): the temporary certificate is still on the token")
        let token = try f.cli(["access-token", "--key", "pkcs11:token=\(f.tokenLabel);object=\(label)", "--no-cache", "--tenant", f.tenant,
                               "--client-id", t.appID, "--authority-host", f.emulator.url, "--ca-file", f.emulator.caFile, "--pin-file", f.hsm.pinFile])
        #expect(token.status == 0, "\(context): \(token.stderr)")
    }

    @Test func aTwoDayPFXBecomesAKeyMadeInTheToken() throws {
        let f = try WorkflowFixture()
        let t = try Self.temporary(f, name: "orders")
        let result = try bootstrap(f, t, label: "orders", extra: ["--output", "json"])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(report["verified"] as? Bool == true && report["temporaryThumbprint"] as? String == t.thumbprint, "\(report)")
        try expectBootstrapped(f, t, label: "orders", "after one run")
        // Done is done: with no bootstrap in progress and the label taken, a second run refuses.
        let again = try bootstrap(f, t, label: "orders")
        #expect(again.status != 0 && again.stderr.contains("already has a key labelled 'orders'"), "\(again.stderr)")
    }

    /// The temporary key may already be on the token (made there by a central step): it is
    /// destroyed at the end like an imported one.
    @Test func aTemporaryKeyOnTheTokenIsReplacedAndDestroyed() throws {
        let f = try WorkflowFixture()
        let pem = try f.makeKey(label: "billing")
        let app = try f.emulator.createApplication(name: "billing", certificateFile: pem)
        let before = try f.thumbprintOnToken(label: "billing")
        let result = try f.cli(
            ["bootstrap", "--key", "pkcs11:token=\(f.tokenLabel);object=billing", "--object-id", app["id"]!, "--temporary-key-id", app["keyId"]!,
             "--tenant", f.tenant, "--client-id", app["appId"]!, "--authority-host", f.emulator.url, "--graph-endpoint", f.emulator.url,
             "--ca-file", f.emulator.caFile, "--pin-file", f.hsm.pinFile])
        #expect(result.status == 0, "\(result.stderr)")
        let t = Temporary(app: app, pfx: "", password: "", thumbprint: before)
        try expectBootstrapped(f, t, label: "billing", "key on the token")
    }

    /// Killed (SIGKILL) at every step boundary — the bootstrap's own and the rotation's — and run
    /// again with the same command: each ends with exactly the new credential and no temporary key.
    @Test func bootstrapSurvivesAKillAtEveryStep() throws {
        let f = try WorkflowFixture()
        let points = ["bootstrap.planned", "bootstrap.imported", "planned", "keygen", "keygen.recorded", "certificate", "certificate.recorded",
                      "addKey", "addKey.recorded", "verified", "relabel", "relabel.recorded", "removeKey", "removeKey.recorded",
                      "retire.old", "retire.recorded", "bootstrap.rotated"]
        for (n, point) in points.enumerated() {
            let label = "app\(n)"
            let t = try Self.temporary(f, name: label)
            let killed = try bootstrap(f, t, label: label, crashAt: point)
            #expect(killed.status == 9, "\(point): expected SIGKILL, got \(killed.status): \(killed.stderr)")
            // Never without a usable registered credential: the temporary one (its key is in the
            // PFX) or the one of the key the label names on the token.
            let registered = Set(try f.emulator.keyCredentials(applicationID: t.objectID).compactMap {
                ($0["customKeyIdentifier"] as? String).flatMap { Data(base64Encoded: $0) }?.map { String(format: "%02X", $0) }.joined()
            })
            // (The label names no key until the import: then there is no thumbprint to compare.)
            let onToken = try f.cli(["thumbprint", "--cert", "pkcs11:token=\(f.tokenLabel);object=\(label);type=cert"])
            let labelled = onToken.status == 0
                ? onToken.stdout.split(separator: "\n").first { $0.hasPrefix("sha1:") }.map { String($0.split(separator: " ").last!) } : nil
            #expect(registered.contains(t.thumbprint) || labelled.map(registered.contains) == true,
                    "\(point): registered \(registered), neither the temporary nor the labelled key's")
            let resumed = try bootstrap(f, t, label: label)
            #expect(resumed.status == 0, "\(point): resume failed: \(resumed.stderr)")
            try expectBootstrapped(f, t, label: label, point)
        }
    }
}
