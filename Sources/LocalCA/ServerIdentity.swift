import Crypto
import DurableFiles
import Foundation
import NIOSSL
import SwiftASN1
import X509

/// A loopback HTTPS identity (the emulator's, the agent's Key Vault endpoint's): a CA (`ca.pem`,
/// for clients to trust) and a server certificate for 127.0.0.1, ::1 and localhost signed by
/// it, made at first start with swift-certificates and kept in `directory` (keys 0600).
public struct ServerIdentity: Sendable {
    public let caPEM: String
    let certificatePEM: String
    let privateKeyPEM: String

    /// `name` goes into the CA's subject (`"p11jwt <name>"`).
    public static func loadOrCreate(directory dir: URL, name: String, now: Date = Date()) throws -> ServerIdentity {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let caURL = dir.appendingPathComponent("ca.pem"), certURL = dir.appendingPathComponent("server.pem")
        let keyURL = dir.appendingPathComponent("server-key.pem")
        if let ca = try? String(contentsOf: caURL, encoding: .utf8), let cert = try? String(contentsOf: certURL, encoding: .utf8),
           let key = try? String(contentsOf: keyURL, encoding: .utf8),
           let parsed = try? Certificate(pemEncoded: cert), parsed.notValidAfter > now.addingTimeInterval(86400) {
            return ServerIdentity(caPEM: ca, certificatePEM: cert, privateKeyPEM: key)
        }
        let caKey = P256.Signing.PrivateKey()
        let caName = try DistinguishedName {
            OrganizationName("p11jwt \(name)")
            CommonName("\(name) local CA \(UUID().uuidString.prefix(8))")
        }
        let ca = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(caKey.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(10 * 365 * 86400),
            issuer: caName, subject: caName, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: Certificate.PublicKey(caKey.publicKey))
            },
            issuerPrivateKey: .init(caKey))
        let serverKey = P256.Signing.PrivateKey()
        let server = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(serverKey.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(397 * 86400),
            issuer: caName, subject: try DistinguishedName { CommonName("localhost") },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames([
                    .dnsName("localhost"), .ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1])),
                    .ipAddress(ASN1OctetString(contentBytes: ArraySlice([UInt8](repeating: 0, count: 15) + [1]))),
                ])
            },
            issuerPrivateKey: .init(caKey))
        let identity = ServerIdentity(
            caPEM: try ca.serializeAsPEM().pemString, certificatePEM: try server.serializeAsPEM().pemString,
            privateKeyPEM: serverKey.pemRepresentation)
        try DurableFile.writeAtomically(Data(identity.privateKeyPEM.utf8), to: keyURL, mode: 0o600)
        try DurableFile.writeAtomically(Data(caKey.pemRepresentation.utf8), to: dir.appendingPathComponent("ca-key.pem"), mode: 0o600)
        try DurableFile.writeAtomically(Data(identity.certificatePEM.utf8), to: certURL, mode: 0o644)
        try DurableFile.writeAtomically(Data(identity.caPEM.utf8), to: caURL, mode: 0o644)
        return identity
    }

    /// The server side TLS configuration (TLS 1.2+).
    public func tlsConfiguration() throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMBytes(Array(certificatePEM.utf8)).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(privateKeyPEM.utf8), format: .pem)))
        configuration.minimumTLSVersion = .tlsv12
        return configuration
    }
}
