import Foundation
import JOSE

/// A federated identity credential of an application (Graph's `federatedIdentityCredential`): a
/// token from `issuer` for `subject` with one of `audiences` authenticates the application.
public struct FederatedCredentialInfo: Codable, Sendable, Equatable {
    public var id: String?
    public var name: String
    public var issuer: String
    public var subject: String
    public var audiences: [String]
    public var description: String?

    public init(name: String, issuer: String, subject: String, audiences: [String] = [Self.tokenExchangeAudience], description: String? = nil) {
        self.name = name
        self.issuer = issuer
        self.subject = subject
        self.audiences = audiences
        self.description = description
    }

    /// The audience Entra documents for its token exchange (`api://AzureADTokenExchange`).
    public static let tokenExchangeAudience = "api://AzureADTokenExchange"
    /// The scope an app asks for to get a token another app accepts as its client assertion.
    public static let tokenExchangeScope = "api://AzureADTokenExchange/.default"
}

extension GraphClient {
    /// `GET applications/{id}/federatedIdentityCredentials` (needs Application.Read.All, or
    /// Application.ReadWrite.OwnedBy on an owned app).
    public func federatedCredentials(_ target: GraphKeyTarget, bearer: String) async throws -> [FederatedCredentialInfo] {
        let answer = try await http.send(
            .GET, url(target, "federatedIdentityCredentials"),
            headers: [("Authorization", "Bearer \(bearer)"), ("Accept", "application/json")], operation: "federatedIdentityCredentials of \(target)")
        guard answer.status == 200 else { throw Self.refusal(answer, operation: "listing the federated credentials of \(target)") }
        struct List: Decodable { var value: [FederatedCredentialInfo] }
        do {
            return try JSONDecoder().decode(List.self, from: Data(answer.body)).value
        } catch {
            throw EntraError(.protocolViolation, "Graph's federatedIdentityCredentials answer for \(target) is not a list of credentials", cause: error)
        }
    }

    /// `POST applications/{id}/federatedIdentityCredentials` (needs Application.ReadWrite.OwnedBy
    /// on an owned app, or .All): 201 with the credential.
    public func addFederatedCredential(_ target: GraphKeyTarget, _ credential: FederatedCredentialInfo, bearer: String) async throws -> FederatedCredentialInfo {
        var body = JSONObject()
        body["name"] = .string(credential.name)
        body["issuer"] = .string(credential.issuer)
        body["subject"] = .string(credential.subject)
        body["audiences"] = .array(credential.audiences.map { .string($0) })
        if let description = credential.description { body["description"] = .string(description) }
        let answer = try await http.send(
            .POST, url(target, "federatedIdentityCredentials"),
            headers: [("Authorization", "Bearer \(bearer)"), ("Content-Type", "application/json"), ("Accept", "application/json")],
            body: Array(body.serialized.utf8), operation: "adding a federated credential to \(target)")
        guard answer.status == 201 || answer.status == 200 else { throw Self.refusal(answer, operation: "adding a federated credential to \(target)") }
        do {
            return try JSONDecoder().decode(FederatedCredentialInfo.self, from: Data(answer.body))
        } catch {
            throw EntraError(.protocolViolation, "Graph answered \(answer.status) without a federated credential", cause: error)
        }
    }

    /// `DELETE applications/{id}/federatedIdentityCredentials/{id or name}`.
    public func removeFederatedCredential(_ target: GraphKeyTarget, id: String, bearer: String) async throws {
        let encoded = id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? id
        let answer = try await http.send(
            .DELETE, url(target, "federatedIdentityCredentials/\(encoded)"),
            headers: [("Authorization", "Bearer \(bearer)"), ("Accept", "application/json")], operation: "removing federated credential \(id) from \(target)")
        guard answer.status == 204 || answer.status == 200 else { throw Self.refusal(answer, operation: "removing federated credential \(id) from \(target)") }
    }
}

extension EntraClient {
    public func federatedCredentials(_ target: GraphKeyTarget, signer: some JWSSigner) async throws -> [FederatedCredentialInfo] {
        let bearer = try await token(scope: configuration.graphScope, signer: signer).accessToken
        return try await graph.federatedCredentials(target, bearer: bearer)
    }

    public func addFederatedCredential(_ target: GraphKeyTarget, _ credential: FederatedCredentialInfo, signer: some JWSSigner) async throws -> FederatedCredentialInfo {
        let bearer = try await token(scope: configuration.graphScope, signer: signer).accessToken
        return try await graph.addFederatedCredential(target, credential, bearer: bearer)
    }

    public func removeFederatedCredential(_ target: GraphKeyTarget, id: String, signer: some JWSSigner) async throws {
        let bearer = try await token(scope: configuration.graphScope, signer: signer).accessToken
        try await graph.removeFederatedCredential(target, id: id, bearer: bearer)
    }

    /// A token for application `clientID` (in `tenant`, default this client's) that trusts
    /// this application through a federated identity credential ("app as FIC"): this app's
    /// token for `api://AzureADTokenExchange/.default`, got with `signer`, is the other app's
    /// client assertion. The key never leaves the token; the other app has no certificate.
    public func tokenViaFederation(clientID: String, tenant: String? = nil, scope: String, signer: some JWSSigner) async throws -> AccessToken {
        let clientID = try EntraValue.guid(clientID, what: "federated client id", hint: "give the client id of the app that trusts this one", settings: ["via-fic"])
        let tenant = try tenant.map { try EntraValue.tenant($0) } ?? self.tenant
        let exchange = try await token(scope: FederatedCredentialInfo.tokenExchangeScope, signer: signer)
        return try await tokens.acquire(tenant: tenant, clientID: clientID, scope: scope, assertion: exchange.accessToken)
    }
}
