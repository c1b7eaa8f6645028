import Crypto
import DurableFiles
import Foundation
import JOSE
import _CryptoExtras

/// The emulator's own RSA key, which signs the access tokens it issues (`signing-key.pem`,
/// 0600, made at first start), and its JWKS entry.
public struct EmulatorSigningKey: Sendable {
    let privateKey: _RSA.Signing.PrivateKey
    public let kid: String

    public static func loadOrCreate(in store: StateStore) throws -> EmulatorSigningKey {
        let url = store.directory.appendingPathComponent("signing-key.pem")
        let key: _RSA.Signing.PrivateKey
        if let data = FileManager.default.contents(atPath: url.path) {
            key = try _RSA.Signing.PrivateKey(pemRepresentation: String(decoding: data, as: UTF8.self))
        } else {
            key = try _RSA.Signing.PrivateKey(keySize: .bits2048)
            try DurableFile.writeAtomically(Data(key.pemRepresentation.utf8), to: url, mode: 0o600)
        }
        return EmulatorSigningKey(privateKey: key)
    }

    init(privateKey: _RSA.Signing.PrivateKey) {
        self.privateKey = privateKey
        self.kid = Base64URL.encode(Array(SHA256.hash(data: privateKey.publicKey.derRepresentation)).prefix(20))
    }

    /// An RS256 JWT with these claims.
    func sign(claims: JSONObject) throws -> String {
        let header = JSONObject(["typ": "JWT", "alg": "RS256", "kid": .string(kid)])
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

    /// The JWKS entry.
    func jwk() throws -> JSONObject {
        let components = try privateKey.publicKey.getKeyPrimitives()
        return JSONObject([
            "kty": "RSA", "use": "sig", "kid": .string(kid), "alg": "RS256",
            "n": .string(Base64URL.encode(Array(components.modulus))), "e": .string(Base64URL.encode(Array(components.publicExponent))),
        ])
    }
}
