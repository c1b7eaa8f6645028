import Foundation
import JOSE
import Logging

/// Which object's key credentials: an application or its service principal, by object id or
/// by appId (`applications(appId='…')`).
public enum GraphKeyTarget: Sendable, Hashable, CustomStringConvertible {
    case application(id: String)
    case applicationByAppID(String)
    case servicePrincipal(id: String)
    case servicePrincipalByAppID(String)

    /// The path under `/v1.0`.
    public var path: String {
        switch self {
        case .application(let id): return "applications/\(id)"
        case .applicationByAppID(let appID): return "applications(appId='\(appID)')"
        case .servicePrincipal(let id): return "servicePrincipals/\(id)"
        case .servicePrincipalByAppID(let appID): return "servicePrincipals(appId='\(appID)')"
        }
    }

    public var isServicePrincipal: Bool {
        switch self {
        case .servicePrincipal, .servicePrincipalByAppID: return true
        case .application, .applicationByAppID: return false
        }
    }

    /// The object id when the target names it.
    public var objectID: String? {
        switch self {
        case .application(let id), .servicePrincipal(let id): return id
        case .applicationByAppID, .servicePrincipalByAppID: return nil
        }
    }

    public var description: String { path }
}

/// A key credential as Graph returns it.
public struct KeyCredentialInfo: Sendable, Codable, Equatable {
    public var keyId: String?
    public var customKeyIdentifier: String?
    public var displayName: String?
    public var startDateTime: String?
    public var endDateTime: String?
    public var type: String?
    public var usage: String?
    public var key: String?

    /// Graph's `customKeyIdentifier` is the base64 SHA-1 thumbprint: as uppercase hex.
    public var thumbprintHex: String? {
        customKeyIdentifier.flatMap { Data(base64Encoded: $0) }.map { Hex.encode($0, uppercase: true) }
    }

    public init(keyId: String?, customKeyIdentifier: String?, displayName: String? = nil, startDateTime: String? = nil,
                endDateTime: String? = nil, type: String? = "AsymmetricX509Cert", usage: String? = "Verify", key: String? = nil) {
        self.keyId = keyId
        self.customKeyIdentifier = customKeyIdentifier
        self.displayName = displayName
        self.startDateTime = startDateTime
        self.endDateTime = endDateTime
        self.type = type
        self.usage = usage
        self.key = key
    }
}

/// Graph's key-credential API: `addKey`, `removeKey` and reading `keyCredentials`.
///
/// A lost answer (the connection failed after the request was sent) is resolved, not guessed:
/// addKey is sent again and a "same certificate already exists" refusal then means the first
/// one was applied; removeKey is sent again and "no such keyId" then means it was removed.
public struct GraphClient: Sendable {
    let http: EntraHTTP
    let graphEndpoint: URL
    let logger: Logger

    public init(http: EntraHTTP, graphEndpoint: URL, logger: Logger) {
        self.http = http
        self.graphEndpoint = graphEndpoint
        self.logger = logger
    }

    func url(_ target: GraphKeyTarget, _ action: String? = nil, query: String? = nil) -> String {
        var text = graphEndpoint.absoluteString + "/v1.0/" + target.path
        if let action { text += "/" + action }
        if let query { text += "?" + query }
        return text
    }

    /// `addKey` of a certificate (DER); `proof` is signed by a key already registered on the target.
    public func addKey(_ target: GraphKeyTarget, certificateDER: [UInt8], displayName: String?, proof: String, bearer: String) async throws -> KeyCredentialInfo {
        var keyCredential = JSONObject()
        keyCredential["type"] = "AsymmetricX509Cert"
        keyCredential["usage"] = "Verify"
        keyCredential["key"] = .string(Data(certificateDER).base64EncodedString())
        if let displayName { keyCredential["displayName"] = .string(displayName) }
        var body = JSONObject()
        body["keyCredential"] = .object(keyCredential)
        body["passwordCredential"] = .null
        body["proof"] = .string(proof)
        let thumbprint = Thumbprint(der: certificateDER)
        let answer: HTTPAnswer
        do {
            answer = try await post(target, "addKey", body, bearer: bearer)
        } catch let error as EntraError where error.code == .network {
            logger.warning("addKey: the answer was lost; asking again to learn whether it was applied", metadata: ["target": "\(target)"])
            let again = try await post(target, "addKey", body, bearer: bearer)
            if again.status == 400 {
                // The same request was valid the first time: a 400 now is the duplicate refusal.
                logger.notice("addKey had been applied before the answer was lost", metadata: ["thumbprint": "\(thumbprint.hexSHA1)"])
                let found = try? await keyCredentials(target, bearer: bearer).first { $0.thumbprintHex == thumbprint.hexSHA1 }
                return found ?? KeyCredentialInfo(keyId: nil, customKeyIdentifier: Data(thumbprint.sha1).base64EncodedString(), displayName: displayName)
            }
            answer = again
        }
        guard answer.status == 200 else { throw Self.refusal(answer, operation: "addKey on \(target)") }
        do {
            return try JSONDecoder().decode(KeyCredentialInfo.self, from: Data(answer.body))
        } catch {
            throw EntraError(.protocolViolation, "addKey answered 200 without a keyCredential", cause: error)
        }
    }

    /// `removeKey` of `keyID`; `proof` is signed by a key registered on the target (not
    /// necessarily another one: Graph lets a key remove itself).
    public func removeKey(_ target: GraphKeyTarget, keyID: String, proof: String, bearer: String) async throws {
        var body = JSONObject()
        body["keyId"] = .string(keyID)
        body["proof"] = .string(proof)
        let answer: HTTPAnswer
        do {
            answer = try await post(target, "removeKey", body, bearer: bearer)
        } catch let error as EntraError where error.code == .network {
            logger.warning("removeKey: the answer was lost; asking again to learn whether it was applied", metadata: ["target": "\(target)"])
            let again = try await post(target, "removeKey", body, bearer: bearer)
            if again.status == 404 || (again.status == 400 && Self.graphCode(again) == "Request_ResourceNotFound") {
                logger.notice("removeKey had been applied before the answer was lost", metadata: ["keyId": "\(keyID)"])
                return
            }
            answer = again
        }
        guard answer.status == 204 || answer.status == 200 else { throw Self.refusal(answer, operation: "removeKey \(keyID) on \(target)") }
    }

    /// `GET …?$select=id,keyCredentials` (needs a Graph read permission, unlike addKey/removeKey).
    public func keyCredentials(_ target: GraphKeyTarget, bearer: String) async throws -> [KeyCredentialInfo] {
        try await read(target, bearer: bearer).keyCredentials
    }

    /// The object id and key credentials of the target.
    public func read(_ target: GraphKeyTarget, bearer: String) async throws -> (id: String?, keyCredentials: [KeyCredentialInfo]) {
        let answer = try await http.send(
            .GET, url(target, query: "$select=id,keyCredentials"),
            headers: [("Authorization", "Bearer \(bearer)"), ("Accept", "application/json")], operation: "read \(target)")
        guard answer.status == 200 else { throw Self.refusal(answer, operation: "reading \(target)") }
        struct Object: Decodable {
            var id: String?
            var keyCredentials: [KeyCredentialInfo]?
        }
        do {
            let object = try JSONDecoder().decode(Object.self, from: Data(answer.body))
            return (object.id, object.keyCredentials ?? [])
        } catch {
            throw EntraError(.protocolViolation, "Graph's answer for \(target) has no keyCredentials", cause: error)
        }
    }

    private func post(_ target: GraphKeyTarget, _ action: String, _ body: JSONObject, bearer: String) async throws -> HTTPAnswer {
        try await http.send(
            .POST, url(target, action),
            headers: [("Authorization", "Bearer \(bearer)"), ("Content-Type", "application/json"), ("Accept", "application/json")],
            body: Array(body.serialized.utf8), operation: "\(action) on \(target)")
    }

    static func graphCode(_ answer: HTTPAnswer) -> String? {
        (try? JSONObject(parsing: answer.body, what: "Graph's answer"))?["error"]?.objectValue?["code"]?.stringValue
    }

    /// Graph's error JSON as an ``EntraError`` naming the code and what to do.
    static func refusal(_ answer: HTTPAnswer, operation: String) -> EntraError {
        let error = (try? JSONObject(parsing: answer.body, what: "Graph's answer"))?["error"]?.objectValue
        let code = error?["code"]?.stringValue
        let message = error?["message"]?.stringValue ?? "HTTP \(answer.status)"
        let hint: String?
        var settings: [String] = []
        switch (answer.status, code) {
        case (401, "Authentication_MissingOrMalformed"?):
            hint = "Graph refused the proof of possession: it must be signed by a key whose certificate is currently registered on this object, with iss = the object id (not the appId)"
            settings = ["object-id"]
        case (401, _):
            hint = "Graph refused the access token: it must be an app-only Graph token of this tenant (check the tenant, the cloud and the Graph endpoint)"
            settings = ["tenant", "cloud", "graph-endpoint"]
        case (403, _):
            hint = "the app may only add/remove keys on itself without a permission; on other objects it needs Application.ReadWrite.OwnedBy (as owner) or Application.ReadWrite.All; reading key credentials needs Application.Read.All"
        case (404, _):
            hint = "no such object or keyId: check the object id (application or service principal) and the key id"
            settings = ["object-id", "key-id"]
        case (400, _) where message.contains("PATCH") || message.lowercased().contains("no currently valid"):
            hint = "addKey/removeKey need a currently valid certificate on the object; add the first one in the portal or with PATCH (Update application)"
        case (400, _):
            hint = "Graph refused the request as given: see the message"
        default:
            hint = answer.status == 429 || answer.status >= 500 ? "Graph is throttling or unavailable; try again later" : nil
        }
        return EntraError(.graphRefused, "\(operation): \(code.map { "\($0): " } ?? "")\(message)", hint: hint, settings: settings, graphCode: code, httpStatus: answer.status)
    }
}
