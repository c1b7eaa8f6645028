import Foundation
import Hummingbird
import JOSE
import Logging
import NIOCore

/// The emulator's HTTP surface: token endpoint, discovery, Graph, fault control.
public struct EmulatorRoutes: Sendable {
    let store: StateStore
    let key: EmulatorSigningKey
    public let faults: Faults
    let baseURL: BaseURL

    public init(store: StateStore, faults: Faults = Faults(), baseURL: String? = nil) throws {
        self.store = store
        self.key = try EmulatorSigningKey.loadOrCreate(in: store)
        self.faults = faults
        self.baseURL = BaseURL(baseURL)
    }

    /// Where clients reach the emulator: the listening URL, and the scheme + Host of the request.
    func authorities(_ request: Request) -> [String] {
        var list: [String] = []
        if let base = baseURL.value { list.append(base) }
        if let host = request.head.authority {
            let scheme = baseURL.value?.hasPrefix("https") == false ? "http" : "https"
            list.append("\(scheme)://\(host)")
        }
        return list
    }

    public func router() -> Router<EmulatorRequestContext> {
        let router = Router(context: EmulatorRequestContext.self)
        let token = TokenEndpoint(store: store, key: key, faults: faults)
        let graph = GraphAPI(store: store, key: key)

        router.post("/{tenant}/oauth2/v2.0/token") { request, context -> Response in
            if let injected = try await inject("token") { return injected }
            var request = request
            let body = try await request.collectBody(upTo: 1 << 20)
            let form = Self.parseForm(String(buffer: body))
            let tenant = context.parameters.get("tenant") ?? ""
            let authorities = authorities(request)
            let now = faults.now
            do throws(OAuthError) {
                return Self.json(try token.issue(tenant: tenant, form: form, authorities: authorities, now: now))
            } catch {
                context.logger.info("token request refused", metadata: ["aadsts": "\(error.code)"])
                return Self.json(error.body(authority: authorities.first ?? "", now: now), status: error.status)
            }
        }

        router.get("/{tenant}/v2.0/.well-known/openid-configuration") { request, context -> Response in
            let base = authorities(request).first ?? ""
            let tenantPath = context.parameters.get("tenant") ?? ""
            guard let tenant = try store.read().tenant(tenantPath) else {
                return Self.json(OAuthError(400, "invalid_tenant", 90002, "Tenant '\(tenantPath)' not found.").body(authority: base, now: Date()), status: 400)
            }
            return Self.json(JSONObject([
                "issuer": .string("\(base)/\(tenant.id)/v2.0"),
                "authorization_endpoint": .string("\(base)/\(tenantPath)/oauth2/v2.0/authorize"),
                "token_endpoint": .string("\(base)/\(tenantPath)/oauth2/v2.0/token"),
                "jwks_uri": .string("\(base)/\(tenantPath)/discovery/v2.0/keys"),
                "token_endpoint_auth_methods_supported": .array(["client_secret_post", "private_key_jwt", "client_secret_basic"]),
                "response_types_supported": .array(["code", "id_token", "code id_token", "id_token token"]),
                "subject_types_supported": .array(["pairwise"]),
                "id_token_signing_alg_values_supported": .array(["RS256"]),
                "tenant_region_scope": "WW",
                "cloud_instance_name": .string(URL(string: base)?.host ?? "localhost"),
            ]))
        }

        router.get("/{tenant}/discovery/v2.0/keys") { _, _ -> Response in
            Self.json(JSONObject(["keys": .array([.object(try key.jwk())])]))
        }

        router.get("/common/discovery/instance") { request, _ -> Response in
            let base = authorities(request).first ?? ""
            let host = URL(string: base).flatMap { url in url.port.map { "\(url.host!):\($0)" } ?? url.host } ?? "localhost"
            return Self.json(JSONObject([
                "tenant_discovery_endpoint": .string("\(base)/common/v2.0/.well-known/openid-configuration"),
                "api-version": "1.1",
                "metadata": .array([.object(JSONObject([
                    "preferred_network": .string(host), "preferred_cache": .string(host), "aliases": .array([.string(host)]),
                ]))]),
            ]))
        }

        router.post("/_emulator/faults") { request, _ -> Response in
            var request = request
            let body = try await request.collectBody(upTo: 1 << 16)
            do {
                faults.settings = try JSONDecoder().decode(Faults.Settings.self, from: Data(buffer: body))
            } catch {
                return Self.json(JSONObject(["error": .string("not a fault settings object: \(error)")]), status: 400)
            }
            return Response(status: .noContent)
        }

        for method in [HTTPRequest.Method.get, .post, .patch] {
            router.on("/v1.0/**", method: method) { request, context -> Response in
                let path = request.uri.path.removingPercentEncoding ?? request.uri.path
                let route = path.hasSuffix("/addKey") ? "addKey" : path.hasSuffix("/removeKey") ? "removeKey" : "graph"
                if let injected = try await inject(route) { return injected }
                var request = request
                let body = Array(buffer: try await request.collectBody(upTo: 1 << 20))
                let now = faults.now
                let clientRequestID = request.headers.first { $0.name.canonicalName == "client-request-id" }?.value
                do throws(GraphError) {
                    let caller = try graph.authenticate(request.headers[.authorization], now: now)
                    guard let (target, action) = Self.parseGraphPath(path) else {
                        throw GraphError(400, "BadRequest", "Resource not found for the segment '\(path)'.")
                    }
                    switch (request.method, action) {
                    case (.post, "addKey"):
                        let added = try graph.addKey(target, body: body, caller: caller, now: now)
                        await dropIfInjected(route, context: context)
                        return Self.json(added)
                    case (.post, "removeKey"):
                        try graph.removeKey(target, body: body, caller: caller, now: now)
                        await dropIfInjected(route, context: context)
                        return Response(status: .noContent)
                    case (.get, nil):
                        return Self.json(try graph.get(target, caller: caller))
                    case (.patch, nil):
                        try graph.patch(target, body: body, caller: caller, now: now)
                        return Response(status: .noContent)
                    default:
                        throw GraphError(405, "Request_BadRequest", "The \(request.method) method is not supported on '\(path)'.")
                    }
                } catch {
                    context.logger.info("graph request refused", metadata: ["code": "\(error.code)", "reason": "\(error.reason ?? "")"])
                    return Self.json(error.body(clientRequestID: clientRequestID, now: now), status: error.status)
                }
            }
        }
        return router
    }

    /// An injected latency, and an injected failure when one is pending for `route`.
    private func inject(_ route: String) async throws -> Response? {
        let settings = faults.settings
        if settings.latencyMilliseconds > 0 { try await Task.sleep(for: .milliseconds(settings.latencyMilliseconds)) }
        guard let failure = faults.takeFailure(route) else { return nil }
        let status = failure.status ?? 503
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        if status == 429 { headers[.retryAfter] = String(failure.retryAfter ?? 1) }
        let body = route == "token"
            ? OAuthError(status, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again.").body(authority: baseURL.value ?? "", now: Date()).serialized
            : GraphError(status, status == 429 ? "TooManyRequests" : "ServiceUnavailable", "Injected fault.").body(clientRequestID: nil, now: Date()).serialized
        return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    /// The "applied, then the connection dropped" fault: the change is committed, the client
    /// never sees the answer (as when a proxy or the network fails after Graph commits).
    private func dropIfInjected(_ route: String, context: EmulatorRequestContext) async {
        guard faults.takeFailure(route, afterApply: true) != nil else { return }
        context.logger.info("fault: dropping the connection after applying \(route)")
        try? await context.channel.close()
    }

    /// `applications/{id}/addKey`, `applications(appId='…')/removeKey`, `servicePrincipals/{id}`, …
    static func parseGraphPath(_ path: String) -> (GraphTarget, String?)? {
        var segments = path.split(separator: "/").map(String.init)
        guard segments.first == "v1.0", segments.count >= 2 else { return nil }
        segments.removeFirst()
        var action: String?
        if let last = segments.last, last == "addKey" || last == "removeKey" {
            action = last
            segments.removeLast()
        }
        let collection: String, key: String
        if segments.count == 2 {
            collection = segments[0]
            key = segments[1]
        } else if segments.count == 1, let open = segments[0].firstIndex(of: "("), segments[0].hasSuffix(")") {
            collection = String(segments[0][..<open])
            key = String(segments[0][segments[0].index(after: open)..<segments[0].index(before: segments[0].endIndex)])
        } else {
            return nil
        }
        let byAppID: String?
        if key.hasPrefix("appId='") && key.hasSuffix("'") {
            byAppID = String(key.dropFirst("appId='".count).dropLast())
        } else if key.hasPrefix("appId=") {
            byAppID = String(key.dropFirst("appId=".count))
        } else {
            byAppID = nil
        }
        switch collection {
        case "applications":
            return (byAppID.map { .applicationByAppID($0) } ?? .application(id: key), action)
        case "servicePrincipals":
            return (byAppID.map { .servicePrincipalByAppID($0) } ?? .servicePrincipal(id: key), action)
        default:
            return nil
        }
    }

    /// `application/x-www-form-urlencoded`.
    static func parseForm(_ text: String) -> [String: String] {
        var form: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map {
                String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String($0)
            }
            form[parts[0]] = parts.count > 1 ? parts[1] : ""
        }
        return form
    }

    static func json(_ object: JSONObject, status: Int = 200) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json; charset=utf-8"
        headers[.cacheControl] = "no-store, no-cache"
        return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: object.serialized)))
    }
}

/// The request context: Hummingbird's basics plus the connection, which the drop fault closes.
public struct EmulatorRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// The listening URL, known once the server is bound.
final class BaseURL: @unchecked Sendable {
    private let lock = NSLock()
    private var url: String?
    init(_ url: String?) { self.url = url }
    var value: String? {
        get { lock.withLock { url } }
        set { lock.withLock { url = newValue } }
    }
}
