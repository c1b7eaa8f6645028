import ArgumentParser
import Foundation
import PKCS11
import TokenSigning

struct DestroyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "destroy",
        abstract: "Destroy the objects a URI selects (keys, certificates).",
        discussion: """
            The URI must name objects (object=, id= or type=). Asks for confirmation on a terminal; elsewhere --yes is required.

            EXAMPLES:
              p11jwt destroy 'pkcs11:token=ops;object=old-app' --yes
            """)

    @Argument(help: ArgumentHelp("The objects (a pkcs11: URI).", valueName: "uri"))
    var uri: String

    @Flag(name: .long, help: "Do not ask for confirmation.")
    var yes = false

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var pinOptions: PINOptions
    @OptionGroup var outputOptions: OutputOptions

    struct Report: CommandReport {
        struct Object: Encodable {
            var objectClass: String
            var uri: String
        }
        var destroyed: [Object]
        var text: String? { destroyed.map { "destroyed \($0.objectClass): \($0.uri)" }.joined(separator: "\n") }
    }

    func run() throws {
        let context = try TokenContext.open(uri, moduleOptions: moduleOptions, pins: pinOptions, login: true)
        defer { context.close() }
        guard context.uri.objectLabel != nil || context.uri.objectID != nil else {
            throw CLIError.usage("refusing to destroy: the URI names no object (add object=LABEL or id=…)")
        }
        let objects = try context.token.objects(matching: context.uri)
        guard !objects.isEmpty else {
            throw PKCS11Error(.objectNotFound, "no object matches \(context.uri.redacted)")
        }
        if !yes {
            for object in objects { FileHandle.standardError.write(Data("\(object.objectClass): \(object.uri)\n".utf8)) }
            guard isatty(STDIN_FILENO) == 1 else {
                throw CLIError.usage("not a terminal: pass --yes to destroy these \(objects.count) object(s)")
            }
            FileHandle.standardError.write(Data("destroy these \(objects.count) object(s)? [y/N] ".utf8))
            guard let answer = readLine(), ["y", "yes"].contains(answer.lowercased()) else {
                throw CLIError(message: "not confirmed; nothing destroyed")
            }
        }
        try context.token.destroy(objects)
        try outputOptions.emit(Report(destroyed: objects.map { Report.Object(objectClass: "\($0.objectClass)", uri: $0.uri) }))
    }
}
