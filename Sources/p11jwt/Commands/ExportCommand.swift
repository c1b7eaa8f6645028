import ArgumentParser
import Foundation
import JOSE
import PKCS11
import SwiftASN1
import X509

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Print a certificate or a public key from the token as PEM (never a private key).",
        discussion: """
            The URI selects one object. With type=cert it is that certificate; with type=public or \
            type=private it is the key's public half; with no type, the certificate when one matches, else \
            the public key. --public-key takes the public key even when a certificate matches (a key and \
            its certificate usually share a label).

            EXAMPLES:
              p11jwt export 'pkcs11:token=ops;object=app' > app.pem
              p11jwt export "$KEY" --public-key | openssl pkey -pubin -text
              p11jwt export 'pkcs11:token=ops;object=app;type=cert' --der --out app.cer
            """)

    @Argument(help: ArgumentHelp("The object (a pkcs11: URI).", valueName: "uri"))
    var uri: String

    @Flag(name: .long, help: "The public key, even when a certificate matches the URI.")
    var publicKey = false

    @Flag(name: .long, help: "DER instead of PEM (use with --out).")
    var der = false

    @Option(name: .long, help: ArgumentHelp("Write here (0644) instead of standard output.", valueName: "file"))
    var out: String?

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var pinOptions: PINOptions
    @OptionGroup var outputOptions: OutputOptions

    struct Report: CommandReport {
        /// CERTIFICATE or PUBLIC KEY.
        var type: String
        var pem: String
        var file: String?
        var text: String? { file == nil ? pem : nil }
    }

    func validate() throws {
        if der && out == nil { throw ValidationError("--der writes binary: give --out FILE") }
        if der && outputOptions.output == .json { throw ValidationError("--der and --output json: the JSON has the PEM; give one") }
    }

    func run() throws {
        let context = try TokenContext.open(uri, moduleOptions: moduleOptions, pins: nil, login: false)
        defer { context.close() }
        let token = context.token
        let uri = context.uri
        // Private keys are usually private objects: their public half is found after a login.
        if uri.objectClass == .privateKey {
            try token.login(pins: pinOptions.provider(try moduleOptions.settings()), uri: uri)
        }
        let (type, bytes) = try select(token: token, uri: uri)
        if der { return try Data(bytes).write(to: URL(fileURLWithPath: out!)) }
        let pem = PEMDocument(type: type, derBytes: bytes).pemString
        if let out { try writeOutput(pem, to: out) }
        try outputOptions.emit(Report(type: type, pem: pem, file: out))
    }

    /// The PEM type and DER of the one object the URI selects.
    func select(token: Token, uri: PKCS11URI) throws -> (String, [UInt8]) {
        let wantsCertificate = !publicKey && (uri.objectClass == nil || uri.objectClass == .certificate)
        if wantsCertificate {
            let certificates = try token.certificates(matching: uri)
            if certificates.count > 1 { throw ambiguous(certificates.map(\.uri)) }
            if let certificate = certificates.first { return ("CERTIFICATE", certificate.der) }
            if uri.objectClass == .certificate { throw notFound(uri, what: "certificate") }
        }
        if uri.objectClass != .privateKey {
            let publicKeys = try token.publicKeys(matching: uri).compactMap { object in
                object.publicKey.map { (object.identity.uri, $0) }
            }
            if publicKeys.count > 1 { throw ambiguous(publicKeys.map(\.0)) }
            if let key = publicKeys.first { return ("PUBLIC KEY", try key.1.subjectPublicKeyInfo()) }
        }
        let privateKeys = uri.objectClass == .publicKey ? [] : try token.privateKeys(matching: uri).compactMap { key in
            key.publicKey.map { (key.uri, $0) }
        }
        if privateKeys.count > 1 { throw ambiguous(privateKeys.map(\.0)) }
        if let key = privateKeys.first { return ("PUBLIC KEY", try key.1.subjectPublicKeyInfo()) }
        throw notFound(uri, what: publicKey ? "public key" : "certificate or public key")
    }

    func ambiguous(_ uris: [String]) -> CLIError {
        CLIError(message: "the URI selects \(uris.count) objects: \(uris.joined(separator: ", "))", exitCode: 2, hint: "add id= or type= to the URI to select one")
    }

    func notFound(_ uri: PKCS11URI, what: String) -> CLIError {
        CLIError(message: "no \(what) matches \(uri.redacted)", hint: "list the token's objects with 'p11jwt objects'")
    }
}
