import ArgumentParser
import Foundation
import JOSE
import PKCS11
import TokenSigning

struct DecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Show a JWT's header and claims, how long it has left, and (with --verify) whether its signature is good.",
        discussion: """
            With --token, the certificate on that token whose thumbprint the header names is shown, and \
            --verify uses it. Exit status 1 when --verify finds the signature invalid.

            EXAMPLES:
              p11jwt assertion | p11jwt decode -
              p11jwt decode "$jwt" --verify --cert app.pem
            """)

    @Argument(help: ArgumentHelp("The JWT, or - to read it from standard input.", valueName: "jwt"))
    var jwt: String

    @Option(name: .long, help: ArgumentHelp("A token (pkcs11: URI) to look for the signing certificate on.", valueName: "uri"))
    var token: String?

    @Flag(name: .long, help: "Verify the signature with --cert, or the certificate found with --token.")
    var verify = false

    @Option(name: .long, help: ArgumentHelp("The certificate to verify with: a pkcs11: URI or a PEM/DER file.", valueName: "uri|file"))
    var cert: String?

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var outputOptions: OutputOptions

    struct Report: Encodable {
        var header: JSONObject
        var claims: JSONValue
        /// Seconds until `exp` (negative once expired).
        var expiresIn: Int64?
        var notYetValidFor: Int64?
        var certificate: CertificateReport?
        /// "valid", "invalid", or absent when not checked.
        var signature: String?
    }

    struct CertificateReport: Encodable {
        var uri: String?
        var subject: String
        var sha1: String
    }

    func validate() throws {
        if verify && cert == nil && token == nil {
            throw ValidationError("--verify needs --cert URI|FILE or --token URI to find the certificate")
        }
    }

    func run() throws {
        let text = jwt == "-" ? String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self) : jwt
        let jws = try JWS(compact: text)
        let claims = jws.claims
        let now = Int64(Date().timeIntervalSince1970)
        var report = Report(
            header: jws.header,
            claims: claims.map { .object($0) } ?? .string(String(decoding: jws.payload, as: UTF8.self)))
        // Claims are the token's word: times far from now must not overflow (exp = -2^63).
        if let exp = claims?["exp"]?.int64Value, case let (d, false) = exp.subtractingReportingOverflow(now) { report.expiresIn = d }
        if let nbf = claims?["nbf"]?.int64Value, nbf > now, case let (d, false) = nbf.subtractingReportingOverflow(now) { report.notYetValidFor = d }

        var verifyWith: JWSCertificate?
        if let cert {
            let certificate = try readCertificate(cert, moduleOptions: moduleOptions)
            verifyWith = certificate
            report.certificate = CertificateReport(
                uri: cert.hasPrefix("pkcs11:") ? cert : nil, subject: "\(certificate.certificate.subject)",
                sha1: certificate.thumbprint.hexSHA1)
        } else if let token {
            let context = try TokenContext.open(token, moduleOptions: moduleOptions, pins: nil, login: false)
            defer { context.close() }
            for object in try context.token.certificates() {
                guard let certificate = try? JWSCertificate(der: object.der), certificate.thumbprint.matches(header: jws.header) else { continue }
                verifyWith = certificate
                report.certificate = CertificateReport(
                    uri: object.uri, subject: "\(certificate.certificate.subject)", sha1: certificate.thumbprint.hexSHA1)
                break
            }
            if verify && verifyWith == nil {
                throw CLIError(message: "no certificate on token '\(context.token.info.label)' matches the header's x5t / x5t#S256 / kid")
            }
        }
        var valid = true
        if verify, let verifyWith {
            valid = jws.isValid(publicKey: verifyWith.publicKey)
            report.signature = valid ? "valid" : "invalid"
        }

        switch outputOptions.output {
        case .json:
            try printJSON(report)
        case .text:
            print("header:")
            try printJSON(report.header)
            print("claims:")
            try printJSON(report.claims)
            if let expiresIn = report.expiresIn {
                print(expiresIn >= 0 ? "expires in \(duration(expiresIn.magnitude))" : "expired \(duration(expiresIn.magnitude)) ago")
            }
            if let wait = report.notYetValidFor { print("not valid for another \(duration(wait.magnitude))") }
            if let c = report.certificate {
                print("certificate: \(c.subject) (SHA-1 \(c.sha1))\(c.uri.map { "\n  \($0)" } ?? "")")
            }
            if let signature = report.signature { print("signature: \(signature)") }
        }
        if !valid { throw ExitCode.failure }
    }

    private func duration(_ seconds: UInt64) -> String {
        let (h, m, s) = (seconds / 3600, seconds % 3600 / 60, seconds % 60)
        if h > 0 { return "\(h)h \(m)m \(s)s" }
        if m > 0 { return "\(m)m \(s)s" }
        return "\(s)s"
    }
}
