import CP11Kit
import X509

/// Every object of a token, read in one pass at one moment: for a caller that looks up many
/// objects (a fleet rotation) instead of one search per lookup — each search costs time in
/// proportion to the objects on the token (SoftHSM re-reads each object's file). A snapshot:
/// objects made, changed or destroyed after it are not seen, so a lookup it cannot answer
/// exactly falls back to searching the token.
public struct TokenInventory: Sendable {
    public let privateKeys: [PrivateKeyObject]
    public let publicKeys: [PublicKeyObject]
    public let certificates: [CertificateObject]
    /// Objects of other classes (data objects, secret keys, …).
    public let others: [ObjectIdentity]

    /// Every object with this `CKA_ID`, of any class.
    public func objects(id: [UInt8]) -> [ObjectIdentity] {
        (privateKeys.map(\.identity) + publicKeys.map(\.identity) + certificates.map(\.identity) + others).filter { $0.id == id }
    }

    /// The one private key the URI's `object` / `id` select; nil for none or several (the
    /// token's own lookup then says which, with its hints).
    public func privateKey(_ uri: PKCS11URI) -> PrivateKeyObject? {
        guard uri.objectLabel != nil || uri.objectID != nil else { return nil }
        let matches = privateKeys.filter { key in
            (uri.objectLabel.map { $0 == key.label } ?? true) && (uri.objectID.map { $0 == key.id } ?? true)
        }
        return matches.count == 1 ? matches[0] : nil
    }

    /// Key objects with neither a label nor a `CKA_ID` (see ``Token/keysWithoutLabelOrID()``).
    public var keysWithoutLabelOrID: (privateKeys: [PrivateKeyObject], publicKeys: [PublicKeyObject]) {
        func anonymous(_ identity: ObjectIdentity) -> Bool { (identity.label ?? "").isEmpty && (identity.id ?? []).isEmpty }
        return (privateKeys.filter { anonymous($0.identity) }, publicKeys.filter { anonymous($0.identity) })
    }
}

extension Token {
    /// Reads every object the session can see (private objects only when logged in): one
    /// search, then each object's attributes.
    public func inventory() throws -> TokenInventory {
        try withPrimary { session in
            var privateKeys: [PrivateKeyObject] = []
            var publicKeys: [PublicKeyObject] = []
            var certificates: [CertificateObject] = []
            var others: [ObjectIdentity] = []
            for handle in try session.findObjects([]) {
                let v = try session.attributes(handle, [CKA_CLASS, CKA_CERTIFICATE_TYPE])
                let objectClass = ObjectClass(rawValue: v.ulong(CKA_CLASS) ?? CK_OBJECT_CLASS(bitPattern: -1))
                switch objectClass {
                case .privateKey:
                    privateKeys.append(try privateKey(session, handle, findingECPoint: false))
                case .publicKey:
                    publicKeys.append(try publicKey(session, handle))
                case .certificate where v.ulong(CKA_CERTIFICATE_TYPE) == CK_CERTIFICATE_TYPE(CKC_X_509):
                    let c = try session.attributes(handle, [CKA_LABEL, CKA_ID, CKA_VALUE])
                    let der = c[CKA_VALUE] ?? []
                    certificates.append(CertificateObject(
                        identity: identity(session, handle, c, .certificate), der: der, certificate: try? Certificate(derEncoded: der)))
                default:
                    let c = try session.attributes(handle, [CKA_LABEL, CKA_ID])
                    others.append(identity(session, handle, c, objectClass))
                }
            }
            // An EC private key carries no point: take it from its public key, as a lookup would.
            privateKeys = privateKeys.map { key in
                guard key.publicKey == nil, key.keyType == .ec, let curve = key.curve, let id = key.id,
                      let point = publicKeys.first(where: { $0.identity.id == id && $0.publicKey.map { if case .ec(curve, _) = $0 { true } else { false } } == true })?.publicKey
                else { return key }
                return PrivateKeyObject(
                    identity: key.identity, keyType: key.keyType, publicKey: point, curve: curve, modulusBits: key.modulusBits,
                    canSign: key.canSign, alwaysAuthenticate: key.alwaysAuthenticate, sensitive: key.sensitive, extractable: key.extractable)
            }
            return TokenInventory(privateKeys: privateKeys, publicKeys: publicKeys, certificates: certificates, others: others)
        }
    }
}
