import Agent
import Foundation
import Testing
import TestSupport

/// Federated identity credentials, "app as FIC" (issue 17): app A's hardware key gets tokens for
/// app B — which has no certificate at all — only while B trusts A through a federated identity
/// credential matching A's issuer, subject and audience.
@Suite("Federated identity credentials against the emulator")
struct FederatedCredentialTests {
    @Test func aTokenForAnotherAppIsIssuedOnlyWhileThatAppTrustsThisOne() throws {
        let f = try WorkflowFixture(roles: ["Application.ReadWrite.OwnedBy"])
        // B: no certificate, owned by A (so A may manage B's federated credentials).
        let b = try f.emulator.createApplication(name: "no-certificate", certificateFile: nil, owners: [f.appId])
        let issuer = "\(f.emulator.url)/\(f.tenant)/v2.0"
        func viaFIC(_ clientID: String, tenant: String? = nil) throws -> ProcessResult {
            try f.cli(["access-token", "--key", f.keyURI, "--via-fic", clientID, "--no-cache"] + (tenant.map { ["--via-fic-tenant", $0] } ?? []) + f.entraFlags)
        }
        // No federated credential: refused with Entra's code and the way out.
        let untrusted = try viaFIC(b["appId"]!)
        #expect(untrusted.status == 1 && untrusted.stderr.contains("AADSTS700211"), "\(untrusted.stderr)")
        #expect(untrusted.stderr.contains("p11jwt fic add"), "\(untrusted.stderr)")
        // Trusting the issuer but another subject: refused (700213).
        #expect(try f.emulator.admin(["app", "fic-add", "--id", b["id"]!, "--issuer", issuer, "--subject", "00000000-0000-0000-0000-00000000000c"]).status == 0)
        let otherSubject = try viaFIC(b["appId"]!)
        #expect(otherSubject.status == 1 && otherSubject.stderr.contains("AADSTS700213"), "\(otherSubject.stderr)")
        // A adds B's federated credential for itself through Graph; then B's token comes.
        let added = try f.cli(["fic", "add", "--key", f.keyURI, "--object-id", b["id"]!, "--issuer", issuer, "--subject", f.servicePrincipalID,
                               "--name", "from-workflow", "--output", "json"] + f.entraFlags)
        #expect(added.status == 0, "\(added.stderr)")
        let listed = try f.cli(["fic", "list", "--key", f.keyURI, "--object-id", b["id"]!, "--output", "json"] + f.entraFlags)
        let credentials = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]], "\(listed.stderr)")
        #expect(credentials.contains { $0["name"] as? String == "from-workflow" && $0["subject"] as? String == f.servicePrincipalID }, "\(credentials)")
        let trusted = try viaFIC(b["appId"]!)
        #expect(trusted.status == 0, "\(trusted.stderr)")
        let claims = try independentlyParse(trusted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)).claims
        #expect(claims["appid"] as? String == b["appId"] && claims["tid"] as? String == f.tenant, "a token for B, not A: \(claims)")
        // Removed: refused again.
        #expect(try f.cli(["fic", "remove", "--key", f.keyURI, "--object-id", b["id"]!, "--id", "from-workflow"] + f.entraFlags).status == 0)
        #expect(try viaFIC(b["appId"]!).stderr.contains("AADSTS700213"))
    }

    /// The agent serves it: `/v1/token` with `viaFic` returns B's token, got with the agent's key.
    @Test func theAgentServesTokensForATrustingApp() throws {
        let f = try WorkflowFixture()
        let b = try f.emulator.createApplication(name: "served", certificateFile: nil)
        let agent = try RunningAgent(f)
        defer { _ = agent.stop() }
        let refused: Result<AgentAPI.AccessTokenResponse, any Error> = Result { try agent.client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest(viaFic: b["appId"]!)) }
        #expect(throws: (any Error).self) { try refused.get() }
        #expect(try f.emulator.admin(["app", "fic-add", "--id", b["id"]!, "--issuer", "\(f.emulator.url)/\(f.tenant)/v2.0", "--subject", f.servicePrincipalID]).status == 0)
        let answer: AgentAPI.AccessTokenResponse = try agent.client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest(viaFic: b["appId"]!))
        #expect(try independentlyParse(answer.access_token).claims["appid"] as? String == b["appId"])
        // The agent's own token is another one.
        let own: AgentAPI.AccessTokenResponse = try agent.client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest())
        #expect(try independentlyParse(own.access_token).claims["appid"] as? String == f.appId)
    }

    /// Across tenants: app C in another tenant trusts A's tenant's issuer and A's subject.
    @Test func anAppInAnotherTenantCanTrustThisOne() throws {
        let f = try WorkflowFixture()
        let created = try f.emulator.admin(["app", "create", "--name", "elsewhere", "--tenant", "fabrikam.example"])
        let c = try #require(try JSONSerialization.jsonObject(with: Data(created.stdout.utf8)) as? [String: String], "\(created.stderr)")
        #expect(c["tenantId"] != f.tenant)
        #expect(try f.emulator.admin(["app", "fic-add", "--id", c["id"]!, "--issuer", "\(f.emulator.url)/\(f.tenant)/v2.0", "--subject", f.servicePrincipalID]).status == 0)
        let token = try f.cli(["access-token", "--key", f.keyURI, "--via-fic", c["appId"]!, "--via-fic-tenant", c["tenantId"]!, "--no-cache"] + f.entraFlags)
        #expect(token.status == 0, "\(token.stderr)")
        let claims = try independentlyParse(token.stdout.trimmingCharacters(in: .whitespacesAndNewlines)).claims
        #expect(claims["appid"] as? String == c["appId"] && claims["tid"] as? String == c["tenantId"], "\(claims)")
    }
}
