import ArgumentParser
import Foundation

// The 0.9 names of renamed commands, kept for one release: each parses and runs as the new
// command, is not listed in help, and says its new name on stderr.

/// Says on stderr that `old` is now `new`.
func warnRenamed(_ old: String, _ new: String) {
    FileHandle.standardError.write(Data("p11jwt: warning: '\(old)' is now '\(new)'; the old name goes in the next release\n".utf8))
}

struct LegacyTokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "token", shouldDisplay: false)
    @OptionGroup var command: AccessTokenCommand
    func run() async throws {
        warnRenamed("token", "access-token")
        try await command.run()
    }
}

struct LegacyImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "import", shouldDisplay: false)
    @OptionGroup var command: ImportCommand
    func run() throws {
        warnRenamed("import", "import-pfx")
        try command.run()
    }
}

struct LegacyAddKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add-key", shouldDisplay: false)
    @OptionGroup var command: AddKeyCommand
    func run() async throws {
        warnRenamed("add-key", "credential add")
        try await command.run()
    }
}

struct LegacyRemoveKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove-key", shouldDisplay: false)
    @OptionGroup var command: RemoveKeyCommand
    func run() async throws {
        warnRenamed("remove-key", "credential remove")
        try await command.run()
    }
}

struct LegacyCredentialsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "credentials", shouldDisplay: false)
    @OptionGroup var command: CredentialsCommand
    func run() async throws {
        warnRenamed("credentials", "credential list")
        try await command.run()
    }
}
