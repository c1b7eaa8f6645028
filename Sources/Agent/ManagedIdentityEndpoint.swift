import Entra
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import ServiceLifecycle

/// The App Service managed-identity protocol (api-version 2019-08-01) on 127.0.0.1, answering
/// with tokens got with the hardware key, so `ManagedIdentityCredential` / `DefaultAzureCredential`
/// in any Azure SDK and `az login --identity` work unmodified:
///
///     GET {IDENTITY_ENDPOINT}?resource=https://graph.microsoft.com&api-version=2019-08-01
///     X-IDENTITY-HEADER: {IDENTITY_HEADER}
///     → {"access_token","expires_on":"<epoch seconds>","resource","token_type":"Bearer","client_id"}
///
/// A missing or wrong header gets 401, a bad resource or api-version 400, each with a JSON error.
struct ManagedIdentityEndpoint: Sendable {
    static let path = "/msi/token"
    let agent: Agent
    let port: Int
    let logger: Logger

    func application(onListening: @escaping @Sendable (String) async -> Void) -> some ServiceLifecycle.Service {
        let router = Router(context: LoopbackRequestContext.self)
        router.get(.init(stringLiteral: Self.path)) { request, context -> Response in
            let response = try await answer(request, peerUID: { context.peerUID })
            if response.status == .ok {
                agent.record("managed-identity")
            }
            return response
        }
        // Any local uid can reach a loopback port: idle connections are closed and their number
        // is capped, so none can pin the agent's descriptors or its accept loop.
        return Application(
            router: router,
            server: .http1(configuration: .init(additionalChannelHandlers: [OversizedRequestCloser(limit: 1 << 16)], idleTimeout: Agent.idleTimeout)),
            configuration: .init(
                address: .hostname("127.0.0.1", port: port), serverName: "p11jwt-agent-identity",
                availableConnectionsDelegate: MaximumAvailableConnections(Agent.maximumConnections, logger: logger)),
            onServerRunning: { channel in
                let url = "http://127.0.0.1:\(channel.localAddress?.port ?? port)\(Self.path)"
                logger.info("managed-identity endpoint listening", metadata: ["url": "\(url)"])
                await onListening(url)
            },
            logger: logger)
    }

    /// `peerUID`: the uid of the process that connected, when it can be learnt (asked only for
    /// an identity limited to some users).
    func answer(_ request: Request, peerUID: () -> uid_t? = { nil }) async throws -> Response {
        let header = request.headers.first { $0.name.canonicalName == "x-identity-header" }?.value
        guard let header, constantTimeEquals(Array(header.utf8), Array(agent.identitySecret.utf8)) else {
            logger.notice("managed identity: refused a request without the right X-IDENTITY-HEADER")
            return try refuse(["error": "unauthorized", "error_description": "the X-IDENTITY-HEADER header is missing or wrong"], status: .unauthorized)
        }
        let query = request.uri.queryParameters
        guard let version = query.get("api-version"), version == "2019-08-01" else {
            return try refuse(["error": "invalid_request", "error_description": "api-version must be 2019-08-01"], status: .badRequest)
        }
        guard var resource = query.get("resource"), !resource.isEmpty,
              let url = URL(string: resource), url.scheme != nil || resource.range(of: "^[0-9a-fA-F-]{36}$", options: .regularExpression) != nil
        else {
            return try refuse(["error": "invalid_resource", "error_description": "resource must be an application id URI such as https://graph.microsoft.com"], status: .badRequest)
        }
        if resource.hasSuffix("/.default") { resource.removeLast("/.default".count) }
        // The identity, named the way Azure SDKs name a user-assigned one (client_id, object_id
        // or principal_id, mi_res_id); none named: the default one. An identity the agent does
        // not serve is refused as App Service refuses it, never answered with another's token.
        var served: Agent.Served?
        var named: (String, String)?
        for selector in ["client_id", "object_id", "principal_id", "mi_res_id"] {
            guard let value = query.get(selector) else { continue }
            named = (selector, value)
            served = agent.served.first { candidate in
                let identity = candidate.identity
                switch selector {
                case "client_id": return identity.entra.clientID.lowercased() == value.lowercased()
                case "mi_res_id": return identity.resourceID?.lowercased() == value.lowercased()
                default: return identity.objectID?.lowercased() == value.lowercased()
                }
            }
            break
        }
        if let (selector, value) = named, served == nil {
            logger.notice("managed identity: refused a request for an identity this agent does not serve", metadata: ["selector": "\(selector)"])
            return try refuse([
                "statusCode": "400",
                "message": "No User Assigned or Delegated Managed Identity found for specified ClientId/ResourceId/PrincipalId.",
                "error_description": "this agent serves \(agent.served.map { "\($0.identity.name) (client id \($0.identity.entra.clientID))" }.joined(separator: ", ")); \(selector)=\(value) is none of them",
            ], status: .badRequest)
        }
        served = served ?? agent.identity(nil)
        if let vault = agent.keyVault, vault.isResource(resource) {
            // The agent's own Key Vault surface: a token it issues, not one from Entra.
            let (token, expiresOn) = vault.issueToken()
            logger.info("managed identity: issued a Key Vault token")
            return try json([
                "access_token": token, "expires_on": String(Int(expiresOn.timeIntervalSince1970)), "resource": resource,
                "token_type": "Bearer", "client_id": served?.identity.entra.clientID ?? "p11jwt-agent",
            ])
        }
        guard let served else {
            let why = agent.served.isEmpty
                ? "this agent has no Entra application (no tenant and client id): it issues tokens only for its Key Vault resource \(agent.keyVault?.resource ?? "")"
                : "this agent serves several identities and none is the default: name one with client_id"
            return try refuse(["error": "invalid_request", "error_description": why], status: .badRequest)
        }
        // An identity limited to some uids (allowUids) is theirs here too: the connection's
        // owner is read from the kernel's socket table, as SO_PEERCRED gives it on the socket.
        do {
            try agent.authorize(uid: peerUID, gid: nil, identity: served, key: nil)
        } catch let error as AgentError {
            return try refuse(["error": "forbidden", "error_description": error.messageWithHint], status: .forbidden)
        }
        let scope = resource.hasSuffix("/") ? resource + ".default" : resource + "/.default"
        do {
            let token = try await agent.accessToken(broker: served.broker, scope: scope, keyURI: served.identity.key)
            struct Answer: Encodable {
                var access_token: String
                var expires_on: String
                var resource: String
                var token_type: String
                var client_id: String
            }
            return try json(Answer(
                access_token: token.accessToken, expires_on: String(Int(token.expiresOn.timeIntervalSince1970)), resource: resource,
                token_type: token.tokenType, client_id: served.identity.entra.clientID))
        } catch {
            agent.keeper.noteFailure(error)
            guard let error = error as? EntraError else {
                logger.notice("managed identity: no token", metadata: ["error": "\(error)"])
                return try refuse(["error": "unavailable", "error_description": "\(error)"], status: .serviceUnavailable)
            }
            logger.notice("managed identity: token refused", metadata: ["aadsts": "\(error.aadsts.map(String.init) ?? "-")"])
            return try refuse(["error": "token_refused", "error_description": error.message], status: error.code == .tokenRefused ? .badRequest : .badGateway)
        }
    }
}

extension ManagedIdentityEndpoint {
    /// An error answer, counted among the agent's recent errors.
    func refuse(_ body: [String: String], status: HTTPResponse.Status) throws -> Response {
        agent.record("managed-identity", error: (body["error"] ?? body["statusCode"] ?? "\(status.code)", body["error_description"] ?? body["message"] ?? ""))
        return try json(body, status: status)
    }
}

func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for i in a.indices { difference |= a[i] ^ b[i] }
    return difference == 0
}
