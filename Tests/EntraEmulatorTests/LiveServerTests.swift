import AsyncHTTPClient
import Foundation
import JOSE
import NIOCore
import NIOHTTP1
import NIOFoundationCompat
import NIOSSL
import Testing
import TestSupport

/// The `entra-emulator` executable itself: HTTPS with its own CA, admin commands against a
/// running server, the drop-after-commit fault on a real connection, SIGTERM, restart.
@Suite("entra-emulator serve (real process, HTTPS)")
struct LiveServerTests {
    static func client(trusting caFile: String?) throws -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caFile { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile)) }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(30))
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    static func send(_ client: HTTPClient, _ method: HTTPMethod, _ url: String, body: String? = nil, form: Bool = false, bearer: String? = nil) async throws -> (status: Int, json: [String: Any]) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let body {
            request.headers.add(name: "Content-Type", value: form ? "application/x-www-form-urlencoded" : "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        if let bearer { request.headers.add(name: "Authorization", value: "Bearer \(bearer)") }
        let response = try await client.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), (try? JSONSerialization.jsonObject(with: Data(buffer: bytes))) as? [String: Any] ?? [:])
    }

    static func formBody(_ fields: [String: String]) -> String {
        fields.map { k, v in "\(k)=\(v.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~")))!)" }
            .joined(separator: "&")
    }

    @Test func httpsWithItsOwnCAAdminWhileRunningDropFaultSigtermAndRestart() async throws {
        let signer = try ReferenceSigner.make(.rsa(bits: 2048), subject: "CN=live")
        let next = try ReferenceSigner.make(.rsa(bits: 2048), subject: "CN=live-next")
        let emulator = try RunningEmulator()
        #expect(emulator.url.hasPrefix("https://127.0.0.1:"))
        let certFile = emulator.state + "/live.pem"
        try signer.certificate!.pem.write(toFile: certFile, atomically: true, encoding: .utf8)

        // Admin command while the server runs.
        let app = try emulator.createApplication(name: "live", certificateFile: certFile)
        let tenant = try #require(app["tenantId"]), appId = try #require(app["appId"]), objectID = try #require(app["id"])

        // TLS is real: a client that does not trust the emulator's CA is refused.
        let untrusted = try Self.client(trusting: nil)
        await #expect(throws: (any Error).self) {
            _ = try await Self.send(untrusted, .GET, "\(emulator.url)/common/discovery/instance")
        }
        try await untrusted.shutdown()

        let client = try Self.client(trusting: emulator.caFile)
        do {
            func token(_ base: String, signer: ReferenceSigner) async throws -> (status: Int, json: [String: Any]) {
                let fixture = FixtureAssertion(tenant: tenant, appId: appId)
                return try await Self.send(client, .POST, "\(base)/\(tenant)/oauth2/v2.0/token",
                                           body: Self.formBody(fixture.form(try fixture.assertion(signer: signer, base: base))), form: true)
            }
            // The server certificate names 127.0.0.1 and localhost; the assertion's aud is the URL used.
            let viaIP = try await token(emulator.url, signer: signer)
            #expect(viaIP.status == 200, "\(viaIP.json)")
            let port = try #require(URL(string: emulator.url)?.port)
            let viaName = try await token("https://localhost:\(port)", signer: signer)
            #expect(viaName.status == 200, "\(viaName.json)")
            let bearer = try #require(viaIP.json["access_token"] as? String)

            // addKey applied, then the connection dropped: the client gets no answer, the key is there.
            // The fault route is the state owner's: without the admin token, 401 and nothing set.
            let dropFault = #"{"failures":[{"route":"addKey","count":1,"dropAfterApply":true}]}"#
            #expect(try await Self.send(client, .POST, "\(emulator.url)/_emulator/faults", body: dropFault).status == 401)
            #expect(try await Self.send(client, .POST, "\(emulator.url)/_emulator/faults", body: dropFault, bearer: "guess").status == 401)
            let adminMode = try FileManager.default.attributesOfItem(atPath: emulator.state + "/admin-token")[.posixPermissions] as? NSNumber
            #expect(adminMode?.intValue == 0o600)
            let faults = try await Self.send(client, .POST, "\(emulator.url)/_emulator/faults", body: dropFault, bearer: emulator.adminToken)
            #expect(faults.status == 204)
            let proof = try FixtureAssertion.proof(objectID, signer: signer)
            let body = #"{"keyCredential":{"type":"AsymmetricX509Cert","usage":"Verify","key":"\#(next.certificate!.x5cValue)"},"passwordCredential":null,"proof":"\#(proof)"}"#
            await #expect(throws: (any Error).self) {
                _ = try await Self.send(client, .POST, "\(emulator.url)/v1.0/applications/\(objectID)/addKey", body: body, bearer: bearer)
            }
            let afterDrop = try emulator.keyCredentials(applicationID: objectID)
            #expect(afterDrop.count == 2)
            #expect(afterDrop.contains { $0["customKeyIdentifier"] as? String == Data(next.certificate!.thumbprint.sha1).base64EncodedString() })
            // The fault was used up: the same request again is answered, as a duplicate.
            let again = try await Self.send(client, .POST, "\(emulator.url)/v1.0/applications/\(objectID)/addKey", body: body, bearer: bearer)
            #expect(again.status == 400)
            #expect((again.json["error"] as? [String: Any])?["code"] as? String == "Request_BadRequest")
        }
        try await client.shutdown()

        // SIGTERM: a clean exit that removes the url file.
        #expect(emulator.stop() == 0, "\(emulator.log)")
        #expect(!FileManager.default.fileExists(atPath: emulator.state + "/url"))
        #expect(emulator.log.contains("stopped"))

        // Restart on the same state: same CA, the app and both keys are still there.
        let restarted = try RunningEmulator(state: emulator.state)
        let client2 = try Self.client(trusting: restarted.caFile)
        do {
            let fixture = FixtureAssertion(tenant: tenant, appId: appId)
            let answer = try await Self.send(client2, .POST, "\(restarted.url)/\(tenant)/oauth2/v2.0/token",
                                             body: Self.formBody(fixture.form(try fixture.assertion(signer: next, base: restarted.url))), form: true)
            #expect(answer.status == 200, "\(answer.json)")
        }
        try await client2.shutdown()
        #expect(restarted.stop() == 0)
    }
}

/// Client assertions, token forms and PoP proofs for one app, signed by software keys.
struct FixtureAssertion {
    var tenant: String
    var appId: String

    /// `edit` may change header and claims before signing.
    func assertion(
        signer: ReferenceSigner, base: String, alg: JWSAlgorithm = .PS256, clientID: String? = nil,
        edit: (inout JSONObject, inout JSONObject) -> Void = { _, _ in }
    ) throws -> String {
        var header = try JWSHeaderFields(x5t: alg != .PS256, x5tS256: alg == .PS256).header(algorithm: alg, certificateChain: signer.certificateChain)
        let now = Int64(Date().timeIntervalSince1970)
        let client = clientID ?? appId
        var claims = JSONObject([
            "aud": .string("\(base)/\(tenant)/oauth2/v2.0/token"), "iss": .string(client), "sub": .string(client),
            "jti": .string(UUID().uuidString), "nbf": .int(now), "iat": .int(now), "exp": .int(now + 600),
        ])
        edit(&header, &claims)
        return try JWS.sign(header: header, claims: claims, signer: signer).compact
    }

    func form(_ assertion: String, scope: String = "https://graph.microsoft.com/.default", clientID: String? = nil) -> [String: String] {
        [
            "grant_type": "client_credentials", "client_id": clientID ?? appId, "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "client_assertion": assertion,
        ]
    }

    /// A PoP proof for `objectID`; `edit` may break it.
    static func proof(_ objectID: String, signer: ReferenceSigner, edit: (inout JSONObject, inout JSONObject) -> Void = { _, _ in }) throws -> String {
        var header = try JWSHeaderFields(x5t: true, kid: .thumbprint).header(algorithm: .RS256, certificateChain: signer.certificateChain)
        let now = Int64(Date().timeIntervalSince1970)
        var claims = JSONObject(["aud": "00000002-0000-0000-c000-000000000000", "iss": .string(objectID), "nbf": .int(now), "exp": .int(now + 600), "jti": .string(UUID().uuidString)])
        edit(&header, &claims)
        return try JWS.sign(header: header, claims: claims, signer: signer).compact
    }
}
