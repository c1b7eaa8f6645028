@testable import Entra
import Foundation
import JOSE
import Testing

@Suite("Entra and Graph refusals become errors that say what to do")
struct RefusalHintTests {
    /// Every AADSTS code the emulator (and so Entra, for these cases) answers with.
    static let emulatorCodes = [90002, 70003, 900144, 700016, 7000218, 70011, 50027, 5002730, 700023, 700021, 50048, 700024, 700027, 1000502, 50013, 90033, 500011, 1002012, 7000215, 900561]

    @Test(arguments: emulatorCodes)
    func eachAADSTSCodeHasItsOwnHint(code: Int) throws {
        let body = try JSONObject(parsing: Array("""
            {"error":"invalid_client","error_description":"AADSTS\(code): Something was wrong.\\r\\nTrace ID: 1\\r\\nCorrelation ID: 2","error_codes":[\(code)]}
            """.utf8), what: "test")
        let error = TokenClient.refusal(status: 400, body: body, tenant: "contoso.onmicrosoft.com", clientID: "c", scope: "s/.default")
        #expect(error.code == .tokenRefused)
        #expect(error.aadsts == code)
        // Entra's first line only: trace and correlation ids are not part of the message.
        #expect(error.message == "AADSTS\(code): Something was wrong.")
        let hint = try #require(error.hint)
        #expect(!hint.hasPrefix("see https://"), "AADSTS\(code) has only the generic hint")
    }

    @Test func anUnknownCodeStillPointsAtEntrasErrorPage() throws {
        let body = try JSONObject(parsing: Array(#"{"error":"invalid_request","error_description":"AADSTS123456: New.","error_codes":[123456]}"#.utf8), what: "test")
        let error = TokenClient.refusal(status: 400, body: body, tenant: "t", clientID: "c", scope: "s")
        #expect(error.hint == "see https://login.microsoftonline.com/error?code=123456")
        // Not Entra's JSON at all: the status is named.
        let bare = TokenClient.refusal(status: 502, body: nil, tenant: "t", clientID: "c", scope: "s")
        #expect(bare.httpStatus == 502 && bare.message.contains("502"))
    }

    @Test(arguments: [
        (401, "Authentication_MissingOrMalformed", "proof"), (401, "InvalidAuthenticationToken", "access token"),
        (403, "Authorization_RequestDenied", "Application.ReadWrite"), (404, "Request_ResourceNotFound", "object id"),
        (400, "Request_BadRequest", "message"), (429, "TooManyRequests", "later"), (503, "ServiceUnavailable", "later"),
    ])
    func eachGraphRefusalNamesItsCodeAndTheNextStep(status: Int, code: String, needle: String) {
        let answer = HTTPAnswer(status: status, headers: [], body: Array(#"{"error":{"code":"\#(code)","message":"It failed.","innerError":{}}}"#.utf8))
        let error = GraphClient.refusal(answer, operation: "addKey on applications/x")
        #expect(error.code == .graphRefused)
        #expect(error.graphCode == code)
        #expect(error.httpStatus == status)
        #expect(error.message.contains(code))
        #expect(error.hint?.contains(needle) == true, "\(code): \(error.hint ?? "no hint")")
    }

    @Test func theCacheKeepsTokensUntilFiveMinutesBeforeExpiryIn0600() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("p11jwt-cache-\(UUID().uuidString.prefix(6))")
        defer { try? FileManager.default.removeItem(at: dir) }
        let cache = TokenCache(file: dir.appendingPathComponent("p11jwt/tokens.json"))
        let key = TokenCache.Key(authority: "https://a", tenant: "T", clientID: "C", scope: "s/.default", thumbprint: "ab")
        let now = Date()
        try cache.store(AccessToken(accessToken: "secret-token", expiresOn: now.addingTimeInterval(600)), for: key, now: now)
        #expect(try cache.lookup(key, now: now)?.accessToken == "secret-token")
        #expect(try cache.lookup(key, now: now)?.fromCache == true)
        // 5 minutes before expiry it is no longer handed out.
        #expect(try cache.lookup(key, now: now.addingTimeInterval(301)) == nil)
        // Another scope, client or thumbprint is another entry.
        #expect(try cache.lookup(TokenCache.Key(authority: "https://a", tenant: "T", clientID: "C", scope: "x/.default", thumbprint: "ab"), now: now) == nil)
        #expect(try cache.lookup(TokenCache.Key(authority: "https://a", tenant: "t", clientID: "c", scope: "s/.default", thumbprint: "AB"), now: now) != nil)
        let attributes = try FileManager.default.attributesOfItem(atPath: cache.file.path)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        // The file names no tenant or client.
        let text = try String(contentsOf: cache.file, encoding: .utf8)
        #expect(!text.contains("https://a") && !text.contains("s/.default"))
        try cache.remove(key)
        #expect(try cache.lookup(key, now: now) == nil)
    }
}
