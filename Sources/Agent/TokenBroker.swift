import Entra
import Foundation
import JOSE
import Logging
import PKCS11
import TokenSigning

/// Access tokens for the agent's clients: kept in memory per scope and key, refreshed 5 minutes
/// before expiry, and fetched once however many clients ask at the same time (single flight).
actor TokenBroker {
    let client: EntraClient
    nonisolated let graphScope: String
    let logger: Logger
    private var cached: [String: AccessToken] = [:]
    private var inFlight: [String: Task<AccessToken, any Error>] = [:]

    init(configuration: EntraClient.Configuration, logger: Logger) throws {
        var configuration = configuration
        configuration.cacheFile = nil  // the agent's cache is this actor
        client = try EntraClient(configuration, logger: logger)
        graphScope = configuration.graphScope
        self.logger = logger
    }

    /// `federation`: a token for that other app (client id, tenant), which trusts this one
    /// through a federated identity credential.
    func token(scope: String, signer: TokenSigner, federation: (clientID: String, tenant: String?)? = nil) async throws -> AccessToken {
        let via = federation.map { "\nvia \($0.clientID.lowercased()) \($0.tenant?.lowercased() ?? "")" } ?? ""
        let key = "\(scope)\n\(signer.certificate?.thumbprint.hexSHA1 ?? signer.key.uri)\(via)"
        if let token = cached[key], token.expiresOn.timeIntervalSinceNow > TokenCache.refreshMargin {
            return AccessToken(accessToken: token.accessToken, tokenType: token.tokenType, expiresOn: token.expiresOn, fromCache: true)
        }
        if let running = inFlight[key] { return try await running.value }
        let client = self.client
        let task = Task {
            if let federation {
                return try await client.tokenViaFederation(clientID: federation.clientID, tenant: federation.tenant, scope: scope, signer: signer)
            }
            return try await client.token(scope: scope, signer: signer, useCache: false)
        }
        inFlight[key] = task
        defer { inFlight[key] = nil }
        let token = try await task.value
        cached[key] = token
        logger.info("access token fetched", metadata: [
            "scope": "\(scope)", "expiresOn": "\(Int(token.expiresOn.timeIntervalSince1970))", "viaFic": "\(federation?.clientID ?? "-")",
        ])
        return token
    }

    /// The tokens held now (for `agent status`): their scope and expiry, never the token.
    func held() -> [AgentAPI.Status.CachedToken] {
        let now = Date()
        return cached.filter { $0.value.expiresOn > now }.map { key, token in
            let parts = key.split(separator: "\n", omittingEmptySubsequences: false)
            return AgentAPI.Status.CachedToken(
                scope: String(parts.first ?? ""), expiresOn: ISO8601DateFormatter().string(from: token.expiresOn),
                viaFic: parts.count > 2 ? String(parts[2].dropFirst("via ".count).split(separator: " ").first ?? "") : nil)
        }.sorted { ($0.scope, $0.expiresOn) < ($1.scope, $1.expiresOn) }
    }

    func shutdown() async {
        await client.shutdown()
    }
}
