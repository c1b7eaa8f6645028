import ArgumentParser
import BuildInfo
import Foundation

extension ParsableCommand {
    /// Parses the command line, runs the command and exits with the project's statuses (see
    /// ``ExitStatus``): `--help` / `--version` 0 on standard output; every parse or validation
    /// error 2; a failure 1. `report` turns an error of the executable's own into a message
    /// on standard error and a status (nil: the default `error: …`, status 1).
    public static func runWithExitStatuses(report: @Sendable (any Error) -> Int32? = { _ in nil }) async -> Never {
        let command: ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            exit(forParseError: error)
        }
        do {
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                var command = command
                try command.run()
            }
            Foundation.exit(ExitStatus.success)
        } catch let error as ExitCode {
            Foundation.exit(error.rawValue)
        } catch {
            if let status = report(error) { Foundation.exit(status) }
            let code = exitCode(for: error)
            // --help parses as the built-in help command, whose run() throws the request.
            if code == .success || code == .validationFailure { exit(forParseError: error) }
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(ExitStatus.failure)
        }
    }

    private static func exit(forParseError error: any Error) -> Never {
        if exitCode(for: error) == .success {
            print(fullMessage(for: error))
            Foundation.exit(ExitStatus.success)
        }
        FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
        Foundation.exit(ExitStatus.usage)
    }
}
