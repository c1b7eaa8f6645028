import CP11Kit
import Foundation
import SwiftASN1

/// A software private key about to move into a token (from a PFX being migrated), parsed from
/// its traditional DER: the components a `CKO_PRIVATE_KEY` template needs.
public struct PrivateKeyMaterial: Sendable {
    enum Components: Sendable {
        case rsa(modulus: [UInt8], publicExponent: [UInt8], privateExponent: [UInt8], prime1: [UInt8], prime2: [UInt8],
                 exponent1: [UInt8], exponent2: [UInt8], coefficient: [UInt8])
        case ec(curve: ECCurve, privateValue: [UInt8], publicPoint: [UInt8])
    }

    let components: Components

    /// `der`: PKCS#1 `RSAPrivateKey` or SEC 1 `ECPrivateKey` (what OpenSSL's i2d_PrivateKey
    /// writes); `publicPoint` is needed when the EC key does not carry its public key.
    public init(traditionalDER der: [UInt8], ecPublicPoint: [UInt8]? = nil) throws {
        do {
            let root = try DER.parse(der)
            components = try DER.sequence(root, identifier: .sequence) { nodes -> Components in
                let version = try Int(derEncoded: &nodes)
                if version == 0 {
                    // RSAPrivateKey ::= SEQUENCE { version, modulus, publicExponent, privateExponent,
                    //   prime1, prime2, exponent1, exponent2, coefficient }   (RFC 8017 A.1.2)
                    func integer() throws -> [UInt8] {
                        let bytes = try ArraySlice<UInt8>(derEncoded: &nodes)
                        return Array(bytes.drop(while: { $0 == 0 }))
                    }
                    return .rsa(
                        modulus: try integer(), publicExponent: try integer(), privateExponent: try integer(), prime1: try integer(),
                        prime2: try integer(), exponent1: try integer(), exponent2: try integer(), coefficient: try integer())
                }
                // ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING,
                //   parameters [0] ECParameters OPTIONAL, publicKey [1] BIT STRING OPTIONAL }   (RFC 5915)
                guard version == 1 else { throw PKCS11Error(.invalidArgument, "unknown private key version \(version)") }
                let privateValue = try ASN1OctetString(derEncoded: &nodes)
                let oid = try DER.optionalExplicitlyTagged(&nodes, tagNumber: 0, tagClass: .contextSpecific) { try ASN1ObjectIdentifier(derEncoded: $0) }
                let point = try DER.optionalExplicitlyTagged(&nodes, tagNumber: 1, tagClass: .contextSpecific) { try ASN1BitString(derEncoded: $0) }
                guard let oid else { throw PKCS11Error(.invalidArgument, "the EC private key names no curve") }
                var serializer = DER.Serializer()
                try serializer.serialize(oid)
                guard let curve = ECCurve(ecParameters: serializer.serializedBytes) else {
                    throw PKCS11Error(.invalidArgument, "the EC key's curve \(oid) is not P-256, P-384 or P-521")
                }
                guard let publicPoint = point.map({ Array($0.bytes) }) ?? ecPublicPoint else {
                    throw PKCS11Error(.invalidArgument, "the EC private key carries no public key")
                }
                return .ec(curve: curve, privateValue: Array(privateValue.bytes), publicPoint: publicPoint)
            }
        } catch let error as PKCS11Error {
            throw error
        } catch {
            throw PKCS11Error(.invalidArgument, "not a PKCS#1 RSA or SEC 1 EC private key: \(error)", cause: error)
        }
    }
}

extension Token {
    /// Creates a private key on the token from software key material, marked sensitive and not
    /// extractable (so it can never leave again), with its public key object, both labelled
    /// `label` with `id`.
    public func importPrivateKey(_ material: PrivateKeyMaterial, label: String, id: [UInt8]) throws -> PrivateKeyObject {
        guard !label.isEmpty else { throw PKCS11Error(.invalidArgument, "an imported key needs a label", settings: ["label"]) }
        if let clash = try privateKeys().first(where: { $0.label == label || $0.id == id }) {
            throw PKCS11Error(
                .invalidArgument, "token '\(info.label)' already has a private key with this \(clash.label == label ? "label" : "id"): \(clash.uri)",
                hint: "choose another label", settings: ["label"])
        }
        var privateTemplate: [Attribute] = [
            .objectClass(.privateKey), .token(true), .bool(CKA_PRIVATE, true), .bool(CKA_SENSITIVE, true),
            .bool(CKA_EXTRACTABLE, false), .bool(CKA_SIGN, true), .label(label), .id(id),
        ]
        var publicTemplate: [Attribute] = [.objectClass(.publicKey), .token(true), .bool(CKA_VERIFY, true), .label(label), .id(id)]
        switch material.components {
        case let .rsa(n, e, d, p, q, dp, dq, qinv):
            privateTemplate += [
                .keyType(.rsa), Attribute(CKA_MODULUS, bytes: n), Attribute(CKA_PUBLIC_EXPONENT, bytes: e),
                Attribute(CKA_PRIVATE_EXPONENT, bytes: d), Attribute(CKA_PRIME_1, bytes: p), Attribute(CKA_PRIME_2, bytes: q),
                Attribute(CKA_EXPONENT_1, bytes: dp), Attribute(CKA_EXPONENT_2, bytes: dq), Attribute(CKA_COEFFICIENT, bytes: qinv),
            ]
            publicTemplate += [.keyType(.rsa), Attribute(CKA_MODULUS, bytes: n), Attribute(CKA_PUBLIC_EXPONENT, bytes: e)]
        case let .ec(curve, value, point):
            var wrappedPoint = DER.Serializer()
            try wrappedPoint.serialize(ASN1OctetString(contentBytes: point[...]))
            privateTemplate += [.keyType(.ec), Attribute(CKA_EC_PARAMS, bytes: curve.ecParameters), Attribute(CKA_VALUE, bytes: value)]
            // CKA_EC_POINT is the DER OCTET STRING of the uncompressed point.
            publicTemplate += [
                .keyType(.ec), Attribute(CKA_EC_PARAMS, bytes: curve.ecParameters),
                Attribute(CKA_EC_POINT, bytes: wrappedPoint.serializedBytes),
            ]
        }
        defer { for i in privateTemplate.indices { privateTemplate[i].value.withUnsafeMutableBufferPointer { $0.initialize(repeating: 0) } } }
        let handle = try withPrimary(writing: true) { session -> CK_OBJECT_HANDLE in
            let handle = try session.createObject(privateTemplate)
            _ = try session.createObject(publicTemplate)
            return handle
        }
        logger.info("imported a private key", metadata: ["label": "\(label)"])
        return try withPrimary { try privateKey($0, handle) }
    }
}
