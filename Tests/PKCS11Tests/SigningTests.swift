import CP11Kit
import Crypto
import Foundation
import JOSE
@testable import PKCS11
import Testing
@testable import TokenSigning
import TestSupport
import X509

/// Keys generated once on each implementation's "signing" token for the whole suite. A key the
/// implementation cannot make (P-521 on tpm2) is absent, and its refusal is what is recorded.
enum SigningFixture {
    typealias Keys = (Token, [String: PrivateKeyObject], refusals: [String: PKCS11Error])

    static let softHSM = Result { try make(.softHSM) }
    static let tpm2 = Result { try make(.tpm2) }

    static func make(_ implementation: TokenImplementation) throws -> Keys {
        try onToken(implementation) {
            let token = try SharedTokens.loggedIn("signing", on: implementation)
            var keys: [String: PrivateKeyObject] = [:], refusals: [String: PKCS11Error] = [:]
            for (label, spec) in [("rsa", "rsa:2048"), ("p256", "ec:p256"), ("p384", "ec:p384"), ("p521", "ec:p521")] {
                do {
                    keys[label] = try token.generateKeyPair(try Token.KeySpec(spec), label: label)
                } catch let error as PKCS11Error where label == "p521" && !implementation.signsWithP521 {
                    refusals[label] = error
                }
            }
            return (token, keys, refusals)
        }
    }

    static func get(_ implementation: TokenImplementation) throws -> Keys {
        try (implementation == .softHSM ? softHSM : tpm2).get()
    }

    static func label(for algorithm: JWSAlgorithm) -> String {
        switch algorithm.curve {
        case .p256: return "p256"
        case .p384: return "p384"
        case .p521: return "p521"
        case nil: return "rsa"
        }
    }

    static func key(for algorithm: JWSAlgorithm, on implementation: TokenImplementation) throws -> (Token, PrivateKeyObject) {
        let (token, keys, _) = try get(implementation)
        return (token, try #require(keys[label(for: algorithm)]))
    }
}

@Suite("Signing digests")
struct SigningTests {
    @Test(arguments: TokenImplementation.available, JWSAlgorithm.allCases)
    func signaturesVerifyWithSwiftCryptoAndOpenSSL(_ implementation: TokenImplementation, _ algorithm: JWSAlgorithm) throws {
        if algorithm.curve == .p521 && !implementation.signsWithP521 {
            // The token's P-521 keys are unusable: key generation says so and leaves nothing behind.
            let (token, keys, refusals) = try SigningFixture.get(implementation)
            #expect(keys["p521"] == nil)
            let refusal = try #require(refusals["p521"])
            #expect(refusal.code == .moduleAnswerInvalid)
            #expect(refusal.message.contains("no usable public key") && refusal.message.contains("removed"), "\(refusal.message)")
            #expect(refusal.hint?.contains("ec:p256") == true)
            #expect(try sharedHSM { try token.privateKeys(matching: try PKCS11URI("pkcs11:object=p521")) }.isEmpty)
            #expect(try sharedHSM { try token.publicKeys(matching: try PKCS11URI("pkcs11:object=p521")) }.isEmpty)
            return
        }
        let (token, key) = try SigningFixture.key(for: algorithm, on: implementation)
        let publicKey = try #require(key.publicKey)
        let message = randomBytes(100)
        let signature = try sharedHSM {
            try token.sign(digest: algorithm.hash.hash(message), algorithm: algorithm, key: key)
        }
        if let curve = algorithm.curve {
            #expect(signature.count == 2 * curve.coordinateLength, "ES* must be raw r||s")
        } else {
            #expect(signature.count == 256)
        }
        #expect(try IndependentVerifier.swiftCrypto(signature, message: message, algorithm: algorithm, key: publicKey))
        let pem = try IndependentVerifier.publicKeyPEM(publicKey)
        #expect(try IndependentVerifier.openssl(signature, message: message, algorithm: algorithm, publicKeyPEM: pem))
        // And the signature is not valid for another message.
        #expect(try !IndependentVerifier.swiftCrypto(signature, message: message + [1], algorithm: algorithm, key: publicKey))
        // The token's own check (what the agent's Key Vault verify answers) gives the same verdicts.
        let digest = algorithm.hash.hash(message)
        let tampered = [signature[0] ^ 1] + signature.dropFirst()
        let (valid, tamperedValid, otherValid) = try sharedHSM {
            (try token.verify(digest: digest, signature: signature, algorithm: algorithm, key: key),
             try token.verify(digest: digest, signature: tampered, algorithm: algorithm, key: key),
             try token.verify(digest: algorithm.hash.hash(message + [1]), signature: signature, algorithm: algorithm, key: key))
        }
        #expect(valid && !tamperedValid && !otherValid, "token verify: \(valid) / tampered \(tamperedValid) / other digest \(otherValid)")
    }

    @Test(arguments: TokenImplementation.available)
    func rs256IsDeterministicAndPS256IsSalted(_ implementation: TokenImplementation) throws {
        let (token, key) = try SigningFixture.key(for: .RS256, on: implementation)
        let digest = Array(SHA256.hash(data: Array("fixed input".utf8)))
        try sharedHSM {
            let a = try token.sign(digest: digest, algorithm: .RS256, key: key)
            let b = try token.sign(digest: digest, algorithm: .RS256, key: key)
            #expect(a == b)
            let c = try token.sign(digest: digest, algorithm: .PS256, key: key)
            let d = try token.sign(digest: digest, algorithm: .PS256, key: key)
            #expect(c != d)
        }
    }

    @Test(arguments: [(JWSAlgorithm.RS256, 20), (.PS384, 32), (.ES256, 48), (.ES384, 0)])
    func aDigestOfTheWrongLengthIsRefused(_ algorithm: JWSAlgorithm, _ length: Int) throws {
        let (token, key) = try SigningFixture.key(for: algorithm, on: .softHSM)
        let error = try #require(throws: PKCS11Error.self) {
            try sharedHSM { try token.sign(digest: randomBytes(length), algorithm: algorithm, key: key) }
        }
        #expect(error.code == .invalidDigest)
        #expect(error.message.contains("\(algorithm.digestLength) bytes"))
        #expect(error.message.contains("got \(length) bytes"))
    }

    @Test(arguments: TokenImplementation.available)
    func anAlgorithmTheKeyCannotDoIsRefusedWithWhatItCanDo(_ implementation: TokenImplementation) throws {
        let (token, keys, _) = try SigningFixture.get(implementation)
        let ec = try #require(keys["p256"]), rsa = try #require(keys["rsa"])
        let rsaOnEC = try #require(throws: PKCS11Error.self) {
            try token.sign(digest: randomBytes(32), algorithm: .RS256, key: ec)
        }
        #expect(rsaOnEC.code == .keyUnsuitable)
        #expect(rsaOnEC.hint?.contains("ES256") == true)
        let wrongCurve = try #require(throws: PKCS11Error.self) {
            try token.sign(digest: randomBytes(48), algorithm: .ES384, key: ec)
        }
        #expect(wrongCurve.code == .keyUnsuitable)
        #expect(wrongCurve.message.contains("P-384"))
        let ecOnRSA = try #require(throws: PKCS11Error.self) {
            try token.sign(digest: randomBytes(32), algorithm: .ES256, key: rsa)
        }
        #expect(ecOnRSA.code == .keyUnsuitable)
    }

    @Test(arguments: TokenImplementation.available)
    func keyURIsMatchingNoKeyOrSeveralKeysAreErrorsThatListCandidates(_ implementation: TokenImplementation) throws {
        let (token, keys, _) = try SigningFixture.get(implementation)
        try sharedHSM {
            let none = try #require(throws: PKCS11Error.self) {
                try token.signingKey(try PKCS11URI("pkcs11:token=signing;object=absent"))
            }
            #expect(none.code == .objectNotFound)
            #expect(none.hint?.contains("object=rsa") == true)
            let many = try #require(throws: PKCS11Error.self) {
                try token.signingKey(try PKCS11URI("pkcs11:token=signing"))
            }
            #expect(many.code == .objectAmbiguous)
            for key in keys.values { #expect(many.hint?.contains(key.uri) == true) }
            let one = try token.signingKey(try PKCS11URI(try #require(keys["p384"]).uri))
            #expect(one.label == "p384")
        }
    }

    @Test(arguments: TokenImplementation.available)
    func thePSSFallbackEncodingVerifiesIndependently(_ implementation: TokenImplementation) throws {
        // EMSA-PSS done here + raw RSA in the token, forced on a token that also has native PSS.
        let (token, key) = try SigningFixture.key(for: .PS256, on: implementation)
        let publicKey = try #require(key.publicKey)
        for algorithm in [JWSAlgorithm.PS256, .PS384, .PS512] {
            let message = randomBytes(64)
            let encoded = try EMSAPSS.encode(digest: algorithm.hash.hash(message), hash: algorithm.hash, modulusBits: 2048)
            let signature = try sharedHSM {
                try token.pool.withSession { try $0.sign(mechanism: .rsaX509, key: key.identity.handle, data: encoded) }
            }
            #expect(try IndependentVerifier.swiftCrypto(signature, message: message, algorithm: algorithm, key: publicKey))
        }
    }

    @Test(arguments: TokenImplementation.available)
    func ecdsaSignaturesConvertToDERAndBack(_ implementation: TokenImplementation) throws {
        let (token, key) = try SigningFixture.key(for: .ES256, on: implementation)
        let digest = Array(SHA256.hash(data: randomBytes(10)))
        let raw = try sharedHSM { try token.sign(digest: digest, algorithm: .ES256, key: key) }
        let der = try ECDSASignatureEncoding.der(fromRaw: raw, curve: .p256)
        #expect(Array(try P256.Signing.ECDSASignature(rawRepresentation: raw).derRepresentation) == der)
        #expect(try ECDSASignatureEncoding.raw(fromDER: der, curve: .p256) == raw)
    }
}

@Suite("Always-authenticate keys")
struct AlwaysAuthenticateTests {
    @Test func keysWithAlwaysAuthenticateGetAContextLoginBeforeEachSignature() throws {
        try sharedHSM {
            let token = try SharedSoftHSM.loggedIn("signing")
            defer { token.close() }
            // A PIV-style key: CKA_ALWAYS_AUTHENTICATE, made with the raw session API.
            let id = randomBytes(8)
            let handle = try token.withPrimary(writing: true) { session in
                try session.generateKeyPair(
                    mechanism: .ecKeyPairGen,
                    publicTemplate: [.token(true), Attribute(CK_ATTRIBUTE_TYPE(CKA_EC_PARAMS), bytes: ECCurve.p256.ecParameters), .label("piv-like"), .id(id)],
                    privateTemplate: [.token(true), .bool(CK_ATTRIBUTE_TYPE(CKA_PRIVATE), true), .bool(CK_ATTRIBUTE_TYPE(CKA_SIGN), true),
                                      .bool(CK_ATTRIBUTE_TYPE(CKA_ALWAYS_AUTHENTICATE), true), .label("piv-like"), .id(id)]).1
            }
            let key = try token.signingKey(try PKCS11URI(PKCS11URI.format(token: token.info, id: id, objectClass: .privateKey)))
            #expect(key.identity.handle == handle)
            #expect(key.alwaysAuthenticate)
            // Without the context login SoftHSM refuses C_Sign: prove it, so the test below means something.
            let refused = try #require(throws: PKCS11Error.self) {
                try token.pool.withSession { try $0.sign(mechanism: .ecdsa, key: handle, data: randomBytes(32)) }
            }
            #expect(refused.function == "C_Sign")
            for _ in 0..<3 {
                let message = randomBytes(40)
                let signature = try token.sign(digest: Array(SHA256.hash(data: message)), algorithm: .ES256, key: key)
                #expect(try IndependentVerifier.swiftCrypto(signature, message: message, algorithm: .ES256, key: try #require(key.publicKey)))
            }
        }
    }
}

@Suite("Mechanism selection")
struct MechanismSelectionTests {
    @Test func pathsFollowWhatTheTokenOffers() {
        func info(_ type: MechanismType, sign: Bool = true) -> MechanismInfo {
            MechanismInfo(type: type, minKeySize: 1024, maxKeySize: 4096, flags: sign ? CK_FLAGS(CKF_SIGN) : 0)
        }
        let full = MechanismSet([info(.rsaPKCS), info(.rsaPKCSPSS), info(.rsaX509), info(.ecdsa)])
        #expect(full.path(for: .PS256, keyBits: 2048) == .rsaPSS)
        #expect(full.path(for: .RS512, keyBits: 2048) == .rsaPKCS1)
        #expect(full.path(for: .PS256, keyBits: 8192) == nil, "outside the token's key-size range")
        let noPSS = MechanismSet([info(.rsaPKCS), info(.rsaX509)])
        #expect(noPSS.path(for: .PS384, keyBits: 3072) == .rsaPSSOverX509)
        let verifyOnly = MechanismSet([info(.rsaPKCS, sign: false), info(.ecdsa, sign: false)])
        #expect(verifyOnly.path(for: .RS256) == nil)
        #expect(verifyOnly.path(for: .ES256) == nil)
    }
}

/// Async callers of the certificate builder reach the signer's async `sign` (a token key's runs
/// on the token executor), never the blocking one; the certificate verifies with openssl.
@Suite("Certificates signed asynchronously")
struct AsyncCertificateTests {
    final class Counting: JWSSigner, @unchecked Sendable {
        let inner: ReferenceSigner
        let lock = NSLock()
        var syncCalls = 0
        var asyncCalls = 0
        init(_ inner: ReferenceSigner) { self.inner = inner }
        var keyType: JWSKeyType { inner.keyType }
        var publicKey: Certificate.PublicKey? { inner.publicKey }
        var certificateChain: [JWSCertificate] { inner.certificateChain }
        func canSign(_ algorithm: JWSAlgorithm) -> Bool { inner.canSign(algorithm) }
        func sign(digest: [UInt8], algorithm: JWSAlgorithm) throws -> [UInt8] {
            lock.withLock { syncCalls += 1 }
            return try inner.sign(digest: digest, algorithm: algorithm)
        }
        func sign(digest: [UInt8], algorithm: JWSAlgorithm) async throws -> [UInt8] {
            lock.withLock { asyncCalls += 1 }
            let signNow = { try self.inner.sign(digest: digest, algorithm: algorithm) }
            return try signNow()
        }
    }

    @Test(arguments: [JWSKeyType.rsa(bits: 2048), .ec(.p256)])
    func selfSignedAwaitsTheSigner(_ type: JWSKeyType) async throws {
        let signer = Counting(try ReferenceSigner.make(type))
        let certificate = try await TokenCertificates.selfSigned(
            signer: signer, subject: try TokenCertificates.distinguishedName("CN=async"), days: 2)
        #expect(signer.asyncCalls == 1 && signer.syncCalls == 0)
        let dir = TemporaryDirectory("p11jwt-async-cert")
        let pem = dir.file("c.pem")
        try certificate.pem.write(toFile: pem, atomically: true, encoding: .utf8)
        let verified = try run("openssl", ["verify", "-CAfile", pem, pem])
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
    }
}
