import ArgumentParser
import Crypto
import Foundation
import JOSE
import PKCS11
import SwiftASN1
import TokenSigning
import X509

struct ObjectsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "objects",
        abstract: "List keys and certificates on a token, with their URIs and whether key and certificate pair up.",
        discussion: """
            Private keys are listed only after login; with no PIN available the public objects are listed and a warning says so.

            EXAMPLES:
              p11jwt objects --pin-file pin
              p11jwt objects --token 'pkcs11:token=ops;object=app' --output json
            """)

    @Option(name: .long, help: ArgumentHelp("The token (a pkcs11: URI; object attributes narrow the listing). Default: the one token present.", valueName: "uri"))
    var token: String = "pkcs11:"

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var pinOptions: PINOptions
    @OptionGroup var outputOptions: OutputOptions

    struct Report: Encodable {
        var token: String
        var loggedIn: Bool
        var privateKeys: [KeyReport]
        var publicKeys: [PublicKeyReport]
        var certificates: [CertificateReport]
    }

    struct KeyReport: Encodable {
        var uri: String
        var label: String?
        var id: String?
        var type: String
        var canSign: Bool
        var alwaysAuthenticate: Bool
        var sensitive: Bool
        var extractable: Bool
        var certificate: String?
        var pairing: String
        var algorithms: [String]
        /// The public key as PEM (`PUBLIC KEY`), when the token gives it.
        var publicKeyPEM: String?
    }

    struct PublicKeyReport: Encodable {
        var uri: String
        var label: String?
        var id: String?
        var type: String?
        var publicKeyPEM: String?
    }

    struct CertificateReport: Encodable {
        var uri: String
        var label: String?
        var id: String?
        var subject: String?
        var issuer: String?
        var notBefore: Date?
        var notAfter: Date?
        /// Uppercase hex, as Entra and `p11jwt thumbprint` show it.
        var sha1: String
        var pem: String
    }

    func run() throws {
        let context = try TokenContext.open(token, moduleOptions: moduleOptions, pins: nil, login: false)
        defer { context.close() }
        let token = context.token
        do {
            try token.login(pins: pinOptions.provider(try moduleOptions.settings()), uri: context.uri)
        } catch let error as PKCS11Error where error.code == .pinUnavailable {
            FileHandle.standardError.write(Data("warning: not logged in, private objects are hidden: \(error.hint ?? "")\n".utf8))
        }
        let filter = context.uri.selectsObject ? context.uri : nil
        let keys = try token.privateKeys(matching: filter)
        let certificates = try token.certificates(matching: filter)
        // Pair keys with certificates in memory: one read of the token's certificates.
        let allCertificates = filter == nil ? certificates : try token.certificates()
        let report = Report(
            token: token.uri, loggedIn: token.isLoggedIn,
            privateKeys: keys.map { key in
                let cert = Token.certificate(for: key, in: allCertificates)
                let possible = key.algorithmsByKeyType.filter { (try? token.signingPath($0, key: key)) != nil }
                return KeyReport(
                    uri: key.uri, label: key.label, id: key.identity.idHex, type: key.typeDescription,
                    canSign: key.canSign, alwaysAuthenticate: key.alwaysAuthenticate, sensitive: key.sensitive,
                    extractable: key.extractable, certificate: cert?.uri, pairing: token.pairing(key, cert).rawValue,
                    algorithms: possible.map(\.rawValue), publicKeyPEM: try? key.publicKey?.pem())
            },
            publicKeys: try token.publicKeys(matching: filter).map {
                PublicKeyReport(
                    uri: $0.identity.uri, label: $0.identity.label, id: $0.identity.idHex, type: $0.publicKey?.description,
                    publicKeyPEM: try? $0.publicKey?.pem())
            },
            certificates: certificates.map { cert in
                CertificateReport(
                    uri: cert.uri, label: cert.label, id: cert.identity.idHex,
                    subject: cert.certificate.map { "\($0.subject)" }, issuer: cert.certificate.map { "\($0.issuer)" },
                    notBefore: cert.certificate?.notValidBefore, notAfter: cert.certificate?.notValidAfter,
                    sha1: Hex.encode(Insecure.SHA1.hash(data: cert.der), uppercase: true),
                    pem: PEMDocument(type: "CERTIFICATE", derBytes: cert.der).pemString)
            })
        if outputOptions.output == .json { return try printJSON(report) }
        print("token: \(report.token)")
        if !report.loggedIn { print("(not logged in: private keys not shown)") }
        for key in report.privateKeys {
            print("private key  \(key.type)  label '\(key.label ?? "")'  id \(key.id ?? "-")")
            print("  uri: \(key.uri)")
            print("  certificate: \(key.certificate ?? "none") — \(key.pairing)")
            print("  algorithms: \(key.algorithms.isEmpty ? "none on this token" : key.algorithms.joined(separator: " "))")
        }
        for key in report.publicKeys {
            print("public key   \(key.type ?? "?")  label '\(key.label ?? "")'  id \(key.id ?? "-")")
            print("  uri: \(key.uri)")
        }
        let formatter = ISO8601DateFormatter()
        for cert in report.certificates {
            print("certificate  \(cert.subject ?? "(unparseable)")  label '\(cert.label ?? "")'  id \(cert.id ?? "-")")
            if let notAfter = cert.notAfter {
                print("  expires: \(formatter.string(from: notAfter))\(notAfter < Date() ? " (EXPIRED)" : "")")
            }
            print("  sha1: \(cert.sha1)")
            print("  uri: \(cert.uri)")
        }
    }
}
