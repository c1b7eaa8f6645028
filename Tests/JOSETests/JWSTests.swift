import Crypto
import _CryptoExtras
import Foundation
import JOSE
import SwiftASN1
import Testing
import TestSupport
import X509

/// swift-crypto's verdict, written out per algorithm (not through JWSVerifier).
func swiftCryptoVerifies(_ signature: [UInt8], _ message: [UInt8], _ algorithm: JWSAlgorithm, _ key: ReferenceSigner.Key) throws -> Bool {
    switch (key, algorithm.hash) {
    case (.rsa(let k), .sha256):
        return k.publicKey.isValidSignature(.init(rawRepresentation: signature), for: SHA256.hash(data: message), padding: algorithm.family == .rsaPSS ? .PSS : .insecurePKCS1v1_5)
    case (.rsa(let k), .sha384):
        return k.publicKey.isValidSignature(.init(rawRepresentation: signature), for: SHA384.hash(data: message), padding: algorithm.family == .rsaPSS ? .PSS : .insecurePKCS1v1_5)
    case (.rsa(let k), .sha512):
        return k.publicKey.isValidSignature(.init(rawRepresentation: signature), for: SHA512.hash(data: message), padding: algorithm.family == .rsaPSS ? .PSS : .insecurePKCS1v1_5)
    case (.p256(let k), _):
        return k.publicKey.isValidSignature(try .init(rawRepresentation: signature), for: SHA256.hash(data: message))
    case (.p384(let k), _):
        return k.publicKey.isValidSignature(try .init(rawRepresentation: signature), for: SHA384.hash(data: message))
    case (.p521(let k), _):
        return k.publicKey.isValidSignature(try .init(rawRepresentation: signature), for: SHA512.hash(data: message))
    }
}

@Suite("JWS compact tokens")
struct JWSTests {
    static let rsa = Result { try ReferenceSigner.make(.rsa(bits: 2048)) }

    static func signer(for algorithm: JWSAlgorithm) throws -> ReferenceSigner {
        switch algorithm.curve {
        case .p256?: return try ReferenceSigner.make(.ec(.p256))
        case .p384?: return try ReferenceSigner.make(.ec(.p384))
        case .p521?: return try ReferenceSigner.make(.ec(.p521))
        case nil: return try rsa.get()
        }
    }

    @Test(arguments: JWSAlgorithm.allCases)
    func everyAlgorithmSignsOnlyTheDigestAndVerifiesIndependently(_ algorithm: JWSAlgorithm) throws {
        let signer = try Self.signer(for: algorithm)
        let claims = JSONObject(["sub": "p11jwt", "n": .int(7), "nested": .object(JSONObject(["a": .array([true])]))])
        let header = try JWSHeaderFields(x5t: true, x5tS256: true, kid: .thumbprint).header(algorithm: algorithm, certificateChain: signer.certificateChain)
        let jws = try JWS.sign(header: header, claims: claims, signer: signer)
        let parsed = try independentlyParse(jws.compact)
        #expect(parsed.header["alg"] as? String == algorithm.rawValue)
        #expect(parsed.header["typ"] as? String == "JWT")
        #expect(parsed.claims["sub"] as? String == "p11jwt")
        // The signer saw exactly the hash of the signing input, nothing else.
        #expect(signer.digests.contains(algorithm.hash.hash(parsed.signingInput)))
        #expect(try swiftCryptoVerifies(parsed.signature, parsed.signingInput, algorithm, signer.key))
        if let curve = algorithm.curve { #expect(parsed.signature.count == 2 * curve.coordinateLength) }
        // A changed payload no longer verifies.
        var tampered = parsed.signingInput
        tampered[tampered.count - 1] ^= 1
        #expect(try !swiftCryptoVerifies(parsed.signature, tampered, algorithm, signer.key))
        // And JOSE's own parser agrees with Foundation's reading.
        let reparsed = try JWS(compact: jws.compact)
        #expect(reparsed.header == header)
        #expect(reparsed.claims == claims)
        #expect(reparsed.isValid(publicKey: signer.certificatePublicKey))
    }

    @Test(arguments: [JWSAlgorithm.RS256, .PS256, .ES256])
    func opensslVerifiesOverTheSigningInput(_ algorithm: JWSAlgorithm) throws {
        let signer = try Self.signer(for: algorithm)
        let header = try JWSHeaderFields().header(algorithm: algorithm, certificateChain: [])
        let jws = try JWS.sign(header: header, claims: JSONObject(["x": "y"]), signer: signer)
        let parsed = try independentlyParse(jws.compact)
        let dir = TemporaryDirectory()
        let pub = try dir.write("pub.pem", try signer.certificatePublicKey.serializeAsPEM().pemString)
        let input = dir.file("input"), sig = dir.file("sig")
        try Data(parsed.signingInput).write(to: URL(fileURLWithPath: input))
        var signature = parsed.signature
        if algorithm == .ES256 { signature = Array(try P256.Signing.ECDSASignature(rawRepresentation: signature).derRepresentation) }
        try Data(signature).write(to: URL(fileURLWithPath: sig))
        var args = ["dgst", "-sha256", "-verify", pub, "-signature", sig]
        if algorithm == .PS256 { args += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"] }
        let result = try run("openssl", args + [input])
        #expect(result.status == 0, "\(result.stdout) \(result.stderr)")
        #expect(result.stdout.contains("Verified OK"))
    }

    @Test func thumbprintsMatchOpenSSLFingerprints() throws {
        let signer = try Self.rsa.get()
        let cert = try #require(signer.certificate)
        let dir = TemporaryDirectory()
        let path = try dir.write("cert.pem", cert.pem)
        func fingerprint(_ digest: String) throws -> String {
            let r = try run("openssl", ["x509", "-in", path, "-noout", "-fingerprint", "-\(digest)"])
            return String(r.stdout.split(separator: "=").last!).trimmingCharacters(in: .whitespacesAndNewlines)
                .replacingOccurrences(of: ":", with: "")
        }
        let sha1 = try fingerprint("sha1"), sha256 = try fingerprint("sha256")
        #expect(cert.thumbprint.hexSHA1 == sha1)
        #expect(cert.thumbprint.hexSHA256 == sha256)
        #expect(unbase64url(cert.thumbprint.x5t).map { $0.map { String(format: "%02X", $0) }.joined() } == sha1)
        #expect(unbase64url(cert.thumbprint.x5tS256).map { $0.map { String(format: "%02X", $0) }.joined() } == sha256)
        #expect(cert.thumbprint.x5t.count == 27 && cert.thumbprint.x5tS256.count == 43)
    }

    @Test func headerMembersComeInOrderAndX5cIsStandardBase64DERLeafFirst() throws {
        let ca = P256.Signing.PrivateKey()
        let leafSigner = try ReferenceSigner.make(.ec(.p256))
        let leafDER = try TestCertificates.issue(
            publicKey: leafSigner.certificatePublicKey, subject: "CN=leaf", issuer: .ca(name: "CN=test ca", key: .init(ca)))
        let caDER = try TestCertificates.issue(
            publicKey: .init(ca.publicKey), subject: "CN=test ca", issuer: .selfSigned(.init(ca)), isCA: true)
        let chain = [try JWSCertificate(der: leafDER), try JWSCertificate(der: caDER)]
        let header = try JWSHeaderFields(x5t: true, x5tS256: true, kid: .value("my-kid"), x5c: true, extra: JSONObject(["cty": "x"]))
            .header(algorithm: .ES256, certificateChain: chain)
        #expect(header.keys == ["alg", "typ", "kid", "x5t", "x5t#S256", "x5c", "cty"])
        let x5c = try #require(header["x5c"]?.arrayValue)
        #expect(x5c.compactMap { $0.stringValue.flatMap { Data(base64Encoded: $0) }.map { [UInt8]($0) } } == [leafDER, caDER])
        #expect(header["x5t"]?.stringValue == chain[0].thumbprint.x5t)
        #expect(header["kid"] == "my-kid")
    }

    @Test func headerRefusesMissingCertificatesAndConflictingMembers() throws {
        let missing = #expect(throws: JOSEError.self) { try JWSHeaderFields(x5t: true).header(algorithm: .RS256, certificateChain: []) }
        #expect(missing?.code == .certificateMissing)
        #expect(missing?.hint?.contains("store the certificate") == true && missing?.settings == ["cert"])
        let conflict = #expect(throws: JOSEError.self) {
            try JWSHeaderFields(extra: JSONObject(["alg": "none"])).header(algorithm: .RS256, certificateChain: [])
        }
        #expect(conflict?.code == .invalidValue)
        #expect(conflict?.message.contains("\"alg\"") == true)
    }

    @Test func signRefusesAnAlgorithmTheKeyCannotMake() throws {
        let signer = try ReferenceSigner.make(.ec(.p256))
        let header = try JWSHeaderFields().header(algorithm: .RS256, certificateChain: [])
        let error = #expect(throws: JOSEError.self) { try JWS.sign(header: header, claims: JSONObject(), signer: signer) }
        #expect(error?.code == .unsupportedAlgorithm)
        #expect(signer.digests.isEmpty)
    }

    @Test(arguments: [
        ("a.b", "2 part(s)"),
        ("eyJhbGciOiJSUzI1NiJ9.e30=.AAAA", "padding"),
        ("eyJhbGciOiJSUzI1NiJ9.e30.AA+A", "not base64url"),
        ("WzFd.e30.AAAA", "not a JSON object"),
        ("e30.e30.AAAA", "no \"alg\""),
        ("a.b.c.d.e", "JWE"),
    ])
    func parsingRefusesMalformedTokens(_ token: String, _ expected: String) {
        let error = #expect(throws: JOSEError.self) { try JWS(compact: token) }
        #expect(error?.code == .malformed)
        #expect(error.map { $0.message.contains(expected) || ($0.hint ?? "").contains(expected) } == true, "\(String(describing: error))")
    }

    @Test func certificateFilesParseAsPEMChainsOrDER() throws {
        let signer = try Self.rsa.get()
        let cert = try #require(signer.certificate)
        let other = try #require(try ReferenceSigner.make(.ec(.p256)).certificate)
        let both = try JWSCertificate.all(fromPEMOrDER: Array((cert.pem + other.pem).utf8), source: "chain.pem")
        #expect(both.map(\.der) == [cert.der, other.der])
        #expect(try JWSCertificate.all(fromPEMOrDER: cert.der, source: "c.der").map(\.der) == [cert.der])
        let keyOnly = #expect(throws: JOSEError.self) {
            try JWSCertificate.all(fromPEMOrDER: Array(signer.privateKeyPEM.utf8), source: "key.pem")
        }
        #expect(keyOnly?.message.contains("no CERTIFICATE") == true)
        #expect(throws: JOSEError.self) { try JWSCertificate.all(fromPEMOrDER: [1, 2, 3], source: "junk") }
    }

    @Test func thumbprintMatchingAHeader() throws {
        let cert = try #require(try Self.rsa.get().certificate)
        let t = cert.thumbprint
        #expect(t.matches(header: JSONObject(["x5t#S256": .string(t.x5tS256)])))
        #expect(t.matches(header: JSONObject(["x5t": .string(t.x5t)])))
        #expect(t.matches(header: JSONObject(["kid": .string(t.hexSHA1.lowercased())])))
        #expect(!t.matches(header: JSONObject(["x5t": "AAAA"])))
        #expect(!t.matches(header: JSONObject(["alg": "RS256"])))
    }
}
