import Crypto
import Foundation
import JOSE
import PKCS11
import SwiftASN1
import X509

/// A token key (any ``JWSSigner``: the token's own, or the agent's) as swift-certificates'
/// external signer, so certificates and CSRs are signed in the token: swift-certificates serialises the TBS structure, this hashes it here and the token
/// signs the digest (sha256WithRSAEncryption as PKCS#1 v1.5, ecdsa-with-SHA256/384/512 with the
/// raw r‖s turned into an ECDSA-Sig-Value). swift-certificates has no RSA-PSS certificates.
public struct TokenCertificateKey: CustomPrivateKey {
    public let signer: any JWSSigner
    public let publicKey: Certificate.PublicKey

    public init(_ signer: any JWSSigner) throws {
        guard let publicKey = signer.publicKey else {
            throw PKCS11Error(
                .objectNotFound, "the key has no public key on the token to put in a certificate",
                hint: "keys generated here have one; otherwise import the public key object with the same CKA_ID")
        }
        self.signer = signer
        self.publicKey = publicKey
    }

    public var defaultSignatureAlgorithm: Certificate.SignatureAlgorithm {
        switch signer.keyType {
        case .rsa: return .sha256WithRSAEncryption
        case .ec(.p256): return .ecdsaWithSHA256
        case .ec(.p384): return .ecdsaWithSHA384
        case .ec(.p521): return .ecdsaWithSHA512
        }
    }

    public var supportedSignatureAlgorithms: [Certificate.SignatureAlgorithm] {
        switch signer.keyType {
        case .rsa: return [.sha256WithRSAEncryption, .sha384WithRSAEncryption, .sha512WithRSAEncryption]
        case .ec: return [defaultSignatureAlgorithm]
        }
    }

    static func jwsAlgorithm(_ algorithm: Certificate.SignatureAlgorithm) -> JWSAlgorithm? {
        switch algorithm {
        case .sha256WithRSAEncryption: return .RS256
        case .sha384WithRSAEncryption: return .RS384
        case .sha512WithRSAEncryption: return .RS512
        case .ecdsaWithSHA256: return .ES256
        case .ecdsaWithSHA384: return .ES384
        case .ecdsaWithSHA512: return .ES512
        default: return nil
        }
    }

    private func digest(_ bytes: some DataProtocol, _ signatureAlgorithm: Certificate.SignatureAlgorithm) throws -> (JWSAlgorithm, [UInt8]) {
        guard let algorithm = Self.jwsAlgorithm(signatureAlgorithm), supportedSignatureAlgorithms.contains(signatureAlgorithm) else {
            throw PKCS11Error(.invalidArgument, "the key cannot sign a certificate with \(signatureAlgorithm)")
        }
        return (algorithm, algorithm.hash.hash(Array(bytes)))
    }

    private static func signature(_ raw: [UInt8], _ algorithm: JWSAlgorithm, _ signatureAlgorithm: Certificate.SignatureAlgorithm) throws -> Certificate.Signature {
        var signature = raw
        if algorithm.family == .ecdsa, let curve = algorithm.curve { signature = try ECDSASignatureEncoding.der(fromRaw: raw, curve: curve) }
        return try Certificate.Signature(signatureAlgorithm: signatureAlgorithm, signatureBytes: ASN1BitString(bytes: signature[...]))
    }

    public func signSynchronously(bytes: some DataProtocol, signatureAlgorithm: Certificate.SignatureAlgorithm) throws -> Certificate.Signature {
        let (algorithm, digest) = try digest(bytes, signatureAlgorithm)
        return try Self.signature(try signer.sign(digest: digest, algorithm: algorithm), algorithm, signatureAlgorithm)
    }

    public func signAsynchronously(bytes: some DataProtocol & Sendable, signatureAlgorithm: Certificate.SignatureAlgorithm) async throws -> Certificate.Signature {
        let (algorithm, digest) = try digest(bytes, signatureAlgorithm)
        return try Self.signature(try await signer.sign(digest: digest, algorithm: algorithm), algorithm, signatureAlgorithm)
    }

    // The private key never leaves the token: there is nothing to serialise.
    public static let defaultPEMDiscriminator = "PRIVATE KEY"

    public func serialize(into coder: inout DER.Serializer) throws {
        throw PKCS11Error(.invalidArgument, "a token key cannot be exported")
    }

    // A key is its public key: two signers for it are the same key.
    public static func == (a: TokenCertificateKey, b: TokenCertificateKey) -> Bool { a.publicKey == b.publicKey }

    public func hash(into hasher: inout Hasher) { hasher.combine(publicKey) }
}

/// Certificates and CSRs signed by a token key.
public enum TokenCertificates {
    /// A self-signed X.509 v3 certificate for the key: subject = issuer, a random 16-byte serial,
    /// valid from one minute ago for `days`, end-entity, digitalSignature, the key identifiers.
    /// Blocks while the token signs; async callers get the async overload.
    public static func selfSigned(
        signer: any JWSSigner, subject: DistinguishedName, days: Int, now: Date = Date()
    ) throws -> JWSCertificate {
        let (key, fields) = try unsigned(signer: signer, subject: subject, days: days, now: now)
        return try serialize(try fields.certificate(issuerPrivateKey: Certificate.PrivateKey(key)))
    }

    /// ``selfSigned(signer:subject:days:now:)``, awaiting the signer.
    public static func selfSigned(
        signer: any JWSSigner, subject: DistinguishedName, days: Int, now: Date = Date()
    ) async throws -> JWSCertificate {
        let (key, fields) = try unsigned(signer: signer, subject: subject, days: days, now: now)
        return try serialize(try await fields.certificate(issuerAsyncPrivateKey: Certificate.PrivateKey(key)))
    }

    /// A PKCS#10 certificate request for the key, signed by it, as DER.
    public static func request(signer: any JWSSigner, subject: DistinguishedName) throws -> [UInt8] {
        let key = try TokenCertificateKey(signer)
        let csr = try CertificateSigningRequest(
            version: .v1, subject: subject, privateKey: Certificate.PrivateKey(key), attributes: CertificateSigningRequest.Attributes(),
            signatureAlgorithm: key.defaultSignatureAlgorithm)
        var serializer = DER.Serializer()
        try serializer.serialize(csr)
        return serializer.serializedBytes
    }

    /// The parts of a self-signed certificate before its signature.
    struct UnsignedCertificate {
        let serial: [UInt8]
        let key: TokenCertificateKey
        let subject: DistinguishedName
        let now: Date
        let days: Int
        let extensions: Certificate.Extensions

        func certificate(issuerPrivateKey: Certificate.PrivateKey) throws -> Certificate {
            try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(bytes: serial), publicKey: key.publicKey,
                notValidBefore: now.addingTimeInterval(-60), notValidAfter: now.addingTimeInterval(Double(days) * 86400),
                issuer: subject, subject: subject, signatureAlgorithm: key.defaultSignatureAlgorithm,
                extensions: extensions, issuerPrivateKey: issuerPrivateKey)
        }

        /// The same, with swift-certificates awaiting the key's `signAsynchronously` (a token
        /// key signs on its executor).
        func certificate(issuerAsyncPrivateKey: Certificate.PrivateKey) async throws -> Certificate {
            try await Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(bytes: serial), publicKey: key.publicKey,
                notValidBefore: now.addingTimeInterval(-60), notValidAfter: now.addingTimeInterval(Double(days) * 86400),
                issuer: subject, subject: subject, signatureAlgorithm: key.defaultSignatureAlgorithm,
                extensions: extensions, issuerAsyncPrivateKey: issuerAsyncPrivateKey)
        }
    }

    static func unsigned(signer: any JWSSigner, subject: DistinguishedName, days: Int, now: Date) throws -> (TokenCertificateKey, UnsignedCertificate) {
        guard days >= 1, days <= 3650 else {
            throw PKCS11Error(.invalidArgument, "a certificate lifetime of \(days) days is out of range", hint: "give between 1 and 3650 days")
        }
        let key = try TokenCertificateKey(signer)
        var spkiSerializer = DER.Serializer()
        try spkiSerializer.serialize(key.publicKey)
        let keyIdentifier = Array(Insecure.SHA1.hash(data: spkiSerializer.serializedBytes))
        var rng = SystemRandomNumberGenerator()
        var serial = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        serial[0] &= 0x7f
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            SubjectKeyIdentifier(keyIdentifier: keyIdentifier[...])
            AuthorityKeyIdentifier(keyIdentifier: keyIdentifier[...])
        }
        return (key, UnsignedCertificate(serial: serial, key: key, subject: subject, now: now, days: days, extensions: extensions))
    }

    static func serialize(_ certificate: Certificate) throws -> JWSCertificate {
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return try JWSCertificate(der: serializer.serializedBytes)
    }

    /// `CN=app,O=Contoso,C=US` (RFC 4514 order as written, `\,` escapes a comma). Known
    /// attributes: CN, O, OU, C, L, ST, STREET, DC, emailAddress.
    public static func distinguishedName(_ text: String) throws -> DistinguishedName {
        var parts: [String] = []
        var current = ""
        var escaped = false
        for ch in text {
            if escaped {
                current.append(ch)
                escaped = false
                continue
            }
            if ch == "\\" {
                escaped = true
                continue
            }
            if ch == "," {
                parts.append(current)
                current = ""
                continue
            }
            current.append(ch)
        }
        parts.append(current)
        var rdns: [RelativeDistinguishedName] = []
        for part in parts {
            let trimmed = part.trimmingCharacters(in: .whitespaces)
            guard let eq = trimmed.firstIndex(of: "="), eq != trimmed.startIndex else {
                throw PKCS11Error(.invalidArgument, "subject '\(text)': '\(trimmed)' is not NAME=value", hint: "write it as CN=my-app,O=Contoso")
            }
            let name = trimmed[..<eq].trimmingCharacters(in: .whitespaces).uppercased()
            let value = trimmed[trimmed.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            guard !value.isEmpty else { throw PKCS11Error(.invalidArgument, "subject '\(text)': \(name) is empty") }
            let attribute: RelativeDistinguishedName.Attribute
            switch name {
            case "CN": attribute = try .init(type: .RDNAttributeType.commonName, utf8String: value)
            case "O": attribute = try .init(type: .RDNAttributeType.organizationName, utf8String: value)
            case "OU": attribute = try .init(type: .RDNAttributeType.organizationalUnitName, utf8String: value)
            case "C":
                guard value.count == 2 else { throw PKCS11Error(.invalidArgument, "subject '\(text)': C must be a two-letter country code") }
                attribute = try .init(type: .RDNAttributeType.countryName, printableString: value)
            case "L": attribute = try .init(type: .RDNAttributeType.localityName, utf8String: value)
            case "ST": attribute = try .init(type: .RDNAttributeType.stateOrProvinceName, utf8String: value)
            case "STREET": attribute = try .init(type: .RDNAttributeType.streetAddress, utf8String: value)
            case "DC": attribute = try .init(type: .RDNAttributeType.domainComponent, ia5String: value)
            case "EMAILADDRESS", "E": attribute = try .init(type: .RDNAttributeType.emailAddress, ia5String: value)
            default:
                throw PKCS11Error(.invalidArgument, "subject '\(text)': unknown attribute \(name)", hint: "use CN, O, OU, C, L, ST, STREET, DC or emailAddress")
            }
            rdns.append(RelativeDistinguishedName(attribute))
        }
        return DistinguishedName(rdns)
    }
}


extension TokenCertificates {
    /// Stores a leaf certificate next to its key (the key's CKA_ID and label) and the issuers
    /// after it under ids of their own, so chains can be built for x5c; skips what is already
    /// there. Returns the URIs of what was stored.
    public static func store(_ certificates: [JWSCertificate], for key: PrivateKeyObject, on token: Token) throws -> [String] {
        guard let id = key.id, !id.isEmpty else {
            throw PKCS11Error(.invalidObject, "key \(key.uri) has no CKA_ID to store the certificate under",
                              hint: "give the key a CKA_ID (keys p11jwt makes have one)")
        }
        let existing = try token.certificates().map(\.der)
        var stored: [String] = []
        if let leaf = certificates.first, !existing.contains(leaf.der) {
            stored.append(try token.storeCertificate(der: leaf.der, label: key.label ?? "certificate", id: id).uri)
        }
        for issuer in certificates.dropFirst() where !existing.contains(issuer.der) {
            stored.append(try token.storeCertificate(der: issuer.der, label: "ca", id: Array(issuer.thumbprint.sha1.prefix(8))).uri)
        }
        return stored
    }
}
