import Foundation
import JOSE

/// An error the token endpoint answers with: HTTP status, OAuth `error`, AADSTS code, message.
public struct OAuthError: Error, Sendable, Equatable {
    public var status: Int
    public var error: String
    public var code: Int
    public var message: String

    public init(_ status: Int, _ error: String, _ code: Int, _ message: String) {
        self.status = status
        self.error = error
        self.code = code
        self.message = message
    }

    /// AADSTS90002, from the token endpoint (`invalid_request`) or discovery (`invalid_tenant`).
    static func tenantNotFound(_ tenant: String, error: String = "invalid_request") -> OAuthError {
        OAuthError(400, error, 90002,
            "Tenant '\(tenant)' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.")
    }

    /// Entra's error body.
    func body(authority: String, now: Date) -> JSONObject {
        let trace = UUID().uuidString.lowercased(), correlation = UUID().uuidString.lowercased()
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss'Z'"
        let timestamp = formatter.string(from: now)
        return JSONObject([
            "error": .string(error),
            "error_description": .string("AADSTS\(code): \(message)\r\nTrace ID: \(trace)\r\nCorrelation ID: \(correlation)\r\nTimestamp: \(timestamp)"),
            "error_codes": .array([.int(Int64(code))]),
            "timestamp": .string(timestamp),
            "trace_id": .string(trace),
            "correlation_id": .string(correlation),
            "error_uri": .string("\(authority)/error?code=\(code)"),
        ])
    }
}

/// The two token endpoints: v2 `POST /{tenant}/oauth2/v2.0/token` (`scope=`) and v1
/// `POST /{tenant}/oauth2/token` (`resource=`), answering in each one's shape.
enum TokenEndpointVersion: Sendable {
    case v1, v2
}

/// What a client credentials request names as its audience: a built-in resource (Graph) or an
/// application of the tenant, and the identifier the request used for it.
struct ResolvedResource {
    var appId: String
    var requestedAs: String
    var accessTokenVersion: Int
    var application: AppRegistration?
}

/// `grant_type=client_credentials` with a client assertion, checked the way Entra checks it.
/// Where Entra's behaviour is uncertain the choice is commented here and listed in
/// docs/emulator-fidelity.md.
struct TokenEndpoint: Sendable {
    static let assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    static let clockSkew: TimeInterval = 300
    static let accessTokenLifetime: Int64 = 3599

    let store: StateStore
    let key: EmulatorSigningKey
    let faults: Faults

    /// The access-token response, or the error Entra would give.
    /// `authorities` are the base URLs this emulator is reached by (the assertion's `aud` must
    /// be this tenant's token endpoint, or its issuer, under one of them).
    func issue(
        tenant tenantPath: String, form: [String: String], authorities: [String], now: Date, endpoint: TokenEndpointVersion = .v2
    ) throws(OAuthError) -> JSONObject {
        let state: EmulatorState
        do { state = try store.read() } catch { throw OAuthError(500, "server_error", 90000, "\(error)") }
        guard let tenant = state.tenant(tenantPath) else { throw OAuthError.tenantNotFound(tenantPath) }
        guard let grantType = form["grant_type"], !grantType.isEmpty else { throw Self.missing("grant_type") }
        guard grantType == "client_credentials" else {
            throw OAuthError(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '\(grantType)'.")
        }
        guard let clientID = form["client_id"], !clientID.isEmpty else { throw Self.missing("client_id") }
        // The scope's form is request validation, before the client is looked up.
        let requested: String
        switch endpoint {
        case .v2:
            guard let scope = form["scope"], !scope.isEmpty else { throw Self.missing("scope") }
            let scopes = scope.split(separator: " ")
            guard scopes.count == 1 else {
                throw OAuthError(400, "invalid_scope", 70011,
                    "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope \(scope) is not valid. For the client credentials flow it must be a single resource followed by /.default.")
            }
            guard scope.hasSuffix("/.default"), scope.count > "/.default".count else {
                throw OAuthError(400, "invalid_scope", 1002012,
                    "The provided value for scope \(scope) is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).")
            }
            requested = String(scope.dropLast("/.default".count))
        case .v1:
            // Uncertain: what v1 answers without `resource`; the emulator names the parameter.
            guard let resource = form["resource"], !resource.isEmpty else { throw Self.missing("resource") }
            requested = resource
        }
        guard let app = tenant.applications.first(where: { $0.appId == clientID.lowercased() }) else {
            throw OAuthError(400, "unauthorized_client", 700016,
                "Application with identifier '\(clientID)' was not found in the directory '\(tenant.domain)'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.")
        }
        // The emulator models certificate credentials only: every secret is a wrong secret.
        if let secret = form["client_secret"], !secret.isEmpty {
            throw OAuthError(401, "invalid_client", 7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '\(app.appId)'.")
        }
        guard let assertion = form["client_assertion"], !assertion.isEmpty else {
            throw OAuthError(401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
        }
        guard form["client_assertion_type"] == Self.assertionType else {
            throw OAuthError(400, "invalid_request", 7000218,
                "The 'client_assertion_type' parameter must be '\(Self.assertionType)' when 'client_assertion' is sent.")
        }
        // A client assertion whose issuer is a URL, not the client id, is a token from an
        // identity provider the app trusts through a federated identity credential.
        if let issuer = Self.unverifiedIssuer(assertion), issuer.hasPrefix("https://") || issuer.hasPrefix("http://") {
            try checkFederated(assertion, app: app, state: state, authorities: authorities, now: now)
        } else {
            try checkAssertion(assertion, app: app, clientID: clientID, tenant: tenant, authorities: authorities, now: now)
        }
        // The client is authenticated; then the resource it asks for. (Uncertain: Entra's order
        // between 500011 and a bad assertion; the emulator authenticates first.)
        guard let resource = Self.resolve(requested, in: tenant) else {
            throw OAuthError(400, "invalid_resource", 500011,
                "The resource principal named \(requested) was not found in the tenant named \(tenant.domain). This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.")
        }

        // An access token signed by the emulator's key, in the resource's token version.
        let iat = Int64(now.timeIntervalSince1970)
        let authority = authorities.first ?? ""
        var token = JSONObject()
        if resource.accessTokenVersion == 2 {
            token["aud"] = .string(resource.appId)
            token["iss"] = .string("\(authority)/\(tenant.id)/v2.0")
        } else {
            token["aud"] = .string(resource.requestedAs)
            token["iss"] = .string(Self.v1Issuer(tenant.id))
            token["idp"] = .string(Self.v1Issuer(tenant.id))
        }
        token["iat"] = .int(iat)
        token["nbf"] = .int(iat)
        token["exp"] = .int(iat + Self.accessTokenLifetime)
        if resource.accessTokenVersion == 2 {
            token["azp"] = .string(app.appId)
            token["azpacr"] = "2"
        } else {
            token["appid"] = .string(app.appId)
            token["appidacr"] = "2"
        }
        token["idtyp"] = "app"
        token["oid"] = .string(app.servicePrincipal.id)
        let roles = app.roles(on: resource.appId)
        if !roles.isEmpty { token["roles"] = .array(roles.map { .string($0) }) }
        token["sub"] = .string(app.servicePrincipal.id)
        token["tid"] = .string(tenant.id)
        token["uti"] = .string(Base64URL.encode(Array(UUID().uuidString.utf8.prefix(16))))
        token["ver"] = resource.accessTokenVersion == 2 ? "2.0" : "1.0"
        let accessToken: String
        do { accessToken = try key.sign(claims: token) } catch { throw OAuthError(500, "server_error", 90000, "\(error)") }
        switch endpoint {
        case .v2:
            return JSONObject([
                "token_type": "Bearer", "expires_in": .int(Self.accessTokenLifetime), "ext_expires_in": .int(Self.accessTokenLifetime),
                "access_token": .string(accessToken),
            ])
        case .v1:
            // v1 answers numbers as strings, with expires_on, not_before and resource.
            return JSONObject([
                "token_type": "Bearer", "expires_in": .string(String(Self.accessTokenLifetime)),
                "ext_expires_in": .string(String(Self.accessTokenLifetime)),
                "expires_on": .string(String(iat + Self.accessTokenLifetime)), "not_before": .string(String(iat)),
                "resource": .string(requested), "access_token": .string(accessToken),
            ])
        }
    }

    static func v1Issuer(_ tenantID: String) -> String { "https://sts.windows.net/\(tenantID)/" }

    static func missing(_ parameter: String) -> OAuthError {
        OAuthError(400, "invalid_request", 900144, "The request body must contain the following parameter: '\(parameter)'.")
    }

    /// Graph by any of its names, else an application of the tenant by appId or App ID URI
    /// (compared without case or a trailing `/`, as Entra matches identifier URIs).
    static func resolve(_ requested: String, in tenant: Tenant) -> ResolvedResource? {
        for builtIn in [BuiltInResource.graph, .tokenExchange] where builtIn.isNamed(by: requested) {
            return ResolvedResource(appId: builtIn.appId, requestedAs: requested, accessTokenVersion: builtIn.accessTokenVersion)
        }
        let name = BuiltInResource.normalized(requested)
        guard let api = tenant.applications.first(where: { app in
            app.appId == name || (app.identifierUris ?? []).contains { BuiltInResource.normalized($0) == name }
        }) else { return nil }
        return ResolvedResource(appId: api.appId, requestedAs: requested, accessTokenVersion: api.accessTokenVersion, application: api)
    }

    /// Checks the client assertion for `app` as Entra would.
    private func checkAssertion(
        _ assertion: String, app: AppRegistration, clientID: String, tenant: Tenant, authorities: [String], now: Date
    ) throws(OAuthError) {
        let malformed = OAuthError(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
        let jws: JWS
        do { jws = try JWS(compact: assertion) } catch { throw malformed }
        guard let claims = jws.claims else { throw malformed }
        let alg = jws.header["alg"]?.stringValue ?? ""
        guard let algorithm = JWSAlgorithm(rawValue: alg), algorithm == .RS256 || algorithm == .PS256 else {
            throw OAuthError(401, "invalid_client", 5002730, "Unsupported key for the signing algorithm '\(alg)'. Client assertions must be signed with RS256 or PS256.")
        }
        // What Microsoft's clients send, and Entra so accepts: MSAL Python and azure-identity
        // write thumbprints with `=` padding, and MSAL's x5c entries are PEM bodies with line breaks.
        let x5t = Self.thumbprint(jws.header["x5t"], length: 20)
        let x5tS256 = Self.thumbprint(jws.header["x5t#S256"], length: 32)
        let x5cLeaf = Self.certificateDER(jws.header["x5c"]?.arrayValue?.first)
        guard x5t != nil || x5tS256 != nil || x5cLeaf != nil else {
            throw OAuthError(401, "invalid_client", 50027,
                "JWT token is invalid or malformed. The client assertion header has no certificate thumbprint (x5t or x5t#S256) and no x5c.")
        }
        let issuer = claims["iss"]?.stringValue
        // aud: the v2 or v1 token endpoint or the v2 issuer, the tenant by id or domain, any case.
        guard case .string(let aud)? = claims["aud"] else {
            throw OAuthError(401, "invalid_client", 50027, "JWT token is invalid or malformed. The 'aud' claim must be a string.")
        }
        let audiences = authorities.flatMap { base in
            [tenant.id, tenant.domain].flatMap { t in
                ["\(base)/\(t)/oauth2/v2.0/token", "\(base)/\(t)/oauth2/token", "\(base)/\(t)/v2.0"]
            }
        }
        guard audiences.contains(where: { $0.lowercased() == aud.lowercased() }) else {
            throw OAuthError(401, "invalid_client", 700023,
                "Client assertion audience claim does not match Realm issuer. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .")
        }
        guard issuer?.lowercased() == clientID.lowercased() else {
            throw OAuthError(401, "invalid_client", 700021,
                "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .")
        }
        guard claims["sub"]?.stringValue?.lowercased() == issuer?.lowercased() else {
            throw OAuthError(401, "invalid_client", 50048,
                "Subject mismatches Issuer claim in the client assertion for application '\(app.appId)'.")
        }
        let effectiveNow = now.timeIntervalSince1970
        // A time no date can hold (beyond year 9999, as .NET's DateTime) is not a NumericDate.
        func numericDate(_ value: Double?) -> Double? { value.flatMap { $0.isFinite && abs($0) < 253_402_300_800 ? $0 : nil } }
        guard let exp = numericDate(claims["exp"]?.numberValue) else { throw malformed }
        guard let nbfValue = numericDate(claims["nbf"]?.numberValue ?? claims["iat"]?.numberValue ?? 0) else { throw malformed }
        guard effectiveNow <= exp + Self.clockSkew, effectiveNow + Self.clockSkew >= nbfValue else {
            throw OAuthError(401, "invalid_client", 700024,
                "Client assertion is not within its valid time range. Current time: \(isoDate(now)), assertion valid from \(isoDate(nbfValue)), expiry time of assertion \(isoDate(exp)). Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .")
        }

        // The certificate: by thumbprint among the application's key credentials.
        let credential = app.keyCredentials.first { credential in
            guard let t = credential.thumbprint else { return false }
            if let x5tS256 { return t.sha256 == x5tS256 }
            if let x5t { return t.sha1 == x5t }
            return x5cLeaf.map { Thumbprint(der: $0).sha1 == t.sha1 } ?? false
        }
        let usedThumbprint = x5t.map { hexString($0) } ?? x5cLeaf.map { Thumbprint(der: $0).hexSHA1 } ?? x5tS256.map { hexString($0) } ?? ""
        let notRegistered = OAuthError(401, "invalid_client", 700027,
            "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '\(credential?.thumbprint?.hexSHA1 ?? usedThumbprint)', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '\(app.appId)'. Review the documentation at https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding service endpoint and https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http to build a query request URL, such as 'https://graph.microsoft.com/beta/applications/\(app.id)']")
        guard let credential, let der = credential.certificateDER, let certificate = try? JWSCertificate(der: der) else {
            throw notRegistered
        }
        if credential.preRegistered != true && now.timeIntervalSince(credential.addedDateTime) < faults.propagationDelay {
            throw notRegistered  // not yet replicated to the token service
        }
        guard credential.isValid(at: now) else {
            throw OAuthError(401, "invalid_client", 1000502,
                "The certificate with thumbprint '\(certificate.thumbprint.hexSHA1)' used to sign the client assertion is not within its valid time range: key credential valid from \(isoDate(credential.startDateTime)) to \(isoDate(credential.endDateTime)).")
        }
        guard jws.isValid(publicKey: certificate.publicKey) else {
            throw OAuthError(401, "invalid_client", 700027,
                "Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '\(certificate.thumbprint.hexSHA1)', Found key 'Start=\(isoDate(credential.startDateTime)), End=\(isoDate(credential.endDateTime))']")
        }
        if faults.rejectReplay, let jti = claims["jti"]?.stringValue {
            guard faults.recordAssertion(jti: jti, until: exp) else {
                throw OAuthError(400, "invalid_client", 50013, "Assertion is invalid: its jti was already used (replay). Real Entra accepts reuse within the lifetime; this emulator refuses it because --reject-replay is set.")
            }
        }
    }

    /// The `iss` of a compact JWS, before anything is checked (nil when it has none).
    static func unverifiedIssuer(_ assertion: String) -> String? {
        (try? JWS(compact: assertion))?.claims?["iss"]?.stringValue
    }

    /// A federated client assertion: a token this emulator issued (any of its tenants, so
    /// across tenants too) whose issuer, subject and audience match one of the app's federated
    /// identity credentials, validly signed and current. Entra's codes: 700211 (no credential
    /// for the issuer), 700213 (for the subject), 700212 (for the audience).
    private func checkFederated(_ assertion: String, app: AppRegistration, state: EmulatorState, authorities: [String], now: Date) throws(OAuthError) {
        let malformed = OAuthError(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
        let jws: JWS
        do { jws = try JWS(compact: assertion) } catch { throw malformed }
        guard let claims = jws.claims, let issuer = claims["iss"]?.stringValue else { throw malformed }
        let subject = claims["sub"]?.stringValue ?? ""
        let audience = claims["aud"]?.stringValue ?? ""
        let credentials = app.federatedIdentityCredentials ?? []
        let byIssuer = credentials.filter { $0.issuer == issuer }
        guard !byIssuer.isEmpty else {
            throw OAuthError(400, "invalid_request", 700211,
                "No matching federated identity record found for presented assertion issuer '\(issuer)'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation")
        }
        let bySubject = byIssuer.filter { $0.subject == subject }
        guard !bySubject.isEmpty else {
            throw OAuthError(400, "invalid_request", 700213,
                "No matching federated identity record found for presented assertion subject '\(subject)'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation")
        }
        guard bySubject.contains(where: { $0.accepts(audience: audience) }) else {
            throw OAuthError(400, "invalid_request", 700212,
                "No matching federated identity record found for presented assertion audience '\(audience)'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation")
        }
        // Only this emulator's own tokens can be verified here: its issuers, its key.
        let ownIssuers = state.tenants.flatMap { t in authorities.map { "\($0)/\(t.id)/v2.0" } + [Self.v1Issuer(t.id)] }
        guard ownIssuers.contains(issuer), key.verifies(jws) else {
            throw OAuthError(401, "invalid_client", 50013, "Assertion failed signature validation. [Reason - The key was not found.]")
        }
        func numericDate(_ value: Double?) -> Double? { value.flatMap { $0.isFinite && abs($0) < 253_402_300_800 ? $0 : nil } }
        guard let exp = numericDate(claims["exp"]?.numberValue), let nbf = numericDate(claims["nbf"]?.numberValue ?? claims["iat"]?.numberValue) else {
            throw malformed
        }
        let t = now.timeIntervalSince1970
        guard t <= exp + Self.clockSkew, t + Self.clockSkew >= nbf else {
            throw OAuthError(400, "invalid_client", 700024,
                "Client assertion is not within its valid time range. Current time: \(isoDate(now)), assertion valid from \(isoDate(nbf)), expiry time of assertion \(isoDate(exp)).")
        }
    }

    /// A header thumbprint in base64url, with or without `=` padding, of exactly `length` bytes;
    /// nil when absent or not one.
    static func thumbprint(_ value: JSONValue?, length: Int) -> [UInt8]? {
        guard var text = value?.stringValue else { return nil }
        var padding = 0
        while text.hasSuffix("="), padding < 2 {
            text.removeLast()
            padding += 1
        }
        guard let bytes = Base64URL.decode(text), bytes.count == length else { return nil }
        return bytes
    }

    /// An `x5c` entry: standard base64 DER, line breaks and spaces ignored (MSAL sends PEM bodies).
    static func certificateDER(_ value: JSONValue?) -> [UInt8]? {
        guard let text = value?.stringValue else { return nil }
        let compact = text.filter { !$0.isWhitespace }
        return Data(base64Encoded: compact).map { [UInt8]($0) }
    }
}

func isoDate(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    return formatter.string(from: date)
}

/// Seconds since 1970 as an ISO 8601 date; a value no date can hold is printed as the number.
func isoDate(_ seconds: Double) -> String {
    guard seconds.isFinite, abs(seconds) < 253_402_300_800 else { return "\(seconds)" }
    return isoDate(Date(timeIntervalSince1970: seconds))
}

func hexString(_ bytes: [UInt8]) -> String { Hex.encode(bytes, uppercase: true) }
