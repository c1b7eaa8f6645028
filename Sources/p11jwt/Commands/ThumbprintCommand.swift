import ArgumentParser
import Foundation
import JOSE
import PKCS11
import TokenSigning

struct ThumbprintCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "thumbprint",
        abstract: "Print a certificate's thumbprints: hex SHA-1 (as Entra shows it), x5t and x5t#S256.",
        discussion: """
            EXAMPLES:
              p11jwt thumbprint --cert app.pem
              p11jwt thumbprint --cert 'pkcs11:token=ops;object=app;type=cert' --output json
            """)

    @Option(name: .long, help: ArgumentHelp("The certificate: a pkcs11: URI or a PEM/DER file (the first certificate in it).", valueName: "uri|file"))
    var cert: String

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var outputOptions: OutputOptions

    struct Report: Encodable {
        var subject: String
        var sha1: String
        var sha256: String
        var x5t: String
        var x5tS256: String

        enum CodingKeys: String, CodingKey {
            case subject, sha1, sha256, x5t
            case x5tS256 = "x5t#S256"
        }
    }

    func run() throws {
        let certificate = try readCertificate(cert, moduleOptions: moduleOptions)
        let t = certificate.thumbprint
        let report = Report(
            subject: "\(certificate.certificate.subject)", sha1: t.hexSHA1, sha256: t.hexSHA256, x5t: t.x5t, x5tS256: t.x5tS256)
        switch outputOptions.output {
        case .json:
            try printJSON(report)
        case .text:
            print("subject:  \(report.subject)")
            print("sha1:     \(report.sha1)")
            print("sha256:   \(report.sha256)")
            print("x5t:      \(report.x5t)")
            print("x5t#S256: \(report.x5tS256)")
        }
    }
}
