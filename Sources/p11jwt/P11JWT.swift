import Agent
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
            Keys are chosen with RFC 7512 pkcs11: URIs; the listing commands print them.
            PINs come from pin-source/pin-value in the URI, --pin-file, $P11JWT_PIN, or a prompt —
            never from a command-line value.
            Exit status: 0 success, 1 the operation failed, 2 usage error.
            """,
        subcommands: [
            TokensCommand.self, ObjectsCommand.self, MechanismsCommand.self, KeygenCommand.self,
            SignCommand.self, DestroyCommand.self, AssertionCommand.self, PopCommand.self, JWTCommand.self,
            DecodeCommand.self, ThumbprintCommand.self, TokenCommand.self, AddKeyCommand.self, RemoveKeyCommand.self,
            CredentialsCommand.self, CertCommand.self, ImportCommand.self, RotateCommand.self, AgentCommand.self,
        ])

    /// Runs the command and maps errors to the documented exit codes (0 / 1 / 2).
    static func main() async {
        let command: ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            if exitCode(for: error) == .success {
                // --help, --version: the text on standard output, exit 0.
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            // Every parse error is a usage error: exit 2.
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            Foundation.exit(2)
        }
        do {
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                var command = command
                try command.run()
            }
        } catch let error as PKCS11Error {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        } catch let error as EntraError {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(error.code == .invalidParameter ? 2 : 1)
        } catch let error as AgentClientError {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        } catch let error as AgentAPI.ErrorBody {
            FileHandle.standardError.write(Data("error: \(error.message)\(error.hint.map { "\nhint: \($0)" } ?? "")\n".utf8))
            Foundation.exit(1)
        } catch let error as CLIError {
            FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
            Foundation.exit(error.exitCode)
        } catch let error as ExitCode {
            Foundation.exit(error.rawValue)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                // --help parses as the built-in help command, whose run() throws the request.
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            if code == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(2)
            }
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        }
    }
}

/// An error from the command-line layer itself.
struct CLIError: Error {
    var message: String
    /// 1: the operation failed; 2: usage.
    var exitCode: Int32 = 1

    static func usage(_ message: String) -> CLIError { CLIError(message: message, exitCode: 2) }
}
