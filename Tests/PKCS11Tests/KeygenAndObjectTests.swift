import CP11Kit
import Crypto
import Foundation
@testable import PKCS11
import Testing
import TestSupport
import X509

@Suite("Key generation")
struct KeygenTests {
    @Test(arguments: TokenImplementation.available, ["rsa:2048", "rsa:3072", "rsa:4096", "ec:p256", "ec:p384"])
    func keysAreGeneratedSensitiveNonExtractableAndForSigning(_ implementation: TokenImplementation, _ type: String) throws {
        try onToken(implementation) {
            let token = try SharedTokens.loggedIn("keygen", on: implementation)
            defer { token.close() }
            let label = "gen-\(type)"
            let spec = try Token.KeySpec(type)
            if case .rsa(let bits) = spec, bits > implementation.maximumRSABits {
                // Beyond the token's stated range: refused by name, before the token is asked.
                let error = try #require(throws: PKCS11Error.self) { try token.generateKeyPair(spec, label: label) }
                #expect(error.code == .mechanismUnsupported)
                #expect(error.message.contains("makes RSA keys of") && error.message.contains("\(implementation.maximumRSABits) bits, not \(bits)"), "\(error.message)")
                #expect(error.hint?.contains("rsa:3072") == true)
                #expect(try token.privateKeys(matching: try PKCS11URI("pkcs11:object=\(label)")).isEmpty)
                return
            }
            let key = try token.generateKeyPair(spec, label: label)
            #expect(key.id?.count == 16)
            #expect(key.label == label)
            // Read the attributes back raw, not through the object model.
            let raw = try token.withPrimary {
                try $0.attributes(key.identity.handle, [CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_SIGN, CKA_TOKEN, CKA_PRIVATE, CKA_VALUE].map { CK_ATTRIBUTE_TYPE($0) })
            }
            #expect(raw[CK_ATTRIBUTE_TYPE(CKA_SENSITIVE)] == [1])
            #expect(raw[CK_ATTRIBUTE_TYPE(CKA_EXTRACTABLE)] == [0])
            #expect(raw[CK_ATTRIBUTE_TYPE(CKA_SIGN)] == [1])
            #expect(raw[CK_ATTRIBUTE_TYPE(CKA_TOKEN)] == [1])
            #expect(raw[CK_ATTRIBUTE_TYPE(CKA_PRIVATE)] == [1])
            #expect(raw[CK_ATTRIBUTE_TYPE(CKA_VALUE)] == nil, "the private value must not be readable")
            let expected = type.hasPrefix("rsa") ? "RSA \(type.dropFirst(4))" : (type == "ec:p256" ? "EC P-256" : "EC P-384")
            #expect(key.typeDescription == expected)
            // The URI it prints selects exactly this key, from a fresh token context.
            let again = try SharedTokens.loggedIn("keygen", on: implementation)
            defer { again.close() }
            let found = try again.signingKey(try PKCS11URI(key.uri))
            #expect(found.id == key.id)
            #expect(found.publicKey == key.publicKey)
        }
    }

    @Test(arguments: TokenImplementation.available)
    func aChosenIDIsUsedAndDuplicatesAreRefused(_ implementation: TokenImplementation) throws {
        try onToken(implementation) {
            let token = try SharedTokens.loggedIn("keygen", on: implementation)
            defer { token.close() }
            let key = try token.generateKeyPair(.ec(.p256), label: "chosen-id", id: [0xca, 0xfe])
            #expect(key.id == [0xca, 0xfe])
            #expect(key.uri.contains("id=%CA%FE"))
            let sameLabel = try #require(throws: PKCS11Error.self) { try token.generateKeyPair(.ec(.p256), label: "chosen-id") }
            #expect(sameLabel.code == .invalidArgument)
            #expect(sameLabel.hint?.contains("another label") == true && sameLabel.settings.contains("label"))
            let sameID = try #require(throws: PKCS11Error.self) { try token.generateKeyPair(.ec(.p256), label: "other", id: [0xca, 0xfe]) }
            #expect(sameID.message.contains("id"))
        }
    }

    /// One read of every object (what a fleet rotation takes instead of a search per lookup)
    /// says what the searches say: the keys with their public halves (an EC key's point from
    /// its public key object), the certificates, the objects of one CKA_ID; and the search for
    /// keys without label or id finds what an interrupted key generation leaves, and nothing else.
    @Test(arguments: TokenImplementation.available)
    func theInventoryAgreesWithTheSearches(_ implementation: TokenImplementation) throws {
        let der = try CertificateTests.imported.get().1
        try onToken(implementation) {
            let token = try SharedTokens.loggedIn("inventory", on: implementation)
            defer { token.close() }
            let rsa = try token.generateKeyPairObjects(.rsa(bits: 2048), label: "inv-rsa")
            let ec = try token.generateKeyPair(.ec(.p256), label: "inv-ec")
            let rsaID = try #require(rsa.privateKey.id)
            _ = try token.storeCertificate(der: der, label: "inv-rsa", id: rsaID)
            let inventory = try token.inventory()

            let searched = try token.privateKeys()
            #expect(searched.count >= 2)
            #expect(Set(inventory.privateKeys.map(\.uri)) == Set(searched.map(\.uri)))
            for key in searched {
                let read = inventory.privateKeys.first { $0.identity.handle == key.identity.handle }
                #expect(read?.publicKey == key.publicKey, "\(key.uri)")
            }
            #expect(ec.publicKey != nil)
            #expect(inventory.privateKey(try PKCS11URI("pkcs11:object=inv-ec"))?.publicKey == ec.publicKey)
            #expect(inventory.privateKey(try PKCS11URI("pkcs11:object=no-such-key")) == nil)
            #expect(Set(inventory.publicKeys.map(\.identity.handle)) == Set(try token.publicKeys().map(\.identity.handle)))
            #expect(Set(inventory.certificates.map(\.der)) == Set(try token.certificates().map(\.der)))

            // The objects of one CKA_ID: the pair (the public key's handle is the one the
            // generation returned) and the certificate.
            let byID = Set(try token.objects(matching: try PKCS11URI("pkcs11:id=\(rsaID.map { String(format: "%%%02X", $0) }.joined())")).map(\.handle))
            #expect(byID.count == 3)
            #expect(Set(inventory.objects(id: rsaID).map(\.handle)) == byID)
            #expect(byID.contains(rsa.publicKey.handle) && byID.contains(rsa.privateKey.identity.handle))

            // A public key whose label and id are blanked, as an interrupted generation leaves it.
            #expect(try token.keysWithoutLabelOrID().publicKeys.isEmpty)
            do {
                try token.withPrimary { try $0.setAttributes(rsa.publicKey.handle, [.label(""), .id([])]) }
            } catch let error as PKCS11Error where implementation == .tpm2 {
                // tpm2-pkcs11 may refuse to blank an id: then nothing is left to find.
                Issue.record("tpm2-pkcs11 refused to blank a public key's label and id: \(error)")
                return
            }
            let blank = try token.keysWithoutLabelOrID()
            #expect(blank.publicKeys.map(\.identity.handle) == [rsa.publicKey.handle])
            #expect(blank.privateKeys.isEmpty)
            #expect(try token.inventory().keysWithoutLabelOrID.publicKeys.map(\.identity.handle) == [rsa.publicKey.handle])
        }
    }

    @Test func unknownKeyTypesAreRefused() {
        #expect(throws: PKCS11Error.self) { try Token.KeySpec("rsa:1024") }
        #expect(throws: PKCS11Error.self) { try Token.KeySpec("dsa") }
    }
}

@Suite("Certificates and objects")
struct CertificateTests {
    /// An RSA key and self-signed certificate made by openssl, imported into the token with
    /// softhsm2-util: a key whose private half is known, so results can be compared byte for byte.
    static let imported: Result<(TemporaryDirectory, [UInt8]), any Error> = Result {
        let dir = TemporaryDirectory()
        let key = dir.file("key.pem"), cert = dir.file("cert.der")
        var r = try run("openssl", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key])
        try #require(r.status == 0, "\(r.stderr)")
        r = try run("openssl", ["req", "-x509", "-new", "-key", key, "-subj", "/CN=p11jwt imported", "-days", "30", "-outform", "DER", "-out", cert])
        try #require(r.status == 0, "\(r.stderr)")
        r = try run("softhsm2-util", ["--import", key, "--token", "cert", "--label", "imported", "--id", "a1b2", "--pin", testPIN],
                    environment: SharedSoftHSM.directory.environment)
        try #require(r.status == 0, "softhsm2-util --import: \(r.stderr)")
        return (dir, [UInt8](try Data(contentsOf: URL(fileURLWithPath: cert))))
    }

    @Test func aStoredCertificatePairsWithItsKeyAndThumbprintsMatchOpenSSL() throws {
        let (dir, der) = try Self.imported.get()
        try sharedHSM {
            let token = try SharedSoftHSM.loggedIn("cert")
            defer { token.close() }
            let key = try token.signingKey(try PKCS11URI("pkcs11:token=cert;object=imported"))
            #expect(try token.certificate(for: key) == nil)
            _ = try token.storeCertificate(der: der, label: "imported", id: try #require(key.id))
            let cert = try #require(try token.certificate(for: key))
            #expect(cert.der == der)
            #expect(cert.id == [0xa1, 0xb2])
            #expect(token.pairing(key, cert) == .matches)
            try token.requireMatch(key, cert)
            #expect(cert.certificate?.subject.description.contains("p11jwt imported") == true)
            let fingerprint = try run("openssl", ["x509", "-inform", "DER", "-in", dir.file("cert.der"), "-noout", "-fingerprint", "-sha1"])
            let hex = fingerprint.stdout.split(separator: "=").last!.replacingOccurrences(of: ":", with: "").trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
            #expect(Array(Insecure.SHA1.hash(data: cert.der)).map { String(format: "%02x", $0) }.joined() == hex)
        }
    }

    @Test func rs256OnTheTokenIsByteIdenticalToOpenSSLWithTheSameKey() throws {
        let (dir, _) = try Self.imported.get()
        let input = Array("header.payload".utf8)
        let inputPath = dir.file("input-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: inputPath, contents: Data(input))
        let expected = try run("openssl", ["dgst", "-sha256", "-sign", dir.file("key.pem"), "-out", inputPath + ".sig", inputPath])
        try #require(expected.status == 0)
        let opensslSignature = [UInt8](try Data(contentsOf: URL(fileURLWithPath: inputPath + ".sig")))
        let signature = try sharedHSM {
            let token = try SharedSoftHSM.loggedIn("cert")
            defer { token.close() }
            let key = try token.signingKey(try PKCS11URI("pkcs11:token=cert;object=imported"))
            return try token.sign(digest: Array(SHA256.hash(data: input)), algorithm: .RS256, key: key)
        }
        #expect(signature == opensslSignature)
    }

    @Test func aCertificateOfAnotherKeyIsAMismatch() throws {
        let (_, der) = try Self.imported.get()
        try sharedHSM {
            let token = try SharedSoftHSM.loggedIn("cert")
            defer { token.close() }
            let ecKey = try token.generateKeyPair(.ec(.p256), label: "ec-with-wrong-cert", id: [0x0e, 0xc0])
            let rsaKey = try token.generateKeyPair(.rsa(bits: 2048), label: "rsa-with-wrong-cert", id: [0x0e, 0xc1])
            for key in [ecKey, rsaKey] {
                let stored = try token.storeCertificate(der: der, label: key.label!, id: key.id!)
                let cert = try #require(try token.certificate(for: key))
                #expect(cert.identity.handle == stored.identity.handle)
                #expect(token.pairing(key, cert) == .mismatch)
                let error = try #require(throws: PKCS11Error.self) { try token.requireMatch(key, cert) }
                #expect(error.code == .certificateMismatch)
                #expect(error.message.contains(key.uri))
            }
        }
    }

    @Test func notACertificateIsRefused() throws {
        try sharedHSM {
            let token = try SharedSoftHSM.loggedIn("cert")
            defer { token.close() }
            let error = try #require(throws: PKCS11Error.self) { try token.storeCertificate(der: [0x30, 0x00], label: "x", id: [1]) }
            #expect(error.code == .invalidArgument)
        }
    }
}

@Suite("Session pool")
struct PoolTests {
    @Test(arguments: TokenImplementation.available)
    func parallelSignaturesStayWithinThePoolAndAllVerify(_ implementation: TokenImplementation) throws {
        try onToken(implementation) {
            let token = try Token.open(try PKCS11URI("pkcs11:token=pool"), module: try SharedTokens.module(implementation),
                                       options: .init(maxPoolSessions: 2), logger: testLogger)
            defer { token.close() }
            try token.login(pins: PINProvider(pinFile: try SharedTokens.directory(implementation).pinFile, environment: [:], allowPrompt: false))
            let key = try token.generateKeyPair(.ec(.p256), label: "parallel")
            let publicKey = try #require(key.publicKey)
            let results = ResultsBox(count: 32)
            DispatchQueue.concurrentPerform(iterations: 32) { i in
                let message = Array("message \(i)".utf8)
                let outcome = Result { try token.sign(digest: Array(SHA256.hash(data: message)), algorithm: .ES256, key: key) }
                results.set(i, outcome.map { ($0, message) }, open: token.poolSessionCount)
            }
            #expect(results.maxOpen <= 2)
            #expect(token.poolCapacity == 2)
            for result in results.all {
                let (signature, message) = try result.get()
                #expect(try IndependentVerifier.swiftCrypto(signature, message: message, algorithm: .ES256, key: publicKey))
            }
        }
    }

    @Test func aDeadSessionIsEvictedAndNeverHandedOutAgain() throws {
        try exclusiveHSM {
            let token = try Token.open(try PKCS11URI("pkcs11:token=pool"), module: SharedSoftHSM.module,
                                       options: .init(maxPoolSessions: 1), logger: testLogger)
            defer { token.close() }
            try token.login(pins: PINProvider(pinFile: SharedSoftHSM.directory.pinFile, environment: [:], allowPrompt: false))
            let key = try token.generateKeyPair(.rsa(bits: 2048), label: "evict-\(UUID().uuidString.prefix(6))")
            let digest = Array(SHA256.hash(data: [1, 2, 3]))
            _ = try token.sign(digest: digest, algorithm: .RS256, key: key)
            // Close the pooled session behind the pool's back.
            try token.pool.withSession { $0.close() }
            #expect(token.poolSessionCount == 1)
            let error = try #require(throws: PKCS11Error.self) { try token.sign(digest: digest, algorithm: .RS256, key: key) }
            #expect(error.returnValue == .sessionHandleInvalid)
            #expect(error.function == "C_SignInit")
            #expect(token.poolSessionCount == 0, "the dead session must be dropped")
            let signature = try token.sign(digest: digest, algorithm: .RS256, key: key)
            #expect(try IndependentVerifier.swiftCrypto(signature, message: [1, 2, 3], algorithm: .RS256, key: try #require(key.publicKey)))
            // Its replacement is a live, logged-in session.
            #expect(try token.pool.withSession { try $0.state() } == CK_STATE(CKS_RO_USER_FUNCTIONS))
            #expect(token.poolSessionCount == 1)
        }
    }
}

/// Collects results from concurrentPerform.
final class ResultsBox: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [Result<([UInt8], [UInt8]), any Error>?]
    private(set) var maxOpen = 0
    init(count: Int) { results = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ r: Result<([UInt8], [UInt8]), any Error>, open: Int) {
        lock.withLock {
            results[i] = r
            maxOpen = max(maxOpen, open)
        }
    }
    var all: [Result<([UInt8], [UInt8]), any Error>] { lock.withLock { results.compactMap { $0 } } }
}
