import CP11Kit
import Crypto
import Foundation
import SwiftASN1
import X509

// Finding, pairing, storing, relabelling and destroying objects.

extension Token {
    func identity(_ session: Session, _ handle: CK_OBJECT_HANDLE, _ values: AttributeValues, _ objectClass: ObjectClass) -> ObjectIdentity {
        let label = values.string(CKA_LABEL).flatMap { $0.isEmpty ? nil : $0 }
        let id = values[CKA_ID].flatMap { $0.isEmpty ? nil : $0 }
        return ObjectIdentity(
            handle: handle, objectClass: objectClass, label: label, id: id,
            uri: objectURI(label: label, id: id, objectClass: objectClass))
    }

    private func template(_ uri: PKCS11URI?, _ objectClass: ObjectClass) -> [Attribute] {
        var template: [Attribute] = [.objectClass(objectClass)]
        if let label = uri?.objectLabel { template.append(.label(label)) }
        if let id = uri?.objectID { template.append(.id(id)) }
        return template
    }

    /// Private keys selected by the URI's `object` / `id` (all when it has neither).
    public func privateKeys(matching uri: PKCS11URI? = nil) throws -> [PrivateKeyObject] {
        try withPrimary { session in
            try session.findObjects(template(uri, .privateKey)).map { try privateKey(session, $0) }
        }
    }

    /// Private keys with this attribute value.
    func privateKeys(with attribute: Attribute) throws -> [PrivateKeyObject] {
        try withPrimary { session in
            try session.findObjects([.objectClass(.privateKey), attribute]).map { try privateKey(session, $0) }
        }
    }

    /// `findingECPoint`: an EC key's point is looked up in its public key object (a search).
    func privateKey(_ session: Session, _ handle: CK_OBJECT_HANDLE, findingECPoint: Bool = true) throws -> PrivateKeyObject {
        let v = try session.attributes(handle, [
            CKA_LABEL, CKA_ID, CKA_KEY_TYPE, CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS, CKA_SIGN,
            CKA_ALWAYS_AUTHENTICATE, CKA_SENSITIVE, CKA_EXTRACTABLE,
        ])
        let identity = identity(session, handle, v, .privateKey)
        let keyType = KeyType(rawValue: v.ulong(CKA_KEY_TYPE) ?? CK_KEY_TYPE(bitPattern: -1))
        var publicKey: PublicKey?
        var curve: ECCurve?
        var bits: Int?
        if keyType == .rsa, let n = v[CKA_MODULUS], let e = v[CKA_PUBLIC_EXPONENT] {
            publicKey = .rsa(modulus: n, exponent: e)
            bits = publicKey?.bits
        } else if keyType == .ec {
            curve = v[CKA_EC_PARAMS].flatMap { ECCurve(ecParameters: $0) }
            // PKCS#11 private EC keys carry no point: take it from the public key object.
            if findingECPoint, let curve, let id = identity.id {
                let pubs = try session.findObjects([.objectClass(.publicKey), .id(id)])
                for pub in pubs {
                    let pv = try session.attributes(pub, [CKA_EC_POINT, CKA_EC_PARAMS])
                    if pv[CKA_EC_PARAMS] == curve.ecParameters, let raw = pv[CKA_EC_POINT],
                       let point = PublicKey.ecPoint(raw, curve: curve) {
                        publicKey = .ec(curve: curve, point: point)
                        break
                    }
                }
            }
        }
        return PrivateKeyObject(
            identity: identity, keyType: keyType, publicKey: publicKey, curve: curve, modulusBits: bits,
            canSign: v.bool(CKA_SIGN) ?? false, alwaysAuthenticate: v.bool(CKA_ALWAYS_AUTHENTICATE) ?? false,
            sensitive: v.bool(CKA_SENSITIVE) ?? true, extractable: v.bool(CKA_EXTRACTABLE) ?? false)
    }

    /// Key objects with neither a label nor a `CKA_ID`: what an interrupted key generation can
    /// leave. Found by one search for an empty `CKA_LABEL` and `CKA_ID` (both default to empty
    /// for keys), so only those objects are read; a module that refuses such a search is
    /// scanned instead.
    public func keysWithoutLabelOrID() throws -> (privateKeys: [PrivateKeyObject], publicKeys: [PublicKeyObject]) {
        func anonymous(_ identity: ObjectIdentity) -> Bool { (identity.label ?? "").isEmpty && (identity.id ?? []).isEmpty }
        do {
            let (privateKeys, publicKeys) = try withPrimary { session in
                var found: ([PrivateKeyObject], [PublicKeyObject]) = ([], [])
                for handle in try session.findObjects([.label(""), .id([])]) {
                    switch ObjectClass(rawValue: try session.attributes(handle, [CKA_CLASS]).ulong(CKA_CLASS) ?? 0) {
                    case .privateKey: found.0.append(try privateKey(session, handle))
                    case .publicKey: found.1.append(try publicKey(session, handle))
                    default: break
                    }
                }
                return found
            }
            return (privateKeys.filter { anonymous($0.identity) }, publicKeys.filter { anonymous($0.identity) })
        } catch let error as PKCS11Error where error.function == "C_FindObjectsInit" {
            let all = try PKCS11URI("pkcs11:")
            return (try privateKeys(matching: all).filter { anonymous($0.identity) },
                    try publicKeys(matching: all).filter { anonymous($0.identity) })
        }
    }

    /// Public key objects selected by the URI.
    public func publicKeys(matching uri: PKCS11URI? = nil) throws -> [PublicKeyObject] {
        try withPrimary { session in
            try session.findObjects(template(uri, .publicKey)).map { try publicKey(session, $0) }
        }
    }

    func publicKey(_ session: Session, _ handle: CK_OBJECT_HANDLE) throws -> PublicKeyObject {
        let v = try session.attributes(handle, [
            CKA_LABEL, CKA_ID, CKA_KEY_TYPE, CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS, CKA_EC_POINT,
        ])
        var publicKey: PublicKey?
        let keyType = KeyType(rawValue: v.ulong(CKA_KEY_TYPE) ?? 0)
        if keyType == .rsa, let n = v[CKA_MODULUS], let e = v[CKA_PUBLIC_EXPONENT] {
            publicKey = .rsa(modulus: n, exponent: e)
        } else if keyType == .ec, let curve = v[CKA_EC_PARAMS].flatMap({ ECCurve(ecParameters: $0) }),
                  let point = v[CKA_EC_POINT].flatMap({ PublicKey.ecPoint($0, curve: curve) }) {
            publicKey = .ec(curve: curve, point: point)
        }
        return PublicKeyObject(identity: identity(session, handle, v, .publicKey), publicKey: publicKey)
    }

    /// X.509 certificate objects selected by the URI.
    public func certificates(matching uri: PKCS11URI? = nil) throws -> [CertificateObject] {
        try withPrimary { session in
            var t = template(uri, .certificate)
            t.append(.ulong(CKA_CERTIFICATE_TYPE, CK_CERTIFICATE_TYPE(CKC_X_509)))
            return try session.findObjects(t).map { handle in
                let v = try session.attributes(handle, [CKA_LABEL, CKA_ID, CKA_VALUE])
                let der = v[CKA_VALUE] ?? []
                return CertificateObject(
                    identity: identity(session, handle, v, .certificate), der: der,
                    certificate: try? Certificate(derEncoded: der))
            }
        }
    }

    /// How long a lookup by label that finds no key or several waits before looking once more:
    /// a rotation moves a label from one key to another in two writes, which no token makes atomic.
    public static let labelSettleTime: TimeInterval = 0.25

    /// The one private key the URI selects. Zero or several matches are errors that say what
    /// was seen (a URI that selects by label without `id=` is looked up once more after
    /// ``labelSettleTime`` first).
    public func signingKey(_ uri: PKCS11URI) throws -> PrivateKeyObject {
        var keys = try privateKeys(matching: uri)
        if keys.count != 1 && uri.objectLabel != nil && uri.objectID == nil {
            Thread.sleep(forTimeInterval: Self.labelSettleTime)
            keys = try privateKeys(matching: uri)
        }
        if keys.count == 1 { return keys[0] }
        if keys.isEmpty {
            let all = (try? privateKeys()) ?? []
            var hint = all.isEmpty
                ? "the token shows no private keys" + (isLoggedIn ? "" : " (not logged in: private keys are hidden until you log in)")
                : "private keys on this token:\n" + all.map { "  \($0.uri)" }.joined(separator: "\n")
            if !uri.selectsObject { hint = "the URI names no object: add object=LABEL or id=… — " + hint }
            throw PKCS11Error(.objectNotFound, "no private key matches \(uri.redacted) on token '\(info.label)'", hint: hint)
        }
        throw PKCS11Error(
            .objectAmbiguous, "\(keys.count) private keys match \(uri.redacted) on token '\(info.label)'",
            hint: "use one of these URIs:\n" + keys.map { "  \($0.uri)" }.joined(separator: "\n"))
    }

    /// The one certificate the URI selects. Zero or several matches are errors that say what
    /// was seen.
    public func certificate(matching uri: PKCS11URI) throws -> CertificateObject {
        let found = try certificates(matching: uri)
        if found.count == 1 { return found[0] }
        if found.isEmpty {
            throw PKCS11Error(
                .objectNotFound, "no certificate matches \(uri.redacted) on token '\(info.label)'",
                hint: "the object listing of token '\(info.label)' shows its certificates")
        }
        throw PKCS11Error(
            .objectAmbiguous, "\(found.count) certificates match \(uri.redacted) on token '\(info.label)'",
            hint: "use one of these URIs:\n" + found.map { "  \($0.uri)" }.joined(separator: "\n"))
    }

    /// The certificate stored with a key: same `CKA_ID`, else same label.
    public func certificate(for key: PrivateKeyObject) throws -> CertificateObject? {
        Self.certificate(for: key, in: try certificates())
    }

    /// The certificate for `key` among `certificates` already read from the token.
    public static func certificate(for key: PrivateKeyObject, in certificates: [CertificateObject]) -> CertificateObject? {
        if let id = key.id, let match = certificates.first(where: { $0.id == id }) { return match }
        if let label = key.label, let match = certificates.first(where: { $0.label == label }) { return match }
        return nil
    }

    /// Whether the certificate is this key's. EC keys whose point the token does not expose are
    /// checked by a test signature verified with the certificate's key.
    public func pairing(_ key: PrivateKeyObject, _ cert: CertificateObject?) -> Pairing {
        guard let cert else { return .noCertificate }
        guard let certificate = cert.certificate else { return .mismatch }
        return isKey(key, publicKey: certificate.publicKey) ? .matches : .mismatch
    }

    /// Whether `publicKey` is the public half of `key`. An EC key whose point the token does
    /// not expose is checked by signing a random digest (`CKM_ECDSA`) and verifying it with
    /// `publicKey` (needs a login).
    public func isKey(_ key: PrivateKeyObject, publicKey: Certificate.PublicKey) -> Bool {
        if let own = key.publicKey {
            return (try? own.certificatePublicKey()) == publicKey
        }
        guard key.keyType == .ec, let curve = key.curve, isLoggedIn else { return false }
        let message = Array("p11jwt key/certificate pairing check".utf8) + Self.randomID()
        switch curve {
        case .p256:
            guard let verifier = P256.Signing.PublicKey(publicKey),
                  let raw = try? sign(Array(SHA256.hash(data: message)), mechanism: .ecdsa, key: key),
                  let signature = try? P256.Signing.ECDSASignature(rawRepresentation: raw) else { return false }
            return verifier.isValidSignature(signature, for: SHA256.hash(data: message))
        case .p384:
            guard let verifier = P384.Signing.PublicKey(publicKey),
                  let raw = try? sign(Array(SHA384.hash(data: message)), mechanism: .ecdsa, key: key),
                  let signature = try? P384.Signing.ECDSASignature(rawRepresentation: raw) else { return false }
            return verifier.isValidSignature(signature, for: SHA384.hash(data: message))
        case .p521:
            guard let verifier = P521.Signing.PublicKey(publicKey),
                  let raw = try? sign(Array(SHA512.hash(data: message)), mechanism: .ecdsa, key: key),
                  let signature = try? P521.Signing.ECDSASignature(rawRepresentation: raw) else { return false }
            return verifier.isValidSignature(signature, for: SHA512.hash(data: message))
        }
    }

    /// Refuses a certificate that is not the key's.
    public func requireMatch(_ key: PrivateKeyObject, _ cert: CertificateObject) throws {
        guard pairing(key, cert) == .matches else {
            throw PKCS11Error(
                .certificateMismatch,
                "certificate \(cert.uri) does not belong to key \(key.uri): its public key is a different key",
                hint: "store the key's own certificate with the key's CKA_ID, or give the right one", settings: ["cert"])
        }
    }


    /// Stores an X.509 certificate (`CKO_CERTIFICATE`, `CKC_X_509`) with the key's `CKA_ID`.
    public func storeCertificate(der: [UInt8], label: String, id: [UInt8]) throws -> CertificateObject {
        let certificate: Certificate
        do {
            certificate = try Certificate(derEncoded: der)
        } catch {
            throw PKCS11Error(.invalidArgument, "not an X.509 certificate: \(error)", cause: error)
        }
        var subject = DER.Serializer()
        try subject.serialize(certificate.subject)
        var issuer = DER.Serializer()
        try issuer.serialize(certificate.issuer)
        var serial = DER.Serializer()
        try serial.serialize(certificate.serialNumber.bytes)
        let template: [Attribute] = [
            .objectClass(.certificate), .ulong(CKA_CERTIFICATE_TYPE, CK_CERTIFICATE_TYPE(CKC_X_509)),
            .token(true), .bool(CKA_PRIVATE, false), .label(label), .id(id),
            Attribute(CKA_VALUE, bytes: der), Attribute(CKA_SUBJECT, bytes: subject.serializedBytes),
            Attribute(CKA_ISSUER, bytes: issuer.serializedBytes),
            Attribute(CKA_SERIAL_NUMBER, bytes: serial.serializedBytes),
        ]
        let handle = try withPrimary(writing: true) { try $0.createObject(template) }
        return CertificateObject(
            identity: ObjectIdentity(
                handle: handle, objectClass: .certificate, label: label, id: id,
                uri: objectURI(label: label, id: id, objectClass: .certificate)),
            der: der, certificate: certificate)
    }

    /// Every object the URI selects (any class), for `destroy`.
    public func objects(matching uri: PKCS11URI) throws -> [ObjectIdentity] {
        var template: [Attribute] = []
        if let label = uri.objectLabel { template.append(.label(label)) }
        if let id = uri.objectID { template.append(.id(id)) }
        if let cls = uri.objectClass { template.append(.objectClass(cls)) }
        return try withPrimary { session in
            try session.findObjects(template).map { handle in
                let v = try session.attributes(handle, [CKA_LABEL, CKA_ID, CKA_CLASS])
                let cls = ObjectClass(rawValue: v.ulong(CKA_CLASS) ?? 0)
                return identity(session, handle, v, cls)
            }
        }
    }

    /// Sets the label of objects (`C_SetAttributeValue` of `CKA_LABEL`): `rotate` relabels a
    /// retired key and its certificate, and gives the new key the label the old one had.
    public func relabel(_ objects: [ObjectIdentity], to label: String) throws {
        guard !label.isEmpty else { throw PKCS11Error(.invalidArgument, "an empty label") }
        try withPrimary(writing: true) { session in
            for object in objects { try session.setAttributes(object.handle, [.label(label)]) }
        }
        logger.info("relabelled objects", metadata: ["count": "\(objects.count)", "label": "\(label)"])
    }

    /// Destroys objects (`C_DestroyObject`).
    public func destroy(_ objects: [ObjectIdentity]) throws {
        try withPrimary(writing: true) { session in
            for object in objects { try session.destroyObject(object.handle) }
        }
    }
}
