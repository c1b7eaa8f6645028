import Crypto
import DurableFiles
import Foundation
import JOSE
import SwiftASN1
import X509
import _CryptoExtras

/// The emulator's own RSA key, which signs the access tokens it issues (`signing-key.pem`,
/// 0600, made at first start), with a self-signed certificate for it (`signing-cert.pem`), so
/// that its JWKS entry carries `x5t` and `x5c` as Entra's do, and `kid` equals `x5t`.
public struct EmulatorSigningKey: Sendable {
    let privateKey: _RSA.Signing.PrivateKey
    let certificateDER: [UInt8]
    public let kid: String

    public static func loadOrCreate(in store: StateStore, now: Date = Date()) throws -> EmulatorSigningKey {
        let keyURL = store.directory.appendingPathComponent("signing-key.pem")
        let certURL = store.directory.appendingPathComponent("signing-cert.pem")
        let key: _RSA.Signing.PrivateKey
        if let data = FileManager.default.contents(atPath: keyURL.path) {
            key = try _RSA.Signing.PrivateKey(pemRepresentation: String(decoding: data, as: UTF8.self))
        } else {
            key = try _RSA.Signing.PrivateKey(keySize: .bits2048)
            try DurableFile.writeAtomically(Data(key.pemRepresentation.utf8), to: keyURL, mode: 0o600)
        }
        if let data = FileManager.default.contents(atPath: certURL.path),
           let certificate = try? Certificate(pemEncoded: String(decoding: data, as: UTF8.self)),
           certificate.publicKey == Certificate.PublicKey(key.publicKey) {
            var serializer = DER.Serializer()
            try serializer.serialize(certificate)
            return EmulatorSigningKey(privateKey: key, certificateDER: serializer.serializedBytes)
        }
        let name = try DistinguishedName { CommonName("entra-emulator token signing") }
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(5 * 365 * 86400),
            issuer: name, subject: name, signatureAlgorithm: .sha256WithRSAEncryption,
            extensions: try Certificate.Extensions { Critical(KeyUsage(digitalSignature: true)) },
            issuerPrivateKey: .init(key))
        try DurableFile.writeAtomically(Data(try certificate.serializeAsPEM().pemString.utf8), to: certURL, mode: 0o644)
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return EmulatorSigningKey(privateKey: key, certificateDER: serializer.serializedBytes)
    }

    init(privateKey: _RSA.Signing.PrivateKey, certificateDER: [UInt8]) {
        self.privateKey = privateKey
        self.certificateDER = certificateDER
        self.kid = Base64URL.encode(Thumbprint(der: certificateDER).sha1)
    }

    /// An RS256 JWT with these claims.
    func sign(claims: JSONObject) throws -> String {
        let header = JSONObject(["typ": "JWT", "alg": "RS256", "x5t": .string(kid), "kid": .string(kid)])
        return try JWS.sign(header: header, payload: Array(claims.serialized.utf8)) { input in
            Array(try privateKey.signature(for: SHA256.hash(data: input), padding: .insecurePKCS1v1_5).rawRepresentation)
        }.compact
    }

    /// Whether `jws` carries this key's valid RS256 signature.
    func verifies(_ jws: JWS) -> Bool {
        guard jws.header["alg"] == "RS256", jws.header["kid"]?.stringValue == kid else { return false }
        return privateKey.publicKey.isValidSignature(
            _RSA.Signing.RSASignature(rawRepresentation: jws.signature), for: SHA256.hash(data: Array(jws.signingInput.utf8)),
            padding: .insecurePKCS1v1_5)
    }

    /// The JWKS entry, as Entra publishes its keys (`issuer` only in the v2 key set).
    func jwk(issuer: String?) throws -> JSONObject {
        let components = try privateKey.publicKey.getKeyPrimitives()
        var jwk = JSONObject([
            "kty": "RSA", "use": "sig", "kid": .string(kid), "x5t": .string(kid),
            "n": .string(Base64URL.encode(Array(components.modulus))), "e": .string(Base64URL.encode(Array(components.publicExponent))),
            "x5c": .array([.string(Data(certificateDER).base64EncodedString())]),
        ])
        if let issuer { jwk["issuer"] = .string(issuer) }
        return jwk
    }
}
