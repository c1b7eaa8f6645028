import Crypto
import Foundation
import SwiftASN1
import X509

/// A certificate as JOSE uses it: the exact DER bytes (thumbprints are over these, never over a
/// re-encoding) and the parsed certificate.
public struct JWSCertificate: Sendable, Hashable {
    public let der: [UInt8]
    public let certificate: Certificate
    /// SHA-1 and SHA-256 of the DER, computed once: every JWS header names the certificate by them.
    public let thumbprint: Thumbprint

    public init(der: [UInt8]) throws {
        do {
            certificate = try Certificate(derEncoded: der)
        } catch {
            throw JOSEError(.invalidCertificate, "not a DER X.509 certificate: \(error)", cause: error)
        }
        self.der = der
        thumbprint = Thumbprint(der: der)
    }

    /// Every `CERTIFICATE` block of a PEM text, in order (leaf first, by convention). A DER
    /// file is accepted too.
    public static func all(fromPEMOrDER bytes: [UInt8], source: String) throws -> [JWSCertificate] {
        guard let text = String(validating: bytes, as: UTF8.self), text.contains("-----BEGIN") else {
            do {
                return [try JWSCertificate(der: bytes)]
            } catch let error as JOSEError {
                throw JOSEError(.invalidCertificate, "\(source): \(error.message)", cause: error)
            }
        }
        let documents: [PEMDocument]
        do {
            documents = try PEMDocument.parseMultiple(pemString: text)
        } catch {
            throw JOSEError(.invalidCertificate, "\(source): not valid PEM: \(error)", cause: error)
        }
        let certificates = try documents.filter { $0.discriminator == "CERTIFICATE" }.map {
            do {
                return try JWSCertificate(der: $0.derBytes)
            } catch let error as JOSEError {
                throw JOSEError(.invalidCertificate, "\(source): \(error.message)", cause: error)
            }
        }
        guard !certificates.isEmpty else {
            throw JOSEError(
                .invalidCertificate, "\(source) holds no CERTIFICATE block",
                hint: "give a PEM file with -----BEGIN CERTIFICATE----- (a private key file is not a certificate)")
        }
        return certificates
    }


    public var publicKey: Certificate.PublicKey { certificate.publicKey }

    public var pem: String { PEMDocument(type: "CERTIFICATE", derBytes: der).pemString }

    /// Standard base64 (with padding) of the DER, as `x5c` carries it (RFC 7515 §4.1.6).
    public var x5cValue: String { Data(der).base64EncodedString() }

    public var isSelfIssued: Bool { certificate.subject == certificate.issuer }
}

/// Certificate thumbprints, as JOSE headers and Microsoft tools write them.
public struct Thumbprint: Sendable, Hashable, Codable {
    public let sha1: [UInt8]
    public let sha256: [UInt8]

    public init(der: [UInt8]) {
        sha1 = Array(Insecure.SHA1.hash(data: der))
        sha256 = Array(SHA256.hash(data: der))
    }

    /// `x5t`: base64url(SHA-1(DER)).
    public var x5t: String { Base64URL.encode(sha1) }
    /// `x5t#S256`: base64url(SHA-256(DER)).
    public var x5tS256: String { Base64URL.encode(sha256) }
    /// Uppercase hex SHA-1, as Windows, Entra (`customKeyIdentifier`) and
    /// Microsoft.IdentityModel's `kid` show it.
    public var hexSHA1: String { Hex.encode(sha1, uppercase: true) }
    public var hexSHA256: String { Hex.encode(sha256, uppercase: true) }

    /// Whether a header's `x5t`, `x5t#S256` or `kid` names this certificate.
    public func matches(header: JSONObject) -> Bool {
        if let v = header["x5t#S256"]?.stringValue { return v == x5tS256 }
        if let v = header["x5t"]?.stringValue { return v == x5t }
        if let v = header["kid"]?.stringValue { return v.uppercased() == hexSHA1 || v == x5t || v == x5tS256 }
        return false
    }
}
