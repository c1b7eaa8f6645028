import ArgumentParser
import Foundation
import JOSE
import PKCS11
import TokenSigning

struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Generate a signing key pair inside the token and print its URI.",
        discussion: """
            The private key is created with CKA_SENSITIVE=true and CKA_EXTRACTABLE=false: it never leaves the token. \
            On a terminal the URI is printed single-quoted, ready to paste; into a pipe it is printed as is.

            EXAMPLES:
              p11jwt keygen --token pkcs11:token=ops --label app --key-type ec:p256
              key=$(p11jwt keygen --token pkcs11:token=ops --label app)
            """)

    @Option(name: .long, help: ArgumentHelp("The token (a pkcs11: URI).", valueName: "uri"))
    var token: String

    @Option(name: .long, help: "CKA_LABEL of the new key pair.")
    var label: String

    @Option(name: .long, help: "CKA_ID as hex (default: 16 random bytes).")
    var id: String?

    @Option(name: .long, help: "rsa:2048, rsa:3072, rsa:4096, ec:p256, ec:p384 or ec:p521 (the token's mechanism info may allow fewer).")
    var keyType: String = "rsa:2048"

    /// `--type`, the 0.9 name of --key-type: still taken, not shown.
    @Option(name: .customLong("type"), help: .hidden)
    var legacyType: String?

    var type: String { legacyType ?? keyType }

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var pinOptions: PINOptions
    @OptionGroup var outputOptions: OutputOptions

    struct Report: Encodable {
        var uri: String
        var label: String?
        var id: String?
        var type: String
        var publicKey: String?
    }

    func validate() throws {
        _ = try parseID()
        do { _ = try Token.KeySpec(type) } catch let error as PKCS11Error {
            throw ValidationError(error.message + (error.hint.map { "; \($0)" } ?? ""))
        }
    }

    func parseID() throws -> [UInt8]? {
        guard let id else { return nil }
        let hex = id.hasPrefix("0x") ? String(id.dropFirst(2)) : id
        guard let bytes = Hex.decode(hex), !bytes.isEmpty else {
            throw ValidationError("--id must be an even number of hex digits, e.g. 01a2")
        }
        return bytes
    }

    func run() throws {
        let context = try TokenContext.open(token, moduleOptions: moduleOptions, pins: pinOptions, login: true)
        defer { context.close() }
        let key = try context.token.generateKeyPair(try Token.KeySpec(type), label: label, id: try parseID())
        let report = Report(
            uri: key.uri, label: key.label, id: key.identity.idHex, type: key.typeDescription,
            publicKey: try key.publicKey?.pem())
        if outputOptions.output == .json { return try printJSON(report) }
        // On a terminal, quoted for pasting into a shell (the URI has ';' and '?'); to a pipe or
        // file, as is, for `uri=$(p11jwt keygen …)`.
        print(isatty(STDOUT_FILENO) == 1 ? shellQuoted(key.uri) : key.uri)
    }
}
