import Foundation
import Testing
import TestSupport

/// A token (SoftHSM unless a test asks for another implementation) with a bootstrap key and a self-signed certificate made by `p11jwt` itself,
/// an `entra-emulator serve` process (HTTPS, its own CA) with an application registered with
/// that certificate, and private cache / state directories: everything the Entra workflow
/// commands touch, per test.
final class WorkflowFixture: @unchecked Sendable {
    let hsm: SoftHSMDirectory
    let emulator: RunningEmulator
    let dir = TemporaryDirectory("p11jwt-workflow")
    let app: [String: String]
    let tokenLabel = "wf"
    let bootstrapCertificate: String

    var tenant: String { app["tenantId"]! }
    var appId: String { app["appId"]! }
    var objectID: String { app["id"]! }
    var servicePrincipalID: String { app["servicePrincipalId"]! }
    var bootstrapKeyID: String { app["keyId"]! }
    var keyURI: String { "pkcs11:token=\(tokenLabel);object=app" }

    init(
        mechanisms: String = "ALL", roles: [String] = [], emulatorArguments: [String] = [], keyType: String = "rsa:2048",
        implementation: TokenImplementation = .softHSM
    ) throws {
        hsm = try TokenDirectory(labels: [tokenLabel], mechanisms: mechanisms, implementation: implementation)
        emulator = try RunningEmulator(arguments: emulatorArguments)
        let made = try p11jwt(["keygen", "--token", "pkcs11:token=\(tokenLabel)", "--label", "app", "--key-type", keyType, "--pin-file", hsm.pinFile], hsm: hsm)
        try #require(made.status == 0, "\(made.stderr)")
        bootstrapCertificate = dir.file("bootstrap.pem")
        let cert = try p11jwt(
            ["cert", "create", "--key", "pkcs11:token=\(tokenLabel);object=app", "--subject", "CN=workflow app", "--store",
             "--out", bootstrapCertificate, "--pin-file", hsm.pinFile], hsm: hsm)
        try #require(cert.status == 0, "\(cert.stderr)")
        app = try emulator.createApplication(name: "workflow", certificateFile: bootstrapCertificate, roles: roles)
    }

    /// The flags that point a command at this emulator and tenant.
    var entraFlags: [String] {
        ["--tenant", tenant, "--client-id", appId, "--authority-host", emulator.url, "--graph-endpoint", emulator.url,
         "--ca-file", emulator.caFile, "--pin-file", hsm.pinFile]
    }

    var environment: [String: String] {
        ["XDG_CACHE_HOME": dir.file("cache"), "XDG_STATE_HOME": dir.file("state"), "XDG_CONFIG_HOME": dir.file("config")]
    }

    /// Runs `p11jwt` with this fixture's SoftHSM and private directories.
    @discardableResult
    func cli(_ arguments: [String], environment extra: [String: String] = [:]) throws -> ProcessResult {
        try p11jwt(arguments, hsm: hsm, environment: environment.merging(extra) { $1 })
    }

    /// `p11jwt token --output json` with `key`, parsed; nil when it failed.
    func token(key: String? = nil, extra: [String] = []) throws -> (result: ProcessResult, json: [String: Any]?) {
        let result = try cli(["access-token", "--key", key ?? keyURI, "--output", "json"] + entraFlags + extra)
        let json = result.status == 0 ? try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] : nil
        return (result, json)
    }

    /// The application's key credentials as the emulator holds them.
    func credentials() throws -> [[String: Any]] { try emulator.keyCredentials(applicationID: objectID) }

    /// Registered thumbprints (uppercase hex SHA-1).
    func registeredThumbprints() throws -> Set<String> {
        Set(try credentials().compactMap { ($0["customKeyIdentifier"] as? String).flatMap { Data(base64Encoded: $0) }?.map { String(format: "%02X", $0) }.joined() })
    }

    /// A second key on the token with a self-signed certificate; returns its PEM file.
    func makeKey(label: String, type: String = "rsa:2048") throws -> String {
        let made = try cli(["keygen", "--token", "pkcs11:token=\(tokenLabel)", "--label", label, "--key-type", type, "--pin-file", hsm.pinFile])
        try #require(made.status == 0, "\(made.stderr)")
        let pem = dir.file("\(label).pem")
        let cert = try cli(["cert", "create", "--key", "pkcs11:token=\(tokenLabel);object=\(label)", "--subject", "CN=\(label)", "--store", "--out", pem, "--pin-file", hsm.pinFile])
        try #require(cert.status == 0, "\(cert.stderr)")
        return pem
    }

    /// Sets the emulator's faults at run time.
    func setFaults(_ json: String) throws {
        let r = try run("curl", ["-sS", "--fail", "--cacert", emulator.caFile, "-H", "content-type: application/json",
                                "-H", "Authorization: Bearer \(emulator.adminToken)", "-d", json, "\(emulator.url)/_emulator/faults"])
        try #require(r.status == 0, "setting faults: \(r.stderr)")
    }
}

/// The SHA-1 thumbprint (uppercase hex) of a PEM certificate, by openssl.
func opensslThumbprint(_ pem: String) throws -> String {
    let r = try run("openssl", ["x509", "-in", pem, "-noout", "-fingerprint", "-sha1"])
    try #require(r.status == 0, "\(r.stderr)")
    return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: "=").last!.replacingOccurrences(of: ":", with: "")
}
