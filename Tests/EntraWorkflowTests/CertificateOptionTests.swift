import Foundation
import Testing
import TestSupport

/// --cert / --cert-file mean the same on every command that takes them, or are refused where
/// they would be ignored (issue 16: `rotate --cert pkcs11:…` was dropped, `agent --cert-file`
/// ignored).
@Suite("Certificate options")
struct CertificateOptionTests {
    @Test func rotateUsesTheCertificateObjectGivenByURI() throws {
        let f = try WorkflowFixture()
        // A certificate URI that selects nothing: the rotation must look for it, not use the
        // key's own certificate in its place.
        let missing = try f.rotate(["--cert", "pkcs11:token=\(f.tokenLabel);object=no-such-certificate", "--dry-run"])
        #expect(missing.status == 1, "\(missing.stdout) \(missing.stderr)")
        #expect(missing.stderr.contains("no certificate matches"), "\(missing.stderr)")
        // The key's own certificate by its URI works.
        let own = try f.rotate(["--cert", "pkcs11:token=\(f.tokenLabel);object=app;type=cert", "--dry-run"])
        #expect(own.status == 0, "\(own.stderr)")
    }

    /// The agent serves each key with the certificate stored with it: it has no certificate
    /// options at all now, so one given is a usage error before anything starts.
    @Test func theAgentHasNoCertificateOptionsItWouldIgnore() throws {
        let f = try WorkflowFixture()
        let result = try f.cli(["agent", "--key", f.keyURI, "--cert-file", "/nonexistent.pem"] + f.entraFlags)
        #expect(result.status == 2)
        #expect(result.stderr.contains("--cert-file"), "\(result.stderr)")
    }
}
