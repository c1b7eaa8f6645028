import EntraEmulator
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import JOSE
import NIOCore
import Testing
import TestSupport

/// What Microsoft's clients send and Entra accepts, what Entra refuses, the resource model,
/// discovery and Graph's strictness (docs/emulator-fidelity.md). The unmodified clients
/// themselves run in Tests/Conformance (scripts/test).
@Suite("Emulator fidelity to Entra and Graph")
struct FidelityTests {
    /// The claims of an issued access token (parsed by Foundation, not JOSE).
    static func claims(_ token: String) throws -> [String: Any] {
        let payload = try #require(token.split(separator: ".").dropFirst().first)
        let bytes = try #require(Base64URL.decode(payload))
        return try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
    }

    @Test func whatMicrosoftsClientsSendIsAccepted() async throws {
        let f = try EmulatorFixture()
        let cert = f.signer.certificate!
        // Python's urlsafe_b64encode: padded thumbprints (MSAL, azure-identity).
        let paddedS256 = Data(cert.thumbprint.sha256).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        let paddedSHA1 = Data(cert.thumbprint.sha1).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        #expect(paddedS256.hasSuffix("=") && paddedSHA1.hasSuffix("="))
        // MSAL's x5c: the PEM body, line breaks kept.
        let pemBody = cert.pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined(separator: "\n")
        let base = EmulatorFixture.base, tenant = f.app.tenantId
        let domain = try #require(try f.store.read().tenants.first?.domain)
        let accepted: [(String, JWSAlgorithm, (inout JSONObject, inout JSONObject) -> Void)] = [
            ("padded x5t#S256", .PS256, { h, _ in h["x5t#S256"] = .string(paddedS256) }),
            ("padded x5t", .RS256, { h, _ in h["x5t"] = .string(paddedSHA1) }),
            ("x5c with line breaks only", .PS256, { h, _ in h["x5t#S256"] = nil; h["x5c"] = .array([.string(pemBody)]) }),
            ("padded x5t#S256 and x5c with line breaks", .PS256, { h, _ in h["x5t#S256"] = .string(paddedS256); h["x5c"] = .array([.string(pemBody)]) }),
            ("v1 token endpoint aud", .PS256, { _, c in c["aud"] = .string("\(base)/\(tenant)/oauth2/token") }),
            ("issuer aud", .PS256, { _, c in c["aud"] = .string("\(base)/\(tenant)/v2.0") }),
            ("domain aud, upper case", .PS256, { _, c in c["aud"] = .string("\(base)/\(domain)/oauth2/v2.0/token".uppercased()) }),
        ]
        let rejected: [(String, (inout JSONObject, inout JSONObject) -> Void, Int)] = [
            ("three = of padding", { h, _ in h["x5t#S256"] = .string(paddedS256 + "==") }, 50027),
            ("thumbprint of the wrong length", { h, _ in h["x5t#S256"] = .string(Base64URL.encode(cert.thumbprint.sha1)) }, 50027),
            ("aud as an array", { _, c in c["aud"] = .array([.string("\(base)/\(tenant)/oauth2/v2.0/token")]) }, 50027),
            ("aud of the authorize endpoint", { _, c in c["aud"] = .string("\(base)/\(tenant)/oauth2/v2.0/authorize") }, 700023),
            ("exp beyond any date", { _, c in c["exp"] = .double(1e300) }, 50027),
        ]
        let acceptedForms = try accepted.map { (name, alg, edit) in (name, f.tokenForm(try f.assertion(alg: alg, edit: edit))) }
        let rejectedForms = try rejected.map { (name, edit, code) in (name, f.tokenForm(try f.assertion(edit: edit)), code) }
        try await f.test { client in
            for (name, form) in acceptedForms {
                let answer = try await client.post(f.tokenURL, form: form, fixture: f)
                #expect(answer.status == 200, "\(name): \(answer.json)")
            }
            for (name, form, code) in rejectedForms {
                let answer = try await client.post(f.tokenURL, form: form, fixture: f)
                #expect(aadsts(answer) == code, "\(name): \(answer.json)")
            }
        }
    }

    @Test func commonMistakesGetEntrasCodes() async throws {
        let f = try EmulatorFixture()
        let good = try f.assertion()
        let cases: [(String, [String: String], Int, Int)] = [
            ("no grant_type", f.tokenForm(good).filter { $0.key != "grant_type" }, 400, 900144),
            ("no scope", f.tokenForm(good).filter { $0.key != "scope" }, 400, 900144),
            ("no client_id", f.tokenForm(good).filter { $0.key != "client_id" }, 400, 900144),
            ("client_secret", f.tokenForm(good).filter { $0.key != "client_assertion" }.merging(["client_secret": "s3cret"]) { $1 }, 401, 7000215),
            ("unknown resource", f.tokenForm(good, scope: "api://nobody/.default"), 400, 500011),
            ("invalid scope", f.tokenForm(good, scope: "Orders.Read"), 400, 1002012),
        ]
        try await f.test { client in
            for (name, form, status, code) in cases {
                let answer = try await client.post(f.tokenURL, form: form, fixture: f)
                #expect(answer.status == status && aadsts(answer) == code, "\(name): \(answer.json)")
            }
            // A JSON body is not read: the first parameter is missing.
            let json = try await client.execute(uri: f.tokenURL, method: .post, headers: [.contentType: "application/json"],
                                                body: ByteBuffer(string: #"{"grant_type":"client_credentials"}"#)) { $0 }
            let parsed = try #require(try JSONSerialization.jsonObject(with: Data(buffer: json.body)) as? [String: Any])
            #expect(json.status.code == 400 && (parsed["error_codes"] as? [Int]) == [900144], "\(parsed)")
            // GET on the token endpoint.
            let get = try await client.execute(uri: f.tokenURL, method: .get) { $0 }
            let getBody = try #require(try JSONSerialization.jsonObject(with: Data(buffer: get.body)) as? [String: Any])
            #expect(get.status.code == 405 && (getBody["error_codes"] as? [Int]) == [900561], "\(getBody)")
            // No route answers an empty body.
            // (Graph authenticates first: without a bearer, 401 in Graph's shape.)
            for (uri, method, status) in [("/nowhere", HTTPRequest.Method.get, 404), ("/\(f.app.tenantId)/oauth2/v2.0/nothing", .post, 404), ("/v1.0/users", .get, 401), ("/beta/applications", .delete, 400)] {
                let answer = try await client.execute(uri: uri, method: method) { $0 }
                let body = try JSONSerialization.jsonObject(with: Data(buffer: answer.body)) as? [String: Any]
                #expect(answer.status.code == status, "\(uri)")
                #expect(body?["error"] != nil, "\(uri): \(String(buffer: answer.body))")
            }
        }
    }

    @Test func tokensForAnAPICarryItsAudienceVersionAndOnlyItsGrantedRoles() async throws {
        let f = try EmulatorFixture()
        let v2 = try f.store.createApplication(name: "orders", certificate: nil, identifierURIs: ["api://orders"], appRoles: ["Orders.Read", "Orders.Write"], accessTokenVersion: 2)
        let v1 = try f.store.createApplication(name: "legacy", certificate: nil, identifierURIs: ["https://legacy.example/api"], appRoles: ["Legacy.Read"])
        try f.store.grant(client: f.app.appId, resource: "api://orders", roles: ["Orders.Read"])
        try f.store.grant(client: f.app.appId, resource: "https://graph.microsoft.com", roles: ["Application.ReadWrite.OwnedBy"])
        #expect(throws: (any Error).self) { try f.store.grant(client: f.app.appId, resource: v2.appId, roles: ["Orders.Delete"]) }
        #expect(throws: (any Error).self) { try f.store.grant(client: f.app.appId, resource: "api://nobody", roles: ["X"]) }
        let tenant = f.app.tenantId
        try await f.test { client in
            func token(_ scope: String) async throws -> [String: Any] {
                try Self.claims(try await f.bearer(client, scope: scope))
            }
            // v2 by App ID URI or appId: aud is the appId, v2 issuer, only the role granted on it.
            for scope in ["api://orders/.default", "\(v2.appId)/.default", "API://ORDERS/.default"] {
                let c = try await token(scope)
                #expect(c["aud"] as? String == v2.appId, "\(scope)")
                #expect(c["iss"] as? String == "\(EmulatorFixture.base)/\(tenant)/v2.0")
                #expect(c["ver"] as? String == "2.0" && c["azp"] as? String == f.app.appId && c["appid"] == nil)
                #expect(c["roles"] as? [String] == ["Orders.Read"])
            }
            // v1 (Entra's default): aud as the request named it, sts.windows.net issuer; no grant, no roles claim.
            let legacy = try await token("https://legacy.example/api/.default")
            #expect(legacy["aud"] as? String == "https://legacy.example/api")
            #expect(legacy["iss"] as? String == "https://sts.windows.net/\(tenant)/")
            #expect(legacy["ver"] as? String == "1.0" && legacy["appid"] as? String == f.app.appId)
            #expect(legacy["roles"] == nil)
            _ = v1
            // Graph: v1, its own roles only.
            let graph = try await token("https://graph.microsoft.com/.default")
            #expect(graph["aud"] as? String == "https://graph.microsoft.com")
            #expect(graph["roles"] as? [String] == ["Application.ReadWrite.OwnedBy"])
            // The v1 endpoint: resource=, numbers as strings.
            var form = f.tokenForm(try f.assertion { _, c in c["aud"] = .string("\(EmulatorFixture.base)/\(tenant)/oauth2/token") })
            form["scope"] = nil
            form["resource"] = "api://orders"
            let v1Answer = try await client.post("/\(tenant)/oauth2/token", form: form, fixture: f)
            #expect(v1Answer.status == 200, "\(v1Answer.json)")
            #expect(v1Answer.json["expires_in"] as? String == "3599" && v1Answer.json["resource"] as? String == "api://orders")
            #expect(Int(v1Answer.json["expires_on"] as? String ?? "") != nil && Int(v1Answer.json["not_before"] as? String ?? "") != nil)
        }
    }

    @Test func discoveryAndKeysWhereverAClientLooks() async throws {
        let f = try EmulatorFixture()
        let domain = try #require(try f.store.read().tenants.first?.domain)
        let base = EmulatorFixture.base, tid = f.app.tenantId
        try await f.test { client in
            func get(_ uri: String) async throws -> (Int, [String: Any]) {
                try await client.execute(uri: uri, method: .get) { response in
                    (Int(response.status.code), (try? JSONSerialization.jsonObject(with: Data(buffer: response.body))) as? [String: Any] ?? [:])
                }
            }
            for (path, issuer) in [(tid, "\(base)/\(tid)/v2.0"), (domain, "\(base)/\(tid)/v2.0"), ("common", "\(base)/{tenantid}/v2.0"), ("organizations", "\(base)/{tenantid}/v2.0")] {
                let (status, v2) = try await get("/\(path)/v2.0/.well-known/openid-configuration")
                #expect(status == 200 && v2["issuer"] as? String == issuer, "\(path): \(v2)")
                #expect(v2["token_endpoint"] as? String == "\(base)/\(path)/oauth2/v2.0/token")
                let (s1, v1) = try await get("/\(path)/.well-known/openid-configuration")
                #expect(s1 == 200 && v1["token_endpoint"] as? String == "\(base)/\(path)/oauth2/token", "\(path): \(v1)")
                #expect((v1["issuer"] as? String)?.hasPrefix("https://sts.windows.net/") == true)
                // The JWKS the document names, with kid, x5t and x5c.
                for document in [v2, v1] {
                    let jwksURI = try #require(document["jwks_uri"] as? String)
                    let (ks, keys) = try await get(String(jwksURI.dropFirst(base.count)))
                    let key = try #require((keys["keys"] as? [[String: Any]])?.first, "\(ks) \(keys)")
                    #expect(key["kid"] as? String == key["x5t"] as? String)
                    let x5c = try #require((key["x5c"] as? [String])?.first)
                    let der = try #require(Data(base64Encoded: x5c))
                    #expect(Base64URL.encode(try JWSCertificate(der: [UInt8](der)).thumbprint.sha1) == key["x5t"] as? String)
                }
            }
            let (unknown, body) = try await get("/nobody.example/v2.0/.well-known/openid-configuration")
            #expect(unknown == 400 && (body["error_codes"] as? [Int]) == [90002])
            // An issued token names the published key and verifies with its certificate.
            let token = try await f.bearer(client)
            let jws = try JWS(compact: token)
            let (_, keys) = try await get("/\(tid)/discovery/v2.0/keys")
            let key = try #require((keys["keys"] as? [[String: Any]])?.first)
            #expect(jws.header["kid"]?.stringValue == key["kid"] as? String)
            let certificate = try JWSCertificate(der: [UInt8](try #require(Data(base64Encoded: (key["x5c"] as? [String])?.first ?? ""))))
            #expect(jws.isValid(publicKey: certificate.publicKey))
        }
    }

    @Test func graphIsAsStrictAsGraph() async throws {
        let f = try EmulatorFixture(roles: ["Application.ReadWrite.All"])
        let elsewhere = try f.store.createApplication(name: "elsewhere", certificate: nil, tenant: "other.example")
        /// An addKey body for a new certificate, with optional dates (as text) and proof.
        func body(end: String? = nil, start: String? = nil, proof: String? = nil) throws -> (String, JWSCertificate) {
            let cert = try ReferenceSigner.make(.rsa(bits: 2048), subject: "CN=next").certificate!
            var credential = JSONObject(["type": "AsymmetricX509Cert", "usage": "Verify", "key": .string(cert.x5cValue)])
            if let end { credential["endDateTime"] = .string(end) }
            if let start { credential["startDateTime"] = .string(start) }
            let text = JSONObject(["keyCredential": .object(credential), "passwordCredential": .null, "proof": .string(try proof ?? f.proof(f.app.id))]).serialized
            return (text, cert)
        }
        func iso(_ date: Date, fractional: Bool = false) -> String {
            let formatter = ISO8601DateFormatter()
            if fractional { formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds] }
            return formatter.string(from: date)
        }
        let probe = try ReferenceSigner.make(.rsa(bits: 2048)).certificate!.certificate
        let lateEnd = try body(end: iso(probe.notValidAfter.addingTimeInterval(86400 * 400)))
        let earlyStart = try body(start: iso(probe.notValidBefore.addingTimeInterval(-86400)))
        let good = try body()
        let fractional = try body(end: iso(Date().addingTimeInterval(86400), fractional: true))
        let now = Int64(Date().timeIntervalSince1970)
        let skewed = try body(proof: try f.proof(f.app.id) { _, c in c["nbf"] = .int(now + 120); c["exp"] = .int(now + 600) })
        let tooEarly = try body(proof: try f.proof(f.app.id) { _, c in c["nbf"] = .int(now + 1800); c["exp"] = .int(now + 2400) })
        let farFuture = try body(proof: try f.proof(f.app.id) { _, c in c["exp"] = .double(1e300) })
        let addKey = "/v1.0/applications/\(f.app.id)/addKey"
        try await f.test { client in
            let bearer = try await f.bearer(client)
            func call(_ method: HTTPRequest.Method, _ uri: String, _ body: String? = nil, contentType: String = "application/json", requestID: String? = nil) async throws -> (Int, [String: Any], HTTPFields) {
                var headers: HTTPFields = [.authorization: "Bearer \(bearer)", .contentType: contentType]
                if let requestID { headers[HTTPField.Name("client-request-id")!] = requestID }
                return try await client.execute(uri: uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) }) { response in
                    (Int(response.status.code), (try? JSONSerialization.jsonObject(with: Data(buffer: response.body))) as? [String: Any] ?? [:], response.headers)
                }
            }
            func code(_ json: [String: Any]) -> String? { (json["error"] as? [String: Any])?["code"] as? String }
            var (status, json, _) = try await call(.post, addKey, lateEnd.0)
            #expect(status == 400 && code(json) == "KeyCredentialsInvalidEndDate", "\(json)")
            (status, json, _) = try await call(.post, addKey, earlyStart.0)
            #expect(status == 400 && code(json) == "KeyCredentialsInvalidStartDate", "\(json)")
            (status, json, _) = try await call(.post, addKey, good.0, contentType: "text/plain")
            #expect(status == 400 && code(json) == "BadRequest", "\(json)")
            (status, json, _) = try await call(.post, addKey, tooEarly.0)
            #expect(status == 401 && code(json) == "Authentication_MissingOrMalformed", "\(json)")
            (status, json, _) = try await call(.post, addKey, farFuture.0)
            #expect(status == 401 && code(json) == "Authentication_MissingOrMalformed", "\(json)")
            // A proof whose nbf is two minutes ahead is inside the skew; fractional seconds are read.
            (status, json, _) = try await call(.post, addKey, skewed.0)
            #expect(status == 200, "\(json)")
            (status, json, _) = try await call(.post, addKey, fractional.0)
            #expect(status == 200, "\(json)")
            let (ok, added, headers) = try await call(.post, addKey, good.0, contentType: "application/json; charset=utf-8", requestID: "my-request-1")
            #expect(ok == 200 && added["key"] is NSNull, "\(added)")
            #expect(headers[HTTPField.Name("client-request-id")!] == "my-request-1" && headers[HTTPField.Name("request-id")!] != nil)
            // An error names the same ids in its body as in its headers.
            let (_, refused, refusedHeaders) = try await call(.post, addKey, lateEnd.0, requestID: "my-request-2")
            let inner = (refused["error"] as? [String: Any])?["innerError"] as? [String: Any]
            #expect(inner?["client-request-id"] as? String == "my-request-2")
            #expect(inner?["request-id"] as? String == refusedHeaders[HTTPField.Name("request-id")!])
            // key only with $select=keyCredentials on one object; @odata.context always.
            (status, json, _) = try await call(.get, "/v1.0/applications/\(f.app.id)")
            let plainKeys = try #require(json["keyCredentials"] as? [[String: Any]])
            #expect(plainKeys.allSatisfy { $0["key"] is NSNull } && json["displayName"] as? String == "fixture")
            #expect((json["@odata.context"] as? String)?.hasSuffix("$metadata#applications/$entity") == true)
            (status, json, _) = try await call(.get, "/v1.0/applications/\(f.app.id)?$select=id,keyCredentials")
            #expect(Set(json.keys) == ["@odata.context", "id", "keyCredentials"], "\(json)")
            #expect((json["keyCredentials"] as? [[String: Any]])?.allSatisfy { $0["key"] is String } == true)
            #expect((json["@odata.context"] as? String)?.hasSuffix("$metadata#applications(id,keyCredentials)/$entity") == true)
            // $filter by appId.
            (status, json, _) = try await call(.get, "/v1.0/applications?$filter=appId%20eq%20'\(f.app.appId)'")
            let listed = try #require(json["value"] as? [[String: Any]], "\(json)")
            #expect(listed.map { $0["id"] as? String } == [f.app.id])
            // appId keys need their quotes; another tenant's object does not exist.
            (status, json, _) = try await call(.get, "/v1.0/applications(appId=\(f.app.appId))")
            #expect(status == 400, "\(json)")
            (status, json, _) = try await call(.get, "/v1.0/applications/\(elsewhere.id)")
            #expect(status == 404 && code(json) == "Request_ResourceNotFound", "\(json)")
            // An injected 503 says when to come back.
            f.routes.faults.settings.failures = [.init(route: "graph", count: 1, status: 503, retryAfter: 4)]
            let (busy, _, busyHeaders) = try await call(.get, "/v1.0/applications/\(f.app.id)")
            #expect(busy == 503 && busyHeaders[.retryAfter] == "4")
        }
    }
}
