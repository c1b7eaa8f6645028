import Crypto
import Foundation
import JOSE
import Testing
import TestSupport

/// The CLI through a fault-injecting wrapper around SoftHSM (libp11jwt-faults.so): every failure a
/// third-party module or a pulled card can produce is a clear error naming the PKCS#11 function and
/// the CKR_* value — never a trap, never a second C_Login — and every odd-but-legal value works.
@Suite("Through a fault-injecting PKCS#11 module")
struct FaultInjectionTests {
    let hsm: SoftHSMDirectory
    let module: String
    let log: String
    let ecKey = "pkcs11:token=faults;object=ec"
    let rsaKey = "pkcs11:token=faults;object=rsa"

    init() throws {
        hsm = try SoftHSMDirectory(labels: ["faults"])
        module = try faultsModulePath
        log = hsm.directory.file("calls.log")
        for (label, type) in [("ec", "ec:p256"), ("rsa", "rsa:2048")] {
            let keygen = try p11jwt(["keygen", "--module", softHSMModulePath, "--token", "pkcs11:token=faults", "--label", label, "--key-type", type, "--pin-file", hsm.pinFile], hsm: hsm)
            try #require(keygen.status == 0, "\(keygen.stderr)")
        }
    }

    /// `p11jwt` with the wrapper as its module, `faults` as its rules; the calls it made.
    func run(_ arguments: [String], faults: String) throws -> (ProcessResult, calls: [String]) {
        try? FileManager.default.removeItem(atPath: log)
        let result = try p11jwt(arguments + ["--module", module], hsm: hsm, environment: ["P11JWT_FAULTS": faults, "P11JWT_FAULTS_LOG": log])
        let calls = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").map { String($0.split(separator: " ")[0]) }
        return (result, calls)
    }

    func sign(_ key: String, _ algorithm: JWSAlgorithm, faults: String) throws -> (ProcessResult, calls: [String], message: [UInt8]) {
        let message = randomBytes(64)
        let (result, calls) = try run(["sign", "--key", key, "--alg", algorithm.rawValue, "--digest", base64url(Array(SHA256.hash(data: message))), "--pin-file", hsm.pinFile], faults: faults)
        return (result, calls, message)
    }

    /// Legal values a module may return: each works as with SoftHSM itself, signatures verified by openssl.
    @Test(arguments: ["", "quirk=token-huge", "quirk=token-unavailable", "quirk=token-effectively-infinite", "quirk=nul-padded",
                      "quirk=mechanism-huge", "quirk=sign-buffer-dance"])
    func oddButLegalValuesWork(faults: String) throws {
        for (key, label, algorithm) in [(ecKey, "ec", JWSAlgorithm.ES256), (rsaKey, "rsa", .PS256)] {
            let (result, calls, message) = try sign(key, algorithm, faults: faults)
            #expect(result.status == 0, "\(faults) \(algorithm): \(result.stderr)")
            #expect(calls.filter { $0 == "C_Login" }.count == 1)
            let signature = try #require(unbase64url(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), "\(faults)")
            let pem = try CLITests().publicKeyPEM(hsm: hsm, token: "faults", label: label)
            #expect(try IndependentVerifier.openssl(signature, message: message, algorithm: algorithm, publicKeyPEM: pem), "\(faults) \(algorithm)")
        }
        let (objects, _) = try run(["objects", "--token", "pkcs11:token=faults", "--pin-file", hsm.pinFile, "--output", "json"], faults: faults)
        #expect(objects.status == 0, "\(faults): \(objects.stderr)")
        // NUL padding never reaches a URI's token fields (p11-kit would print %00 and match nothing;
        // an id may hold a 0 byte).
        let padded = #/(model|manufacturer|token|serial)=[^;?"]*%00/#
        #expect(objects.stdout.firstMatch(of: padded) == nil, "\(faults)")
        let (mechanisms, _) = try run(["mechanisms", "--token", "pkcs11:token=faults"], faults: faults)
        #expect(mechanisms.status == 0, "\(faults): \(mechanisms.stderr)")
        let (tokens, _) = try run(["tokens", "--output", "json"], faults: faults)
        #expect(tokens.status == 0 && tokens.stdout.firstMatch(of: padded) == nil, "\(faults): \(tokens.stderr)")
    }

    /// Values no module should return: a clear refusal naming the function, not a trap or a huge allocation.
    @Test(arguments: [("quirk=slot-count-huge", "C_GetSlotList"), ("quirk=mechanism-count-huge", "C_GetMechanismList"),
                      ("quirk=find-count-overflow", "C_FindObjects"), ("quirk=attribute-length-huge", "C_GetAttributeValue"),
                      ("quirk=sign-length-huge", "C_Sign")])
    func valuesNoModuleShouldReturnAreRefusedClearly(faults: String, function: String) throws {
        let (result, calls, _) = try sign(ecKey, .ES256, faults: faults)
        #expect(result.status == 1, "\(faults): status \(result.status) \(result.stderr)")
        #expect(result.stderr.contains(function) && result.stderr.contains("misbehaves"), "\(faults): \(result.stderr)")
        #expect(calls.filter { $0 == "C_Login" }.count <= 1)
    }

    /// Chosen CKR_* values from chosen calls: exit 1 with the function and the value named.
    @Test(arguments: [
        ("C_Sign=CKR_DEVICE_REMOVED", "C_Sign: CKR_DEVICE_REMOVED"), ("C_Sign=CKR_FUNCTION_FAILED", "C_Sign: CKR_FUNCTION_FAILED"),
        ("C_SignInit=CKR_OPERATION_ACTIVE", "C_SignInit: CKR_OPERATION_ACTIVE"), ("C_Sign=CKR_GENERAL_ERROR", "C_Sign: CKR_GENERAL_ERROR"),
        ("C_Login=CKR_PIN_LOCKED", "C_Login: CKR_PIN_LOCKED"), ("C_Login=CKR_PIN_INCORRECT", "C_Login: CKR_PIN_INCORRECT"),
        ("C_OpenSession=CKR_SESSION_COUNT", "C_OpenSession: CKR_SESSION_COUNT"),
        ("C_FindObjectsInit=CKR_SESSION_HANDLE_INVALID", "C_FindObjectsInit: CKR_SESSION_HANDLE_INVALID"),
        ("C_GetAttributeValue=CKR_DEVICE_ERROR", "C_GetAttributeValue: CKR_DEVICE_ERROR"),
        ("C_GetTokenInfo@2+=CKR_DEVICE_REMOVED", "C_GetTokenInfo: CKR_DEVICE_REMOVED"),
        ("C_Initialize=CKR_GENERAL_ERROR", "CKR_GENERAL_ERROR"),
    ])
    func chosenFailuresAreNamed(faults: String, needle: String) throws {
        let (result, calls, _) = try sign(ecKey, .ES256, faults: faults)
        #expect(result.status == 1, "\(faults): status \(result.status) \(result.stderr)")
        #expect(result.stderr.contains(needle), "\(faults): \(result.stderr)")
        // Never a retried login.
        #expect(calls.filter { $0 == "C_Login" }.count <= 1, "\(faults): \(calls)")
    }

    @Test func keyGenerationFailuresAreNamed() throws {
        let (result, _) = try run(["keygen", "--token", "pkcs11:token=faults", "--label", "x", "--key-type", "ec:p256", "--pin-file", hsm.pinFile],
                                  faults: "C_GenerateKeyPair=CKR_DEVICE_MEMORY")
        #expect(result.status == 1 && result.stderr.contains("C_GenerateKeyPair: CKR_DEVICE_MEMORY"), "\(result.stderr)")
    }

    /// A token that says its PIN is locked gets no C_Login at all.
    @Test func aLockedPINGetsNoLogin() throws {
        let (result, calls, _) = try sign(ecKey, .ES256, faults: "quirk=token-pin-locked")
        #expect(result.status == 1)
        #expect(result.stderr.contains("locked") && result.stderr.contains("no login was attempted"), "\(result.stderr)")
        #expect(!calls.contains("C_Login"))
    }
}
