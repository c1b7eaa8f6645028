import EntraEmulator
import Foundation
import Hummingbird
import HummingbirdTesting
import JOSE
import Testing
import TestSupport

extension EmulatorFixture {
    /// A Graph bearer token for the fixture app, from the emulator's token endpoint.
    func bearer(_ client: any TestClientProtocol, signer: ReferenceSigner? = nil, clientID: String? = nil, scope: String = "https://graph.microsoft.com/.default") async throws -> String {
        let answer = try await client.post(tokenURL, form: tokenForm(try assertion(signer: signer, clientID: clientID), scope: scope, clientID: clientID), fixture: self)
        return try #require(answer.json["access_token"] as? String, "\(answer.json)")
    }

    /// A PoP proof for `objectID` signed by `signer`; `edit` may break it.
    func proof(_ objectID: String, signer: ReferenceSigner? = nil, edit: (inout JSONObject, inout JSONObject) -> Void = { _, _ in }) throws -> String {
        try FixtureAssertion.proof(objectID, signer: signer ?? self.signer, edit: edit)
    }

    func addKeyBody(_ cert: JWSCertificate, proof: String, type: String = "AsymmetricX509Cert", usage: String = "Verify") -> String {
        #"{"keyCredential":{"type":"\#(type)","usage":"\#(usage)","key":"\#(cert.x5cValue)","displayName":"next"},"passwordCredential":null,"proof":"\#(proof)"}"#
    }
}

@Suite("Emulator Graph key credentials")
struct GraphTests {
    @Test func selfServiceAddKeyThenTheNewKeyWorksThenRemoveKey() async throws {
        let f = try EmulatorFixture()
        let next = try ReferenceSigner.make(.rsa(bits: 2048), subject: "CN=next")
        try await f.test { client in
            let token = try await f.bearer(client)
            let added = try await client.graph(.post, "/v1.0/applications/\(f.app.id)/addKey", token: token,
                                               body: f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id)))
            #expect(added.status == 200, "\(added.json)")
            #expect(added.json["type"] as? String == "AsymmetricX509Cert")
            #expect(added.json["key"] is NSNull)
            #expect(added.json["customKeyIdentifier"] as? String == Data(next.certificate!.thumbprint.sha1).base64EncodedString())
            let keyID = try #require(added.json["keyId"] as? String)
            // The new key now gets tokens; by appId form, remove the old key with a proof from the new one.
            _ = try await f.bearer(client, signer: next)
            let removed = try await client.graph(.post, "/v1.0/applications(appId='\(f.app.appId)')/removeKey", token: token,
                                                 body: #"{"keyId":"\#(f.app.keyId!)","proof":"\#(try f.proof(f.app.id, signer: next))"}"#)
            #expect(removed.status == 204, "\(removed.json)")
            let shown = try #require(try f.store.application(id: f.app.id)?.1)
            #expect(shown.keyCredentials.map(\.keyId) == [keyID])
            // The old key no longer gets tokens.
            let refused = try await client.post(f.tokenURL, form: f.tokenForm(try f.assertion()), fixture: f)
            #expect(aadsts(refused) == 700027)
        }
    }

    @Test func eachGraphRuleRefusesWithGraphsErrorShape() async throws {
        let f = try EmulatorFixture()
        let other = try f.store.createApplication(name: "other", certificate: try ReferenceSigner.make(.rsa(bits: 2048)).certificate!.der)
        // A resource API of the tenant: its tokens are not Graph tokens.
        _ = try f.store.createApplication(name: "api", certificate: nil, identifierURIs: ["api://something-else"])
        let next = try ReferenceSigner.make(.rsa(bits: 2048))
        let stranger = try ReferenceSigner.make(.rsa(bits: 2048))
        let add = "/v1.0/applications/\(f.app.id)/addKey"
        let nbf = Int64(Date().timeIntervalSince1970)
        try await f.test { client in
            let token = try await f.bearer(client)
            let wrongAudience = try await f.bearer(client, scope: "api://something-else/.default")
            let cases: [(String, String, String?, String, Int, String)] = [
                ("no bearer", add, nil, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id)), 401, "InvalidAuthenticationToken"),
                ("bearer for another resource", add, wrongAudience, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id)), 401, "InvalidAuthenticationToken"),
                ("forged bearer", add, try f.proof(f.app.id), f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id)), 401, "InvalidAuthenticationToken"),
                ("another app, no role", "/v1.0/applications/\(other.id)/addKey", token, f.addKeyBody(next.certificate!, proof: try f.proof(other.id)), 403, "Authorization_RequestDenied"),
                ("unknown object", "/v1.0/applications/\(UUID().uuidString.lowercased())/addKey", token, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id)), 404, "Request_ResourceNotFound"),
                ("padded proof", add, token, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id) + "="), 401, "Authentication_MissingOrMalformed"),
                ("proof aud 00000003", add, token, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id) { _, c in c["aud"] = "00000003-0000-0000-c000-000000000000" }), 401, "Authentication_MissingOrMalformed"),
                ("proof iss is the appId", add, token, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.appId)), 401, "Authentication_MissingOrMalformed"),
                ("proof longer than 10 min", add, token, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id) { _, c in c["nbf"] = .int(nbf); c["exp"] = .int(nbf + 601) }), 401, "Authentication_MissingOrMalformed"),
                ("proof expired", add, token, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id) { _, c in c["nbf"] = .int(nbf - 1000); c["exp"] = .int(nbf - 400) }), 401, "Authentication_MissingOrMalformed"),
                ("proof by a key not on the object", add, token, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id, signer: stranger)), 401, "Authentication_MissingOrMalformed"),
                ("proof naming our cert, signed by another key", add, token, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id, signer: stranger) { h, _ in
                    h["x5t"] = .string(f.signer.certificate!.thumbprint.x5t); h["kid"] = .string(f.signer.certificate!.thumbprint.hexSHA1) }), 401, "Authentication_MissingOrMalformed"),
                ("no proof", add, token, #"{"keyCredential":{"type":"AsymmetricX509Cert","usage":"Verify","key":"\#(next.certificate!.x5cValue)"}}"#, 400, "Request_BadRequest"),
                ("wrong type", add, token, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id), type: "Symmetric"), 400, "Request_BadRequest"),
                ("wrong usage", add, token, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id), usage: "Sign"), 400, "Request_BadRequest"),
                ("duplicate certificate", add, token, f.addKeyBody(f.signer.certificate!, proof: try f.proof(f.app.id)), 400, "Request_BadRequest"),
                ("not a certificate", add, token, #"{"keyCredential":{"type":"AsymmetricX509Cert","usage":"Verify","key":"AAAA"},"proof":"\#(try f.proof(f.app.id))"}"#, 400, "Request_BadRequest"),
                ("not JSON", add, token, "{", 400, "Request_BadRequest"),
                ("unknown keyId", "/v1.0/applications/\(f.app.id)/removeKey", token, #"{"keyId":"\#(UUID().uuidString)","proof":"\#(try f.proof(f.app.id))"}"#, 404, "Request_ResourceNotFound"),
                ("service principal without a certificate", "/v1.0/servicePrincipals/\(f.app.servicePrincipalId)/addKey", token, f.addKeyBody(next.certificate!, proof: try f.proof(f.app.servicePrincipalId)), 400, "Request_BadRequest"),
                ("GET needs a role", "/v1.0/applications/\(f.app.id)", token, nil as String? ?? "", 403, "Authorization_RequestDenied"),
            ]
            for (name, uri, bearer, body, status, code) in cases {
                let method: HTTPRequest.Method = name == "GET needs a role" ? .get : .post
                let answer = try await client.graph(method, uri, token: bearer, body: body.isEmpty ? nil : body)
                #expect(answer.status == status, "\(name): \(answer.json)")
                #expect(graphCode(answer) == code, "\(name): \(answer.json)")
                let inner = (answer.json["error"] as? [String: Any])?["innerError"] as? [String: Any]
                #expect(inner?["request-id"] is String && inner?["date"] is String, "\(name)")
            }
            // Nothing of the refused requests was applied.
            #expect(try f.store.application(id: f.app.id)?.1.keyCredentials.count == 1)
        }
    }

    @Test func rolesAllowOtherAppsAndConcurrentAddKeysLoseNothing() async throws {
        let admin = try EmulatorFixture(roles: ["Application.ReadWrite.All"])
        let target = try ReferenceSigner.make(.rsa(bits: 2048))
        let created = try admin.store.createApplication(name: "target", certificate: target.certificate!.der)
        let newKeys = try (0..<8).map { _ in try ReferenceSigner.make(.ec(.p256)) }
        try await admin.test { client in
            let token = try await admin.bearer(client)
            try await withThrowingTaskGroup(of: Int.self) { group in
                for key in newKeys {
                    let body = admin.addKeyBody(key.certificate!, proof: try admin.proof(created.id, signer: target))
                    group.addTask { try await client.graph(.post, "/v1.0/applications/\(created.id)/addKey", token: token, body: body).status }
                }
                for try await status in group { #expect(status == 200) }
            }
            let shown = try await client.graph(.get, "/v1.0/applications/\(created.id)", token: token)
            #expect(shown.status == 200)
            #expect((shown.json["keyCredentials"] as? [[String: Any]])?.count == 9)
        }
        // A restart on the same directory keeps everything.
        let again = try StateStore(directory: admin.dir.path)
        #expect(try again.application(appId: created.appId)?.1.keyCredentials.count == 9)
    }
}
