import Diagnostics
import Foundation

/// The one place the CLI turns an error into what the user sees and an exit status: text (the
/// message with the failing PKCS#11 function and `CKR_*` value, the hint, then the flags and
/// environment variables for the settings the hint names) or, under `--output json`, a JSON
/// object on standard error. Exit status: 2 for a usage error, 1 otherwise.
enum ErrorReport {
    static func exitCode(for error: any DiagnosticError) -> Int32 { error.isUsageError ? 2 : 1 }

    /// Writes the error to standard error and returns the exit status.
    static func write(_ error: any DiagnosticError, arguments: [String] = CommandLine.arguments) -> Int32 {
        let text = wantsJSON(arguments) ? json(error) : self.text(error)
        FileHandle.standardError.write(Data((text + "\n").utf8))
        return exitCode(for: error)
    }

    static func text(_ error: any DiagnosticError) -> String {
        var text = "error: " + error.message
        if let function = error.details["function"] {
            text += " (\(function)\(error.details["returnValue"].map { ": \($0)" } ?? ""))"
        }
        if let hint = error.hint { text += "\nhint: \(hint)" }
        let settings = error.settings.compactMap(SettingNames.wording)
        if !settings.isEmpty { text += "\nset with: \(settings.joined(separator: "; "))" }
        if let next = nextStep(error) { text += "\nnext: \(next)" }
        return text
    }

    /// The command that helps next, by the error's code: libraries do not name commands.
    static func nextStep(_ error: any DiagnosticError) -> String? {
        switch error.qualifiedCode {
        case "rotation.notPropagated", "rotation.addKeyUncertain", "rotation.keyMissing":
            return "run 'p11jwt rotate' again with the same options to resume"
        case "rotation.cannotAbandon":
            return "run 'p11jwt rotate' again to finish"
        case "pkcs11.mechanismUnsupported":
            return "see 'p11jwt mechanisms'"
        case "pkcs11.objectNotFound", "pkcs11.objectAmbiguous", "pkcs11.certificateMismatch":
            return "list the token's objects with 'p11jwt objects'"
        case "pkcs11.tokenNotFound", "pkcs11.tokenAmbiguous":
            return "list tokens with 'p11jwt tokens'"
        case "entra.tokenRefused" where error.details["aadsts"] == "AADSTS700027":
            return "register the certificate with 'p11jwt credential add', or see the app's credentials with 'p11jwt credential list'"
        case "entra.tokenRefused" where ["AADSTS700211", "AADSTS700212", "AADSTS700213"].contains(error.details["aadsts"] ?? ""):
            return "add the federated credential on the target app with 'p11jwt fic add' (or 'entra-emulator app fic-add')"
        case "entra.tokenRefused" where error.details["aadsts"] == "AADSTS1000502":
            return "rotate with 'p11jwt rotate'"
        default:
            return nil
        }
    }

    struct Body: Encodable {
        struct Inner: Encodable {
            var code: String
            var message: String
            var hint: String?
            var details: [String: String]?
            var settings: [String]?
            var location: String
        }
        var error: Inner
    }

    static func json(_ error: any DiagnosticError) -> String {
        let body = Body(error: .init(
            code: error.qualifiedCode, message: error.message, hint: error.hint,
            details: error.details.isEmpty ? nil : error.details,
            settings: error.settings.isEmpty ? nil : error.settings.compactMap(SettingNames.flag),
            location: error.location.description))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(body)).map { String(decoding: $0, as: UTF8.self) } ?? #"{"error":{"code":"\#(error.qualifiedCode)"}}"#
    }

    /// `--output json` / `--output=json` / `-o json` anywhere on the command line.
    static func wantsJSON(_ arguments: [String]) -> Bool {
        for (i, argument) in arguments.enumerated() {
            if argument == "--output=json" { return true }
            if (argument == "--output" || argument == "-o"), i + 1 < arguments.count, arguments[i + 1] == "json" { return true }
        }
        return false
    }
}

/// How the CLI spells the settings libraries name in their errors (their config-file names).
enum SettingNames {
    /// Names libraries use that are flags only (no config-file key).
    static let flags: [String: String] = ["cert": "--cert / --cert-file", "key-type": "--key-type"]

    static func flag(_ name: String) -> String? { flags[name] ?? Setting.named(name)?.flag ?? "--\(name)" }

    /// `--tenant or $AZURE_TENANT_ID` (and the config file's key when it has one).
    static func wording(_ name: String) -> String? {
        guard let flag = flag(name) else { return nil }
        guard let setting = Setting.named(name) else { return flag }
        var ways = [flag]
        if let variable = setting.environment { ways.append("$\(variable)") }
        if name == "pin-file" { ways.append("$P11JWT_PIN") }
        if Setting.all.contains(setting) { ways.append("'\(setting.key):' in the config file") }
        return ways.count == 2 ? ways.joined(separator: " or ") : ways.dropLast().joined(separator: ", ") + " or " + ways.last!
    }
}
