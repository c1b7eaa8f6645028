import Foundation
@testable import PKCS11
import Testing
import TestSupport

@Suite("Module loading")
struct ModuleTests {
    @Test func loadingTheSameFileTwiceGivesTheSameInitialisedModule() throws {
        let module = SharedSoftHSM.module
        let again = try Module.load(.path(softHSMModulePath), logger: testLogger)
        #expect(module === again)
        #expect(module.info.manufacturer == "SoftHSM")
        #expect(module.info.cryptokiVersion.hasPrefix("2."))
    }

    @Test func anUnknownModulePathSaysWhereItLookedAndWhatToDo() throws {
        let error = try #require(throws: PKCS11Error.self) {
            try Module.load(.path("/nonexistent/libnothing.so"), logger: testLogger)
        }
        #expect(error.code == .moduleNotFound)
        #expect(error.message.contains("/nonexistent/libnothing.so"))
        #expect(error.hint?.contains(".so") == true && error.settings == ["module"])
    }

    @Test func anUnknownModuleNameListsTheRegisteredModules() throws {
        let error = try #require(throws: PKCS11Error.self) {
            try Module.load(.name("no-such-module"), logger: testLogger)
        }
        #expect(error.code == .moduleNotFound)
        #expect(error.hint?.contains("softhsm2") == true)
    }

    @Test func aFileThatIsNotAModuleIsRefused() throws {
        let dir = TemporaryDirectory()
        let path = try dir.write("fake.so", "not an ELF file")
        let error = try #require(throws: PKCS11Error.self) { try Module.load(.path(path), logger: testLogger) }
        #expect(error.code == .moduleLoadFailed)
    }

    @Test func p11KitKnowsTheRegisteredSoftHSMModule() {
        let registered = Module.registeredModules()
        #expect(registered.contains { $0.name == "softhsm2" && $0.file.hasSuffix("libsofthsm2.so") })
    }

    @Test func moduleArgumentsAreReadAsPathsOrNames() {
        #expect(ModuleSpec("/usr/lib/softhsm/libsofthsm2.so") == .path("/usr/lib/softhsm/libsofthsm2.so"))
        #expect(ModuleSpec("libsofthsm2.so") == .path("libsofthsm2.so"))
        #expect(ModuleSpec("softhsm2") == .name("softhsm2"))
        #expect(ModuleSpec(nil) == .proxy)
    }
}

@Suite("RFC 7512 URIs")
struct URITests {
    @Test func parsesTokenObjectAndQueryAttributes() throws {
        let uri = try PKCS11URI(
            "pkcs11:token=My%20Token;serial=abc123;object=signing%20key;id=%01%02%ff;type=private?pin-source=file:/run/pin&module-path=/usr/lib/softhsm/libsofthsm2.so")
        #expect(uri.objectLabel == "signing key")
        #expect(uri.objectID == [0x01, 0x02, 0xff])
        #expect(uri.objectClass == .privateKey)
        #expect(uri.pinSource == "file:/run/pin")
        #expect(uri.modulePath == "/usr/lib/softhsm/libsofthsm2.so")
        #expect(uri.moduleName == nil)
        #expect(uri.selectsObject)
        #expect(ModuleSpec(uri: uri, fallback: .proxy) == .path("/usr/lib/softhsm/libsofthsm2.so"))
    }

    @Test(arguments: ["http://example.com", "pkcs11:id=%zz", "not a uri", "pkcs11:type=bogus"])
    func malformedURIsAreRefusedWithAnExample(_ text: String) throws {
        let error = try #require(throws: PKCS11Error.self) { try PKCS11URI(text) }
        #expect(error.code == .invalidURI)
        #expect(error.message.contains(text))
        #expect(error.hint?.contains("pkcs11:token=") == true)
    }

    @Test func pinValuesAreRedactedWhenPrinted() throws {
        let uri = try PKCS11URI("pkcs11:token=t?pin-value=123456")
        #expect(uri.pinValue == "123456")
        #expect(!uri.description.contains("123456"))
        #expect(!uri.redacted.contains("123456"))
    }

    @Test func formattedURIsSelectExactlyWhatWasFormatted() throws {
        try sharedHSM {
            let token = try SharedSoftHSM.token("module")
            defer { token.close() }
            let text = PKCS11URI.format(token: token.info, label: "k;ey/1", id: [0, 1, 0xfe], objectClass: .privateKey, module: token.module)
            let uri = try PKCS11URI(text)
            #expect(uri.objectLabel == "k;ey/1")
            #expect(uri.objectID == [0, 1, 0xfe])
            #expect(uri.objectClass == .privateKey)
            #expect(uri.modulePath == token.module.path)
            #expect(uri.matches(token: token.info))
            #expect(try Token.find(uri, module: token.module).id == token.slot.id)
        }
    }
}

@Suite("Finding tokens")
struct TokenFindingTests {
    @Test func findsATokenByLabelAndBySerial() throws {
        try sharedHSM {
            let module = SharedSoftHSM.module
            let slot = try Token.find(try PKCS11URI("pkcs11:token=module"), module: module)
            let info = try slot.tokenInfo()
            #expect(info.label == "module")
            #expect(info.loginRequired && info.isInitialized)
            let bySerial = try Token.find(try PKCS11URI("pkcs11:serial=\(info.serialNumber)"), module: module)
            #expect(bySerial.id == slot.id)
        }
    }

    @Test func aMissingTokenListsTheTokensSeen() throws {
        try sharedHSM {
            let error = try #require(throws: PKCS11Error.self) {
                try Token.find(try PKCS11URI("pkcs11:token=no-such-token"), module: SharedSoftHSM.module)
            }
            #expect(error.code == .tokenNotFound)
            #expect(error.message.contains("no-such-token"))
            #expect(error.hint?.contains("token=dup-a") == true)
            #expect(error.hint?.contains("token=module") == true)
        }
    }

    @Test func aURIMatchingSeveralTokensIsAmbiguousAndListsThem() throws {
        try sharedHSM {
            let error = try #require(throws: PKCS11Error.self) {
                try Token.find(try PKCS11URI("pkcs11:model=SoftHSM%20v2"), module: SharedSoftHSM.module)
            }
            #expect(error.code == .tokenAmbiguous)
            #expect(error.hint?.contains("serial=") == true)
        }
    }

    /// Found by scripts/fuzz (Fuzz/Corpus/FuzzURI/pin-value-R): redaction covers every spelling,
    /// whether or not the URI parses.
    @Test(arguments: [("pkcs11:pin-value=R", "pkcs11:pin-value=REDACTED"), ("pkcs11:token=t?PIN-VALUE=1234&x=1", "pkcs11:token=t?pin-value=REDACTED&x=1"),
                      ("not a uri pin-value=9", "not a uri pin-value=REDACTED"), ("pkcs11:token=t", "pkcs11:token=t")])
    func redactionCoversEverySpelling(text: String, redacted: String) {
        #expect(PKCS11URI.redact(text) == redacted)
    }
}
