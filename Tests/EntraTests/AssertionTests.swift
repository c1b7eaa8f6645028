import Entra
import Foundation
import JOSE
import Logging
import PKCS11
import TokenSigning
import Testing
import TestSupport

@Suite("Entra client assertions signed on the token")
struct AssertionTests {
    let now = Date(timeIntervalSince1970: 1_795_000_000)

    @Test func autoPicksPS256WithX5tS256AndTheClaimsEntraChecks() throws {
        try EntraFixture.withSigner("rsa") { signer in
            let jti = UUID()
            let jws = try ClientAssertion.make(
                .init(tenant: tenantID, clientID: clientID), signer: signer, now: now, jti: jti, logger: testLogger)
            let (header, claims) = try foundationJSON(jws)
            #expect(Set(header.keys) == ["alg", "typ", "x5t#S256", "kid"])
            #expect(header["alg"] as? String == "PS256")
            #expect(header["typ"] as? String == "JWT")
            #expect(header["x5t#S256"] as? String == sha(try EntraFixture.certificate("rsa"), sha256: true))
            #expect(header["kid"] as? String == unbase64url(sha(try EntraFixture.certificate("rsa"), sha256: false))!.map { String(format: "%02X", $0) }.joined())
            #expect(claims["aud"] as? String == "https://login.microsoftonline.com/\(tenantID)/oauth2/v2.0/token")
            #expect(claims["iss"] as? String == clientID)
            #expect(claims["sub"] as? String == clientID)
            #expect(claims["jti"] as? String == jti.uuidString.lowercased())
            #expect(claims["nbf"] as? Int == 1_795_000_000)
            #expect(claims["iat"] as? Int == 1_795_000_000)
            #expect(claims["exp"] as? Int == 1_795_000_600)
            #expect(claims.count == 7)
            try verifyIndependently(jws, signer: signer)
        }
    }

    @Test func forcedRS256UsesX5tAndX5cFromTheTokenAndKidCanBeLeftOut() throws {
        try EntraFixture.withSigner("rsa") { signer in
            #expect(signer.certificateChain.map(\.der) == [try EntraFixture.certificate("rsa"), try EntraFixture.certificate("ca")])
            let jws = try ClientAssertion.make(
                .init(tenant: "contoso.onmicrosoft.com", clientID: clientID.uppercased(), lifetime: 300, algorithm: .fixed(.RS256), x5c: true, kid: .none),
                signer: signer, now: now, logger: testLogger)
            let (header, claims) = try foundationJSON(jws)
            #expect(header["alg"] as? String == "RS256")
            #expect(header["x5t"] as? String == sha(try EntraFixture.certificate("rsa"), sha256: false))
            #expect(header["x5t#S256"] == nil)
            #expect(header["kid"] == nil, "--kid none")
            let x5c = try #require(header["x5c"] as? [String]).compactMap { Data(base64Encoded: $0).map { [UInt8]($0) } }
            #expect(x5c == [try EntraFixture.certificate("rsa"), try EntraFixture.certificate("ca")])
            #expect(claims["iss"] as? String == clientID, "client ids are sent lowercase")
            #expect(claims["exp"] as? Int == 1_795_000_300)
            #expect(claims["aud"] as? String == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
            try verifyIndependently(jws, signer: signer)
        }
    }

    @Test func sovereignAndCustomAuthorityHostsSetTheAudience() throws {
        try EntraFixture.withSigner("rsa") { signer in
            for (host, expected) in [
                (EntraCloud.usGov.authorityHost, "https://login.microsoftonline.us/\(tenantID)/oauth2/v2.0/token"),
                (EntraCloud.china.authorityHost, "https://login.partner.microsoftonline.cn/\(tenantID)/oauth2/v2.0/token"),
                (try EntraValue.endpoint("http://127.0.0.1:8443/", what: "authority host"), "http://127.0.0.1:8443/\(tenantID)/oauth2/v2.0/token"),
            ] {
                let jws = try ClientAssertion.make(.init(tenant: tenantID, clientID: clientID, authorityHost: host), signer: signer, logger: testLogger)
                #expect(try foundationJSON(jws).claims["aud"] as? String == expected)
            }
        }
        #expect(throws: EntraError.self) { try EntraValue.endpoint("http://login.example.com", what: "authority host") }
        #expect(throws: EntraError.self) { try EntraValue.endpoint("ftp://127.0.0.1", what: "authority host") }
        #expect(throws: EntraError.self) { try EntraValue.endpoint("https://host/?q=1", what: "authority host") }
    }

    @Test func extraClaimsMergeButDoNotReplaceRequiredOnesUnlessOverridden() throws {
        try EntraFixture.withSigner("rsa") { signer in
            var parameters = ClientAssertion.Parameters(tenant: tenantID, clientID: clientID, extraClaims: JSONObject(["xms_extra": .array([1, 2])]))
            var claims = try foundationJSON(try ClientAssertion.make(parameters, signer: signer, logger: testLogger)).claims
            #expect(claims["xms_extra"] as? [Int] == [1, 2])
            parameters.extraClaims["aud"] = "https://elsewhere"
            let refused = #expect(throws: EntraError.self) { try ClientAssertion.make(parameters, signer: signer, logger: testLogger) }
            #expect(refused?.message.contains("'aud'") == true)
            #expect(refused?.hint?.contains("overriding") == true && refused?.settings == ["override"])
            parameters.overrideClaims = true
            claims = try foundationJSON(try ClientAssertion.make(parameters, signer: signer, logger: testLogger)).claims
            #expect(claims["aud"] as? String == "https://elsewhere")
        }
    }

    @Test(arguments: [
        ("", clientID, 600, "tenant is empty"),
        ("common", clientID, 600, "multi-tenant"),
        ("con toso", clientID, 600, "neither a GUID nor a domain"),
        (tenantID, "", 600, "client id is empty"),
        (tenantID, "my-app", 600, "not a GUID"),
        (tenantID, clientID, 3601, "outside 1…3600"),
        (tenantID, clientID, 0, "outside 1…3600"),
    ])
    func badParametersAreRefusedBeforeSigning(_ tenant: String, _ client: String, _ lifetime: Int, _ message: String) throws {
        try EntraFixture.withSigner("rsa") { signer in
            let error = #expect(throws: EntraError.self) {
                try ClientAssertion.make(.init(tenant: tenant, clientID: client, lifetime: lifetime), signer: signer, logger: testLogger)
            }
            #expect(error?.code == .invalidParameter)
            #expect(error?.message.contains(message) == true, "\(String(describing: error))")
        }
    }

    @Test func algorithmsTheKeyCannotMakeAreRefused() throws {
        try EntraFixture.withSigner("rsa") { signer in
            let error = #expect(throws: EntraError.self) {
                try ClientAssertion.make(.init(tenant: tenantID, clientID: clientID, algorithm: .fixed(.ES256)), signer: signer, logger: testLogger)
            }
            #expect(error?.code == .unsupportedKey)
            #expect(error?.hint?.contains("PS256") == true)
        }
    }

    @Test func anECKeyGivesES256AndEntraIsSaidToRefuseIt() throws {
        try EntraFixture.withSigner("ec") { signer in
            let messages = LogCapture()
            let logger = Logger(label: "test") { _ in messages }
            let jws = try ClientAssertion.make(.init(tenant: tenantID, clientID: clientID), signer: signer, logger: logger)
            let (header, _) = try foundationJSON(jws)
            #expect(header["alg"] as? String == "ES256")
            #expect(header["x5t"] as? String == sha(try EntraFixture.certificate("ec"), sha256: false))
            #expect(messages.lines.contains { $0.contains("need an RSA key") })
            try verifyIndependently(jws, signer: signer)
        }
    }

    @Test func aCertificateOfAnotherKeyIsRefused() throws {
        let other = try JWSCertificate(der: try EntraFixture.certificate("ec"))
        let error = #expect(throws: PKCS11Error.self) {
            try EntraFixture.withSigner("rsa", certificateChain: [other]) { _ in }
        }
        #expect(error?.code == .certificateMismatch)
        #expect(error?.message.contains(other.thumbprint.hexSHA1) == true)
    }

    @Test func theDefaultIsTheLegacyFormWhenTheSignerCannotDoPSS() throws {
        // The choice logic, with the reference signer standing in for a token without PSS; the
        // real-token case (mechanism lists without PSS) is in the CLI tests.
        let signer = try ReferenceSigner.make(.rsa(bits: 2048))
        signer.unsupported = [.PS256, .PS384, .PS512]
        let jws = try ClientAssertion.make(.init(tenant: tenantID, clientID: clientID), signer: signer, logger: testLogger)
        #expect(jws.header["alg"] == "RS256")
        #expect(jws.header["x5t"]?.stringValue == signer.certificate?.thumbprint.x5t)
        signer.unsupported = [.PS256, .RS256]
        #expect(throws: EntraError.self) { try ClientAssertion.make(.init(tenant: tenantID, clientID: clientID), signer: signer, logger: testLogger) }
    }
}

@Suite("Graph proof of possession")
struct ProofOfPossessionTests {
    @Test func rs256WithX5tKidAndTenMinutesForTheObjectID() throws {
        try EntraFixture.withSigner("rsa") { signer in
            let now = Date()
            let jws = try ProofOfPossession.make(objectID: objectID.uppercased(), signer: signer, now: now, logger: testLogger)
            let (header, claims) = try foundationJSON(jws)
            #expect(Set(header.keys) == ["alg", "typ", "x5t", "kid"])
            #expect(header["alg"] as? String == "RS256")
            #expect(header["x5t"] as? String == sha(try EntraFixture.certificate("rsa"), sha256: false))
            #expect(header["kid"] as? String == unbase64url(header["x5t"] as! String)!.map { String(format: "%02X", $0) }.joined())
            #expect(claims["aud"] as? String == "00000002-0000-0000-c000-000000000000")
            #expect(claims["iss"] as? String == objectID)
            let nbf = try #require(claims["nbf"] as? Int), exp = try #require(claims["exp"] as? Int)
            #expect(exp - nbf == 600)
            #expect(abs(nbf - Int(now.timeIntervalSince1970)) <= 1)
            #expect(UUID(uuidString: try #require(claims["jti"] as? String)) != nil)
            try verifyIndependently(jws, signer: signer)
        }
    }

    @Test func ps256OnlyWhenForced() throws {
        try EntraFixture.withSigner("rsa") { signer in
            let jws = try ProofOfPossession.make(objectID: objectID, signer: signer, algorithm: .PS256, logger: testLogger)
            #expect(jws.header["alg"] == "PS256")
            try verifyIndependently(jws, signer: signer, openssl: false)
            #expect(throws: EntraError.self) { try ProofOfPossession.make(objectID: objectID, signer: signer, algorithm: .RS512, logger: testLogger) }
        }
    }

    @Test(arguments: ["", "not-a-guid", "a0b1c2d3e4f546079809-1a2b3c4d5e6f", "{a0b1c2d3-e4f5-4607-9809-1a2b3c4d5e6f}"])
    func theObjectIDMustBeAGUID(_ id: String) throws {
        try EntraFixture.withSigner("rsa") { signer in
            let error = #expect(throws: EntraError.self) { try ProofOfPossession.make(objectID: id, signer: signer, logger: testLogger) }
            #expect(error?.code == .invalidParameter)
            #expect(error?.hint?.contains("not its appId") == true)
        }
    }

    @Test func anECKeyCannotMakeAProof() throws {
        try EntraFixture.withSigner("ec") { signer in
            let error = #expect(throws: EntraError.self) { try ProofOfPossession.make(objectID: objectID, signer: signer, logger: testLogger) }
            #expect(error?.code == .unsupportedKey)
        }
    }
}

/// Collects log messages.
final class LogCapture: LogHandler, @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [String] = []
    var lines: [String] { lock.withLock { stored } }
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { lock.withLock { stored.append("\(event.level): \(event.message)") } }
}
