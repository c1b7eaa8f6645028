import Agent
import BuildInfo
import CommandLineSupport
import Diagnostics
import ArgumentParser
import Entra
import Foundation
import PKCS11
import TokenSigning

@main
struct P11JWT: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "p11jwt",
        abstract: "Sign with keys that never leave an HSM or smartcard (PKCS#11).",
        discussion: """
            Keys are chosen with RFC 7512 pkcs11: URIs; the listing commands print them. \
            PINs come from pin-source/pin-value in the URI, --pin-file, $P11JWT_PIN, or a prompt — \
            never from a command-line value. \
            Exit status: 0 success, 1 the operation failed, 2 usage error.
            """,
        version: BuildInfo.version,
        subcommands: [
            // 0.9 names, not listed.
            LegacyTokenCommand.self, LegacyImportCommand.self, LegacyAddKeyCommand.self, LegacyRemoveKeyCommand.self,
            LegacyCredentialsCommand.self,
        ],
        groupedSubcommands: [
            CommandGroup(name: "TOKEN (PKCS#11)", subcommands: [
                TokensCommand.self, ObjectsCommand.self, MechanismsCommand.self, KeygenCommand.self, ImportCommand.self,
                CertCommand.self, ExportCommand.self, DestroyCommand.self,
            ]),
            CommandGroup(name: "SIGNING", subcommands: [
                SignCommand.self, JWTCommand.self, AssertionCommand.self, PopCommand.self, DecodeCommand.self, ThumbprintCommand.self,
            ]),
            CommandGroup(name: "ENTRA ID", subcommands: [
                AccessTokenCommand.self, CredentialCommand.self, RotateCommand.self, BootstrapCommand.self, FleetCommand.self, FICCommand.self,
            ]),
            CommandGroup(name: "SERVICE AND SETTINGS", subcommands: [AgentCommand.self, ConfigCommand.self]),
        ])

    /// Runs the command with the documented exit statuses (0 / 1 / 2); library errors are
    /// rendered by ``ErrorReport``.
    static func main() async {
        await runWithExitStatuses { error in
            (error as? any DiagnosticError).map { ErrorReport.write($0) }
        }
    }
}

/// An error from the command-line layer itself.
struct CLIError: DiagnosticError {
    var message: String
    /// 1: the operation failed; 2: usage.
    var exitCode: Int32 = 1
    var hint: String?
    var location: SourceLocation

    init(message: String, exitCode: Int32 = 1, hint: String? = nil, file: String = #fileID, line: Int = #line) {
        self.message = message
        self.exitCode = exitCode
        self.hint = hint
        self.location = SourceLocation(file: file, line: line)
    }

    static func usage(_ message: String, file: String = #fileID, line: Int = #line) -> CLIError {
        CLIError(message: message, exitCode: 2, file: file, line: line)
    }

    var domain: String { "cli" }
    var codeName: String { exitCode == 2 ? "usage" : "failed" }
    var isUsageError: Bool { exitCode == 2 }
}
