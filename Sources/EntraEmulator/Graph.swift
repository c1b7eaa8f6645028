import Foundation
import HTTPTypes
import JOSE

/// A Microsoft Graph error: status, `error.code`, `error.message`.
public struct GraphError: Error, Sendable, Equatable {
    public var status: Int
    public var code: String
    public var message: String
    /// Why, in the emulator's words (real Graph says less); sent as `innerError.emulatorReason`.
    public var reason: String?

    public init(_ status: Int, _ code: String, _ message: String, reason: String? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason
    }

    static func malformed(_ reason: String) -> GraphError {
        GraphError(401, "Authentication_MissingOrMalformed", "Access Token missing or malformed.", reason: reason)
    }

    static func badRequest(_ message: String) -> GraphError { GraphError(400, "Request_BadRequest", message) }

    static let denied = GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")

    func body(ids: GraphRequestIDs, now: Date) -> JSONObject {
        var inner = JSONObject([
            "date": .string(isoDate(now)), "request-id": .string(ids.request), "client-request-id": .string(ids.client),
        ])
        if let reason { inner["emulatorReason"] = .string(reason) }
        return JSONObject(["error": .object(JSONObject(["code": .string(code), "message": .string(message), "innerError": .object(inner)]))])
    }
}

/// The ids Graph puts on one answer, in its headers and in an error's `innerError` alike: a new
/// `request-id`, and the caller's `client-request-id` (or a new one).
struct GraphRequestIDs {
    let request = UUID().uuidString.lowercased()
    let client: String

    init(clientRequestID: String?) { client = clientRequestID ?? UUID().uuidString.lowercased() }
}

extension HTTPField.Name {
    static let requestID = HTTPField.Name("request-id")!
    static let clientRequestID = HTTPField.Name("client-request-id")!
}

/// The object a Graph URL names.
enum GraphTarget: Equatable {
    case application(id: String)
    case applicationByAppID(String)
    case servicePrincipal(id: String)
    case servicePrincipalByAppID(String)

    /// The key as the URL has it.
    var key: String {
        switch self {
        case .application(let id), .servicePrincipal(let id): return id
        case .applicationByAppID(let appId), .servicePrincipalByAppID(let appId): return "appId='\(appId)'"
        }
    }

    var isServicePrincipal: Bool {
        switch self {
        case .servicePrincipal, .servicePrincipalByAppID: return true
        default: return false
        }
    }
}

/// What a Graph path names: one object, or a collection (`GET /applications?$filter=…`).
enum GraphPath: Equatable {
    case object(GraphTarget)
    case collection(servicePrincipals: Bool)
}

/// Who is calling: from a bearer token this emulator issued.
struct GraphCaller {
    var appId: String
    var roles: [String]
    var tenantId: String
}

/// Graph's key-credential API on applications and service principals.
struct GraphAPI: Sendable {
    static let proofAudience = "00000002-0000-0000-c000-000000000000"
    static let clockSkew: TimeInterval = 300

    let store: StateStore
    let key: EmulatorSigningKey

    /// Checks the bearer token: issued by this emulator, for Graph, unexpired.
    func authenticate(_ authorization: String?, now: Date) throws(GraphError) -> GraphCaller {
        let invalid = { (reason: String) in
            GraphError(401, "InvalidAuthenticationToken", reason == "missing" ? "Access token is empty." : "Access token validation failure. Invalid audience.", reason: reason)
        }
        guard let authorization, authorization.lowercased().hasPrefix("bearer ") else { throw invalid("missing") }
        let token = String(authorization.dropFirst("bearer ".count)).trimmingCharacters(in: .whitespaces)
        guard let jws = try? JWS(compact: token), key.verifies(jws), let claims = jws.claims else {
            throw GraphError(401, "InvalidAuthenticationToken", "Access token validation failure.", reason: "not a token signed by this emulator")
        }
        guard let aud = claims["aud"]?.stringValue, BuiltInResource.graph.isNamed(by: aud) else {
            throw invalid("the token's aud is '\(claims["aud"]?.stringValue ?? "")', not Microsoft Graph")
        }
        guard let exp = claims["exp"]?.numberValue, exp.isFinite, exp > now.timeIntervalSince1970 else {
            throw GraphError(401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.", reason: "expired")
        }
        guard claims["idtyp"] == "app", let appId = (claims["appid"] ?? claims["azp"])?.stringValue, let tid = claims["tid"]?.stringValue else {
            throw GraphError(401, "InvalidAuthenticationToken", "Access token validation failure.", reason: "not an app-only token")
        }
        return GraphCaller(appId: appId, roles: claims["roles"]?.arrayValue?.compactMap(\.stringValue) ?? [], tenantId: tid)
    }

    /// `addKey`: the new credential, after the caller, the body and the proof pass.
    func addKey(_ target: GraphTarget, body: [UInt8], caller: GraphCaller, now: Date) throws(GraphError) -> JSONObject {
        let request = try parse(body)
        guard case .object(let keyObject)? = request["keyCredential"] else {
            throw GraphError.badRequest("The request body must contain a keyCredential.")
        }
        if let password = request["passwordCredential"], password != .null {
            throw GraphError.badRequest("passwordCredential must be null when adding an AsymmetricX509Cert key credential.")
        }
        let credential = try keyCredential(keyObject, now: now)
        let proof = request["proof"]?.stringValue
        return try mutate(target, caller: caller, now: now) { credentials, objectID in
            try verifyProof(proof, objectID: objectID, credentials: credentials, now: now)
            guard !credentials.contains(where: { $0.key == credential.key }) else {
                throw GraphError.badRequest("Another key credential with the same certificate (thumbprint \(credential.thumbprint?.hexSHA1 ?? "")) already exists on this object.")
            }
            credentials.append(credential)
            return Self.json(credential)
        }
    }

    /// `removeKey`.
    func removeKey(_ target: GraphTarget, body: [UInt8], caller: GraphCaller, now: Date) throws(GraphError) {
        let request = try parse(body)
        guard let keyID = request["keyId"]?.stringValue, UUID(uuidString: keyID) != nil else {
            throw GraphError.badRequest("The request body must contain a keyId (a GUID).")
        }
        let proof = request["proof"]?.stringValue
        _ = try mutate(target, caller: caller, now: now) { credentials, objectID in
            try verifyProof(proof, objectID: objectID, credentials: credentials, now: now)
            guard let index = credentials.firstIndex(where: { $0.keyId == keyID.lowercased() }) else {
                throw GraphError(404, "Request_ResourceNotFound", "No key credential with keyId '\(keyID)' exists on this object.")
            }
            credentials.remove(at: index)
            return JSONObject()
        }
    }

    /// `GET applications/{id}` (or a service principal): needs a read role. `key` is returned
    /// only when `$select` names `keyCredentials`; `$select` limits the properties.
    func get(_ target: GraphTarget, caller: GraphCaller, query: GraphQuery) throws(GraphError) -> JSONObject {
        let state = try readState()
        let (t, a) = try locate(target, in: state, tenantId: caller.tenantId)
        let app = state.tenants[t].applications[a]
        try authorize(caller, app: app, tenantId: state.tenants[t].id, selfServiceAllowed: false)
        let withKey = query.select?.contains("keyCredentials") ?? false
        var object = JSONObject(["@odata.context": .string(query.context(servicePrincipals: target.isServicePrincipal, entity: true))])
        for (name, value) in query.selected(Self.properties(app, servicePrincipal: target.isServicePrincipal, withKey: withKey)) {
            object[name] = value
        }
        return object
    }

    /// `GET applications` / `servicePrincipals`, optionally `$filter=appId eq '…'`: the objects
    /// of the caller's tenant it may read (`key` always null in a collection, as in Graph).
    func list(servicePrincipals: Bool, caller: GraphCaller, query: GraphQuery) throws(GraphError) -> JSONObject {
        guard !query.hasUnsupportedFilter else {
            throw GraphError(400, "Request_UnsupportedQuery", "Unsupported or invalid query filter clause specified for property 'appId' of resource '\(servicePrincipals ? "ServicePrincipal" : "Application")'.",
                reason: "the emulator filters by appId eq '…' only")
        }
        let state = try readState()
        guard let tenant = state.tenants.first(where: { $0.id == caller.tenantId }) else { throw GraphError.denied }
        let readRoles = ["Application.Read.All", "Application.ReadWrite.All", "Application.ReadWrite.OwnedBy"]
        guard caller.roles.contains(where: readRoles.contains) else { throw GraphError.denied }
        var values: [JSONValue] = []
        for app in tenant.applications where query.filterAppID == nil || app.appId == query.filterAppID {
            guard (try? authorize(caller, app: app, tenantId: tenant.id, selfServiceAllowed: false)) != nil else { continue }
            values.append(.object(query.selected(Self.properties(app, servicePrincipal: servicePrincipals, withKey: false))))
        }
        return JSONObject(["@odata.context": .string(query.context(servicePrincipals: servicePrincipals, entity: false)), "value": .array(values)])
    }

    /// The properties of an application or its service principal, in Graph's names.
    static func properties(_ app: AppRegistration, servicePrincipal: Bool, withKey: Bool) -> JSONObject {
        let credentials = servicePrincipal ? app.servicePrincipal.keyCredentials : app.keyCredentials
        var object = JSONObject()
        object["id"] = .string(servicePrincipal ? app.servicePrincipal.id : app.id)
        object["appId"] = .string(app.appId)
        object["displayName"] = .string(app.displayName)
        let roles = JSONValue.array((app.appRoles ?? []).map { role in
            .object(JSONObject([
                "allowedMemberTypes": .array(role.allowedMemberTypes.map { .string($0) }), "description": .null,
                "displayName": .string(role.displayName), "id": .string(role.id), "isEnabled": .bool(role.isEnabled),
                "value": .string(role.value),
            ]))
        })
        if servicePrincipal {
            object["appRoles"] = roles
            object["servicePrincipalNames"] = .array(([app.appId] + (app.identifierUris ?? [])).map { .string($0) })
        } else {
            object["identifierUris"] = .array((app.identifierUris ?? []).map { .string($0) })
            object["appRoles"] = roles
            object["api"] = .object(JSONObject([
                "requestedAccessTokenVersion": app.requestedAccessTokenVersion.map { .int(Int64($0)) } ?? .null,
            ]))
        }
        object["keyCredentials"] = .array(credentials.map { .object(Self.json($0, withKey: withKey)) })
        return object
    }

    /// `PATCH applications/{id}` with `keyCredentials`: replaces the whole collection; needs a role.
    func patch(_ target: GraphTarget, body: [UInt8], caller: GraphCaller, now: Date) throws(GraphError) {
        let request = try parse(body)
        guard let list = request["keyCredentials"]?.arrayValue else {
            throw GraphError.badRequest("Only keyCredentials can be updated on this emulator.")
        }
        var credentials: [KeyCredential] = []
        for item in list {
            guard let object = item.objectValue else {
                throw GraphError.badRequest("Invalid value specified for property 'keyCredentials' of resource 'Application'.")
            }
            var credential = try keyCredential(object, now: now)
            if let keyID = object["keyId"]?.stringValue, UUID(uuidString: keyID) != nil { credential.keyId = keyID.lowercased() }
            guard !credentials.contains(where: { $0.key == credential.key }) else {
                throw GraphError.badRequest("keyCredentials lists the certificate with thumbprint \(credential.thumbprint?.hexSHA1 ?? "") twice.")
            }
            credentials.append(credential)
        }
        do {
            try store.update { state in
                let (t, a) = try locate(target, in: state, tenantId: caller.tenantId)
                try authorize(caller, app: state.tenants[t].applications[a], tenantId: state.tenants[t].id, selfServiceAllowed: false)
                if target.isServicePrincipal {
                    state.tenants[t].applications[a].servicePrincipal.keyCredentials = credentials
                } else {
                    state.tenants[t].applications[a].keyCredentials = credentials
                }
            }
        } catch let error as GraphError { throw error } catch { throw GraphError(500, "generalException", "\(error)") }
    }

    // MARK: - Federated identity credentials

    /// `GET applications/{id}/federatedIdentityCredentials`: needs a read or write role.
    func federatedCredentials(_ target: GraphTarget, caller: GraphCaller, base: String) throws(GraphError) -> JSONObject {
        guard !target.isServicePrincipal else { throw GraphError(400, "Request_BadRequest", "federatedIdentityCredentials belong to applications.") }
        let state = try readState()
        let (t, a) = try locate(target, in: state, tenantId: caller.tenantId)
        let app = state.tenants[t].applications[a]
        try authorize(caller, app: app, tenantId: state.tenants[t].id, selfServiceAllowed: false)
        return JSONObject([
            "@odata.context": .string("\(base)/v1.0/$metadata#applications('\(app.id)')/federatedIdentityCredentials"),
            "value": .array((app.federatedIdentityCredentials ?? []).map { .object(Self.json($0)) }),
        ])
    }

    /// `POST applications/{id}/federatedIdentityCredentials`: name, issuer, subject and
    /// audiences required; at most 20 per application; one per issuer and subject.
    func addFederatedCredential(_ target: GraphTarget, body: [UInt8], caller: GraphCaller, base: String) throws(GraphError) -> JSONObject {
        guard !target.isServicePrincipal else { throw GraphError(400, "Request_BadRequest", "federatedIdentityCredentials belong to applications.") }
        let request = try parse(body)
        func field(_ name: String) throws(GraphError) -> String {
            guard let value = request[name]?.stringValue, !value.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw GraphError.badRequest("Invalid value specified for property '\(name)' of resource 'FederatedIdentityCredential'.")
            }
            return value
        }
        let name = try field("name"), issuer = try field("issuer"), subject = try field("subject")
        let audiences = (request["audiences"]?.arrayValue ?? []).compactMap(\.stringValue)
        guard !audiences.isEmpty else { throw GraphError.badRequest("Invalid value specified for property 'audiences' of resource 'FederatedIdentityCredential'.") }
        guard URL(string: issuer)?.scheme == "https" || URL(string: issuer)?.scheme == "http" else {
            throw GraphError.badRequest("Invalid value specified for property 'issuer' of resource 'FederatedIdentityCredential'.")
        }
        let credential = FederatedIdentityCredential(name: name, issuer: issuer, subject: subject, audiences: audiences, description: request["description"]?.stringValue)
        do {
            return try store.update { state -> JSONObject in
                let (t, a) = try locate(target, in: state, tenantId: caller.tenantId)
                let app = state.tenants[t].applications[a]
                try authorize(caller, app: app, tenantId: state.tenants[t].id, selfServiceAllowed: false)
                var list = app.federatedIdentityCredentials ?? []
                guard list.count < 20 else { throw GraphError.badRequest("An application can have at most 20 federated identity credentials.") }
                guard !list.contains(where: { $0.name == name }) else {
                    throw GraphError(409, "Request_MultipleObjectsWithSameKeyValue", "FederatedIdentityCredential with name \(name) already exists.")
                }
                guard !list.contains(where: { $0.issuer == issuer && $0.subject == subject }) else {
                    throw GraphError(409, "Request_MultipleObjectsWithSameKeyValue", "FederatedIdentityCredential with the same issuer and subject already exists.")
                }
                list.append(credential)
                state.tenants[t].applications[a].federatedIdentityCredentials = list
                var object = Self.json(credential)
                object["@odata.context"] = .string("\(base)/v1.0/$metadata#applications('\(app.id)')/federatedIdentityCredentials/$entity")
                return object
            }
        } catch let error as GraphError { throw error } catch { throw GraphError(500, "generalException", "\(error)") }
    }

    /// `DELETE applications/{id}/federatedIdentityCredentials/{id}`.
    func removeFederatedCredential(_ target: GraphTarget, id: String, caller: GraphCaller) throws(GraphError) {
        do {
            try store.update { state in
                let (t, a) = try locate(target, in: state, tenantId: caller.tenantId)
                try authorize(caller, app: state.tenants[t].applications[a], tenantId: state.tenants[t].id, selfServiceAllowed: false)
                var list = state.tenants[t].applications[a].federatedIdentityCredentials ?? []
                guard let index = list.firstIndex(where: { $0.id == id.lowercased() || $0.name == id }) else {
                    throw GraphError(404, "Request_ResourceNotFound", "Resource '\(id)' does not exist or one of its queried reference-property objects are not present.")
                }
                list.remove(at: index)
                state.tenants[t].applications[a].federatedIdentityCredentials = list
            }
        } catch let error as GraphError { throw error } catch { throw GraphError(500, "generalException", "\(error)") }
    }

    static func json(_ credential: FederatedIdentityCredential) -> JSONObject {
        JSONObject([
            "id": .string(credential.id), "name": .string(credential.name), "issuer": .string(credential.issuer),
            "subject": .string(credential.subject), "description": credential.description.map { .string($0) } ?? .null,
            "audiences": .array(credential.audiences.map { .string($0) }),
        ])
    }

    // MARK: - Rules

    /// Finds the target, checks the caller may change it, and runs `body` on its key
    /// credentials under the state lock.
    private func mutate(
        _ target: GraphTarget, caller: GraphCaller, now: Date,
        _ body: (inout [KeyCredential], String) throws -> JSONObject
    ) throws(GraphError) -> JSONObject {
        do {
            return try store.update { state -> JSONObject in
                let (t, a) = try locate(target, in: state, tenantId: caller.tenantId)
                let app = state.tenants[t].applications[a]
                try authorize(caller, app: app, tenantId: state.tenants[t].id, selfServiceAllowed: true)
                if target.isServicePrincipal {
                    return try body(&state.tenants[t].applications[a].servicePrincipal.keyCredentials, app.servicePrincipal.id)
                }
                return try body(&state.tenants[t].applications[a].keyCredentials, app.id)
            }
        } catch let error as GraphError {
            throw error
        } catch {
            throw GraphError(500, "generalException", "\(error)")
        }
    }

    private func readState() throws(GraphError) -> EmulatorState {
        do { return try store.read() } catch { throw GraphError(500, "generalException", "\(error)") }
    }

    /// The object in the caller's tenant: another tenant's object does not exist for it.
    private func locate(_ target: GraphTarget, in state: EmulatorState, tenantId: String) throws(GraphError) -> (Int, Int) {
        var found: (tenant: Int, app: Int)?
        if let t = state.tenants.firstIndex(where: { $0.id == tenantId }) {
            let apps = state.tenants[t].applications
            let a: Int?
            switch target {
            case .application(let id): a = apps.firstIndex { $0.id == id.lowercased() }
            case .applicationByAppID(let appId): a = apps.firstIndex { $0.appId == appId.lowercased() }
            case .servicePrincipal(let id): a = apps.firstIndex { $0.servicePrincipal.id == id.lowercased() }
            case .servicePrincipalByAppID(let appId): a = apps.firstIndex { $0.appId == appId.lowercased() }
            }
            found = a.map { (t, $0) }
        }
        guard let found else {
            throw GraphError(404, "Request_ResourceNotFound", "Resource '\(target.key)' does not exist or one of its queried reference-property objects are not present.")
        }
        return (found.tenant, found.app)
    }

    /// An app may roll its own keys (application or service principal) with no role; anything
    /// else needs Application.ReadWrite.All, or .OwnedBy on an application it owns.
    private func authorize(_ caller: GraphCaller, app: AppRegistration, tenantId: String, selfServiceAllowed: Bool) throws(GraphError) {
        guard caller.tenantId == tenantId else { throw GraphError.denied }
        if selfServiceAllowed && caller.appId == app.appId { return }
        if caller.roles.contains("Application.ReadWrite.All") { return }
        if caller.roles.contains("Application.ReadWrite.OwnedBy") && (app.owners.contains(caller.appId) || caller.appId == app.appId) { return }
        if !selfServiceAllowed && caller.roles.contains("Application.Read.All") { return }
        throw GraphError.denied
    }

    /// The proof: signed by a currently valid certificate of the target object (matched by
    /// `x5t` / `kid`), `aud` 00000002-…, `iss` the object id, at most 10 minutes, now inside.
    private func verifyProof(_ proof: String?, objectID: String, credentials: [KeyCredential], now: Date) throws(GraphError) {
        guard let proof, !proof.isEmpty else { throw GraphError.badRequest("The request body must contain a proof.") }
        let valid = credentials.filter { $0.isValid(at: now) }
        guard !valid.isEmpty else {
            throw GraphError.badRequest("The object has no currently valid certificate credential to verify the proof; add the first key with PATCH (Update application) instead.")
        }
        let jws: JWS
        do { jws = try JWS(compact: proof) } catch { throw GraphError.malformed("the proof is not a compact JWS: \(error)") }
        guard jws.algorithm == .RS256 || jws.algorithm == .PS256 else { throw GraphError.malformed("the proof's alg must be RS256 (or PS256)") }
        guard let claims = jws.claims else { throw GraphError.malformed("the proof's payload is not a JSON object") }
        guard claims["aud"]?.stringValue == Self.proofAudience else { throw GraphError.malformed("the proof's aud must be \(Self.proofAudience)") }
        guard claims["iss"]?.stringValue?.lowercased() == objectID else { throw GraphError.malformed("the proof's iss must be the object id \(objectID)") }
        guard let nbf = claims["nbf"]?.numberValue, let exp = claims["exp"]?.numberValue, nbf.isFinite, exp.isFinite else {
            throw GraphError.malformed("the proof needs nbf and exp as numbers")
        }
        guard exp - nbf <= 600 else { throw GraphError.malformed("the proof is valid for \(exp - nbf)s; at most 600s is allowed") }
        // A few minutes of clock skew either side, as for client assertions (uncertain: Graph's exact allowance).
        let t = now.timeIntervalSince1970
        guard nbf <= t + Self.clockSkew, t <= exp + Self.clockSkew else {
            throw GraphError.malformed("the proof is not valid now (nbf \(isoDate(nbf)), exp \(isoDate(exp)), now \(isoDate(now)))")
        }
        let x5t = jws.header["x5t"]?.stringValue.flatMap { Base64URL.decode($0) }
        let kid = jws.header["kid"]?.stringValue?.uppercased()
        guard let credential = valid.first(where: { c in
            guard let tp = c.thumbprint else { return false }
            return (x5t != nil && tp.sha1 == x5t!) || (kid != nil && tp.hexSHA1 == kid!)
        }) else { throw GraphError.malformed("the proof's x5t / kid names no currently valid certificate of this object") }
        guard let der = credential.certificateDER, let certificate = try? JWSCertificate(der: der), jws.isValid(publicKey: certificate.publicKey) else {
            throw GraphError.malformed("the proof's signature does not verify with certificate \(credential.thumbprint?.hexSHA1 ?? "")")
        }
    }

    /// A keyCredential object of an addKey or PATCH body: `AsymmetricX509Cert`, `Verify`, `key`
    /// the base64 DER of a certificate (no private key), dates defaulting to its validity.
    private func keyCredential(_ object: JSONObject, now: Date) throws(GraphError) -> KeyCredential {
        guard object["type"] == "AsymmetricX509Cert" else {
            throw GraphError.badRequest("Invalid value specified for property 'type' of resource 'KeyCredential'.")
        }
        guard object["usage"] == "Verify" else {
            throw GraphError.badRequest("Invalid value specified for property 'usage' of resource 'KeyCredential'.")
        }
        guard let keyText = object["key"]?.stringValue, let der = Data(base64Encoded: keyText).map({ [UInt8]($0) }) else {
            throw GraphError.badRequest("Invalid value specified for property 'key' of resource 'KeyCredential': not base64.")
        }
        let start = try date(object["startDateTime"], "startDateTime")
        let end = try date(object["endDateTime"], "endDateTime")
        let certificate: JWSCertificate
        do { certificate = try JWSCertificate(der: der) } catch {
            throw GraphError.badRequest("Key credential's key is not a valid certificate (a DER X.509 certificate without private key is required).")
        }
        // A credential may not outlive its certificate, nor start before it (compared to the second).
        if let end, end.timeIntervalSince1970.rounded(.down) > certificate.certificate.notValidAfter.timeIntervalSince1970 {
            throw GraphError(400, "KeyCredentialsInvalidEndDate", "Key credential end date is invalid.",
                reason: "endDateTime \(isoDate(end)) is after the certificate's notAfter \(isoDate(certificate.certificate.notValidAfter))")
        }
        if let start, start.timeIntervalSince1970.rounded(.up) < certificate.certificate.notValidBefore.timeIntervalSince1970 {
            throw GraphError(400, "KeyCredentialsInvalidStartDate", "Key credential start date is invalid.",
                reason: "startDateTime \(isoDate(start)) is before the certificate's notBefore \(isoDate(certificate.certificate.notValidBefore))")
        }
        do {
            return try KeyCredential.make(certificateDER: der, displayName: object["displayName"]?.stringValue, start: start, end: end, now: now)
        } catch {
            throw GraphError.badRequest("Key credential's key is not a valid certificate (a DER X.509 certificate without private key is required).")
        }
    }

    private func parse(_ body: [UInt8]) throws(GraphError) -> JSONObject {
        do { return try JSONObject(parsing: body, what: "the request body") } catch {
            throw GraphError.badRequest("Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.")
        }
    }

    private func date(_ value: JSONValue?, _ name: String) throws(GraphError) -> Date? {
        guard let value, value != .null else { return nil }
        guard let text = value.stringValue, let date = Self.parseDate(text) else {
            throw GraphError.badRequest("Invalid value specified for property '\(name)' of resource 'KeyCredential'.")
        }
        return date
    }

    /// An ISO 8601 date with or without fractional seconds (Graph and its SDKs send both).
    static func parseDate(_ text: String) -> Date? {
        let plain = ISO8601DateFormatter()
        if let date = plain.date(from: text) { return date }
        let fractional = ISO8601DateFormatter()
        fractional.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return fractional.date(from: text)
    }

    /// A keyCredential as Graph returns it (`key` only on GET with $select).
    static func json(_ c: KeyCredential, withKey: Bool = false) -> JSONObject {
        JSONObject([
            "customKeyIdentifier": .string(c.customKeyIdentifier),
            "displayName": c.displayName.map { .string($0) } ?? .null,
            "endDateTime": .string(isoDate(c.endDateTime)),
            "key": withKey ? .string(c.key) : .null,
            "keyId": .string(c.keyId),
            "startDateTime": .string(isoDate(c.startDateTime)),
            "type": .string(c.type),
            "usage": .string(c.usage),
        ])
    }
}
