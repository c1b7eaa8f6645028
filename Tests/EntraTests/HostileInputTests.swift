@testable import Entra
import Foundation
import JOSE
import Testing
import TestSupport

/// Values from a server, a cache file or a token are untrusted: none may trap the process, and
/// a bad one is refused before it is kept (issue: hostile inputs).
@Suite("Hostile values from servers, files and tokens")
struct HostileInputTests {
    static func answer(_ expiresIn: String) throws -> JSONObject {
        try JSONObject(parsing: Array(#"{"token_type":"Bearer","access_token":"t","expires_in":\#(expiresIn)}"#.utf8), what: "test")
    }

    @Test(arguments: ["1e300", #""nan""#, #""inf""#, "-5", "0", #""soon""#, "null", "1e10", "9223372036854775807"])
    func anInsaneExpiresInIsRefusedNotKept(value: String) throws {
        let error = #expect(throws: EntraError.self) { try TokenClient.accessToken(from: try Self.answer(value), now: Date()) }
        #expect(error?.code == .protocolViolation, "\(value)")
        #expect(error?.message.contains("expires_in") == true)
    }

    @Test func saneExpiresInAsNumberOrString() throws {
        let now = Date()
        #expect(try TokenClient.accessToken(from: try Self.answer("3599"), now: now).expiresOn == now.addingTimeInterval(3599))
        #expect(try TokenClient.accessToken(from: try Self.answer(#""86399""#), now: now).expiresOn == now.addingTimeInterval(86399))
        // No expires_in at all: Entra's usual hour.
        let bare = try JSONObject(parsing: Array(#"{"access_token":"t"}"#.utf8), what: "test")
        #expect(try TokenClient.accessToken(from: bare, now: now).expiresOn == now.addingTimeInterval(3599))
    }

    @Test func aCacheEntryNoServerCouldHaveGivenIsIgnored() throws {
        let dir = TemporaryDirectory("p11jwt-cache")
        let cache = TokenCache(file: URL(fileURLWithPath: dir.file("p11jwt/tokens.json")))
        let key = TokenCache.Key(authority: "https://a", tenant: "t", clientID: "c", scope: "s/.default", thumbprint: "ab")
        let now = Date()
        try cache.store(AccessToken(accessToken: "forever", expiresOn: Date(timeIntervalSince1970: 1e300)), for: key, now: now)
        #expect(try cache.lookup(key, now: now) == nil)
        try cache.store(AccessToken(accessToken: "fine", expiresOn: now.addingTimeInterval(3600)), for: key, now: now)
        #expect(try cache.lookup(key, now: now)?.accessToken == "fine")
    }

    @Test(arguments: [
        ("http://127.0.0.1:8080", true), ("http://127.1.2.3", true), ("http://[::1]:9", true), ("http://localhost:1", true),
        ("http://127.0.0.1.nip.io:8080", false), ("http://127.evil.example", false), ("http://128.0.0.1", false),
        ("http://0x7f000001", false), ("https://127.0.0.1.nip.io", true),
    ])
    func plainHTTPOnlyOnALoopbackAddress(url: String, allowed: Bool) {
        let accepted = (try? EntraValue.endpoint(url, what: "authority host")) != nil
        #expect(accepted == allowed, "\(url)")
    }

    @Test(arguments: ["-9223372036854775808", "9223372036854775807", "-9.2e18", "1e300"])
    func decodeSurvivesTimesFarFromNow(exp: String) throws {
        let header = Base64URL.encode(#"{"alg":"RS256","typ":"JWT"}"#)
        let claims = Base64URL.encode(#"{"exp":\#(exp),"nbf":\#(exp)}"#)
        let jwt = "\(header).\(claims).\(Base64URL.encode([1, 2, 3]))"
        for output in ["text", "json"] {
            let r = try run(try p11jwtBinary, ["decode", jwt, "--output", output])
            #expect(r.status == 0, "\(exp) \(output): status \(r.status) \(r.stderr)")
        }
    }
}
