import Foundation
import Testing
import TestSupport

/// The systemd units in deploy/systemd: accepted by `systemd-analyze verify` (with ExecStart on
/// the binary under test, since the package's /usr/bin/p11jwt is not installed here), sandboxed
/// as the README says, the PIN from systemd's credentials, and each ExecStart a command line the
/// CLI parses (it fails on the missing config, not on an unknown option).
@Suite("systemd units")
struct ServiceUnitTests {
    static let directory = repositoryRoot.appendingPathComponent("deploy/systemd")
    static let units = ["p11jwt-agent.service", "p11jwt-agent.socket", "p11jwt-rotate.service", "p11jwt-rotate.timer"]

    @Test func systemdAnalyzeVerifyAcceptsTheUnits() throws {
        let binary = try p11jwtBinary
        let dir = TemporaryDirectory("p11jwt-units")
        var paths: [String] = []
        for unit in Self.units {
            let text = try String(contentsOf: Self.directory.appendingPathComponent(unit), encoding: .utf8)
            paths.append(try dir.write(unit, text.replacingOccurrences(of: "/usr/bin/p11jwt", with: binary)))
        }
        let verified = try run("systemd-analyze", ["verify", "--man=no"] + paths)
        #expect(verified.status == 0, "\(verified.stderr)")
        // Warnings (a directive misspelt, a value not parsed) fail too.
        #expect(verified.stderr.isEmpty, "\(verified.stderr)")
    }

    @Test(arguments: ["p11jwt-agent.service", "p11jwt-rotate.service"])
    func theServicesAreSandboxedAndTakeThePINFromCredentials(_ unit: String) throws {
        let text = try String(contentsOf: Self.directory.appendingPathComponent(unit), encoding: .utf8)
        let lines = Set(text.split(separator: "\n").map(String.init))
        for directive in [
            "User=p11jwt", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "LoadCredential=pin:/etc/p11jwt/pin",
            "Environment=P11JWT_PIN_FILE=%d/pin", "CapabilityBoundingSet=", "LimitCORE=0",
        ] {
            #expect(lines.contains(directive), "\(unit) lacks \(directive)")
        }
        if unit == "p11jwt-agent.service" {
            // systemctl reload re-reads the identities (SIGHUP).
            #expect(lines.contains("ExecReload=/bin/kill -HUP $MAINPID"))
        }
        // No PIN on a command line or in the unit's environment.
        #expect(!text.contains("P11JWT_PIN=") && !text.contains("pin-value"))

        // ExecStart parses: the CLI stops at the missing file, with exit 2 and its message.
        let exec = try #require(lines.first { $0.hasPrefix("ExecStart=") })
        var arguments = exec.dropFirst("ExecStart=".count).split(separator: " ").map(String.init)
        #expect(arguments.removeFirst() == "/usr/bin/p11jwt")
        let dir = TemporaryDirectory("p11jwt-exec")
        arguments = arguments.map { $0.replacingOccurrences(of: "/etc/p11jwt", with: dir.file("etc")).replacingOccurrences(of: "/run/p11jwt", with: dir.file("run")) }
        let result = try run(try p11jwtBinary, arguments, environment: ["HOME": dir.path, "PATH": "/usr/bin:/bin"])
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("cannot read the") && result.stderr.contains(dir.file("etc")), "\(result.stderr)")
    }

    /// The agent's socket is the socket unit's: the service requires it, names its path, and has
    /// no runtime directory (systemd would remove it, socket and all, when the agent stops); the
    /// unit passes one listening socket (Accept=no), which the agent takes.
    @Test func theAgentsSocketIsTheSocketUnits() throws {
        func lines(_ unit: String) throws -> [String: String] {
            let text = try String(contentsOf: Self.directory.appendingPathComponent(unit), encoding: .utf8)
            var lines: [String: String] = [:]
            for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                guard let equals = line.firstIndex(of: "=") else { continue }
                let key = String(line[..<equals]), value = String(line[line.index(after: equals)...])
                lines[key] = lines[key].map { $0 + " " + value } ?? value  // After= lines add up
            }
            return lines
        }
        let socket = try lines("p11jwt-agent.socket"), service = try lines("p11jwt-agent.service")
        let path = try #require(socket["ListenStream"])
        #expect(path.hasPrefix("/") && !path.contains(" "), "one ListenStream= with a path: \(path)")
        #expect(socket["Accept"] == "no" && socket["SocketUser"] == service["User"])
        #expect(service["Requires"]?.contains("p11jwt-agent.socket") == true && service["After"]?.contains("p11jwt-agent.socket") == true)
        #expect(service["Also"] == "p11jwt-agent.socket")
        #expect(service["ExecStart"]?.contains("--socket \(path)") == true, "\(service["ExecStart"] ?? "")")
        #expect(service["RuntimeDirectory"] == nil)
    }

    @Test func theTimerRunsTheRotationDailyWithARandomDelay() throws {
        let text = try String(contentsOf: Self.directory.appendingPathComponent("p11jwt-rotate.timer"), encoding: .utf8)
        #expect(text.contains("OnCalendar=daily"))
        #expect(text.contains("RandomizedDelaySec="))
        #expect(text.contains("Persistent=true"))
    }
}
