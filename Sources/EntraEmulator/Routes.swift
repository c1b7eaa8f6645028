import Foundation
import Synchronization
import HTTPTypes
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

    /// The secret `POST /_emulator/faults` needs as its bearer (`admin-token`, 0600, in the state
    /// directory): any local user can reach a loopback port, only the state's owner can read it.
    let adminToken: String

    public init(store: StateStore, faults: Faults = Faults(), baseURL: String? = nil) throws {
        self.store = store
        self.key = try EmulatorSigningKey.loadOrCreate(in: store)
        self.adminToken = try store.adminToken()
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
        // No route answers an empty body: unknown paths and methods get Entra's or Graph's shape.
        router.middlewares.add(UnknownRouteMiddleware(baseURL: baseURL))
        let token = TokenEndpoint(store: store, key: key, faults: faults)
        let graph = GraphAPI(store: store, key: key)

        for (path, version) in Self.tenantPaths([("/{tenant}/oauth2/v2.0/token", .v2), ("/{tenant}/oauth2/token", .v1)]) {
            router.post(RouterPath(stringLiteral: path)) { request, context -> Response in
                if let injected = try await inject("token") { return injected }
                var request = request
                let body = try await request.collectBody(upTo: 1 << 20)
                // Entra reads a form body only: any other content type is a request without parameters.
                let isForm = request.headers[.contentType].map { Self.mediaType($0) == "application/x-www-form-urlencoded" } ?? false
                let tenant = context.parameters.get("tenant") ?? "common"
                let authorities = authorities(request)
                let now = faults.now
                do throws(OAuthError) {
                    let form = isForm ? try Self.parseForm(String(buffer: body)) : [:]
                    return Self.json(try token.issue(tenant: tenant, form: form, authorities: authorities, now: now, endpoint: version))
                } catch {
                    context.logger.info("token request refused", metadata: ["aadsts": "\(error.code)"])
                    return Self.json(error.body(authority: authorities.first ?? "", now: now), status: error.status)
                }
            }
            for method in [HTTPRequest.Method.get, .put, .patch, .delete, .head] {
                router.on(RouterPath(stringLiteral: path), method: method) { request, _ -> Response in
                    // Uncertain: the status Entra gives with AADSTS900561; 405 is the HTTP meaning.
                    let error = OAuthError(405, "invalid_request", 900561, "The endpoint only accepts POST, OPTIONS requests. Received a \(request.method) request.")
                    return Self.json(error.body(authority: authorities(request).first ?? "", now: faults.now), status: error.status)
                }
            }
        }

        // OpenID discovery, v2 and v1, for a tenant id or domain, `common` and `organizations`.
        for (path, version) in Self.tenantPaths([("/{tenant}/v2.0/.well-known/openid-configuration", .v2), ("/{tenant}/.well-known/openid-configuration", .v1)]) {
            router.get(RouterPath(stringLiteral: path)) { request, context -> Response in
                try discovery(request, context) { base, tenantPath, tenantID in
                    Self.openIDConfiguration(version, base: base, tenantPath: tenantPath, tenantID: tenantID)
                }
            }
        }
        for (path, version) in Self.tenantPaths([("/{tenant}/discovery/v2.0/keys", .v2), ("/{tenant}/discovery/keys", .v1)]) {
            router.get(RouterPath(stringLiteral: path)) { request, context -> Response in
                try discovery(request, context) { base, _, tenantID in
                    JSONObject(["keys": .array([.object(try key.jwk(issuer: version == .v2 ? "\(base)/\(tenantID)/v2.0" : nil))])])
                }
            }
        }

        router.get("/common/discovery/instance") { request, _ -> Response in
            let base = authorities(request).first ?? ""
            let host = URL(string: base).flatMap { url in url.port.map { "\(url.host ?? "localhost"):\($0)" } ?? url.host } ?? "localhost"
            return Self.json(JSONObject([
                "tenant_discovery_endpoint": .string("\(base)/common/v2.0/.well-known/openid-configuration"),
                "api-version": "1.1",
                "metadata": .array([.object(JSONObject([
                    "preferred_network": .string(host), "preferred_cache": .string(host), "aliases": .array([.string(host)]),
                ]))]),
            ]))
        }

        router.post("/_emulator/faults") { request, _ -> Response in
            let presented = request.headers[.authorization].map { String($0.drop(while: { $0 != " " }).dropFirst()) } ?? ""
            guard request.headers[.authorization]?.lowercased().hasPrefix("bearer ") == true,
                  Array(presented.utf8).constantTimeEquals(Array(adminToken.utf8)) else {
                return Self.json(JSONObject(["error": "unauthorized", "message": "POST /_emulator/faults needs 'Authorization: Bearer' with the admin-token from the state directory"]), status: 401)
            }
            var request = request
            let body = try await request.collectBody(upTo: 1 << 16)
            do {
                faults.settings = try JSONDecoder().decode(Faults.Settings.self, from: Data(buffer: body))
            } catch {
                return Self.json(JSONObject(["error": .string("not a fault settings object: \(error)")]), status: 400)
            }
            return Response(status: .noContent)
        }

        for method in [HTTPRequest.Method.get, .post, .patch, .put, .delete] {
            router.on("/v1.0/**", method: method) { request, context -> Response in
                let path = request.uri.path.removingPercentEncoding ?? request.uri.path
                let route = path.hasSuffix("/addKey") ? "addKey" : path.hasSuffix("/removeKey") ? "removeKey" : "graph"
                let ids = GraphRequestIDs(clientRequestID: request.headers[.clientRequestID])
                if let injected = try await inject(route, ids: ids) { return Self.graphHeaders(injected, ids) }
                var request = request
                let body = Array(buffer: try await request.collectBody(upTo: 1 << 20))
                let now = faults.now
                let base = authorities(request).first ?? ""
                do throws(GraphError) {
                    let caller = try graph.authenticate(request.headers[.authorization], now: now)
                    guard let (target, action) = try Self.parseGraphPath(path) else {
                        throw GraphError(400, "BadRequest", "Resource not found for the segment '\(path.split(separator: "/").dropFirst().first ?? "")'.")
                    }
                    if request.method == .post || request.method == .patch || request.method == .put {
                        let json = request.headers[.contentType].map { Self.mediaType($0) == "application/json" } ?? false
                        guard json else {
                            throw action == nil
                                ? GraphError(400, "BadRequest", "Entity only allows writes with a JSON Content-Type header.")
                                : GraphError(400, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.")
                        }
                    }
                    let query = GraphQuery(request.uri.queryParameters, base: base)
                    switch (request.method, target, action) {
                    case (.post, .object(let object), "addKey"):
                        let added = try graph.addKey(object, body: body, caller: caller, now: now)
                        await dropIfInjected(route, context: context)
                        return Self.graphJSON(added, ids)
                    case (.post, .object(let object), "removeKey"):
                        try graph.removeKey(object, body: body, caller: caller, now: now)
                        await dropIfInjected(route, context: context)
                        return Self.graphHeaders(Response(status: .noContent), ids)
                    case (.get, .object(let object), nil):
                        return Self.graphJSON(try graph.get(object, caller: caller, query: query), ids)
                    case (.get, .collection(let servicePrincipals), nil):
                        return Self.graphJSON(try graph.list(servicePrincipals: servicePrincipals, caller: caller, query: query), ids)
                    case (.patch, .object(let object), nil):
                        try graph.patch(object, body: body, caller: caller, now: now)
                        return Self.graphHeaders(Response(status: .noContent), ids)
                    case (.get, .object(let object), "federatedIdentityCredentials"):
                        return Self.graphJSON(try graph.federatedCredentials(object, caller: caller, base: base), ids)
                    case (.post, .object(let object), "federatedIdentityCredentials"):
                        return Self.graphJSON(try graph.addFederatedCredential(object, body: body, caller: caller, base: base), status: 201, ids)
                    case (.delete, .object(let object), let action?) where action.hasPrefix("federatedIdentityCredentials/"):
                        try graph.removeFederatedCredential(object, id: String(action.dropFirst("federatedIdentityCredentials/".count)), caller: caller)
                        return Self.graphHeaders(Response(status: .noContent), ids)
                    default:
                        throw GraphError(405, "Request_BadRequest", "The \(request.method) method is not supported on '\(path)'.")
                    }
                } catch {
                    context.logger.info("graph request refused", metadata: ["code": "\(error.code)", "reason": "\(error.reason ?? "")"])
                    return Self.graphJSON(error.body(ids: ids, now: now), status: error.status, ids)
                }
            }
        }
        return router
    }

    /// Each `{tenant}` route and its `common` twin (the constant `common` of
    /// `/common/discovery/instance` takes precedence over the parameter in the router).
    static func tenantPaths(_ templates: [(String, TokenEndpointVersion)]) -> [(String, TokenEndpointVersion)] {
        templates.flatMap { template, version in
            [(template, version), (template.replacingOccurrences(of: "{tenant}", with: "common"), version)]
        }
    }

    /// The tenant id a discovery path names: a tenant by id or domain, or the literal
    /// `{tenantid}` placeholder Entra prints for `common` and `organizations`.
    static func discoveryTenant(_ path: String, state: EmulatorState) -> String? {
        if ["common", "organizations"].contains(path.lowercased()) { return "{tenantid}" }
        return state.tenant(path)?.id
    }

    /// OpenID provider metadata as Entra publishes it for a tenant path.
    static func openIDConfiguration(_ version: TokenEndpointVersion, base: String, tenantPath: String, tenantID: String) -> JSONObject {
        let v2 = version == .v2
        return JSONObject([
            "token_endpoint": .string(v2 ? "\(base)/\(tenantPath)/oauth2/v2.0/token" : "\(base)/\(tenantPath)/oauth2/token"),
            "token_endpoint_auth_methods_supported": .array(["client_secret_post", "private_key_jwt", "client_secret_basic"]),
            "jwks_uri": .string(v2 ? "\(base)/\(tenantPath)/discovery/v2.0/keys" : "\(base)/\(tenantPath)/discovery/keys"),
            "response_modes_supported": .array(["query", "fragment", "form_post"]),
            "subject_types_supported": .array(["pairwise"]),
            "id_token_signing_alg_values_supported": .array(["RS256"]),
            "response_types_supported": .array(["code", "id_token", "code id_token", "token id_token", "token"]),
            "scopes_supported": .array(v2 ? ["openid", "profile", "email", "offline_access"] : ["openid"]),
            "issuer": .string(v2 ? "\(base)/\(tenantID)/v2.0" : TokenEndpoint.v1Issuer(tenantID)),
            "authorization_endpoint": .string(v2 ? "\(base)/\(tenantPath)/oauth2/v2.0/authorize" : "\(base)/\(tenantPath)/oauth2/authorize"),
            "device_authorization_endpoint": .string(v2 ? "\(base)/\(tenantPath)/oauth2/v2.0/devicecode" : "\(base)/\(tenantPath)/oauth2/devicecode"),
            "tenant_region_scope": "WW",
            "cloud_instance_name": .string(URL(string: base)?.host ?? "localhost"),
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        ])
    }

    /// The media type of a Content-Type value, lowercased, without parameters.
    static func mediaType(_ value: String) -> String {
        String(value.split(separator: ";", maxSplits: 1).first ?? "").trimmingCharacters(in: .whitespaces).lowercased()
    }

    /// A discovery answer for the tenant the path names, or Entra's 90002.
    private func discovery(
        _ request: Request, _ context: EmulatorRequestContext,
        _ answer: (_ base: String, _ tenantPath: String, _ tenantID: String) throws -> JSONObject
    ) throws -> Response {
        let base = authorities(request).first ?? ""
        let tenantPath = context.parameters.get("tenant") ?? "common"
        guard let tenantID = try Self.discoveryTenant(tenantPath, state: store.read()) else {
            return Self.json(OAuthError.tenantNotFound(tenantPath, error: "invalid_tenant").body(authority: base, now: faults.now), status: 400)
        }
        return Self.json(try answer(base, tenantPath, tenantID))
    }

    /// An injected latency, and an injected failure when one is pending for `route`.
    private func inject(_ route: String, ids: GraphRequestIDs? = nil) async throws -> Response? {
        let settings = faults.settings
        if settings.latencyMilliseconds > 0 { try await Task.sleep(for: .milliseconds(settings.latencyMilliseconds)) }
        guard let failure = faults.takeFailure(route) else { return nil }
        let status = failure.status ?? 503
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        if status == 429 || status == 503 { headers[.retryAfter] = String(failure.retryAfter ?? 1) }
        let body = route == "token"
            ? OAuthError(status, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again.").body(authority: baseURL.value ?? "", now: Date()).serialized
            : GraphError(status, status == 429 ? "TooManyRequests" : "ServiceUnavailable", "Injected fault.").body(ids: ids ?? GraphRequestIDs(clientRequestID: nil), now: Date()).serialized
        return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    /// The "applied, then the connection dropped" fault: the change is committed, the client
    /// never sees the answer (as when a proxy or the network fails after Graph commits).
    private func dropIfInjected(_ route: String, context: EmulatorRequestContext) async {
        guard faults.takeFailure(route, afterApply: true) != nil else { return }
        context.logger.info("fault: dropping the connection after applying \(route)")
        try? await context.channel.close()
    }

    /// `applications/{id}/addKey`, `applications(appId='…')/removeKey`, `servicePrincipals/{id}`,
    /// the `applications` collection, … nil for a path that names no such resource; an error for
    /// an `appId=` key without its quotes, which Graph refuses.
    static func parseGraphPath(_ path: String) throws(GraphError) -> (GraphPath, String?)? {
        var segments = path.split(separator: "/").map(String.init)
        guard segments.first == "v1.0", segments.count >= 2 else { return nil }
        segments.removeFirst()
        var action: String?
        if let last = segments.last, last == "addKey" || last == "removeKey" {
            action = last
            segments.removeLast()
        } else if let index = segments.firstIndex(of: "federatedIdentityCredentials"), index >= 1, segments.count - index <= 2 {
            // federatedIdentityCredentials, or federatedIdentityCredentials/{id}
            action = segments[index...].joined(separator: "/")
            segments.removeSubrange(index...)
        }
        let collection: String, key: String
        if segments.count == 2 {
            collection = segments[0]
            key = segments[1]
        } else if segments.count == 1, let open = segments[0].firstIndex(of: "("), segments[0].hasSuffix(")") {
            collection = String(segments[0][..<open])
            key = String(segments[0][segments[0].index(after: open)..<segments[0].index(before: segments[0].endIndex)])
        } else if segments.count == 1, action == nil, ["applications", "servicePrincipals"].contains(segments[0]) {
            return (.collection(servicePrincipals: segments[0] == "servicePrincipals"), nil)
        } else {
            return nil
        }
        guard ["applications", "servicePrincipals"].contains(collection) else { return nil }
        let byAppID: String?
        if key.hasPrefix("appId='") && key.hasSuffix("'") && key.count > "appId=''".count - 1 {
            byAppID = String(key.dropFirst("appId='".count).dropLast())
        } else if key.hasPrefix("appId=") {
            // Uncertain: Graph's exact words for an alternate key without quotes.
            throw GraphError(400, "BadRequest", "Bad Request - Error in query syntax.", reason: "an appId key needs quotes: \(collection)(appId='…')")
        } else {
            byAppID = nil
        }
        if collection == "applications" {
            return (.object(byAppID.map { .applicationByAppID($0) } ?? .application(id: key)), action)
        }
        return (.object(byAppID.map { .servicePrincipalByAppID($0) } ?? .servicePrincipal(id: key)), action)
    }

    /// Graph's headers on every answer: the `request-id` and `client-request-id` its body names too.
    static func graphHeaders(_ response: Response, _ ids: GraphRequestIDs) -> Response {
        var response = response
        response.headers[.requestID] = ids.request
        response.headers[.clientRequestID] = ids.client
        return response
    }

    static func graphJSON(_ object: JSONObject, status: Int = 200, _ ids: GraphRequestIDs) -> Response {
        graphHeaders(json(object, status: status), ids)
    }

    /// `application/x-www-form-urlencoded`.
    /// The token request's parameters, decoded by Hummingbird's URL-encoded form decoder into
    /// the ones the endpoint reads; unknown parameters are ignored, as Entra ignores them.
    struct TokenForm: Decodable {
        var grant_type: String?
        var client_id: String?
        var scope: String?
        var resource: String?
        var client_secret: String?
        var client_assertion: String?
        var client_assertion_type: String?

        var fields: [String: String] {
            var fields: [String: String] = [:]
            fields["grant_type"] = grant_type
            fields["client_id"] = client_id
            fields["scope"] = scope
            fields["resource"] = resource
            fields["client_secret"] = client_secret
            fields["client_assertion"] = client_assertion
            fields["client_assertion_type"] = client_assertion_type
            return fields
        }
    }

    /// A parameter given twice is refused as Entra refuses it (AADSTS9000411, e.g. MSAL
    /// Android's duplicated `login_hint`); parameters with an empty name (`=`, `=x`) are dropped
    /// first, like any parameter Entra does not know.
    static func parseForm(_ text: String) throws(OAuthError) -> [String: String] {
        let named = text.split(separator: "&", omittingEmptySubsequences: true).filter { !$0.hasPrefix("=") }.joined(separator: "&")
        do {
            return try URLEncodedFormDecoder().decode(TokenForm.self, from: named).fields
        } catch let error as URLEncodedFormError where error.code == .duplicateKeys {
            throw OAuthError(400, "invalid_request", 9000411, "The request is not properly formatted. The parameter '\(error.value)' is duplicated.")
        } catch let error as URLEncodedFormError {
            // Uncertain: Entra's answer to a body that does not decode (bad percent-encoding,
            // a known parameter given as a[b]); the same code, naming the parameter.
            throw OAuthError(400, "invalid_request", 9000411, "The request is not properly formatted. The parameter '\(error.value)' is malformed.")
        } catch {
            throw OAuthError(400, "invalid_request", 9000411, "The request is not properly formatted.")
        }
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
final class BaseURL: Sendable {
    private let url: Mutex<String?>
    init(_ url: String?) { self.url = Mutex(url) }
    var value: String? {
        get { url.withLock { $0 } }
        set { url.withLock { $0 = newValue } }
    }
}

extension Array where Element == UInt8 {
    /// Equal without an early exit, so the time taken says nothing about where they differ.
    func constantTimeEquals(_ other: [UInt8]) -> Bool {
        guard count == other.count else { return false }
        return zip(self, other).reduce(0) { $0 | ($1.0 ^ $1.1) } == 0
    }
}

/// Unknown paths and methods: Graph's error shape under `/v1.0` and `/beta`, Entra's elsewhere
/// (where real Entra answers an HTML page, the emulator answers JSON that clients can read).
struct UnknownRouteMiddleware: RouterMiddleware {
    let baseURL: BaseURL

    func handle(_ request: Request, context: EmulatorRequestContext, next: (Request, EmulatorRequestContext) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound || error.status == .methodNotAllowed {
            let path = request.uri.path
            if path.hasPrefix("/v1.0/") || path.hasPrefix("/beta/") || path == "/v1.0" || path == "/beta" {
                let segment = path.split(separator: "/").dropFirst().first.map(String.init) ?? ""
                let graph = GraphError(400, "BadRequest", "Resource not found for the segment '\(segment)'.")
                let ids = GraphRequestIDs(clientRequestID: request.headers[.clientRequestID])
                return EmulatorRoutes.graphJSON(graph.body(ids: ids, now: Date()), status: graph.status, ids)
            }
            return EmulatorRoutes.json(JSONObject([
                "error": "not_found",
                "error_description": .string("The emulator serves no \(request.method) \(path). Token endpoints: POST /{tenant}/oauth2/v2.0/token and /{tenant}/oauth2/token; discovery: /{tenant}/v2.0/.well-known/openid-configuration."),
                "error_codes": .array([]),
                "error_uri": .string("\(baseURL.value ?? "")/error"),
            ]), status: 404)
        }
    }
}

/// The OData query options Graph reads here: `$select` and `$filter=appId eq '…'`.
struct GraphQuery {
    var select: [String]?
    var filterAppID: String?
    var hasUnsupportedFilter = false
    var base: String

    /// `@odata.context`: the collection (and the selected properties), `/$entity` for one object.
    func context(servicePrincipals: Bool, entity: Bool) -> String {
        let collection = servicePrincipals ? "servicePrincipals" : "applications"
        return "\(base)/v1.0/$metadata#\(collection)\(select.map { "(\($0.joined(separator: ",")))" } ?? "")\(entity ? "/$entity" : "")"
    }

    /// The properties `$select` names (all without it), in their order.
    func selected(_ properties: JSONObject) -> JSONObject {
        guard let select else { return properties }
        var object = JSONObject()
        for (name, value) in properties where select.contains(name) { object[name] = value }
        return object
    }

    init(_ parameters: Parameters, base: String) {
        self.base = base
        if let select = parameters["$select"] {
            self.select = select.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        if let filter = parameters["$filter"] {
            let text = filter.replacingOccurrences(of: "+", with: " ").trimmingCharacters(in: .whitespaces)
            let prefix = "appid eq '"
            if text.lowercased().hasPrefix(prefix), text.hasSuffix("'"), text.count > prefix.count {
                filterAppID = String(text.dropFirst(prefix.count).dropLast()).lowercased()
            } else {
                hasUnsupportedFilter = true
            }
        }
    }
}
