import Crypto
import _CryptoExtras
import Foundation
import JOSE
import PKCS11
import TokenSigning
import Testing

/// Independent verification of token signatures: swift-crypto, and the `openssl` CLI.
/// Neither goes through the code under test (keys are rebuilt from the raw modulus / point).
public enum IndependentVerifier {
    /// PEM of the public key, built by swift-crypto from the raw key material.
    public static func publicKeyPEM(_ key: PublicKey) throws -> String {
        switch key {
        case .rsa(let n, let e): return try _RSA.Signing.PublicKey(n: n, e: e).pemRepresentation
        case .ec(.p256, let point): return try P256.Signing.PublicKey(x963Representation: point).pemRepresentation
        case .ec(.p384, let point): return try P384.Signing.PublicKey(x963Representation: point).pemRepresentation
        case .ec(.p521, let point): return try P521.Signing.PublicKey(x963Representation: point).pemRepresentation
        }
    }

    /// swift-crypto's verdict on `signature` over `message`.
    public static func swiftCrypto(_ signature: [UInt8], message: [UInt8], algorithm: JWSAlgorithm, key: PublicKey) throws -> Bool {
        switch (algorithm, key) {
        case (.RS256, .rsa(let n, let e)), (.PS256, .rsa(let n, let e)):
            let k = try _RSA.Signing.PublicKey(n: n, e: e)
            return k.isValidSignature(.init(rawRepresentation: signature), for: SHA256.hash(data: message), padding: algorithm == .RS256 ? .insecurePKCS1v1_5 : .PSS)
        case (.RS384, .rsa(let n, let e)), (.PS384, .rsa(let n, let e)):
            let k = try _RSA.Signing.PublicKey(n: n, e: e)
            return k.isValidSignature(.init(rawRepresentation: signature), for: SHA384.hash(data: message), padding: algorithm == .RS384 ? .insecurePKCS1v1_5 : .PSS)
        case (.RS512, .rsa(let n, let e)), (.PS512, .rsa(let n, let e)):
            let k = try _RSA.Signing.PublicKey(n: n, e: e)
            return k.isValidSignature(.init(rawRepresentation: signature), for: SHA512.hash(data: message), padding: algorithm == .RS512 ? .insecurePKCS1v1_5 : .PSS)
        case (.ES256, .ec(.p256, let point)):
            return try P256.Signing.PublicKey(x963Representation: point)
                .isValidSignature(.init(rawRepresentation: signature), for: SHA256.hash(data: message))
        case (.ES384, .ec(.p384, let point)):
            return try P384.Signing.PublicKey(x963Representation: point)
                .isValidSignature(.init(rawRepresentation: signature), for: SHA384.hash(data: message))
        case (.ES512, .ec(.p521, let point)):
            return try P521.Signing.PublicKey(x963Representation: point)
                .isValidSignature(.init(rawRepresentation: signature), for: SHA512.hash(data: message))
        default:
            Issue.record("no verifier for \(algorithm) with \(key)")
            return false
        }
    }

    /// `openssl pkeyutl -verify` over the digest of `message`.
    public static func openssl(_ signature: [UInt8], message: [UInt8], algorithm: JWSAlgorithm, publicKeyPEM: String) throws -> Bool {
        let dir = TemporaryDirectory("p11jwt-openssl")
        let pub = try dir.write("pub.pem", publicKeyPEM)
        let digestPath = dir.file("digest")
        let sigPath = dir.file("sig")
        let hashName: String
        let digest: [UInt8]
        switch algorithm.hash {
        case .sha256: hashName = "sha256"; digest = Array(SHA256.hash(data: message))
        case .sha384: hashName = "sha384"; digest = Array(SHA384.hash(data: message))
        case .sha512: hashName = "sha512"; digest = Array(SHA512.hash(data: message))
        }
        var sig = signature
        switch algorithm.curve {
        case .p256: sig = Array(try P256.Signing.ECDSASignature(rawRepresentation: signature).derRepresentation)
        case .p384: sig = Array(try P384.Signing.ECDSASignature(rawRepresentation: signature).derRepresentation)
        case .p521: sig = Array(try P521.Signing.ECDSASignature(rawRepresentation: signature).derRepresentation)
        case nil: break
        }
        _ = FileManager.default.createFile(atPath: digestPath, contents: Data(digest))
        _ = FileManager.default.createFile(atPath: sigPath, contents: Data(sig))
        var args = ["pkeyutl", "-verify", "-pubin", "-inkey", pub, "-in", digestPath, "-sigfile", sigPath, "-pkeyopt", "digest:\(hashName)"]
        if algorithm.family == .rsaPSS {
            args += ["-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:\(algorithm.digestLength)"]
        }
        let result = try run("openssl", args)
        return result.status == 0 && result.stdout.contains("Signature Verified Successfully")
    }
}

/// Random bytes for messages.
public func randomBytes(_ count: Int) -> [UInt8] {
    var rng = SystemRandomNumberGenerator()
    return (0..<count).map { _ in rng.next() }
}

public func base64url(_ bytes: [UInt8]) -> String {
    Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
        .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
}

public func unbase64url(_ text: String) -> [UInt8]? {
    var s = text.trimmingCharacters(in: .whitespacesAndNewlines)
        .replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
    s += String(repeating: "=", count: (4 - s.count % 4) % 4)
    return Data(base64Encoded: s).map { [UInt8]($0) }
}

/// Parses a compact JWS with Foundation only: the independent reading of what JOSE built.
public func independentlyParse(_ compact: String) throws -> (header: [String: Any], claims: [String: Any], signingInput: [UInt8], signature: [UInt8]) {
    let parts = compact.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
    try #require(parts.count == 3)
    #expect(!compact.contains("="), "JWS base64url has no padding")
    let decoded = try parts.map { try #require(unbase64url($0), "not base64url: \($0)") }
    let header = try #require(JSONSerialization.jsonObject(with: Data(decoded[0])) as? [String: Any])
    let claims = try #require(JSONSerialization.jsonObject(with: Data(decoded[1])) as? [String: Any])
    return (header, claims, Array("\(parts[0]).\(parts[1])".utf8), decoded[2])
}
