import ArgumentParser
import Entra
import Foundation
import PKCS11
import Rotation
import TokenSigning

struct BootstrapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bootstrap",
        abstract: "From a short-lived temporary credential to a key made in the token: import, rotate, remove and destroy the temporary one.",
        discussion: """
            A central provisioning step gives each new application a temporary certificate valid for a day \
            or two (a PFX, e.g. from 'p11jwt cert create --days 2' on a central token, or any CA). bootstrap \
            imports it into the token (not extractable), rotates the application to a new key generated in the \
            token (addKey, proof by the temporary key), removes the temporary credential (removeKey, proof by \
            the new key), destroys the temporary key on the token, and checks that the new key gets a token. \
            The new key ends with --label. With --key instead of --pfx, the temporary key is one already on \
            the token.

            The temporary credential's keyId comes from --temporary-key-id (the central step has it), else \
            from a Graph read with the temporary key (which needs a read permission). A journal in \
            --state-dir makes the run crash-safe: run bootstrap again with the same options to resume.

            EXAMPLES:
              p11jwt bootstrap --pfx temp.pfx --token pkcs11:token=ops --label orders \\
                --object-id 6666… --temporary-key-id 0a1b… --tenant T --client-id C
              p11jwt bootstrap --key 'pkcs11:token=ops;object=temp' --object-id 6666…
            """)

    @Option(name: .long, help: ArgumentHelp("The temporary credential as a PFX (PKCS#12): key and certificate.", valueName: "file"))
    var pfx: String?

    @Option(name: .long, help: ArgumentHelp("Read the PFX password from this file (default: $P11JWT_PFX_PASSWORD, else a prompt).", valueName: "file"))
    var passwordFile: String?

    @Option(name: .long, help: ArgumentHelp("With --pfx: the token to import into and make the new key in (a pkcs11: URI).", valueName: "uri"))
    var token: String?

    @Option(name: .long, help: "With --pfx: the label of the key the application ends with.")
    var label: String?

    @Option(name: .long, help: ArgumentHelp("The temporary credential's keyId on the application (default: read from Graph).", valueName: "guid"))
    var temporaryKeyID: String?

    @OptionGroup var newKey: NewKeyOptions
    @OptionGroup var graph: GraphOptions
    @OptionGroup var outputOptions: OutputOptions

    func validate() throws {
        if pfx != nil && graph.keyOptions.key != nil { throw ValidationError("give --pfx or --key (the temporary key on the token), not both") }
        if pfx != nil && (token == nil || label == nil) { throw ValidationError("--pfx needs --token (where to import) and --label (the key's label)") }
        if pfx == nil && (token != nil || label != nil || passwordFile != nil) {
            throw ValidationError("--token, --label and --password-file go with --pfx; with --key the temporary key is on its token already")
        }
    }

    struct Report: CommandReport {
        var bootstrap: Bootstrap.Report
        var text: String? {
            var lines = [
                "bootstrapped \(bootstrap.objectID)\(bootstrap.resumed ? " (resumed)" : "")",
                "new key: \(bootstrap.newKeyURI ?? "?")",
                "new certificate: \(bootstrap.newThumbprint ?? "?")\(bootstrap.newKeyId.map { " keyId \($0)" } ?? "")",
                "temporary credential \(bootstrap.temporaryThumbprint ?? "?") removed from the application and its key destroyed on the token",
            ]
            if bootstrap.verified { lines.append("checked: the new key gets a token") }
            return lines.joined(separator: "\n")
        }
        func encode(to encoder: Encoder) throws { try bootstrap.encode(to: encoder) }
    }

    func run() async throws {
        let prepared = try graph.prepare()
        if let temporaryKeyID { _ = try EntraValue.guid(temporaryKeyID, what: "temporary key id", hint: "give the temporary credential's keyId GUID") }
        var options = Bootstrap.Options()
        options.rotation = try newKey.rotationOptions()
        options.temporaryKeyID = temporaryKeyID?.lowercased()
        options.checkpoint = testCrashHook()
        // The PFX is read (and its password asked for) before the token's PIN.
        let material = try pfx.map { try readPFX($0, passwordFile: passwordFile) }
        let keyOptions = graph.keyOptions
        let context: TokenContext
        if let token {
            context = try await TokenContext.open(token, moduleOptions: keyOptions.moduleOptions, pins: keyOptions.pinOptions, login: true)
        } else {
            context = try await keyOptions.open()
        }
        defer { context.close() }
        let temporary: Bootstrap.Temporary
        if let (key, chain) = material, let label {
            temporary = .material(key, chain: chain, label: label)
        } else {
            let key = try await BlockingExecutor.shared.run { try context.token.signingKey(context.uri) }
            guard let id = key.id, !id.isEmpty else { throw CLIError(message: "the temporary key \(key.uri) has no CKA_ID") }
            temporary = .onToken(id: id)
        }
        let showProgress = outputOptions.output == .text
        let report = try await withEntraClient(prepared.configuration, logger: context.logger) { client in
            guard let objectID = prepared.objectID else {
                throw CLIError(message: "bootstrap needs the application's object id", exitCode: 2, hint: "give --object-id")
            }
            let rotation = try Rotation(
                client: client, token: context.token, target: prepared.target, objectID: objectID, stateDirectory: prepared.stateDirectory,
                logger: context.logger, progress: { line in
                    if showProgress { FileHandle.standardError.write(Data("bootstrap: \(line)\n".utf8)) }
                })
            return try await Bootstrap(rotation: rotation).run(temporary, options: options)
        }
        try outputOptions.emit(Report(bootstrap: report))
    }
}
