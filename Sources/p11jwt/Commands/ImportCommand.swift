import ArgumentParser
import Foundation
import JOSE
import NIOSSL
import PKCS11
import TokenSigning

struct ImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-pfx",
        abstract: "Move an existing PFX (PKCS#12) key and certificate into the token, non-extractable.",
        discussion: """
            The private key is created on the token marked sensitive and not extractable, with its public key \
            and certificate (and the PFX's CA certificates) next to it. The PFX password is read like a PIN: \
            --password-file, $P11JWT_PFX_PASSWORD, or a prompt — never from the command line. Delete the PFX \
            file once the import is checked: the point is that the key lives only in the token.

            EXAMPLES:
              p11jwt import-pfx --token pkcs11:token=ops --pfx app.pfx --label app
            """)

    @Option(name: .long, help: ArgumentHelp("The token to import into (a pkcs11: URI).", valueName: "uri"))
    var token: String

    @Option(name: .long, help: ArgumentHelp("The PFX / .p12 file.", valueName: "file"))
    var pfx: String

    @Option(name: .long, help: "The label of the imported key and certificate.")
    var label: String

    @Option(name: .long, help: ArgumentHelp("Read the PFX password from this file (first line).", valueName: "file"))
    var passwordFile: String?

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var pinOptions: PINOptions
    @OptionGroup var outputOptions: OutputOptions

    struct Report: CommandReport {
        var key: String
        var sensitive: Bool
        var extractable: Bool
        var thumbprint: String
        var certificates: [String]
        var text: String? { key }
    }

    func run() throws {
        let (material, certificates) = try readPFX(pfx, passwordFile: passwordFile)
        let context = try TokenContext.open(token, moduleOptions: moduleOptions, pins: pinOptions, login: true)
        defer { context.close() }
        var rng = SystemRandomNumberGenerator()
        let id = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let key = try context.token.importPrivateKey(material, label: label, id: id)
        // Leaf first: the certificate whose public key is the imported key's.
        guard let leaf = certificates.first(where: { context.token.isKey(key, publicKey: $0.publicKey) }) else {
            try? context.token.destroy(try context.token.objects(matching: try PKCS11URI(PKCS11URI.format(token: context.token.info, id: id))))
            throw CLIError(message: "no certificate in \(pfx) belongs to its private key; nothing was imported")
        }
        let chain = [leaf] + certificates.filter { $0.der != leaf.der }
        let stored = try storeCertificates(chain, for: key, on: context.token)
        try outputOptions.emit(Report(key: key.uri, sensitive: key.sensitive, extractable: key.extractable, thumbprint: leaf.thumbprint.hexSHA1, certificates: stored))
        if outputOptions.output == .text { FileHandle.standardError.write(Data("imported: key sensitive=\(key.sensitive) extractable=\(key.extractable), certificate \(leaf.thumbprint.hexSHA1)\n".utf8)) }
    }
}

/// The private key and certificates of a PFX (PKCS#12); the password is read like a PIN
/// (`passwordFile`, `$P11JWT_PFX_PASSWORD`, a prompt), never from argv.
func readPFX(_ pfx: String, passwordFile: String?) throws -> (PrivateKeyMaterial, [JWSCertificate]) {
    guard let data = FileManager.default.contents(atPath: pfx) else { throw CLIError(message: "cannot read the PFX file \(pfx)") }
    let password = try PINProvider(pinFile: passwordFile, environmentVariable: "P11JWT_PFX_PASSWORD")
        .secret(prompt: "Password for \(pfx): ")?.0
    let bundle: NIOSSLPKCS12Bundle
    do {
        bundle = try password.map { secret in
            try secret.withUnsafeBytes { try NIOSSLPKCS12Bundle(buffer: [UInt8](data), passphrase: Array($0)) }
        } ?? NIOSSLPKCS12Bundle(buffer: [UInt8](data))
    } catch {
        throw CLIError(message: """
            cannot open \(pfx) as PKCS#12: \(error)
            hint: check the password (--password-file, $P11JWT_PFX_PASSWORD or the prompt) and that the file is a .pfx/.p12
            """)
    }
    let certificates = try bundle.certificateChain.map { try JWSCertificate(der: try $0.toDERBytes()) }
    guard !certificates.isEmpty else { throw CLIError(message: "\(pfx) holds no certificate") }
    let material = try PrivateKeyMaterial(traditionalDER: try bundle.privateKey.derBytes)
    // As OpenSSL's PKCS12_parse gives them: the key's own certificate first, then the rest.
    return (material, certificates)
}
