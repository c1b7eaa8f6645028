import ArgumentParser
import Entra
import Foundation
import PKCS11

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "The settings every command resolves: flag, then environment, then config file, then default.",
        discussion: """
            The config file is YAML with flat 'key: value' lines, using the keys 'config show' lists:

              tenant: contoso.onmicrosoft.com
              client-id: 11111111-2222-3333-4444-555555555555
              key: "pkcs11:token=ops;object=app"
              object-id: 66666666-7777-8888-9999-000000000000

            It is --config FILE, else $P11JWT_CONFIG, else $XDG_CONFIG_HOME/p11jwt/config.yaml (XDG_CONFIG_HOME \
            defaults to $HOME/.config). An unknown key, a section or a list is an error naming the file and \
            line. The config.toml of earlier releases is still read, with a warning, when no config.yaml is \
            beside it.

            EXAMPLES:
              p11jwt config show
            """,
        subcommands: [Show.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "Print the effective settings and where each came from (flag, environment, file, default); never a secret.",
            discussion: """
                EXAMPLES:
                  p11jwt config show
                  p11jwt config show --config ./ci.yaml --output json
                  AZURE_TENANT_ID=contoso.onmicrosoft.com p11jwt config show --client-id 1111…
                """)

        @Option(name: .long, help: "The object id of the application. Default: $P11JWT_OBJECT_ID, else the config file's object-id.")
        var objectID: String?

        @OptionGroup var entra: EntraOptions
        @OptionGroup var keyOptions: KeyOptions
        @OptionGroup var stateDirectory: StateDirectoryOptions
        @OptionGroup var outputOptions: OutputOptions

        struct Row: Encodable {
            var key: String
            var value: String?
            /// flag, environment, file or default.
            var source: String
            /// The flag, the variable or the file.
            var from: String?
        }

        struct Report: Encodable {
            var configFile: String?
            var settings: [Row]
        }

        func flag(for setting: Setting) -> String? {
            switch setting.key {
            case Setting.tenant.key: return entra.tenant
            case Setting.clientID.key: return entra.clientID
            case Setting.objectID.key: return objectID
            case Setting.key.key: return keyOptions.key
            case Setting.module.key: return keyOptions.moduleOptions.module
            case Setting.pinFile.key: return keyOptions.pinOptions.pinFile
            case Setting.cloud.key: return entra.cloud?.rawValue
            case Setting.authorityHost.key: return entra.authorityHost
            case Setting.graphEndpoint.key: return entra.graphEndpoint
            case Setting.caFile.key: return entra.caFile
            case Setting.timeout.key: return entra.timeout.map(String.init)
            case Setting.stateDir.key: return stateDirectory.stateDir
            case Setting.logLevel.key: return keyOptions.moduleOptions.logLevel
            default: return nil
            }
        }

        /// What applies when nothing sets it.
        func defaultValue(for setting: Setting, cloud: EntraCloud) -> String? {
            switch setting.key {
            case Setting.module.key: return "p11-kit-proxy (every registered module)"
            case Setting.cloud.key: return EntraCloud.global.rawValue
            case Setting.authorityHost.key: return EntraEndpoints(cloud: cloud).authorityHost.absoluteString
            case Setting.graphEndpoint.key: return EntraEndpoints(cloud: cloud).graphEndpoint.absoluteString
            case Setting.stateDir.key: return CredentialRecords.defaultDirectory().path
            case Setting.logLevel.key: return "warning"
            case Setting.timeout.key: return "30"
            default: return nil
            }
        }

        func report() throws -> Report {
            let settings = try keyOptions.moduleOptions.settings()
            let cloud = try EntraOptions.cloud(settings, flag: entra.cloud)
            var rows: [Row] = []
            for setting in Setting.all {
                if let (value, source) = settings.resolve(setting, flag: flag(for: setting)) {
                    let shown = setting == .key ? Self.redacted(value) : value
                    switch source {
                    case .flag(let flag): rows.append(Row(key: setting.key, value: shown, source: "flag", from: flag))
                    case .environment(let name): rows.append(Row(key: setting.key, value: shown, source: "environment", from: "$" + name))
                    case .file(let path): rows.append(Row(key: setting.key, value: shown, source: "file", from: path))
                    case .defaultValue: rows.append(Row(key: setting.key, value: shown, source: "default"))
                    }
                } else {
                    rows.append(Row(key: setting.key, value: defaultValue(for: setting, cloud: cloud), source: "default"))
                }
            }
            // The PIN itself is never shown: only whether the environment holds one.
            if let pin = ProcessInfo.processInfo.environment["P11JWT_PIN"], !pin.isEmpty {
                rows.append(Row(key: "pin", value: "(set, not shown)", source: "environment", from: "$P11JWT_PIN"))
            }
            return Report(configFile: settings.filePath, settings: rows)
        }

        /// A key URI without its pin-value.
        static func redacted(_ text: String) -> String {
            (try? PKCS11URI(text).redacted) ?? "(not a pkcs11: URI)"
        }

        func run() throws {
            let report = try report()
            switch outputOptions.output {
            case .json:
                try printJSON(report)
            case .text:
                print("config file: \(report.configFile ?? "none (looked for \(Settings.defaultDirectory(environment: ProcessInfo.processInfo.environment))/config.yaml)")")
                let width = report.settings.map(\.key.count).max() ?? 0
                for row in report.settings {
                    let key = row.key.padding(toLength: width, withPad: " ", startingAt: 0)
                    let origin = row.from.map { "\(row.source) \($0)" } ?? row.source
                    print("\(key)  \(row.value ?? "(unset)")  [\(origin)]")
                }
            }
        }
    }
}
