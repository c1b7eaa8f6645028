import Foundation
import JOSE
import Testing
import TestSupport

/// One settings layer for every command (issue 16): flag, then environment, then the config file
/// (`$XDG_CONFIG_HOME/p11jwt/config.yaml`, `$HOME/.config` by default), then the default.
@Suite("Settings: one layer, every command")
struct SettingsTests {
    /// What the findings named: `assertion` and `sign` take the key and Entra settings from the
    /// environment and the config file as `access-token` does, `state-dir` in the file is used,
    /// and `$HOME` is honoured for the file.
    @Test func everyCommandResolvesTheSameSettings() throws {
        let f = try WorkflowFixture()
        let home = f.dir.file("home")
        try FileManager.default.createDirectory(atPath: home + "/.config/p11jwt", withIntermediateDirectories: true)
        _ = try f.dir.write("home/.config/p11jwt/config.yaml", """
            tenant: \(f.tenant)
            client-id: \(f.appId)
            key: "\(f.keyURI)"
            pin-file: \(f.hsm.pinFile)
            state-dir: \(f.dir.file("state-from-config"))
            authority-host: \(f.emulator.url)
            graph-endpoint: \(f.emulator.url)
            ca-file: \(f.emulator.caFile)
            object-id: \(f.objectID)
            """)
        // HOME, not the user database, locates the file (no XDG_CONFIG_HOME).
        let environment = ["HOME": home, "XDG_CONFIG_HOME": ""]
        let assertion = try f.cli(["assertion", "--output", "json"], environment: environment)
        #expect(assertion.status == 0, "\(assertion.stderr)")
        let claims = try #require(try JSONSerialization.jsonObject(with: Data(assertion.stdout.utf8)) as? [String: Any])["claims"] as? [String: Any]
        #expect(claims?["iss"] as? String == f.appId)
        #expect((claims?["aud"] as? String)?.hasPrefix(f.emulator.url) == true, "\(String(describing: claims))")
        // sign: no --key, from the file; and $P11JWT_KEY wins over the file.
        let digest = Base64URL.encode(Array(repeating: 7, count: 32))
        let signed = try f.cli(["sign", "--alg", "RS256", "--digest", digest, "--output", "json"], environment: environment)
        #expect(signed.status == 0, "\(signed.stderr)")
        let otherCertificate = try f.makeKey(label: "other")
        let fromEnvironment = try f.cli(["sign", "--alg", "RS256", "--digest", digest, "--output", "json"],
                                        environment: environment.merging(["P11JWT_KEY": "pkcs11:token=\(f.tokenLabel);object=other"]) { $1 })
        #expect(fromEnvironment.status == 0, "\(fromEnvironment.stderr)")
        #expect(fromEnvironment.stdout.contains("object=other") && signed.stdout.contains("object=app"), "\(fromEnvironment.stdout) \(signed.stdout)")
        // pop: the object id from the file.
        let pop = try f.cli(["pop", "--output", "json"], environment: environment)
        #expect(pop.status == 0 && pop.stdout.contains(f.objectID), "\(pop.stderr)")
        // state-dir from the file: credential add records the keyId there.
        let added = try f.cli(["credential", "add", "--new-cert", otherCertificate, "--output", "json"], environment: environment)
        #expect(added.status == 0, "\(added.stderr)")
        #expect(FileManager.default.fileExists(atPath: f.dir.file("state-from-config/credentials.json")), "\(added.stdout)")
        // A dry-run rotation: its JSON speaks one vocabulary, and the plan is data.
        let plan = try f.cli(["rotate", "--dry-run", "--output", "json"], environment: environment)
        #expect(plan.status == 0, "\(plan.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(plan.stdout.utf8)) as? [String: Any])
        #expect(report["objectId"] as? String == f.objectID, "JSON names are objectId, not objectID: \(report.keys)")
        let planned = try #require(report["plan"] as? [[String: Any]])
        #expect(planned.contains { $0["step"] as? String == "keyGenerated" }, "\(planned)")
        // config show says where each came from, and never the PIN.
        let shown = try f.cli(["config", "show", "--output", "json", "--tenant", f.tenant], environment: environment.merging(["P11JWT_PIN": "123456"]) { $1 })
        #expect(shown.status == 0, "\(shown.stderr)")
        #expect(!shown.stdout.contains("123456"))
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(shown.stdout.utf8)) as? [String: Any])["settings"] as? [[String: Any]]
        func source(_ key: String) -> String? { rows?.first { $0["key"] as? String == key }?["source"] as? String }
        #expect(source("tenant") == "flag" && source("client-id") == "file" && source("pin") == "environment" && source("cloud") == "default", "\(String(describing: rows))")
    }

    /// The file is checked: an unknown key, a section or a list is an error naming the file and
    /// line (it was silently ignored); the old TOML file is read with a warning naming the new one.
    @Test func theConfigFileIsCheckedAndTheOldOneStillRead() throws {
        let hsm = try SoftHSMDirectory(labels: ["settings"])
        let dir = TemporaryDirectory("p11jwt-settings")
        let config = dir.file("p11jwt")
        try FileManager.default.createDirectory(atPath: config, withIntermediateDirectories: true)
        let environment = ["XDG_CONFIG_HOME": dir.path]
        _ = try dir.write("p11jwt/config.yaml", "tenant: a\n[section]\n")
        #expect(try p11jwt(["config", "show"], hsm: hsm, environment: environment).status == 2)
        _ = try dir.write("p11jwt/config.yaml", "tenant: a\nkeys:\n  - name: x\n")
        let section = try p11jwt(["config", "show"], hsm: hsm, environment: environment)
        #expect(section.status == 2 && section.stderr.contains("config.yaml:2") && section.stderr.contains("keys"), "\(section.stderr)")
        // The agent's identities list is the one list the file holds; its entries are checked
        // (before any token is opened) and named in the error.
        _ = try dir.write("p11jwt/config.yaml", "tenant: a\nidentities:\n  - name: x\n    clientid: b\n")
        #expect(try p11jwt(["config", "show"], hsm: hsm, environment: environment).status == 0)
        let identity = try p11jwt(["agent"], hsm: hsm, environment: environment)
        #expect(identity.status == 2 && identity.stderr.contains("identities[0] (x): unknown field 'clientid'"), "\(identity.stderr)")
        _ = try dir.write("p11jwt/config.yaml", "tenant:\n  id: a\n")
        let nested = try p11jwt(["config", "show"], hsm: hsm, environment: environment)
        #expect(nested.status == 2 && nested.stderr.contains("single value"), "\(nested.stderr)")
        try FileManager.default.removeItem(atPath: dir.file("p11jwt/config.yaml"))
        _ = try dir.write("p11jwt/config.toml", "[p11jwt]\ntenant = \"a\"\n")
        let sectionTOML = try p11jwt(["config", "show"], hsm: hsm, environment: environment)
        #expect(sectionTOML.status == 2 && sectionTOML.stderr.contains("config.toml:1"), "\(sectionTOML.stderr)")
        _ = try dir.write("p11jwt/config.toml", "tenant = \"from-toml\"\n")
        let old = try p11jwt(["config", "show"], hsm: hsm, environment: environment)
        #expect(old.status == 0 && old.stdout.contains("from-toml"), "\(old.stderr)")
        #expect(old.stderr.contains("config.yaml") && old.stderr.contains("old config format"), "\(old.stderr)")
    }

    /// Renamed commands and flags still work for one release, with a warning; help lists only the
    /// new names.
    @Test func oldNamesStillWorkWithAWarning() throws {
        let hsm = try SoftHSMDirectory(labels: ["legacy"])
        let keygen = try p11jwt(["keygen", "--token", "pkcs11:token=legacy", "--label", "k", "--type", "ec:p256", "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(keygen.status == 0, "\(keygen.stderr)")
        let help = try p11jwt(["--help"], hsm: hsm).stdout
        for gone in ["  token ", "  import ", "  add-key", "  remove-key", "  credentials"] { #expect(!help.contains(gone), "\(gone)") }
        for new in ["access-token", "import-pfx", "credential", "export", "config"] { #expect(help.contains("  \(new)"), "\(new)") }
        #expect(!(try p11jwt(["keygen", "--help"], hsm: hsm).stdout.contains("--type ")))
        let token = try p11jwt(["token", "--tenant", "contoso.onmicrosoft.com", "--client-id", "not-a-guid"], hsm: hsm)
        #expect(token.status == 2 && token.stderr.contains("'token' is now 'access-token'"), "\(token.stderr)")
        // The emulator's --state is --state-dir's old name: either, not both.
        let both = try run(try entraEmulatorBinary, ["app", "show", "--id", "x", "--state-dir", "/nonexistent-a", "--state", "/nonexistent-b"])
        #expect(both.status == 2 && both.stderr.contains("--state-dir once"), "\(both.stderr)")
    }
}
