import Foundation
import JOSE
import Logging

/// An access token from the token endpoint.
public struct AccessToken: Sendable, Codable, Equatable {
    public var accessToken: String
    public var tokenType: String
    public var expiresOn: Date
    /// Where it came from: the cache or the token endpoint.
    public var fromCache: Bool

    /// The longest lifetime p11jwt believes of an access token (Entra's are at most a day): a
    /// server's or a cache file's claim beyond it is not a token to keep.
    public static let maximumLifetime: TimeInterval = 365 * 86400

    public init(accessToken: String, tokenType: String = "Bearer", expiresOn: Date, fromCache: Bool = false) {
        self.accessToken = accessToken
        self.tokenType = tokenType
        self.expiresOn = expiresOn
        self.fromCache = fromCache
    }
}

/// Where p11jwt talks to: the login host (token endpoint) and Graph, per cloud or overridden
/// (e.g. by the emulator's URL).
public struct EntraEndpoints: Sendable, Equatable {
    public var authorityHost: URL
    public var graphEndpoint: URL

    public init(authorityHost: URL, graphEndpoint: URL) {
        self.authorityHost = authorityHost
        self.graphEndpoint = graphEndpoint
    }

    public init(cloud: EntraCloud = .global) {
        self.init(authorityHost: cloud.authorityHost, graphEndpoint: cloud.graphEndpoint)
    }

    /// The scope asking for a Graph token on these endpoints: `{graph}/.default`. On an
    /// overridden (emulator) Graph endpoint it is still Microsoft Graph's resource of the cloud.
    public static func graphScope(cloud: EntraCloud) -> String {
        cloud.graphEndpoint.absoluteString + "/.default"
    }
}

/// The client-credentials exchange: a client assertion for an access token.
public struct TokenClient: Sendable {
    public static let assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

    let http: EntraHTTP
    let authorityHost: URL

    public init(http: EntraHTTP, authorityHost: URL) {
        self.http = http
        self.authorityHost = authorityHost
    }

    /// `POST {authority}/{tenant}/oauth2/v2.0/token`. Entra's refusals become
    /// ``EntraError/Code/tokenRefused`` with the AADSTS code, Entra's message and a hint.
    public func acquire(tenant: String, clientID: String, scope: String, assertion: String, now: Date = Date()) async throws -> AccessToken {
        let url = ClientAssertion.tokenEndpoint(authorityHost: authorityHost, tenant: tenant)
        let form = Self.formEncode([
            ("grant_type", "client_credentials"), ("client_id", clientID), ("scope", scope),
            ("client_assertion_type", Self.assertionType), ("client_assertion", assertion),
        ])
        let answer = try await http.send(
            .POST, url, headers: [("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json")],
            body: Array(form.utf8), operation: "token request")
        let object = try? JSONObject(parsing: answer.body, what: "the token endpoint's answer")
        guard answer.status == 200 else {
            throw Self.refusal(status: answer.status, body: object, tenant: tenant, clientID: clientID, scope: scope)
        }
        return try Self.accessToken(from: object, now: now)
    }

    /// A 200 answer's token, its type and its expiry, checked: untrusted input from a server.
    static func accessToken(from object: JSONObject?, now: Date) throws -> AccessToken {
        guard let object, let token = object["access_token"]?.stringValue, !token.isEmpty else {
            throw EntraError(.protocolViolation, "the token endpoint answered 200 without an access_token")
        }
        // v2 answers a number, v1 a string; anything but a sane count of seconds is refused here,
        // before it can reach the cache or a date conversion.
        let rawExpiresIn = object["expires_in"]
        let expiresIn = rawExpiresIn == nil ? 3599 : rawExpiresIn?.numberValue ?? rawExpiresIn?.stringValue.flatMap { Double($0) }
        guard let expiresIn, expiresIn.isFinite, expiresIn >= 1, expiresIn <= AccessToken.maximumLifetime else {
            throw EntraError(.protocolViolation,
                "the token endpoint answered expires_in \(rawExpiresIn?.serialized.prefix(40) ?? "") — not a number of seconds between 1 and \(Int(AccessToken.maximumLifetime))",
                hint: "check that the authority host is Entra's (or the emulator's); nothing was cached")
        }
        return AccessToken(
            accessToken: token, tokenType: object["token_type"]?.stringValue ?? "Bearer",
            expiresOn: now.addingTimeInterval(expiresIn))
    }

    /// Entra's error JSON as an ``EntraError`` with a hint for the codes p11jwt's users meet.
    static func refusal(status: Int, body: JSONObject?, tenant: String, clientID: String, scope: String) -> EntraError {
        guard let body, let error = body["error"]?.stringValue else {
            return EntraError(.tokenRefused, "the token endpoint answered HTTP \(status) without Entra's error JSON", httpStatus: status)
        }
        let description = body["error_description"]?.stringValue ?? error
        let code = body["error_codes"]?.arrayValue?.first?.numberValue.flatMap { Int(exactly: $0) }
            ?? Int(description.drop(while: { !$0.isNumber }).prefix(while: \.isNumber))
        // Entra appends trace and correlation ids on new lines; the first line is the message.
        let message = description.components(separatedBy: CharacterSet.newlines).first ?? description
        return EntraError(.tokenRefused, message, hint: hint(aadsts: code, message: message, tenant: tenant, clientID: clientID, scope: scope),
                          settings: settings(aadsts: code), aadsts: code, httpStatus: status)
    }

    /// The settings an AADSTS refusal's hint asks the user to check.
    static func settings(aadsts: Int?) -> [String] {
        switch aadsts {
        case 700027: return ["key"]
        case 700023: return ["tenant", "authority-host", "cloud"]
        case 90002: return ["tenant", "cloud"]
        case 700016: return ["client-id", "tenant"]
        case 500011, 70011, 1002012: return ["scope"]
        case 5002730: return ["alg"]
        case 50048, 700021: return ["client-id"]
        case 700211, 700212, 700213: return ["via-fic", "object-id"]
        default: return []
        }
    }

    static func hint(aadsts: Int?, message: String, tenant: String, clientID: String, scope: String) -> String? {
        switch aadsts {
        case 700027:
            let thumbprint = message.range(of: "Thumbprint of key used by client: '").map {
                String(message[$0.upperBound...].prefix(while: { $0 != "'" }))
            }
            return "this certificate is not registered on the app\(thumbprint.map { ": thumbprint \($0)" } ?? ""); register it (Certificates & secrets, or addKey) or sign with the registered key. Right after addKey, Entra may take minutes to replicate a new key."
        case 700024:
            return "the assertion's time window (nbf/exp) does not contain Entra's clock: check this machine's clock (NTP); the skew allowed is 5 minutes"
        case 700023:
            return "the assertion's aud must be the token endpoint of the tenant: check the tenant and the authority host / cloud"
        case 90002:
            return "tenant '\(tenant)' was not found: check the tenant and the cloud (a US Gov or China tenant is not on the public cloud)"
        case 700016:
            return "application '\(clientID)' was not found in tenant '\(tenant)': check the client id (the appId) and the tenant"
        case 7000215, 7000222:
            return "the credential is invalid or expired: a client assertion was sent, check that the app accepts certificate credentials"
        case 500011:
            return "no resource named by the scope '\(scope)' exists in tenant '\(tenant)': check the scope (an API's App ID URI or appId, then /.default) and that the API is registered in this tenant"
        case 70011, 1002012:
            return "the scope '\(scope)' is not valid: app-only tokens need '<resource>/.default', e.g. https://graph.microsoft.com/.default"
        case 50027:
            return "Entra could not read the assertion as a JWT with a certificate thumbprint: check that the key has its certificate (x5t / x5t#S256)"
        case 5002730:
            return "Entra refused the signing algorithm: use an RSA key; try RS256 if PS256 is refused"
        case 1000502:
            return "the registered certificate is outside its validity dates: rotate to a new certificate"
        case 50048, 700021:
            return "iss and sub must both be the client id: check the client id"
        case 7000218:
            return "the request carried no client assertion, or the wrong client_assertion_type: this is a bug in p11jwt if you see it, please report it"
        case 70003, 900144, 900561:
            return "the token request is not a client-credentials request Entra accepts: this is a bug in p11jwt if you see it, please report it"
        case 50013:
            return "Entra refused the assertion as reused or invalid: try again: each request gets a fresh assertion with a new jti"
        case 700211, 700213, 700212:
            let part = aadsts == 700211 ? "issuer" : aadsts == 700213 ? "subject" : "audience"
            return "application '\(clientID)' has no federated identity credential matching the token's \(part): on that app, add one with the calling app's issuer (<authority>/<its tenant>/v2.0) and subject (its service principal's object id)"
        case 90033, 50196:
            return "Entra is temporarily unavailable or throttling: try again in a minute"
        default:
            return "see https://login.microsoftonline.com/error?code=\(aadsts.map(String.init) ?? "")"
        }
    }

    /// `application/x-www-form-urlencoded` (RFC 3986 unreserved characters kept).
    static func formEncode(_ fields: [(String, String)]) -> String {
        let unreserved = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
        return fields.map { name, value in
            "\(name)=\(value.addingPercentEncoding(withAllowedCharacters: unreserved) ?? value)"
        }.joined(separator: "&")
    }
}
