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

/// `POST /{tenant}/oauth2/v2.0/token` with `grant_type=client_credentials` and a client
/// assertion, checked the way Entra checks it.
struct TokenEndpoint: Sendable {
    static let assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    static let clockSkew: TimeInterval = 300
    static let accessTokenLifetime: Int64 = 3599

    let store: StateStore
    let key: EmulatorSigningKey
    let faults: Faults

    /// The access-token response, or the error Entra would give.
    /// `authorities` are the base URLs this emulator is reached by (the assertion's `aud` must
    /// be this tenant's token endpoint under one of them).
    func issue(tenant tenantPath: String, form: [String: String], authorities: [String], now: Date) throws(OAuthError) -> JSONObject {
        let state: EmulatorState
        do { state = try store.read() } catch { throw OAuthError(500, "server_error", 90000, "\(error)") }
        guard let tenant = state.tenant(tenantPath) else {
            throw OAuthError(400, "invalid_request", 90002,
                "Tenant '\(tenantPath)' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.")
        }
        guard form["grant_type"] == "client_credentials" else {
            throw OAuthError(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '\(form["grant_type"] ?? "")'.")
        }
        guard let clientID = form["client_id"], !clientID.isEmpty else {
            throw OAuthError(400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'.")
        }
        guard let app = tenant.applications.first(where: { $0.appId == clientID.lowercased() }) else {
            throw OAuthError(400, "unauthorized_client", 700016,
                "Application with identifier '\(clientID)' was not found in the directory '\(tenant.domain)'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.")
        }
        guard let assertion = form["client_assertion"], !assertion.isEmpty else {
            throw OAuthError(401, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
        }
        guard form["client_assertion_type"] == Self.assertionType else {
            throw OAuthError(400, "invalid_request", 7000218,
                "The 'client_assertion_type' parameter must be '\(Self.assertionType)' when 'client_assertion' is sent.")
        }
        let scope = form["scope"] ?? ""
        let scopes = scope.split(separator: " ")
        guard scopes.count == 1, scope.hasSuffix("/.default"), scope.count > "/.default".count else {
            throw OAuthError(400, "invalid_scope", 70011,
                "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope \(scope) is not valid. For the client credentials flow it must be a single resource followed by /.default.")
        }
        let resource = String(scope.dropLast("/.default".count))

        // The assertion itself.
        let malformed = OAuthError(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
        let jws: JWS
        do { jws = try JWS(compact: assertion) } catch { throw malformed }
        guard let claims = jws.claims else { throw malformed }
        let alg = jws.header["alg"]?.stringValue ?? ""
        guard let algorithm = JWSAlgorithm(rawValue: alg), algorithm == .RS256 || algorithm == .PS256 else {
            throw OAuthError(401, "invalid_client", 5002730, "Unsupported key for the signing algorithm '\(alg)'. Client assertions must be signed with RS256 or PS256.")
        }
        let x5t = jws.header["x5t"]?.stringValue.flatMap { Base64URL.decode($0) }
        let x5tS256 = jws.header["x5t#S256"]?.stringValue.flatMap { Base64URL.decode($0) }
        let x5cLeaf = jws.header["x5c"]?.arrayValue?.first?.stringValue.flatMap { Data(base64Encoded: $0) }.map { [UInt8]($0) }
        guard x5t?.count == 20 || x5tS256?.count == 32 || x5cLeaf != nil else {
            throw OAuthError(401, "invalid_client", 50027,
                "JWT token is invalid or malformed. The client assertion header has no certificate thumbprint (x5t or x5t#S256) and no x5c.")
        }

        let issuer = claims["iss"]?.stringValue
        let audiences = authorities.flatMap { base in
            [tenant.id, tenant.domain].flatMap { t in ["\(base)/\(t)/oauth2/v2.0/token", "\(base)/\(t)/v2.0"] }
        }
        guard let aud = claims["aud"]?.stringValue, audiences.contains(where: { $0.lowercased() == aud.lowercased() }) else {
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
        guard let exp = claims["exp"]?.numberValue else { throw malformed }
        let nbf = claims["nbf"]?.numberValue ?? claims["iat"]?.numberValue ?? 0
        guard effectiveNow <= exp + Self.clockSkew, effectiveNow + Self.clockSkew >= nbf else {
            let current = Int64(effectiveNow)
            throw OAuthError(401, "invalid_client", 700024,
                "Client assertion is not within its valid time range. Current time: \(isoDate(now)), assertion valid from \(isoDate(Date(timeIntervalSince1970: nbf))), expiry time of assertion \(isoDate(Date(timeIntervalSince1970: exp))). Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials . (server time \(current))")
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

        // An access token signed by the emulator's key.
        let iat = Int64(effectiveNow)
        let authority = authorities.first ?? ""
        var token = JSONObject()
        token["aud"] = .string(resource)
        token["iss"] = .string("\(authority)/\(tenant.id)/v2.0")
        token["iat"] = .int(iat)
        token["nbf"] = .int(iat)
        token["exp"] = .int(iat + Self.accessTokenLifetime)
        token["tid"] = .string(tenant.id)
        token["appid"] = .string(app.appId)
        token["azp"] = .string(app.appId)
        token["appidacr"] = "2"
        token["azpacr"] = "2"
        token["oid"] = .string(app.servicePrincipal.id)
        token["sub"] = .string(app.servicePrincipal.id)
        token["idtyp"] = "app"
        token["roles"] = .array(app.roles.map { .string($0) })
        token["ver"] = "2.0"
        token["uti"] = .string(Base64URL.encode(Array(UUID().uuidString.utf8.prefix(16))))
        let accessToken: String
        do { accessToken = try key.sign(claims: token) } catch { throw OAuthError(500, "server_error", 90000, "\(error)") }
        return JSONObject([
            "token_type": "Bearer", "expires_in": .int(Self.accessTokenLifetime), "ext_expires_in": .int(Self.accessTokenLifetime),
            "access_token": .string(accessToken),
        ])
    }
}

func isoDate(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    return formatter.string(from: date)
}

func hexString(_ bytes: [UInt8]) -> String { Hex.encode(bytes, uppercase: true) }
