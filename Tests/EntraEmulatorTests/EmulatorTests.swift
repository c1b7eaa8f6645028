import Crypto
import EntraEmulator
import Foundation
import Hummingbird
import HummingbirdTesting
import JOSE
import NIOCore
import Testing
import TestSupport
import X509
import _CryptoExtras

/// An emulator state directory with one application whose certificate is a software key's,
/// served in-process through HummingbirdTesting's router client.
final class EmulatorFixture: @unchecked Sendable {
    let dir = TemporaryDirectory("p11jwt-emulator")
    let store: StateStore
    let routes: EmulatorRoutes
    let signer: ReferenceSigner
    let app: CreatedApplication
    static let base = "http://localhost"

    init(roles: [String] = [], signer: ReferenceSigner? = nil) throws {
        store = try StateStore(directory: dir.path)
        self.signer = try signer ?? ReferenceSigner.make(.rsa(bits: 2048))
        app = try store.createApplication(name: "fixture", certificate: self.signer.certificate!.der, roles: roles)
        routes = try EmulatorRoutes(store: store, baseURL: Self.base)
    }

    var tokenURL: String { "/\(app.tenantId)/oauth2/v2.0/token" }

    var identity: FixtureAssertion { FixtureAssertion(tenant: app.tenantId, appId: app.appId) }

    /// A client assertion; `edit` may change header and claims before signing.
    func assertion(
        signer: ReferenceSigner? = nil, alg: JWSAlgorithm = .PS256, clientID: String? = nil,
        edit: (inout JSONObject, inout JSONObject) -> Void = { _, _ in }
    ) throws -> String {
        try identity.assertion(signer: signer ?? self.signer, base: Self.base, alg: alg, clientID: clientID, edit: edit)
    }

    func form(_ fields: [String: String]) -> ByteBuffer {
        ByteBuffer(string: fields.map { k, v in
            "\(k)=\(v.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~")))!)"
        }.joined(separator: "&"))
    }

    func tokenForm(_ assertion: String, scope: String = "https://graph.microsoft.com/.default", clientID: String? = nil) -> [String: String] {
        identity.form(assertion, scope: scope, clientID: clientID)
    }

    /// Runs `body` with a router client.
    func test(_ body: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        let application = Application(router: routes.router())
        try await application.test(.router, body)
    }
}

struct Answer {
    var status: Int
    var json: [String: Any]
}

extension TestClientProtocol {
    func post(_ uri: String, form: [String: String], fixture: EmulatorFixture) async throws -> Answer {
        try await execute(uri: uri, method: .post, headers: [.contentType: "application/x-www-form-urlencoded"], body: fixture.form(form)) { response in
            Answer(status: Int(response.status.code), json: (try? JSONSerialization.jsonObject(with: Data(buffer: response.body))) as? [String: Any] ?? [:])
        }
    }

    func graph(_ method: HTTPRequest.Method, _ uri: String, token: String?, body: String? = nil) async throws -> Answer {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let token { headers[.authorization] = "Bearer \(token)" }
        return try await execute(uri: uri, method: method, headers: headers, body: body.map { ByteBuffer(string: $0) }) { response in
            Answer(status: Int(response.status.code), json: (try? JSONSerialization.jsonObject(with: Data(buffer: response.body))) as? [String: Any] ?? [:])
        }
    }
}

func aadsts(_ answer: Answer) -> Int? { (answer.json["error_codes"] as? [Int])?.first }
func graphCode(_ answer: Answer) -> String? { (answer.json["error"] as? [String: Any])?["code"] as? String }

@Suite("Emulator token endpoint")
struct TokenEndpointTests {
    @Test func aValidAssertionGetsAnAccessTokenSignedByTheEmulatorsPublishedKey() async throws {
        let f = try EmulatorFixture(roles: ["Application.ReadWrite.OwnedBy"])
        let assertion = try f.assertion()
        try await f.test { client in
            let answer = try await client.post(f.tokenURL, form: f.tokenForm(assertion), fixture: f)
            #expect(answer.status == 200, "\(answer.json)")
            #expect(answer.json["token_type"] as? String == "Bearer")
            #expect(answer.json["expires_in"] as? Int == 3599)
            let token = try #require(answer.json["access_token"] as? String)
            let parsed = try independentlyParse(token)
            #expect(parsed.claims["appid"] as? String == f.app.appId)
            #expect(parsed.claims["oid"] as? String == f.app.servicePrincipalId)
            #expect(parsed.claims["tid"] as? String == f.app.tenantId)
            #expect(parsed.claims["aud"] as? String == "https://graph.microsoft.com")
            #expect(parsed.claims["appidacr"] as? String == "2")
            #expect(parsed.claims["idtyp"] as? String == "app")
            #expect(parsed.claims["roles"] as? [String] == ["Application.ReadWrite.OwnedBy"])
            // Verified with the JWKS the emulator publishes, by swift-crypto.
            let jwks = try await client.execute(uri: "/\(f.app.tenantId)/discovery/v2.0/keys", method: .get) { response in
                try #require(try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any])
            }
            let jwk = try #require((jwks["keys"] as? [[String: Any]])?.first)
            #expect(jwk["kid"] as? String == parsed.header["kid"] as? String)
            let key = try _RSA.Signing.PublicKey(n: unbase64url(jwk["n"] as! String)!, e: unbase64url(jwk["e"] as! String)!)
            #expect(key.isValidSignature(.init(rawRepresentation: parsed.signature), for: SHA256.hash(data: parsed.signingInput), padding: .insecurePKCS1v1_5))
            // The same assertion may be used again within its lifetime (MSAL does).
            #expect(try await client.post(f.tokenURL, form: f.tokenForm(assertion), fixture: f).status == 200)
            // RS256 with x5t is accepted too.
            let rs = try await client.post(f.tokenURL, form: f.tokenForm(try f.assertion(alg: .RS256)), fixture: f)
            #expect(rs.status == 200, "\(rs.json)")
        }
    }

    /// A parameter given twice is refused with Entra's AADSTS9000411 (as Entra answered MSAL
    /// Android's duplicated login_hint and Spring's duplicated scope), not silently resolved.
    @Test func aParameterGivenTwiceIsRefusedAsEntraRefusesIt() async throws {
        let f = try EmulatorFixture()
        let good = String(buffer: f.form(f.tokenForm(try f.assertion())))
        try await f.test { client in
            for extra in ["scope=https%3A%2F%2Fgraph.microsoft.com%2F.default", "client_id=\(f.app.appId)"] {
                let answer = try await client.execute(
                    uri: f.tokenURL, method: .post, headers: [.contentType: "application/x-www-form-urlencoded"],
                    body: ByteBuffer(string: good + "&" + extra)
                ) { response in
                    (Int(response.status.code), try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any] ?? [:])
                }
                #expect(answer.0 == 400)
                #expect(answer.1["error"] as? String == "invalid_request")
                #expect((answer.1["error_codes"] as? [Int])?.first == 9000411, "\(answer.1)")
                let name = String(extra.prefix(while: { $0 != "=" }))
                #expect((answer.1["error_description"] as? String)?.contains("The parameter '\(name)' is duplicated") == true)
            }
        }
    }

    /// Each case breaks exactly one rule of a request that otherwise succeeds.
    /// Found by FuzzEmulator: a form field with an empty name ("=") trapped the emulator.
    @Test func formsWithEmptyNamesAreAnsweredNotTrappedOn() async throws {
        let f = try EmulatorFixture()
        let good = f.form(f.tokenForm(try f.assertion()))
        try await f.test { client in
            for raw in ["=", "=&=", "&&=x&", "==", "=grant_type"] {
                let status = try await client.execute(
                    uri: f.tokenURL, method: .post, headers: [.contentType: "application/x-www-form-urlencoded"], body: ByteBuffer(string: raw)
                ) { response in
                    #expect(response.body.readableBytes > 0)
                    return Int(response.status.code)
                }
                #expect(status == 400, "\(raw)")
            }
            // Empty-named fields beside a good request are ignored, as Entra ignores unknown ones.
            let status = try await client.execute(
                uri: f.tokenURL, method: .post, headers: [.contentType: "application/x-www-form-urlencoded"],
                body: ByteBuffer(string: "=&=x&" + String(buffer: good))
            ) { Int($0.status.code) }
            #expect(status == 200)
        }
    }

    @Test func eachRuleRefusesWithEntrasCode() async throws {
        let f = try EmulatorFixture()
        let stranger = try ReferenceSigner.make(.rsa(bits: 2048))
        let ec = try ReferenceSigner.make(.ec(.p256))
        let now = Int64(Date().timeIntervalSince1970)
        let good = try f.assertion()
        var cases: [(String, String, [String: String], Int, Int)] = [
            ("unknown tenant", "/00000000-0000-0000-0000-000000000001/oauth2/v2.0/token", f.tokenForm(good), 400, 90002),
            ("grant type", f.tokenURL, f.tokenForm(good).merging(["grant_type": "password"]) { $1 }, 400, 70003),
            ("unknown client", f.tokenURL, f.tokenForm(good, clientID: UUID().uuidString.lowercased()), 400, 700016),
            ("no assertion", f.tokenURL, f.tokenForm(good).filter { $0.key != "client_assertion" }, 401, 7000218),
            ("assertion type", f.tokenURL, f.tokenForm(good).merging(["client_assertion_type": "jwt"]) { $1 }, 400, 7000218),
            ("scope not .default", f.tokenURL, f.tokenForm(good, scope: "https://graph.microsoft.com/User.Read"), 400, 1002012),
            ("two scopes", f.tokenURL, f.tokenForm(good, scope: "https://graph.microsoft.com/.default openid"), 400, 70011),
            ("not a JWT", f.tokenURL, f.tokenForm("not-a-jwt"), 401, 50027),
            ("padding", f.tokenURL, f.tokenForm(good.replacingOccurrences(of: ".", with: "=.")), 401, 50027),
        ]
        let broken: [(String, JWSAlgorithm, ReferenceSigner?, (inout JSONObject, inout JSONObject) -> Void, Int)] = [
            ("no thumbprint", .PS256, nil, { h, _ in h["x5t#S256"] = nil }, 50027),
            ("unregistered certificate", .PS256, stranger, { _, _ in }, 700027),
            ("aud of another tenant", .PS256, nil, { _, c in c["aud"] = "http://localhost/another/oauth2/v2.0/token" }, 700023),
            ("aud of real Entra", .PS256, nil, { _, c in c["aud"] = .string("https://login.microsoftonline.com/\(f.app.tenantId)/oauth2/v2.0/token") }, 700023),
            ("iss not the client", .PS256, nil, { _, c in c["iss"] = "someone"; c["sub"] = "someone" }, 700021),
            ("sub not iss", .PS256, nil, { _, c in c["sub"] = "someone" }, 50048),
            ("expired", .PS256, nil, { _, c in c["exp"] = .int(now - 1800) }, 700024),
            ("not yet valid", .PS256, nil, { _, c in c["nbf"] = .int(now + 1800) }, 700024),
            ("no exp", .PS256, nil, { _, c in c["exp"] = nil }, 50027),
        ]
        for (name, alg, signer, edit, code) in broken {
            cases.append((name, f.tokenURL, f.tokenForm(try f.assertion(signer: signer, alg: alg, edit: edit)), 401, code))
        }
        // Signed by another key but naming the registered certificate: signature invalid.
        let forged = try f.assertion(signer: stranger) { h, _ in h["x5t#S256"] = .string(f.signer.certificate!.thumbprint.x5tS256) }
        cases.append(("bad signature", f.tokenURL, f.tokenForm(forged), 401, 700027))
        // ES256 is not an Entra client-assertion algorithm.
        let ecApp = try f.store.createApplication(name: "ec", certificate: ec.certificate!.der)
        var ecAssertion = try f.assertion(signer: ec, alg: .ES256, clientID: ecApp.appId) { h, _ in h["x5t"] = .string(ec.certificate!.thumbprint.x5t) }
        cases.append(("ES256", f.tokenURL, f.tokenForm(ecAssertion, clientID: ecApp.appId), 401, 5002730))
        // A certificate credential that has expired.
        let old = try ReferenceSigner.make(.rsa(bits: 2048))
        let oldDER = try TestCertificates.issue(
            publicKey: old.certificatePublicKey, subject: "CN=old", issuer: .selfSigned(old.certificatePrivateKey),
            notBefore: Date().addingTimeInterval(-86400 * 60), notAfter: Date().addingTimeInterval(-86400))
        let oldSigner = ReferenceSigner(old.key, certificateChain: [try JWSCertificate(der: oldDER)])
        let oldApp = try f.store.createApplication(name: "old", certificate: oldDER)
        ecAssertion = try f.assertion(signer: oldSigner, clientID: oldApp.appId)
        cases.append(("expired credential", f.tokenURL, f.tokenForm(ecAssertion, clientID: oldApp.appId), 401, 1000502))

        let allCases = cases
        try await f.test { client in
            for (name, url, form, status, code) in allCases {
                let answer = try await client.post(url, form: form, fixture: f)
                #expect(answer.status == status, "\(name): \(answer.json)")
                #expect(aadsts(answer) == code, "\(name): \(answer.json)")
                let description = answer.json["error_description"] as? String ?? ""
                #expect(description.hasPrefix("AADSTS\(code): "), "\(name)")
                for field in ["error", "timestamp", "trace_id", "correlation_id", "error_uri"] {
                    #expect(answer.json[field] is String, "\(name): \(field)")
                }
            }
            // 700027 names the SHA-1 thumbprint of the key used.
            let answer = try await client.post(f.tokenURL, form: f.tokenForm(try f.assertion(signer: stranger, alg: .RS256)), fixture: f)
            #expect((answer.json["error_description"] as? String)?.contains(stranger.certificate!.thumbprint.hexSHA1) == true)
        }
    }

    @Test func replayAndPropagationFaults() async throws {
        let f = try EmulatorFixture()
        let next = try ReferenceSigner.make(.rsa(bits: 2048), subject: "CN=next")
        var settings = Faults.Settings()
        settings.propagationDelaySeconds = 3600
        f.routes.faults.settings = settings
        try await f.test { client in
            // The credential app create registered stands for an old one: accepted at once.
            let bearer = try await f.bearer(client)
            // One added through Graph is not replicated yet.
            let added = try await client.graph(.post, "/v1.0/applications/\(f.app.id)/addKey", token: bearer,
                                               body: f.addKeyBody(next.certificate!, proof: try f.proof(f.app.id)))
            #expect(added.status == 200, "\(added.json)")
            let nextAssertion = try f.assertion(signer: next)
            #expect(aadsts(try await client.post(f.tokenURL, form: f.tokenForm(nextAssertion), fixture: f)) == 700027)
            f.routes.faults.settings.propagationDelaySeconds = 0
            #expect(try await client.post(f.tokenURL, form: f.tokenForm(nextAssertion), fixture: f).status == 200)
            // Reuse within the lifetime is fine, unless replays are rejected.
            #expect(try await client.post(f.tokenURL, form: f.tokenForm(nextAssertion), fixture: f).status == 200)
            f.routes.faults.settings.rejectReplay = true
            let assertion = try f.assertion()
            #expect(try await client.post(f.tokenURL, form: f.tokenForm(assertion), fixture: f).status == 200)
            #expect(aadsts(try await client.post(f.tokenURL, form: f.tokenForm(assertion), fixture: f)) == 50013)
            f.routes.faults.settings.failures = [.init(route: "token", count: 1, status: 429, retryAfter: 7)]
            let throttled = try await client.execute(uri: f.tokenURL, method: .post, body: f.form(f.tokenForm(try f.assertion()))) { $0 }
            #expect(throttled.status.code == 429)
            #expect(throttled.headers[.retryAfter] == "7")
            #expect(try await client.post(f.tokenURL, form: f.tokenForm(try f.assertion()), fixture: f).status == 200)
        }
    }
}
