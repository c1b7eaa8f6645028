import ArgumentParser
import Foundation
import JOSE
import PKCS11
import TokenSigning
import SwiftASN1
import X509

struct CertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cert",
        abstract: "Certificates for token keys, signed in the token: self-signed, CSR, or import a CA-issued one.",
        discussion: """
            EXAMPLES:
              p11jwt cert create --key "$KEY" --subject CN=my-app --store --out app.pem
              p11jwt cert csr --key "$KEY" --subject CN=my-app --out app.csr
              p11jwt cert import --token pkcs11:token=ops --cert-file issued.pem
            """,
        subcommands: [Create.self, Request.self, Import.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create",
            abstract: "Make a self-signed X.509 v3 certificate for a token key (sha256WithRSA or ecdsa-with-SHA*), signed by the token.",
            discussion: """
                EXAMPLES:
                  p11jwt cert create --key "$KEY" --subject CN=my-app --store --out app.pem
                  p11jwt cert create --key "$KEY" --subject CN=my-app --days 2 --store --replace
                """)

        @Option(name: .long, help: "The subject, e.g. \"CN=my-app,O=Contoso\".")
        var subject: String

        @Option(name: .long, help: "Days of validity (1…3650).")
        var days: Int = 365

        @Flag(name: .long, help: "Store it on the token with the key's CKA_ID and label.")
        var store = false

        @Flag(name: .long, help: "With --store: replace the certificate the key has on the token (else that is refused).")
        var replace = false

        @Option(name: .long, help: ArgumentHelp("Write the PEM here instead of standard output.", valueName: "file"))
        var out: String?

        @OptionGroup var signing: UncertifiedSigningOptions
        @OptionGroup var outputOptions: OutputOptions

        func run() throws {
            let subject = try TokenCertificates.distinguishedName(self.subject)
            guard (1...3650).contains(days) else { throw CLIError.usage("--days must be 1…3650") }
            let session = try signing.open()
            defer { session.close() }
            if store && session.context == nil {
                throw CLIError.usage("--store writes to the token itself: add --no-agent (the agent only signs)")
            }
            // A second certificate with the key's CKA_ID would be ambiguous (which one signs
            // names the key?): refused unless --replace, checked before anything is signed.
            var existing: [CertificateObject] = []
            if store, let context = session.context, let key = (session.signer as? TokenSigner)?.key {
                guard let id = key.id, !id.isEmpty else {
                    throw CLIError(message: "key \(key.uri) has no CKA_ID to store the certificate under")
                }
                existing = try context.token.certificates().filter { $0.id == id }
                if !existing.isEmpty && !replace {
                    throw CLIError(
                        message: "key \(key.uri) already has a certificate on the token: \(existing.map(\.uri).joined(separator: ", "))",
                        hint: "add --replace to replace it, or export it and keep it (p11jwt objects lists it)")
                }
            }
            let certificate = try TokenCertificates.selfSigned(signer: session.signer, subject: subject, days: days)
            var storedURI: String?
            if store, let context = session.context, let key = (session.signer as? TokenSigner)?.key, let id = key.id {
                let stored = try context.token.storeCertificate(der: certificate.der, label: key.label ?? "certificate", id: id)
                if !existing.isEmpty { try context.token.destroy(existing.map(\.identity)) }
                storedURI = stored.uri
                if outputOptions.output == .text {
                    FileHandle.standardError.write(Data("stored \(stored.uri)\(existing.isEmpty ? "" : " (replacing \(existing.count))")\n".utf8))
                }
            }
            try emitPEM(
                CertificateReport(
                    pem: certificate.pem, file: out, stored: storedURI, replaced: existing.map(\.uri),
                    thumbprint: certificate.thumbprint.hexSHA1, notAfter: certificate.certificate.notValidAfter),
                outputOptions)
        }
    }

    struct Request: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "csr", abstract: "Make a PKCS#10 certificate request for a token key, signed by the token, for a CA to issue.",
            discussion: """
                EXAMPLES:
                  p11jwt cert csr --key "$KEY" --subject 'CN=my-app,O=Contoso' --out app.csr
                """)

        @Option(name: .long, help: "The subject, e.g. \"CN=my-app,O=Contoso\".")
        var subject: String

        @Option(name: .long, help: ArgumentHelp("Write the PEM here instead of standard output.", valueName: "file"))
        var out: String?

        @OptionGroup var signing: UncertifiedSigningOptions
        @OptionGroup var outputOptions: OutputOptions

        func run() throws {
            let subject = try TokenCertificates.distinguishedName(self.subject)
            let session = try signing.open()
            defer { session.close() }
            let der = try TokenCertificates.request(signer: session.signer, subject: subject)
            try emitPEM(CertificateReport(pem: PEMDocument(type: "CERTIFICATE REQUEST", derBytes: der).pemString, file: out), outputOptions)
        }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "import",
            abstract: "Store a CA-issued certificate on the token next to its key (same CKA_ID and label).",
            discussion: """
                EXAMPLES:
                  p11jwt cert import --token pkcs11:token=ops --cert-file issued-with-chain.pem
                """)

        @Option(name: .long, help: ArgumentHelp("The token (a pkcs11: URI; object attributes narrow the key search).", valueName: "uri"))
        var token: String

        @Option(name: .long, help: ArgumentHelp("The certificate, PEM or DER; further PEM certificates (the chain) are stored too.", valueName: "file"))
        var certFile: String?

        /// `--cert`, the 0.9 name of --cert-file: still taken, not shown.
        @Option(name: .customLong("cert"), help: .hidden)
        var legacyCert: String?

        func validate() throws {
            if certFile == nil && legacyCert == nil { throw ValidationError("Missing expected argument '--cert-file <file>'") }
        }

        @OptionGroup var moduleOptions: ModuleOptions
        @OptionGroup var pinOptions: PINOptions
        @OptionGroup var outputOptions: OutputOptions

        struct Report: CommandReport {
            var key: String
            var stored: [String]
            var text: String? { stored.isEmpty ? "already on the token" : stored.joined(separator: "\n") }
        }

        func run() throws {
            let certificates = try readCertificates(certFile ?? legacyCert!)
            let context = try TokenContext.open(token, moduleOptions: moduleOptions, pins: pinOptions, login: true)
            defer { context.close() }
            let leaf = certificates[0]
            let keys = try context.token.privateKeys(matching: context.uri.objectLabel == nil && context.uri.objectID == nil ? nil : context.uri)
            guard let key = keys.first(where: { context.token.isKey($0, publicKey: leaf.publicKey) }) else {
                throw CLIError(message: """
                    no private key on token '\(context.token.info.label)' matches certificate \(leaf.thumbprint.hexSHA1) (\(leaf.certificate.subject))
                    hint: import the certificate issued for a key of this token (see 'p11jwt objects'); a CSR from 'p11jwt cert csr' names the key
                    """)
            }
            try outputOptions.emit(Report(key: key.uri, stored: try storeCertificates(certificates, for: key, on: context.token)))
        }
    }
}

/// ``TokenCertificates/store(_:for:on:)``, with the CLI's error for a key without a CKA_ID.
func storeCertificates(_ certificates: [JWSCertificate], for key: PrivateKeyObject, on token: Token) throws -> [String] {
    try TokenCertificates.store(certificates, for: key, on: token)
}

/// A certificate or CSR a command made: PEM on standard output (or in `file`), or JSON.
struct CertificateReport: CommandReport {
    var pem: String
    /// Where the PEM was written (--out), if not standard output.
    var file: String?
    /// The certificate object stored on the token (--store).
    var stored: String?
    var replaced: [String]?
    var thumbprint: String?
    var notAfter: Date?

    var text: String? { file == nil ? pem : nil }
}

/// Writes the report's PEM to its file, then prints the report (the PEM itself when no file).
func emitPEM(_ report: CertificateReport, _ output: OutputOptions) throws {
    if let file = report.file { try writeOutput(report.pem, to: file) }
    try output.emit(report)
}

/// Writes text to a file (0644; certificates and CSRs are public) or standard output.
func writeOutput(_ text: String, to path: String?) throws {
    guard let path else {
        print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
        return
    }
    guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o644]) else {
        throw CLIError(message: "cannot write \(path)")
    }
}
