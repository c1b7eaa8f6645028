import Foundation
@testable import PKCS11
import Testing
import TestSupport

/// Login touches the token's PIN counter, so these run one at a time, on their own tokens.
@Suite("Login and PINs", .serialized)
struct LoginTests {
    let noPrompt = PINProvider(environment: [:], allowPrompt: false)

    @Test func noPINSourceIsAClearErrorThatSaysHowToGiveOne() throws {
        try sharedHSM {
            let token = try SharedSoftHSM.token("login-wrong")
            defer { token.close() }
            let error = try #require(throws: PKCS11Error.self) { try token.login(pins: noPrompt) }
            #expect(error.code == .pinUnavailable)
            #expect(error.message.contains("login-wrong"))
            #expect(error.hint?.contains("PIN file") == true && error.settings.contains("pin-file"))
            #expect(error.hint?.contains("P11JWT_PIN") == true)
            #expect(!token.isLoggedIn)
        }
    }

    @Test(arguments: TokenImplementation.available)
    func aWrongPINIsReportedWithThePINStateAndNotRetried(_ implementation: TokenImplementation) throws {
        try onToken(implementation) {
            let token = try SharedTokens.token("login-wrong", on: implementation)
            defer { token.close() }
            #expect(try token.currentInfo().pinState.countLow == false)
            let provider = PINProvider(environment: ["P11JWT_PIN": "000000"], allowPrompt: false)
            let error = try #require(throws: PKCS11Error.self) { try token.login(pins: provider) }
            #expect(error.code == .pinIncorrect)
            #expect(error.function == "C_Login")
            #expect(error.returnValue == .pinIncorrect)
            #expect(error.message.contains("wrong PIN") && error.message.contains("$P11JWT_PIN"))
            #expect(error.hint?.contains("not retried") == true)
            #expect(error.description.contains("CKR_PIN_INCORRECT"))
            #expect(!error.description.contains("000000"))
            // SoftHSM records the failed attempt in the token flags (tpm2-pkcs11 keeps no count).
            if implementation == .softHSM { #expect(try token.currentInfo().pinState.countLow == true) }
            #expect(!token.isLoggedIn)
            // The right PIN still works: one wrong try did not lock the token.
            try token.login(pins: PINProvider(pinFile: try SharedTokens.directory(implementation).pinFile, environment: [:], allowPrompt: false))
            #expect(token.isLoggedIn)
            token.logout()
        }
    }

    @Test func thePINInTheURIComesFirst() throws {
        try sharedHSM {
            let dir = TemporaryDirectory()
            // A wrong PIN file: if it were read before the URI's pin-value, login would fail.
            let wrongFile = try dir.write("wrong", "999999\n")
            let uri = try PKCS11URI("pkcs11:token=login?pin-value=\(testPIN)")
            let token = try Token.open(uri, module: SharedSoftHSM.module, logger: testLogger)
            defer { token.close() }
            try token.login(pins: PINProvider(pinFile: wrongFile, environment: [:], allowPrompt: false), uri: uri)
            #expect(token.isLoggedIn)
            #expect(try token.currentInfo().pinState.countLow == false)
        }
    }

    @Test func pinSourceFilesPINFilesAndTheEnvironmentAreRead() throws {
        let dir = TemporaryDirectory()
        let file = try dir.write("pin", "\(testPIN)\r\n")
        let uri = try PKCS11URI("pkcs11:token=login?pin-source=file:\(file)")
        let (fromURI, origin) = try #require(try noPrompt.pin(uri: uri, tokenLabel: "login"))
        #expect(origin == .uriSource(file))
        #expect(fromURI.withUnsafeBytes { Array($0) } == Array(testPIN.utf8))
        let (fromFile, fileOrigin) = try #require(try PINProvider(pinFile: file, environment: [:], allowPrompt: false).pin(uri: nil, tokenLabel: "x"))
        #expect(fileOrigin == .file(file))
        #expect(fromFile.count == testPIN.utf8.count)
        let (fromEnv, envOrigin) = try #require(try PINProvider(environment: ["P11JWT_PIN": "4321"], allowPrompt: false).pin(uri: nil, tokenLabel: "x"))
        #expect(envOrigin == .environment("P11JWT_PIN"))
        #expect(fromEnv.withUnsafeBytes { Array($0) } == Array("4321".utf8))
        #expect(!"\(fromEnv)".contains("4321"))
        #expect(try noPrompt.pin(uri: nil, tokenLabel: "x") == nil)
        let missing = try #require(throws: PKCS11Error.self) {
            try PINProvider(pinFile: dir.file("absent"), environment: [:], allowPrompt: false).pin(uri: nil, tokenLabel: "x")
        }
        #expect(missing.code == .pinSourceUnreadable)
    }

    /// A PIN source that is not a small private file holding a PIN is refused before anything
    /// reaches the token: no PIN try is burnt, nothing hangs, nothing grows without bound.
    @Test func hostilePINSourcesAreRefusedBeforeTheToken() throws {
        let dir = TemporaryDirectory()
        let fifo = dir.file("fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        let big = try dir.write("big", String(repeating: "1", count: 200_000))
        let cases: [(String, String)] = [
            (try dir.write("empty", ""), "empty"),
            (try dir.write("newline-only", "\n"), "empty"),
            (dir.path, "a directory"),
            (fifo, "a FIFO"),
            ("/dev/zero", "not a regular file"),
            (try dir.write("world-readable", "\(testPIN)\n", mode: 0o644), "chmod 600"),
            (try dir.write("group-writable", "\(testPIN)\n", mode: 0o620), "chmod 600"),
            (big, "one line"),
            (dir.file("absent"), "No such file"),
        ]
        for (path, needle) in cases {
            let started = Date()
            let error = #expect(throws: PKCS11Error.self, "\(path)") {
                try PINProvider(pinFile: path, environment: [:], allowPrompt: false).pin(uri: nil, tokenLabel: "x")
            }
            #expect(error?.code == .pinSourceUnreadable, "\(path)")
            #expect("\(error?.message ?? "") \(error?.hint ?? "")".contains(needle), "\(path): \(String(describing: error))")
            #expect(Date().timeIntervalSince(started) < 2, "\(path) took too long")
        }
        // pin-source in a URI goes through the same checks (e.g. /etc/shadow-like files).
        let uri = try PKCS11URI("pkcs11:token=x?pin-source=file:\(dir.file("world-readable"))")
        #expect(throws: PKCS11Error.self) { try noPrompt.pin(uri: uri, tokenLabel: "x") }
        // The first line is the PIN; what follows is not part of it.
        let twoLines = try dir.write("two-lines", "\(testPIN)\nsecond line\n")
        let (pin, _) = try #require(try PINProvider(pinFile: twoLines, environment: [:], allowPrompt: false).pin(uri: nil, tokenLabel: "x"))
        #expect(pin.withUnsafeBytes { Array($0) } == Array(testPIN.utf8))
        // A Kubernetes secret mounted for the pod's fsGroup is 0440 root:GID: readable when it
        // is root's and GID is the process's; a group-readable file of anyone else's is refused.
        let groupReadable = try dir.write("group-readable", "\(testPIN)\n", mode: 0o440)
        let provider = PINProvider(pinFile: groupReadable, environment: [:], allowPrompt: false)
        if getuid() == 0 && getegid() == 0 {
            let (fromGroup, _) = try #require(try provider.pin(uri: nil, tokenLabel: "x"))
            #expect(fromGroup.withUnsafeBytes { Array($0) } == Array(testPIN.utf8))
            #expect(chown(groupReadable, 0, 12345) == 0)
        }
        let other = #expect(throws: PKCS11Error.self) { try provider.pin(uri: nil, tokenLabel: "x") }
        #expect(other?.hint?.contains("chmod 600") == true)
    }

    @Test(arguments: TokenImplementation.available)
    func loggingInTwiceIsHarmless(_ implementation: TokenImplementation) throws {
        try onToken(implementation) {
            let first = try SharedTokens.loggedIn("login", on: implementation)
            defer { first.close() }
            // A second context in the same process: the token is already logged in
            // (CKR_USER_ALREADY_LOGGED_IN / session state), which is success.
            let second = try SharedTokens.loggedIn("login", on: implementation)
            defer { second.close() }
            #expect(first.isLoggedIn && second.isLoggedIn)
            try first.withPrimary { try $0.login(pin: SecretBytes(testPIN)) }
        }
    }
}
