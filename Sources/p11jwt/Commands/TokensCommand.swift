import ArgumentParser
import Foundation
import PKCS11
import TokenSigning

struct TokensCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokens", abstract: "List slots and tokens, their flags, PIN state and URIs.",
        discussion: """
            EXAMPLES:
              p11jwt tokens
              p11jwt tokens --module opensc-pkcs11 --output json
            """)

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var outputOptions: OutputOptions

    struct Report: Encodable {
        var module: ModuleReport
        var slots: [SlotReport]
    }

    struct ModuleReport: Encodable {
        var spec: String
        var path: String?
        var manufacturer: String
        var description: String
        var libraryVersion: String
        var cryptokiVersion: String
    }

    struct SlotReport: Encodable {
        var slotID: UInt
        var description: String
        var tokenPresent: Bool
        var token: TokenReport?
    }

    struct TokenReport: Encodable {
        var label: String
        var manufacturer: String
        var model: String
        var serial: String
        var initialized: Bool
        var flags: [String]
        var pinState: String
        var loginRequired: Bool
        var protectedAuthenticationPath: Bool
        var uri: String
    }

    func run() throws {
        let logger = try moduleOptions.makeLogger()
        let module = try Module.load(moduleOptions.spec(for: nil), logger: logger)
        defer { module.finalize() }
        let slots = try module.slots(tokenPresent: false)
        let report = Report(
            module: ModuleReport(
                spec: module.spec.description, path: module.path, manufacturer: module.info.manufacturer,
                description: module.info.description, libraryVersion: module.info.libraryVersion,
                cryptokiVersion: module.info.cryptokiVersion),
            slots: slots.map { slot in
                var token: TokenReport?
                if slot.tokenPresent, let info = try? slot.tokenInfo() {
                    token = TokenReport(
                        label: info.label, manufacturer: info.manufacturer, model: info.model,
                        serial: info.serialNumber, initialized: info.isInitialized, flags: info.flagNames,
                        pinState: info.pinState.description, loginRequired: info.loginRequired,
                        protectedAuthenticationPath: info.protectedAuthenticationPath,
                        uri: PKCS11URI.format(token: info, module: module))
                }
                return SlotReport(slotID: UInt(slot.id), description: slot.description, tokenPresent: slot.tokenPresent, token: token)
            })
        if outputOptions.output == .json { return try printJSON(report) }
        print("module: \(report.module.spec) — \(module.info.manufacturer) \(module.info.description) \(module.info.libraryVersion)")
        if slots.isEmpty { print("no slots") }
        for slot in report.slots {
            guard let token = slot.token else {
                print("slot \(slot.slotID): \(slot.description) — no token")
                continue
            }
            guard token.initialized else {
                print("slot \(slot.slotID): \(slot.description) — token not initialised")
                continue
            }
            print("slot \(slot.slotID): token '\(token.label)' (\(token.manufacturer) \(token.model), serial \(token.serial))")
            print("  flags: \(token.flags.joined(separator: " "))")
            print("  user PIN: \(token.pinState)\(token.protectedAuthenticationPath ? " (PIN pad)" : "")")
            print("  uri: \(token.uri)")
        }
    }
}
