import Crypto
import _CryptoExtras
import Foundation
import JOSE
@testable import PKCS11
import SwiftASN1
import Testing
import TestSupport

/// The `p11jwt` executable, run as a user would, each test with its own SoftHSM directory.
@Suite("p11jwt command line")
struct CLITests {
    /// Reads a public key from the token with OpenSC's pkcs11-tool (not p11jwt) as PEM.
    func publicKeyPEM(hsm: TokenDirectory, token: String, label: String) throws -> String {
        let der = hsm.directory.file("\(label).pub.der")
        let read = try run("pkcs11-tool", ["--module", hsm.modulePath, "--token-label", token, "--read-object",
                                           "--type", "pubkey", "--label", label, "-o", der], environment: hsm.environment)
        try #require(read.status == 0, "pkcs11-tool: \(read.stderr)")
        let pem = try run("openssl", ["pkey", "-pubin", "-inform", "DER", "-in", der])
        try #require(pem.status == 0)
        return pem.stdout
    }

    func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test func tokensListsTokensWithURIsThroughProxyNameAndPath() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-tokens"])
        for module in [[], ["--module", "softhsm2"], ["--module", softHSMModulePath]] {
            let result = try p11jwt(["tokens"] + module, hsm: hsm)
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.contains("token 'cli-tokens'"))
            #expect(result.stdout.contains("uri: pkcs11:"))
        }
        // $P11JWT_MODULE stands in for --module; --module wins over it.
        let viaEnvironment = try p11jwt(["tokens"], hsm: hsm, environment: ["P11JWT_MODULE": "softhsm2"])
        #expect(viaEnvironment.status == 0, "\(viaEnvironment.stderr)")
        #expect(viaEnvironment.stdout.hasPrefix("module: p11-kit module 'softhsm2'") || viaEnvironment.stdout.contains("libsofthsm2.so"), "\(viaEnvironment.stdout)")
        #expect(!viaEnvironment.stdout.contains("p11-kit proxy"))
        let overridden = try p11jwt(["tokens", "--module", "no-such-module"], hsm: hsm, environment: ["P11JWT_MODULE": "softhsm2"])
        #expect(overridden.status == 1 && overridden.stderr.contains("no-such-module"))
        let result = try p11jwt(["tokens", "--module", softHSMModulePath, "--output", "json"], hsm: hsm)
        let slots = try #require(try json(result.stdout)["slots"] as? [[String: Any]])
        let token = try #require(slots.compactMap { $0["token"] as? [String: Any] }.first { $0["label"] as? String == "cli-tokens" })
        let uri = try #require(token["uri"] as? String)
        #expect(uri.contains("module-path="))
        // The printed URI works as-is in the next command, with no --module.
        let mechanisms = try p11jwt(["mechanisms", "--token", uri, "--output", "json"], hsm: hsm)
        #expect(mechanisms.status == 0, "\(mechanisms.stderr)")
    }

    @Test(arguments: TokenImplementation.available)
    func keygenThenSignVerifiesWithOpenSSLForRS256PS256AndES256(_ implementation: TokenImplementation) throws {
        let hsm = try TokenDirectory(labels: ["cli-sign"], implementation: implementation)
        let pin = ["--pin-file", hsm.pinFile]
        let rsa = try p11jwt(["keygen", "--token", "pkcs11:token=cli-sign", "--label", "rsa", "--key-type", "rsa:2048"] + pin, hsm: hsm)
        #expect(rsa.status == 0, "\(rsa.stderr)")
        let rsaURI = rsa.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(rsaURI.hasPrefix("pkcs11:") && rsaURI.contains("object=rsa") && rsaURI.contains("type=private"))
        let ec = try p11jwt(["keygen", "--token", "pkcs11:token=cli-sign", "--label", "ec", "--key-type", "ec:p256", "--output", "json"] + pin, hsm: hsm)
        #expect(ec.status == 0, "\(ec.stderr)")
        let ecURI = try #require(try json(ec.stdout)["uri"] as? String)

        let message = randomBytes(200)
        let digest = Array(SHA256.hash(data: message))
        for (uri, label, algorithm) in [(rsaURI, "rsa", JWSAlgorithm.RS256), (rsaURI, "rsa", .PS256), (ecURI, "ec", .ES256)] {
            let result = try p11jwt(["sign", "--key", uri, "--alg", algorithm.rawValue, "--digest", base64url(digest), "--output", "json"] + pin, hsm: hsm)
            #expect(result.status == 0, "\(result.stderr)")
            let object = try json(result.stdout)
            #expect(object["kid"] as? String == uri)
            #expect(object["alg"] as? String == algorithm.rawValue)
            let value = try #require(object["value"] as? String)
            #expect(!value.contains("=") && !value.contains("+") && !value.contains("/"))
            let signature = try #require(unbase64url(value))
            let pem = try publicKeyPEM(hsm: hsm, token: "cli-sign", label: label)
            #expect(try IndependentVerifier.openssl(signature, message: message, algorithm: algorithm, publicKeyPEM: pem), "\(algorithm)")
        }
        // A digest whose base64url starts with "-" is a value, not an option.
        var dashed = randomBytes(16)
        while !base64url(Array(SHA256.hash(data: dashed))).hasPrefix("-") { dashed = randomBytes(16) }
        let dashedResult = try p11jwt(["sign", "--key", rsaURI, "--alg", "RS256", "--digest", base64url(Array(SHA256.hash(data: dashed)))] + pin, hsm: hsm)
        #expect(dashedResult.status == 0, "\(dashedResult.stderr)")
        let dashedSignature = try #require(unbase64url(dashedResult.stdout))
        #expect(try IndependentVerifier.openssl(dashedSignature, message: dashed, algorithm: .RS256, publicKeyPEM: try publicKeyPEM(hsm: hsm, token: "cli-sign", label: "rsa")))
        // raw output: just the base64url signature.
        let raw = try p11jwt(["sign", "--key", ecURI, "--alg", "ES256", "--digest", base64url(digest)] + pin, hsm: hsm)
        #expect(raw.status == 0)
        #expect(unbase64url(raw.stdout)?.count == 64)
    }

    @Test(arguments: TokenImplementation.available)
    func objectsShowsKeysCertificatesAndPairing(_ implementation: TokenImplementation) throws {
        let hsm = try TokenDirectory(labels: ["cli-objects"], implementation: implementation)
        let keygen = try p11jwt(["keygen", "--token", "pkcs11:token=cli-objects", "--label", "k1", "--key-type", "ec:p384", "--id", "0102"], hsm: hsm,
                                environment: ["P11JWT_PIN": testPIN])
        #expect(keygen.status == 0, "\(keygen.stderr)")
        let listing = try p11jwt(["objects", "--token", "pkcs11:token=cli-objects", "--output", "json"], hsm: hsm, environment: ["P11JWT_PIN": testPIN])
        #expect(listing.status == 0, "\(listing.stderr)")
        let report = try json(listing.stdout)
        let keys = try #require(report["privateKeys"] as? [[String: Any]])
        #expect(keys.count == 1)
        #expect(keys.first?["type"] as? String == "EC P-384")
        #expect(keys.first?["id"] as? String == "0102")
        #expect(keys.first?["pairing"] as? String == "no-certificate")
        #expect(keys.first?["algorithms"] as? [String] == ["ES384"])
        // Without a PIN: public objects only, with a warning, not a failure.
        let anonymous = try p11jwt(["objects", "--token", "pkcs11:token=cli-objects", "--output", "json"], hsm: hsm)
        #expect(anonymous.status == 0)
        #expect(anonymous.stderr.contains("not logged in"))
        #expect((try json(anonymous.stdout)["privateKeys"] as? [Any])?.isEmpty == true)
        #expect((try json(anonymous.stdout)["publicKeys"] as? [Any])?.count == 1)
    }

    @Test(arguments: TokenImplementation.available)
    func aWrongPINIsTriedExactlyOnceAndReportedWithTheTokenState(_ implementation: TokenImplementation) throws {
        let hsm = try TokenDirectory(labels: ["cli-pin"], implementation: implementation)
        let spyLog = hsm.directory.file("spy.log")
        let wrong = try hsm.directory.write("wrong-pin", "987654\n")
        let result = try p11jwt(
            ["sign", "--module", "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so", "--key", "pkcs11:token=cli-pin;object=none",
             "--alg", "ES256", "--digest", base64url(randomBytes(32)), "--pin-file", wrong],
            hsm: hsm, environment: ["PKCS11SPY": hsm.modulePath, "PKCS11SPY_OUTPUT": spyLog])
        #expect(result.status == 1)
        #expect(result.stderr.contains("wrong PIN for token 'cli-pin'"))
        #expect(result.stderr.contains("CKR_PIN_INCORRECT"))
        #expect(result.stderr.contains("not retried"))
        #expect(!result.stderr.contains("987654"))
        // pkcs11-spy logged every call the CLI made: exactly one C_Login.
        let log = try String(contentsOfFile: spyLog, encoding: .utf8)
        #expect(log.components(separatedBy: ": C_Login\n").count - 1 == 1)
        if implementation == .softHSM {
            // SoftHSM counts the failure in the token flags (tpm2-pkcs11 keeps no count).
            let tokens = try p11jwt(["tokens", "--module", softHSMModulePath, "--output", "json"], hsm: hsm)
            #expect(tokens.stdout.contains("CKF_USER_PIN_COUNT_LOW"))
        }
        // One wrong try locked nothing: the right PIN signs.
        let key = try p11jwt(["keygen", "--token", "pkcs11:token=cli-pin", "--label", "after", "--key-type", "ec:p256", "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(key.status == 0, "\(key.stderr)")
    }

    /// The TPM's dictionary-attack lockout, once, on a software TPM of its own (the lockout is
    /// TPM-wide): after MAX wrong PINs the TPM refuses every login for a while, the right PIN
    /// too, without the token marking its PIN locked. Each run tries its PIN once, and the
    /// refusal says what it is and what to do — not "unlock with the SO PIN".
    @Test(.enabled(if: TokenImplementation.available.contains(.tpm2), "tpm2 is not among P11JWT_TEST_MODULES"))
    func aTPMInDictionaryAttackLockoutIsNamedWithWhatToDo() throws {
        let bed = TemporaryDirectory("p11jwt-tpm2-lockout")
        let script = repositoryRoot.appendingPathComponent("hsm-config/tpm2-token").path
        let up = try run(script, ["up", "--dir", bed.path, "--watch", "\(getpid())", "lockout", testSOPIN, testPIN])
        try #require(up.status == 0, "\(up.stderr)")
        defer { _ = try? run(script, ["down", "--dir", bed.path]) }
        let armed = try run(script, ["lockout", "--dir", bed.path, "2"])
        try #require(armed.status == 0, "\(armed.stderr)")
        var env = ProcessInfo.processInfo.environment
        for (key, value) in TPM2TestBed.parseExports(up.stdout) { env[key] = value }
        env["TPM2_PKCS11_LOG_LEVEL"] = "0"
        let wrong = try bed.write("wrong", "999999\n"), right = try bed.write("pin", testPIN + "\n")
        func login(_ pinFile: String) throws -> ProcessResult {
            try run(try p11jwtBinary, ["objects", "--module", tpm2ModulePath, "--token", "pkcs11:token=lockout", "--pin-file", pinFile], environment: env)
        }
        for attempt in 1...2 {
            let r = try login(wrong)
            #expect(r.status == 1 && r.stderr.contains("C_Login: CKR_PIN_INCORRECT"), "attempt \(attempt): \(r.stderr)")
        }
        let locked = try login(right)
        #expect(locked.status == 1)
        #expect(locked.stderr.contains("C_Login: CKR_PIN_LOCKED"), "\(locked.stderr)")
        #expect(locked.stderr.contains("refuses logins for now") && locked.stderr.contains("dictionary-attack lockout"), "\(locked.stderr)")
        #expect(locked.stderr.contains("tpm2_dictionarylockout --clear-lockout") && !locked.stderr.contains("SO PIN"), "\(locked.stderr)")
    }

    /// A PIN in a command-line URI is visible to every user: refused, and never echoed.
    @Test func aPinValueOnTheCommandLineIsRefusedAndNeverPrinted() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-pinvalue"])
        let secret = "s3cret-98761"
        let inArgv = try p11jwt(["objects", "--token", "pkcs11:token=cli-pinvalue?pin-value=\(secret)"], hsm: hsm)
        #expect(inArgv.status == 2, "\(inArgv.stderr)")
        #expect(inArgv.stderr.contains("visible to every user") && inArgv.stderr.contains("pin-source=file:"))
        #expect(!inArgv.stderr.contains(secret) && !inArgv.stdout.contains(secret))
        // A URI that does not parse is quoted redacted.
        let invalid = try p11jwt(["objects", "--token", "pkcs11:token=cli-pinvalue;bogus=1?PIN-VALUE=\(secret)"], hsm: hsm)
        #expect(invalid.status != 0)
        #expect(invalid.stderr.contains("REDACTED") && !invalid.stderr.contains(secret), "\(invalid.stderr)")
    }

    @Test func noPINOnANonTerminalFailsWithHowToGiveOne() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-nopin"])
        let result = try p11jwt(["keygen", "--token", "pkcs11:token=cli-nopin", "--label", "x"], hsm: hsm)
        #expect(result.status == 1)
        #expect(result.stderr.contains("needs a PIN"))
        #expect(result.stderr.contains("--pin-file"))
    }

    /// `--pin` is answered with why there is none and what to use, never echoing the value.
    @Test func aPINOnTheCommandLineIsRefusedWithTheWaysToGiveOne() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-pin"])
        let result = try p11jwt(["sign", "--key", "pkcs11:token=cli-pin;object=k", "--alg", "RS256", "--digest", base64url(randomBytes(32)), "--pin", "8647215"], hsm: hsm)
        #expect(result.status == 2)
        #expect(result.stderr.contains("there is no --pin") && result.stderr.contains("--pin-file") && result.stderr.contains("P11JWT_PIN"), "\(result.stderr)")
        #expect(!result.stderr.contains("8647215") && !result.stdout.contains("8647215"))
    }

    /// One version for both executables (also sent as User-Agent), and one exit-status map.
    @Test func bothExecutablesSayTheirVersionAndShareExitStatuses() throws {
        let version = try run(try p11jwtBinary, ["--version"])
        #expect(version.status == 0)
        #expect(version.stdout.trimmingCharacters(in: .whitespacesAndNewlines).range(of: #"^\d+\.\d+\.\d+$"#, options: .regularExpression) != nil, "\(version.stdout)")
        let emulatorVersion = try run(try entraEmulatorBinary, ["--version"])
        #expect(emulatorVersion.status == 0 && emulatorVersion.stdout == version.stdout)
        #expect(try run(try entraEmulatorBinary, ["serve"]).status == 2)  // missing --state-dir: usage
        #expect(try run(try entraEmulatorBinary, ["no-such-command"]).status == 2)
    }

    @Test(arguments: [
        ["sign", "--key", "pkcs11:token=t", "--alg", "RS256", "--digest", "AAAA", "--pin", "1234"],
        ["sign", "--key", "pkcs11:token=t", "--digest", "AAAA"],
        ["sign", "--key", "pkcs11:token=t", "--alg", "HS256", "--digest", "AAAA"],
        ["keygen", "--token", "pkcs11:token=t", "--label", "x", "--key-type", "rsa:1024"],
        ["keygen", "--token", "pkcs11:token=t", "--label", "x", "--id", "xyz"],
        ["no-such-command"],
    ])
    func usageErrorsExitWith2(_ arguments: [String]) throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-usage"])
        let result = try p11jwt(arguments, hsm: hsm)
        #expect(result.status == 2, "\(arguments): \(result.stderr)")
    }

    /// One error layer: text names the setting's flag and environment variable and the next
    /// command; under --output json the same error is a JSON object with a stable code.
    @Test func errorsRenderAsTextOrJSONFromOnePlace() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-error-layer"])
        let text = try p11jwt(["tokens", "--module", "/nonexistent/module.so"], hsm: hsm)
        #expect(text.status == 1)
        #expect(text.stderr.contains("set with: --module, $P11JWT_MODULE or 'module:' in the config file"), "\(text.stderr)")
        let json = try p11jwt(["tokens", "--module", "/nonexistent/module.so", "--output", "json"], hsm: hsm)
        #expect(json.status == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stderr.utf8)) as? [String: Any], "\(json.stderr)")
        let error = try #require(object["error"] as? [String: Any])
        #expect(error["code"] as? String == "pkcs11.moduleNotFound")
        #expect((error["message"] as? String)?.contains("/nonexistent/module.so") == true)
        #expect(error["settings"] as? [String] == ["--module"])
        #expect((error["location"] as? String)?.hasPrefix("PKCS11/") == true)
        let missing = try p11jwt(["objects", "--token", "pkcs11:token=absent"], hsm: hsm)
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("next: list tokens with 'p11jwt tokens'"), "\(missing.stderr)")
    }

    @Test func operationalErrorsExitWith1AndNameTheCause() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-errors"])
        let pin = ["--pin-file", hsm.pinFile]
        let digest = base64url(randomBytes(32))
        var result = try p11jwt(["tokens", "--module", "/nonexistent/module.so"], hsm: hsm)
        #expect(result.status == 1)
        #expect(result.stderr.contains("/nonexistent/module.so") && result.stderr.contains("--module"))
        result = try p11jwt(["sign", "--key", "pkcs11:token=absent;object=k", "--alg", "RS256", "--digest", digest] + pin, hsm: hsm)
        #expect(result.status == 1)
        #expect(result.stderr.contains("no token matches") && result.stderr.contains("token=cli-errors"))
        result = try p11jwt(["sign", "--key", "token=cli-errors", "--alg", "RS256", "--digest", digest] + pin, hsm: hsm)
        #expect(result.status == 1)
        #expect(result.stderr.contains("not a valid PKCS#11 URI"))
        #expect(try p11jwt(["keygen", "--token", "pkcs11:token=cli-errors", "--label", "ec", "--key-type", "ec:p256"] + pin, hsm: hsm).status == 0)
        // A digest of the wrong length is a usage error, like one that is not base64url: exit 2
        // for both, before any token is opened.
        result = try p11jwt(["sign", "--key", "pkcs11:token=cli-errors;object=ec", "--alg", "ES256", "--digest", base64url(randomBytes(20))] + pin, hsm: hsm)
        #expect(result.status == 2)
        #expect(result.stderr.contains("--digest is 20 bytes; ES256 signs a SHA-256 digest of 32 bytes"), "\(result.stderr)")
        result = try p11jwt(["sign", "--key", "pkcs11:token=cli-errors;object=ec", "--alg", "ES256", "--digest", "abc="] + pin, hsm: hsm)
        #expect(result.status == 2)
        // Algorithms in any case, as jwt --alg takes them.
        result = try p11jwt(["sign", "--key", "pkcs11:token=cli-errors;object=ec", "--alg", "es256", "--digest", digest] + pin, hsm: hsm)
        #expect(result.status == 0, "\(result.stderr)")
        result = try p11jwt(["sign", "--key", "pkcs11:token=cli-errors;object=ec", "--alg", "PS256", "--digest", digest] + pin, hsm: hsm)
        #expect(result.status == 1)
        #expect(result.stderr.contains("needs an RSA key"))
    }

    @Test func ps256FallsBackToRawRSAWhenTheTokenHidesPSS() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-nopss"], mechanisms: "CKM_RSA_PKCS,CKM_RSA_X_509,CKM_RSA_PKCS_KEY_PAIR_GEN,CKM_EC_KEY_PAIR_GEN,CKM_ECDSA,CKM_SHA256")
        let pin = ["--pin-file", hsm.pinFile]
        let mechanisms = try p11jwt(["mechanisms", "--token", "pkcs11:token=cli-nopss", "--output", "json"], hsm: hsm)
        #expect(mechanisms.status == 0, "\(mechanisms.stderr)")
        let report = try json(mechanisms.stdout)
        let names = (report["mechanisms"] as? [[String: Any]])?.compactMap { $0["name"] as? String } ?? []
        #expect(!names.contains("CKM_RSA_PKCS_PSS"), "the config must hide CKM_RSA_PKCS_PSS")
        let ps256 = (report["algorithms"] as? [[String: Any]])?.first { $0["alg"] as? String == "PS256" }
        #expect((ps256?["via"] as? String)?.hasPrefix("CKM_RSA_X_509") == true)

        let keygen = try p11jwt(["keygen", "--token", "pkcs11:token=cli-nopss", "--label", "rsa"] + pin, hsm: hsm)
        let uri = keygen.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let pem = try publicKeyPEM(hsm: hsm, token: "cli-nopss", label: "rsa")
        for algorithm in [JWSAlgorithm.PS256, .PS384, .PS512] {
            let message = randomBytes(50)
            let result = try p11jwt(["sign", "--key", uri, "--alg", algorithm.rawValue, "--digest", base64url(algorithm.hash.hash(message)), "-v"] + pin, hsm: hsm)
            #expect(result.status == 0, "\(result.stderr)")
            let signature = try #require(unbase64url(result.stdout))
            #expect(try IndependentVerifier.openssl(signature, message: message, algorithm: algorithm, publicKeyPEM: pem), "\(algorithm)")
            let key = try _RSAPublicKey(pem: pem)
            #expect(try IndependentVerifier.swiftCrypto(signature, message: message, algorithm: algorithm, key: key))
        }
    }

    @Test func anAlgorithmTheTokenCannotDoIsRefusedWithWhatIsPossible() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-pkcs1only"], mechanisms: "CKM_RSA_PKCS,CKM_RSA_PKCS_KEY_PAIR_GEN")
        let pin = ["--pin-file", hsm.pinFile]
        let keygen = try p11jwt(["keygen", "--token", "pkcs11:token=cli-pkcs1only", "--label", "rsa"] + pin, hsm: hsm)
        #expect(keygen.status == 0, "\(keygen.stderr)")
        let result = try p11jwt(["sign", "--key", "pkcs11:token=cli-pkcs1only;object=rsa", "--alg", "PS256",
                                 "--digest", base64url(randomBytes(32))] + pin, hsm: hsm)
        #expect(result.status == 1)
        #expect(result.stderr.contains("cannot do PS256"))
        #expect(result.stderr.contains("CKM_RSA_PKCS_PSS or CKM_RSA_X_509"))
        #expect(result.stderr.contains("possible with this key: RS256, RS384, RS512"))
        let ec = try p11jwt(["keygen", "--token", "pkcs11:token=cli-pkcs1only", "--label", "ec", "--key-type", "ec:p256"] + pin, hsm: hsm)
        #expect(ec.status == 1)
        #expect(ec.stderr.contains("cannot generate ec:p256"))
    }

    @Test(arguments: TokenImplementation.available)
    func destroyNeedsConfirmationOrYes(_ implementation: TokenImplementation) throws {
        let hsm = try TokenDirectory(labels: ["cli-destroy"], implementation: implementation)
        let pin = ["--pin-file", hsm.pinFile]
        #expect(try p11jwt(["keygen", "--token", "pkcs11:token=cli-destroy", "--label", "doomed", "--key-type", "ec:p256"] + pin, hsm: hsm).status == 0)
        var result = try p11jwt(["destroy", "pkcs11:token=cli-destroy;object=doomed"] + pin, hsm: hsm)
        #expect(result.status == 2)
        #expect(result.stderr.contains("--yes"))
        result = try p11jwt(["destroy", "pkcs11:token=cli-destroy"] + pin + ["--yes"], hsm: hsm)
        #expect(result.status == 2, "a URI without an object must not destroy everything")
        var objects = try p11jwt(["objects", "--token", "pkcs11:token=cli-destroy", "--output", "json"] + pin, hsm: hsm)
        #expect((try json(objects.stdout)["privateKeys"] as? [Any])?.count == 1)
        result = try p11jwt(["destroy", "pkcs11:token=cli-destroy;object=doomed", "--yes"] + pin, hsm: hsm)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.components(separatedBy: "\n").filter { $0.hasPrefix("destroyed ") }.count == 2, "\(result.stdout)")
        objects = try p11jwt(["objects", "--token", "pkcs11:token=cli-destroy", "--output", "json"] + pin, hsm: hsm)
        #expect((try json(objects.stdout)["privateKeys"] as? [Any])?.isEmpty == true)
        #expect((try json(objects.stdout)["publicKeys"] as? [Any])?.isEmpty == true)
    }
}

/// An RSA public key from PEM, via swift-crypto, as the library's `PublicKey` value.
func _RSAPublicKey(pem: String) throws -> PublicKey {
    let key = try _RSA.Signing.PublicKey(pemRepresentation: pem)
    let components = try rsaComponents(key.derRepresentation)
    let (n, e) = try #require(components)
    return .rsa(modulus: n, exponent: e)
}

/// Modulus and exponent from a DER SubjectPublicKeyInfo (RSA), parsed with swift-asn1.
func rsaComponents(_ spki: Data) throws -> ([UInt8], [UInt8])? {
    let root = try DER.parse(Array(spki))
    guard case .constructed(let nodes) = root.content else { return nil }
    var iterator = nodes.makeIterator()
    _ = iterator.next()  // AlgorithmIdentifier
    guard let bitString = try iterator.next().map({ try ASN1BitString(derEncoded: $0) }) else { return nil }
    let rsaKey = try DER.parse(Array(bitString.bytes))
    guard case .constructed(let parts) = rsaKey.content else { return nil }
    var p = parts.makeIterator()
    guard let nNode = p.next(), let eNode = p.next() else { return nil }
    let n = try ArraySlice<UInt8>(derEncoded: nNode)
    let e = try ArraySlice<UInt8>(derEncoded: eNode)
    return (Array(n.drop(while: { $0 == 0 })), Array(e))
}


/// Every subcommand's `--help`, walked from the root's list: it exits 0, and no default is shown
/// as a Swift value dump (`DurationArgument(seconds: 600.0)`).
@Suite("Help text")
struct HelpTextTests {
    static func subcommands(of path: [String]) throws -> [String] {
        let help = try run(try p11jwtBinary, path + ["--help"]).stdout
        guard let start = help.range(of: "SUBCOMMANDS:") else { return [] }
        return help[start.upperBound...].split(separator: "\n").compactMap { line in
            // "  name    abstract": a name at two spaces' indent.
            guard line.hasPrefix("  "), !line.hasPrefix("   ") else { return nil }
            return line.split(separator: " ").first.map { String($0).trimmingCharacters(in: CharacterSet(charactersIn: ",")) }
        }.filter { $0 != "help" && $0 != "See" }
    }

    /// Every command help lists: the top-level ones and their subcommands.
    static func commandPaths() throws -> [[String]] {
        var paths: [[String]] = []
        for name in try subcommands(of: []) {
            paths.append([name])
            for child in try subcommands(of: [name]) { paths.append([name, child]) }
        }
        return paths
    }

    @Test func everySubcommandsHelpShowsNoTypeDump() throws {
        let paths = try Self.commandPaths()
        #expect(paths.count >= 20, "\(paths)")
        #expect(paths.contains(["cert", "create"]) && paths.contains(["rotate"]))
        for path in paths {
            let result = try run(try p11jwtBinary, path + ["--help"])
            #expect(result.status == 0, "\(path)")
            let dump = result.stdout.range(of: #"default: [A-Z][A-Za-z]*\("#, options: .regularExpression)
            #expect(dump == nil, "\(path): \(result.stdout)")
        }
        let rotate = try run(try p11jwtBinary, ["rotate", "--help"]).stdout
        #expect(rotate.contains("(default: 10m)"), "\(rotate)")
    }

    /// The README's command reference is what the parser says (scripts/command-reference writes
    /// it from `--experimental-dump-help`).
    @Test func theREADMECommandReferenceMatchesTheParser() throws {
        let script = repositoryRoot.appendingPathComponent("scripts/command-reference").path
        let check = try run("python3", [script, "--check", try p11jwtBinary])
        #expect(check.status == 0, "\(check.stdout)\(check.stderr)")
    }

    /// scripts/setup generated the man pages and completions from the parser (scripts/gen-manpages)
    /// and installed them: a page for every command help lists, none for the hidden 0.9 names,
    /// and bash completion that offers the commands help lists.
    @Test func manPagesAndCompletionsAreGeneratedAndInstalled() throws {
        let share = repositoryRoot.appendingPathComponent(".build/share").path
        let generated = try FileManager.default.contentsOfDirectory(atPath: share + "/man1")
        try #require(!generated.isEmpty, "no man pages in \(share): run scripts/setup")
        for path in try Self.commandPaths() {
            #expect(generated.contains((["p11jwt"] + path).joined(separator: ".") + ".1"), "no man page for \(path)")
        }
        for hidden in ["token", "import", "add-key", "remove-key", "credentials", "help"] {
            #expect(!generated.contains("p11jwt.\(hidden).1"), "a man page for the hidden \(hidden)")
        }
        let page = try String(contentsOfFile: share + "/man1/p11jwt.sign.1", encoding: .utf8)
        #expect(page.contains("EXAMPLES:") && page.contains("--in"))
        let installed = getuid() == 0 ? "/usr/local/share/man/man1"
            : (ProcessInfo.processInfo.environment["XDG_DATA_HOME"] ?? NSHomeDirectory() + "/.local/share") + "/man/man1"
        #expect(FileManager.default.contents(atPath: installed + "/p11jwt.sign.1") == FileManager.default.contents(atPath: share + "/man1/p11jwt.sign.1"),
                "the installed man page is the generated one")
        let completion = share + "/completions/bash/p11jwt"
        func complete(_ words: [String]) throws -> [String] {
            let line = words.joined(separator: " ")
            let script = """
                source '\(completion)'
                COMP_WORDS=(\(words.map { "'\($0)'" }.joined(separator: " "))); COMP_CWORD=\(words.count - 1)
                COMP_LINE='\(line)'; COMP_POINT=\(line.count)
                _p11jwt p11jwt '\(words.last!)' '\(words[words.count - 2])'
                printf '%s\\n' "${COMPREPLY[@]}"
                """
            return try run("bash", ["-c", script]).stdout.split(separator: "\n").map(String.init)
        }
        #expect(try complete(["p11jwt", "to"]) == ["tokens"], "the hidden 'token' is not offered")
        #expect(Set(try complete(["p11jwt", "credential", ""])).isSuperset(of: ["list", "add", "remove"]))
    }

    /// Help offers only what the command uses: each option named here was listed by a command
    /// that ignored or refused it (issue 16).
    @Test func helpListsNoOptionTheCommandIgnores() throws {
        let absent: [[String]: [String]] = [
            ["agent", "run"]: ["--no-agent", "--cert ", "--cert-file"],
            ["rotate"]: ["--service-principal", "--no-agent"],
            ["access-token"]: ["--state-dir"],
            ["cert", "create"]: ["--cert ", "--cert-file"],
            ["cert", "csr"]: ["--cert ", "--cert-file"],
            ["sign"]: ["--cert ", "--cert-file"],
        ]
        for (path, options) in absent {
            let help = try run(try p11jwtBinary, path + ["--help"]).stdout
            let listed = help.range(of: "OPTIONS:").map { String(help[$0.upperBound...]) } ?? help
            for option in options { #expect(!listed.contains(option), "\(path) lists \(option)") }
        }
        // pop and access-token offer only the algorithms they take.
        for path in [["pop"], ["access-token"]] {
            let all = try run(try p11jwtBinary, path + ["--help"]).stdout
            let help = all.range(of: "OPTIONS:").map { String(all[$0.upperBound...]) } ?? all
            for refused in ["ES256", "PS384", "RS512"] { #expect(!help.contains(refused), "\(path) offers \(refused)") }
        }
        #expect(try run(try p11jwtBinary, ["pop", "--alg", "ES256", "--object-id", "00000000-0000-0000-0000-000000000001"]).status == 2)
        // Every command says its JSON: --output on every leaf command.
        let paths = try Self.commandPaths()
        let leaves = paths.filter { path in !paths.contains { $0.count > path.count && Array($0.prefix(path.count)) == path } }
        for path in leaves {
            let help = try run(try p11jwtBinary, path + ["--help"]).stdout
            #expect(help.contains("--output"), "\(path) has no --output")
            // EXAMPLES on every command, and prose wrapped by the parser, not by hand: a line of
            // a paragraph that goes on is long (a hand-wrapped one re-wrapped at 80 leaves stubs).
            #expect(help.contains("\nEXAMPLES:\n"), "\(path) has no EXAMPLES")
            let examples = help.components(separatedBy: "EXAMPLES:\n").dropFirst().first?.components(separatedBy: "\n\n").first ?? ""
            for line in examples.components(separatedBy: "\n") where !line.isEmpty {
                #expect(line.hasPrefix("  "), "\(path): an example wrapped by the parser: '\(line)'")
            }
            let prose = help.components(separatedBy: "USAGE:")[0].components(separatedBy: "\n")
            for (line, next) in zip(prose, prose.dropFirst())
            where !line.isEmpty && !line.hasPrefix(" ") && !next.isEmpty && !next.hasPrefix(" ") && !line.hasSuffix(":") {
                #expect(line.count >= 45, "\(path): ragged line '\(line)' before '\(next)'")
            }
        }
    }
}

/// Findings of a new user's walk through the CLI (issue 16), each fixed and checked here.
@Suite("CLI coherence")
struct CLICoherenceTests {
    /// `objects` without --token lists the one token present; its JSON has uppercase SHA-1
    /// thumbprints (as Entra and `thumbprint` show them) and PEM for certificates and public keys,
    /// which openssl reads.
    @Test func objectsFindsTheOneTokenAndExportsPEM() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-export"])
        let pin = ["--pin-file", hsm.pinFile]
        #expect(try p11jwt(["keygen", "--token", "pkcs11:token=cli-export", "--label", "k", "--key-type", "rsa:2048"] + pin, hsm: hsm).status == 0)
        let dir = TemporaryDirectory("p11jwt-export")
        let pem = dir.file("k.pem")
        #expect(try p11jwt(["cert", "create", "--key", "pkcs11:token=cli-export;object=k", "--subject", "CN=k", "--store", "--out", pem] + pin, hsm: hsm).status == 0)
        let listing = try p11jwt(["objects", "--output", "json"] + pin, hsm: hsm)
        #expect(listing.status == 0, "\(listing.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(listing.stdout.utf8)) as? [String: Any])
        let certificate = try #require((report["certificates"] as? [[String: Any]])?.first)
        let opensslSHA1 = try run("openssl", ["x509", "-in", pem, "-noout", "-fingerprint", "-sha1"]).stdout
            .split(separator: "=").last.map { $0.replacingOccurrences(of: ":", with: "").trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(certificate["sha1"] as? String == opensslSHA1)
        let exported = dir.file("exported.pem")
        try (certificate["pem"] as? String ?? "").write(toFile: exported, atomically: true, encoding: .utf8)
        let exportedSHA1 = try run("openssl", ["x509", "-in", exported, "-noout", "-fingerprint", "-sha1"]).stdout.replacingOccurrences(of: ":", with: "")
        #expect(exportedSHA1.contains(opensslSHA1 ?? "?"), "\(exportedSHA1)")
        let key = try #require((report["privateKeys"] as? [[String: Any]])?.first)
        let publicKey = dir.file("public.pem")
        try (key["publicKeyPEM"] as? String ?? "").write(toFile: publicKey, atomically: true, encoding: .utf8)
        let fromCertificate = try run("openssl", ["x509", "-in", pem, "-noout", "-pubkey"]).stdout
        let fromToken = try run("openssl", ["pkey", "-pubin", "-in", publicKey]).stdout
        #expect(!fromToken.isEmpty && fromToken == fromCertificate)
    }

    /// With two tokens present, `objects` without --token says which there are.
    @Test func objectsWithoutATokenListsThemWhenThereAreSeveral() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-one", "cli-two"])
        let result = try p11jwt(["objects"], hsm: hsm)
        #expect(result.status == 1)
        #expect(result.stderr.contains("token=cli-one") && result.stderr.contains("token=cli-two"), "\(result.stderr)")
    }

    /// A second `cert create --store` for a key would leave two certificates with one CKA_ID:
    /// refused, or with --replace the old one goes.
    @Test func aSecondStoredCertificateIsRefusedUnlessReplaced() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-dup"])
        let pin = ["--pin-file", hsm.pinFile]
        let key = "pkcs11:token=cli-dup;object=k"
        #expect(try p11jwt(["keygen", "--token", "pkcs11:token=cli-dup", "--label", "k", "--key-type", "ec:p256"] + pin, hsm: hsm).status == 0)
        #expect(try p11jwt(["cert", "create", "--key", key, "--subject", "CN=first", "--store"] + pin, hsm: hsm).status == 0)
        let again = try p11jwt(["cert", "create", "--key", key, "--subject", "CN=second", "--store"] + pin, hsm: hsm)
        #expect(again.status == 1)
        #expect(again.stderr.contains("already has a certificate") && again.stderr.contains("--replace"), "\(again.stderr)")
        func subjects() throws -> [String] {
            let listing = try p11jwt(["objects", "--token", "pkcs11:token=cli-dup", "--output", "json"] + pin, hsm: hsm).stdout
            let report = try JSONSerialization.jsonObject(with: Data(listing.utf8)) as? [String: Any]
            return (report?["certificates"] as? [[String: Any]] ?? []).compactMap { $0["subject"] as? String }
        }
        #expect(try subjects() == ["CN=first"])
        #expect(try p11jwt(["cert", "create", "--key", key, "--subject", "CN=second", "--store", "--replace"] + pin, hsm: hsm).status == 0)
        #expect(try subjects() == ["CN=second"])
    }

    /// `sign --in FILE` hashes here and signs there (openssl checks it against the file), and
    /// takes the key from $P11JWT_KEY like every other command.
    @Test func signHashesAFileAndTakesTheKeyFromTheEnvironment() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-in"])
        let pin = ["--pin-file", hsm.pinFile]
        let made = try p11jwt(["keygen", "--token", "pkcs11:token=cli-in", "--label", "k", "--key-type", "rsa:2048", "--output", "json"] + pin, hsm: hsm)
        let publicKey = try #require((try JSONSerialization.jsonObject(with: Data(made.stdout.utf8)) as? [String: Any])?["publicKey"] as? String)
        let dir = TemporaryDirectory("p11jwt-in")
        let message = Array("a message longer than any digest, signed as a file\n".utf8)
        let file = dir.file("message.txt")
        try Data(message).write(to: URL(fileURLWithPath: file))
        for alg in [JWSAlgorithm.PS384, .RS256] {
            let signed = try p11jwt(["sign", "--alg", alg.rawValue.lowercased(), "--in", file] + pin, hsm: hsm, environment: ["P11JWT_KEY": "pkcs11:token=cli-in;object=k"])
            #expect(signed.status == 0, "\(signed.stderr)")
            let signature = try #require(Base64URL.decode(signed.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
            #expect(try IndependentVerifier.openssl(signature, message: message, algorithm: alg, publicKeyPEM: publicKey), "\(alg)")
        }
        // From standard input too; and --digest with --in is a usage error.
        let fromStdin = try run(try p11jwtBinary, ["sign", "--key", "pkcs11:token=cli-in;object=k", "--alg", "RS256", "--in", "-"] + pin,
                                environment: hsm.environment, stdin: String(decoding: message, as: UTF8.self))
        #expect(fromStdin.status == 0, "\(fromStdin.stderr)")
        #expect(try IndependentVerifier.openssl(try #require(Base64URL.decode(fromStdin.stdout.trimmingCharacters(in: .whitespacesAndNewlines))), message: message, algorithm: .RS256, publicKeyPEM: publicKey))
        #expect(try p11jwt(["sign", "--key", "pkcs11:token=cli-in;object=k", "--alg", "RS256", "--in", file, "--digest", Base64URL.encode(Array(repeating: 1, count: 32))] + pin, hsm: hsm).status == 2)
        #expect(try p11jwt(["sign", "--alg", "RS256", "--in", file] + pin, hsm: hsm).stderr.contains("no key"))
    }

    /// `export URI` prints the certificate, or with --public-key the key's public half, as PEM
    /// openssl reads; a private key is never exported; JSON on request.
    @Test func exportGivesTheCertificateOrThePublicKeyAsPEM() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-exp"])
        let pin = ["--pin-file", hsm.pinFile]
        #expect(try p11jwt(["keygen", "--token", "pkcs11:token=cli-exp", "--label", "k", "--key-type", "ec:p384"] + pin, hsm: hsm).status == 0)
        let dir = TemporaryDirectory("p11jwt-exp")
        let made = dir.file("made.pem")
        #expect(try p11jwt(["cert", "create", "--key", "pkcs11:token=cli-exp;object=k", "--subject", "CN=exported", "--store", "--out", made] + pin, hsm: hsm).status == 0)
        let certificate = try p11jwt(["export", "pkcs11:token=cli-exp;object=k"], hsm: hsm)
        #expect(certificate.status == 0, "\(certificate.stderr)")
        let exported = try dir.write("exported.pem", certificate.stdout, mode: 0o644)
        #expect(try run("openssl", ["x509", "-in", exported, "-noout", "-subject"]).stdout.contains("CN = exported"))
        #expect(try run("openssl", ["x509", "-in", exported, "-outform", "DER"]).stdout == (try run("openssl", ["x509", "-in", made, "-outform", "DER"])).stdout)
        let publicKey = try p11jwt(["export", "pkcs11:token=cli-exp;object=k", "--public-key"], hsm: hsm)
        let fromCertificate = try run("openssl", ["x509", "-in", made, "-noout", "-pubkey"]).stdout
        let fromToken = try run("openssl", ["pkey", "-pubin", "-in", try dir.write("pub.pem", publicKey.stdout, mode: 0o644)]).stdout
        #expect(!fromToken.isEmpty && fromToken == fromCertificate, "\(publicKey.stderr)")
        // The private key's URI gives its public half, after a login; never the private key.
        let fromPrivate = try p11jwt(["export", "pkcs11:token=cli-exp;object=k;type=private"] + pin, hsm: hsm)
        #expect(fromPrivate.stdout.contains("BEGIN PUBLIC KEY") && !fromPrivate.stdout.contains("PRIVATE"), "\(fromPrivate.stderr)")
        let json = try p11jwt(["export", "pkcs11:token=cli-exp;object=k;type=cert", "--output", "json"], hsm: hsm)
        let report = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(report?["type"] as? String == "CERTIFICATE" && (report?["pem"] as? String)?.hasPrefix("-----BEGIN CERTIFICATE-----") == true)
        #expect(try p11jwt(["export", "pkcs11:token=cli-exp;object=none"], hsm: hsm).stderr.contains("no certificate or public key matches"))
    }

    /// `mechanisms` names every standard mechanism (no CKM_0x…), sorts them, and by default shows
    /// only the RSA / EC ones that sign or make key pairs; --all shows HMAC and the rest.
    @Test func mechanismsAreNamedSortedAndAboutSigning() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-mech"])
        let view = try p11jwt(["mechanisms", "--output", "json"], hsm: hsm)
        #expect(view.status == 0, "\(view.stderr)")
        let names = ((try JSONSerialization.jsonObject(with: Data(view.stdout.utf8)) as? [String: Any])?["mechanisms"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(names.contains("CKM_RSA_PKCS_PSS") && names.contains("CKM_EC_KEY_PAIR_GEN") && names.contains("CKM_ECDSA"), "\(names)")
        #expect(names == names.sorted())
        #expect(!names.contains { $0.contains("HMAC") || $0 == "CKM_DSA" || $0.hasPrefix("CKM_0x") || $0.contains("AES") }, "\(names)")
        let all = try p11jwt(["mechanisms", "--all"], hsm: hsm).stdout
        #expect(all.contains("CKM_SHA256_HMAC") && all.contains("CKM_AES_CMAC") && !all.contains("CKM_0x"), "\(all)")
    }

    /// Every command that changes or makes something reports it as JSON on request.
    @Test func commandsThatMakeOrDestroyReportJSON() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-json"])
        let pin = ["--pin-file", hsm.pinFile]
        #expect(try p11jwt(["keygen", "--token", "pkcs11:token=cli-json", "--label", "k", "--key-type", "ec:p256"] + pin, hsm: hsm).status == 0)
        func json(_ arguments: [String]) throws -> [String: Any] {
            let result = try p11jwt(arguments + ["--output", "json"] + pin, hsm: hsm)
            #expect(result.status == 0, "\(arguments): \(result.stderr)")
            return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(arguments): \(result.stdout)")
        }
        let created = try json(["cert", "create", "--key", "pkcs11:token=cli-json;object=k", "--subject", "CN=j", "--store"])
        #expect((created["stored"] as? String)?.contains("type=cert") == true && (created["pem"] as? String)?.contains("BEGIN CERTIFICATE") == true)
        #expect((created["notAfter"] as? String)?.hasSuffix("Z") == true, "ISO 8601: \(created)")
        let csr = try json(["cert", "csr", "--key", "pkcs11:token=cli-json;object=k", "--subject", "CN=j"])
        #expect((csr["pem"] as? String)?.contains("CERTIFICATE REQUEST") == true)
        let destroyed = try json(["destroy", "pkcs11:token=cli-json;object=k", "--yes"])
        #expect((destroyed["destroyed"] as? [[String: Any]])?.count == 3, "key pair and certificate: \(destroyed)")
    }

    /// keygen's URI, on a terminal, is quoted for pasting into a shell; to a pipe it is as is.
    @Test func keygenQuotesTheURIOnATerminalOnly() throws {
        let hsm = try SoftHSMDirectory(labels: ["cli-quote"])
        let piped = try p11jwt(["keygen", "--token", "pkcs11:token=cli-quote", "--label", "piped", "--key-type", "ec:p256", "--pin-file", hsm.pinFile], hsm: hsm)
        #expect(piped.stdout.hasPrefix("pkcs11:"), "\(piped.stdout)")
        // util-linux `script` gives the command a pseudo-terminal.
        let command = [try p11jwtBinary, "keygen", "--token", "pkcs11:token=cli-quote", "--label", "tty", "--key-type", "ec:p256", "--pin-file", hsm.pinFile]
            .map { "'" + $0 + "'" }.joined(separator: " ")
        let onTTY = try run("script", ["-qec", command, "/dev/null"], environment: hsm.environment)
        #expect(onTTY.status == 0, "\(onTTY.stdout) \(onTTY.stderr)")
        let line = onTTY.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(line.hasPrefix("'pkcs11:") && line.hasSuffix("'"), "\(line)")
    }
}
