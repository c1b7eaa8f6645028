import CP11Kit
import Foundation

// Key pairs made in the token.

extension Token {
    /// Key pair types `keygen` makes.
    public enum KeySpec: Sendable, Hashable, CustomStringConvertible {
        case rsa(bits: Int)
        case ec(ECCurve)

        /// `rsa:2048|rsa:3072|rsa:4096|ec:p256|ec:p384`.
        public init(_ text: String) throws {
            switch text.lowercased() {
            case "rsa:2048": self = .rsa(bits: 2048)
            case "rsa:3072": self = .rsa(bits: 3072)
            case "rsa:4096": self = .rsa(bits: 4096)
            case "ec:p256", "ec:p-256", "ec:prime256v1": self = .ec(.p256)
            case "ec:p384", "ec:p-384", "ec:secp384r1": self = .ec(.p384)
            case "ec:p521", "ec:p-521", "ec:secp521r1": self = .ec(.p521)
            default:
                throw PKCS11Error(
                    .invalidArgument, "unknown key type '\(text)'",
                    hint: "use rsa:2048, rsa:3072, rsa:4096, ec:p256, ec:p384 or ec:p521")
            }
        }

        public var description: String {
            switch self {
            case .rsa(let bits): return "rsa:\(bits)"
            case .ec(.p256): return "ec:p256"
            case .ec(.p384): return "ec:p384"
            case .ec(.p521): return "ec:p521"
            }
        }
    }

    /// Generates a key pair on the token: private key sensitive, never extractable, for signing.
    /// `id` defaults to 16 random bytes. Refuses a label or id another private key already has.
    public func generateKeyPair(_ spec: KeySpec, label: String, id: [UInt8]? = nil) throws -> PrivateKeyObject {
        try generateKeyPairObjects(spec, label: label, id: id).privateKey
    }

    /// ``generateKeyPair(_:label:id:)``, returning the public key object too (a caller that
    /// relabels or destroys the pair later needs no search for it). `freshID`: the caller drew
    /// `id` from a CSPRNG for this key, so no other key can have it and it is not searched for
    /// (an `id` left nil is drawn here and is fresh too).
    public func generateKeyPairObjects(
        _ spec: KeySpec, label: String, id: [UInt8]? = nil, freshID: Bool = false
    ) throws -> (privateKey: PrivateKeyObject, publicKey: ObjectIdentity) {
        guard !label.isEmpty else { throw PKCS11Error(.invalidArgument, "a key needs a label", settings: ["label"]) }
        let freshID = freshID || id == nil
        let id = id ?? Self.randomID()
        // Two searches by template, not a read of every key: on a token with many keys this
        // check would otherwise cost more than a fleet rotation's other token work.
        for (attribute, what) in [(Attribute.label(label), "label"), (.id(id), "id")] where what == "label" || !freshID {
            if let clash = try privateKeys(with: attribute).first {
                throw PKCS11Error(
                    .invalidArgument, "token '\(info.label)' already has a private key with this \(what): \(clash.uri)",
                    hint: "choose another label or id, or destroy the old key first", settings: ["label", "id"])
            }
        }
        let mechanism: MechanismType
        var publicTemplate: [Attribute] = [.token(true), .bool(CKA_VERIFY, true), .label(label), .id(id)]
        let privateTemplate: [Attribute] = [
            .token(true), .bool(CKA_PRIVATE, true), .bool(CKA_SENSITIVE, true), .bool(CKA_EXTRACTABLE, false),
            .bool(CKA_SIGN, true), .label(label), .id(id),
        ]
        switch spec {
        case .rsa(let bits):
            mechanism = .rsaPKCSKeyPairGen
            publicTemplate += [.ulong(CKA_MODULUS_BITS, CK_ULONG(bits)), Attribute(CKA_PUBLIC_EXPONENT, bytes: [0x01, 0x00, 0x01])]
        case .ec(let curve):
            mechanism = .ecKeyPairGen
            publicTemplate.append(Attribute(CKA_EC_PARAMS, bytes: curve.ecParameters))
        }
        guard let info = mechanisms.info(mechanism), info.canGenerateKeyPair else {
            throw PKCS11Error(
                .mechanismUnsupported, "token '\(self.info.label)' cannot generate \(spec) keys (no \(mechanism))",
                hint: "its mechanism list says what it can do", settings: ["key-type"])
        }
        // The mechanism's key-size range (bits, for RSA): a clear refusal before the token's
        // own (tpm2-pkcs11 answers RSA-4096 with a bare CKR_ATTRIBUTE_VALUE_INVALID).
        if case .rsa(let bits) = spec, !info.allows(bits: UInt(bits)) {
            throw PKCS11Error(
                .mechanismUnsupported,
                "token '\(self.info.label)' makes RSA keys of \(info.minKeySize)–\(info.maxKeySize) bits, not \(bits)",
                function: "C_GetMechanismInfo",
                hint: "choose rsa:\(info.maxKeySize >= 3072 ? 3072 : 2048) (Entra accepts RSA keys of 2048 bits and more)", settings: ["key-type"])
        }
        // Writes are serialised per module (see Module.withObjectStore).
        let (publicHandle, handle) = try withPrimary(writing: true) { session in
            try session.generateKeyPair(mechanism: mechanism, publicTemplate: publicTemplate, privateTemplate: privateTemplate)
        }
        let key = try withPrimary { try privateKey($0, handle) }
        // A key whose public half the token cannot give back can have no certificate and no
        // verifiable signature: remove the pair rather than leave a trap (tpm2-pkcs11 1.9 makes
        // P-521 keys like that, and then fails C_SignInit with CKR_HOST_MEMORY).
        if key.publicKey == nil {
            withPrimary(writing: true) { session in
                try? session.destroyObject(handle)
                try? session.destroyObject(publicHandle)
            }
            throw PKCS11Error(
                .moduleAnswerInvalid,
                "token '\(self.info.label)' made a \(spec) key pair but gives back no usable public key for it; the pair was removed",
                function: "C_GetAttributeValue",
                hint: "this token cannot use such keys: choose another key type (rsa:2048, ec:p256 or ec:p384)", settings: ["key-type"])
        }
        logger.info("generated key pair", metadata: ["type": "\(spec)", "label": "\(label)"])
        return (key, ObjectIdentity(
            handle: publicHandle, objectClass: .publicKey, label: label, id: id,
            uri: objectURI(label: label, id: id, objectClass: .publicKey)))
    }

    static func randomID() -> [UInt8] {
        var rng = SystemRandomNumberGenerator()
        return (0..<16).map { _ in rng.next() }
    }
}
