import Agent
import ArgumentParser
import Foundation

/// `p11jwt agent status`: what a running agent serves and how it is doing, from its socket.
struct AgentStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a running agent's token and login, identities, endpoints, cached tokens and latest errors.",
        discussion: """
            Asks the agent over its socket: --socket, else $P11JWT_AGENT_SOCK, else the agent's \
            default socket. Exits 0 when the agent answers and its token is ready, 1 when the agent \
            cannot be reached or its token is unavailable, so it also serves as a health check. It \
            shows no secret: no PIN, access token or identity header, and key URIs without their PIN \
            attributes.

            EXAMPLES:
              p11jwt agent status
              p11jwt agent status --socket /run/p11jwt/agent.sock --output json
            """)

    @Option(name: .long, help: ArgumentHelp("The agent's socket (default: $P11JWT_AGENT_SOCK, else the agent's default socket).", valueName: "path"))
    var socket: String?

    @OptionGroup var outputOptions: OutputOptions

    struct Report: CommandReport {
        var status: AgentAPI.Status

        func encode(to encoder: any Encoder) throws { try status.encode(to: encoder) }

        var text: String? {
            let s = status
            var lines = ["agent: pid \(s.pid), p11jwt \(s.version), up \(Self.duration(s.uptimeSeconds)) (since \(s.startedAt))"]
            var token = "token: '\(s.token.label)' (\(s.token.manufacturer) \(s.token.model), serial \(s.token.serial)) via \(s.token.module): \(s.token.state)"
            token += s.token.loggedIn ? ", logged in" : ", not logged in"
            if let reason = s.token.reason { token += " — \(reason)\(s.token.since.map { " since \($0)" } ?? "")" }
            lines.append(token)
            lines.append("default key: \(s.defaultKey)")
            lines.append("socket: \(s.endpoints.socket)\(s.endpoints.socketFromSystemd == true ? " (from systemd)" : "")")
            if let url = s.endpoints.managedIdentity { lines.append("managed identity: \(url)") }
            if let url = s.endpoints.keyVault { lines.append("key vault: \(url)") }
            if let path = s.endpoints.assertionFile { lines.append("assertion file: \(path)") }
            lines.append(s.identities.isEmpty ? "identities: none (the agent only signs)" : "identities:")
            for identity in s.identities {
                lines.append("  \(identity.name)\(identity.isDefault ? " (default)" : ""): client \(identity.clientId), tenant \(identity.tenant)")
                var key = "    key \(identity.key)"
                if let thumbprint = identity.thumbprint { key += ", certificate \(thumbprint)" }
                if let expires = identity.certificateExpires { key += " expires \(expires)" }
                lines.append(key)
                if !identity.allowUids.isEmpty || !identity.allowGids.isEmpty {
                    lines.append("    limited to uids [\(identity.allowUids.map(String.init).joined(separator: ", "))] gids [\(identity.allowGids.map(String.init).joined(separator: ", "))]")
                }
                for cached in identity.cachedTokens {
                    lines.append("    cached token: \(cached.scope)\(cached.viaFic.map { " via \($0)" } ?? "") until \(cached.expiresOn)")
                }
            }
            lines.append("requests: \(s.requests.served) served, \(s.requests.refused) refused or failed")
            if !s.recentErrors.isEmpty {
                lines.append("latest errors:")
                for error in s.recentErrors {
                    lines.append("  \(error.time) \(error.operation): \(error.error) — \(error.message)")
                }
            }
            return lines.joined(separator: "\n")
        }

        static func duration(_ seconds: Int) -> String {
            if seconds >= 86_400 { return "\(seconds / 86_400)d \(seconds % 86_400 / 3600)h" }
            if seconds >= 3600 { return "\(seconds / 3600)h \(seconds % 3600 / 60)m" }
            if seconds >= 60 { return "\(seconds / 60)m \(seconds % 60)s" }
            return "\(seconds)s"
        }
    }

    func run() async throws {
        let path = socket ?? runningAgentSocket(noAgent: false) ?? AgentCommand.defaultSocket()
        guard AgentClient.isListening(path) else {
            throw CLIError(
                message: "no agent is listening on \(path)",
                hint: "start one (p11jwt agent, or systemctl start p11jwt-agent), or name its socket with --socket / P11JWT_AGENT_SOCK")
        }
        let status: AgentAPI.Status = try await AgentClient(socketPath: path).call("GET", "/v1/status")
        try outputOptions.emit(Report(status: status))
        if status.token.state != "ready" {
            throw ExitCode(1)
        }
    }
}
