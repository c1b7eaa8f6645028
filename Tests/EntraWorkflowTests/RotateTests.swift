import Foundation
import Testing
import TestSupport

extension WorkflowFixture {
    func rotate(_ extra: [String] = [], crashAt: String? = nil) throws -> ProcessResult {
        try cli(["rotate", "--key", keyURI, "--object-id", objectID] + entraFlags + extra,
                environment: crashAt.map { ["P11JWT_TEST_CRASH_AT": $0] } ?? [:])
    }

    /// The private keys on the token (label, id).
    func privateKeys() throws -> [(label: String, id: String)] {
        let r = try cli(["objects", "--token", "pkcs11:token=\(tokenLabel)", "--pin-file", hsm.pinFile, "--output", "json"])
        try #require(r.status == 0, "\(r.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        return (report["privateKeys"] as? [[String: Any]] ?? []).map { ($0["label"] as? String ?? "", $0["id"] as? String ?? "") }
    }

    /// The public keys on the token (label, id).
    func publicKeys() throws -> [(label: String, id: String)] {
        let r = try cli(["objects", "--token", "pkcs11:token=\(tokenLabel)", "--pin-file", hsm.pinFile, "--output", "json"])
        try #require(r.status == 0, "\(r.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        return (report["publicKeys"] as? [[String: Any]] ?? []).map { ($0["label"] as? String ?? "", $0["id"] as? String ?? "") }
    }

    var journalFile: String { dir.file("state/p11jwt/rotate-\(objectID).json") }

    func journal() throws -> [String: Any]? {
        guard let data = FileManager.default.contents(atPath: journalFile) else { return nil }
        return try JSONSerialization.jsonObject(with: data) as? [String: Any]
    }

    /// Whether a key (by CKA_ID hex) gets a token now.
    func works(id: String) throws -> Bool {
        let encoded = stride(from: 0, to: id.count, by: 2).map { i -> String in
            let start = id.index(id.startIndex, offsetBy: i)
            return "%" + id[start..<id.index(start, offsetBy: 2)]
        }.joined()
        return try token(key: "pkcs11:token=\(tokenLabel);id=\(encoded);type=private", extra: ["--no-cache"]).result.status == 0
    }

    func thumbprintOnToken(label: String) throws -> String {
        let r = try cli(["thumbprint", "--cert", "pkcs11:token=\(tokenLabel);object=\(label);type=cert"])
        try #require(r.status == 0, "\(r.stderr)")
        let line = try #require(r.stdout.split(separator: "\n").first { $0.hasPrefix("sha1:") })
        return String(line.split(separator: " ").last!)
    }
}

/// A value shared with a background closure.
final class LockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ value: T) { self.value = value }
    func set(_ newValue: T) { lock.withLock { value = newValue } }
    func get() -> T { lock.withLock { value } }
    func withLock<R>(_ body: (inout T) throws -> R) rethrows -> R { try lock.withLock { try body(&value) } }
}

@Suite("p11jwt rotate against the emulator over HTTPS")
struct RotateTests {
    @Test(arguments: TokenImplementation.available)
    func rotateWaitsOutThePropagationDelayAndLeavesExactlyTheNewKey(_ implementation: TokenImplementation) throws {
        let f = try WorkflowFixture(emulatorArguments: ["--propagation-delay", "5"], implementation: implementation)
        let oldThumbprint = try opensslThumbprint(f.bootstrapCertificate)
        let r = try f.rotate(["--old-key-id", f.bootstrapKeyID, "--propagation-timeout", "60", "--output", "json"])
        #expect(r.status == 0, "\(r.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(report["outcome"] as? String == "rotated")
        #expect(report["oldRemoved"] as? Bool == true)
        let newThumbprint = try #require(report["newThumbprint"] as? String)
        #expect(newThumbprint != oldThumbprint)
        // Entra's replication delay was waited out, not failed on: the first attempts were refused.
        // (Counted, not timed: how long the wait took depends on the machine.)
        let steps = try #require(report["steps"] as? [[String: Any]])
        let verify = try #require(steps.first { $0["step"] as? String == "verify" })
        let attempt = try #require(verify["attempts"] as? Int)
        #expect(attempt >= 2, "\(verify)")
        // Exactly the new credential is registered, the new key has the old label and works,
        // the old key is kept, relabelled.
        #expect(try f.registeredThumbprints() == [newThumbprint])
        #expect(try f.thumbprintOnToken(label: "app") == newThumbprint)
        #expect(try f.token(extra: ["--no-cache"]).result.status == 0)
        let keys = try f.privateKeys()
        #expect(keys.count == 2)
        #expect(keys.contains { $0.label.hasPrefix("app-retired-") })
        #expect(try f.journal() == nil)
        // The new certificate is a valid self-signed certificate (openssl), signed in the token.
        let pem = f.dir.file("new.pem")
        let read = try run("sh", ["-c", "pkcs11-tool --module \(f.hsm.modulePath) --token-label wf --read-object --type cert --label app | openssl x509 -inform DER -out '\(pem)'"], environment: f.hsm.environment)
        #expect(read.status == 0, "\(read.stderr)")
        #expect(try run("openssl", ["verify", "-CAfile", pem, pem]).status == 0)
        #expect(try opensslThumbprint(pem) == newThumbprint)
    }

    /// Two rotations of one app at once: the second is refused before it changes anything, the
    /// first completes, and no orphaned key or journal is left.
    @Test func aSecondConcurrentRotateIsRefusedAndChangesNothing() throws {
        let f = try WorkflowFixture(emulatorArguments: ["--propagation-delay", "4"])
        let first = LockedBox<ProcessResult?>(nil)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            first.set(try? f.rotate(["--old-key-id", f.bootstrapKeyID, "--propagation-timeout", "60"]))
            done.signal()
        }
        // The first run is inside its propagation wait (the new key is refused for 4 s) by now.
        var second: ProcessResult?
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            Thread.sleep(forTimeInterval: 0.3)
            if FileManager.default.fileExists(atPath: f.journalFile) {
                second = try f.rotate(["--old-key-id", f.bootstrapKeyID, "--propagation-timeout", "60"])
                break
            }
        }
        done.wait()
        let second_ = try #require(second, "the first rotate never wrote its journal")
        #expect(second_.status == 1, "\(second_.stderr)")
        #expect(second_.stderr.contains("another rotate of \(f.objectID) is running"), "\(second_.stderr)")
        let firstResult = try #require(first.get())
        #expect(firstResult.status == 0, "\(firstResult.stderr)")
        #expect(try f.journal() == nil)
        #expect(try f.credentials().count == 1)
        #expect(try f.privateKeys().allSatisfy { !$0.label.contains("-next-") })
    }

    @Test func rotateGivesUpClearlyWhenEntraNeverAcceptsTheNewKey() throws {
        let f = try WorkflowFixture(emulatorArguments: ["--propagation-delay", "600"])
        let r = try f.rotate(["--old-key-id", f.bootstrapKeyID, "--propagation-timeout", "3"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("AADSTS700027"))
        #expect(r.stderr.contains("run 'p11jwt rotate' again"))
        // The old credential is untouched and works; the journal waits for the resume.
        #expect(try f.registeredThumbprints().contains(try opensslThumbprint(f.bootstrapCertificate)))
        let journal = try #require(try f.journal())
        #expect(try f.works(id: try #require((journal["old"] as? [String: Any])?["idHex"] as? String)))
    }

    @Test func notNeededDryRunAndUnknownOldKeyID() throws {
        let f = try WorkflowFixture()
        let before = try f.registeredThumbprints()
        let skip = try f.rotate(["--if-expiring-within", "30d"])
        #expect(skip.status == 0, "\(skip.stderr)")
        #expect(skip.stdout.contains("no rotation needed"))
        let plan = try f.rotate(["--dry-run"])
        #expect(plan.status == 0, "\(plan.stderr)")
        #expect(plan.stdout.contains("addKey"))
        #expect(try f.registeredThumbprints() == before)
        #expect(try f.privateKeys().count == 1)
        #expect(try f.journal() == nil)
        // No --old-key-id, no record, no Graph read permission: the new key is registered and
        // verified, the old credential stays, and the command says how to remove it.
        let r = try f.rotate([])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("p11jwt credential remove --object-id \(f.objectID)"))
        #expect(try f.registeredThumbprints().count == 2)
        #expect(try f.token(extra: ["--no-cache"]).result.status == 0)
    }

    /// The process is killed (SIGKILL, by itself, at each step boundary: after a change and
    /// before it is journaled, and after) and `rotate` is run again. After every kill the app
    /// still has a working credential and the old one is still registered unless the new one
    /// was verified; after every resume exactly the new key is registered and no second new key
    /// was made.
    @Test(arguments: TokenImplementation.available)
    func rotateSurvivesAKillAtEveryStepBoundary(_ implementation: TokenImplementation) throws {
        let f = try WorkflowFixture(roles: ["Application.ReadWrite.OwnedBy"], implementation: implementation)
        let points = ["planned", "keygen", "keygen.recorded", "certificate", "certificate.recorded", "addKey", "addKey.recorded",
                      "verified", "relabel", "relabel.recorded", "removeKey", "removeKey.recorded", "retire.old", "retire.recorded"]
        for (n, point) in points.enumerated() {
            let deleteOld = n % 2 == 0
            let keysBefore = try f.privateKeys().count
            let oldThumbprint = try f.thumbprintOnToken(label: "app")
            let killed = try f.rotate(deleteOld ? ["--delete-old"] : [], crashAt: point)
            #expect(killed.status == 9, "\(point): expected SIGKILL, got \(killed.status): \(killed.stderr)")

            let journal = try #require(try f.journal(), "\(point): no journal after the kill")
            let step = journal["step"] as? Int ?? -1
            let oldID = try #require((journal["old"] as? [String: Any])?["idHex"] as? String)
            let newID = try #require((journal["new"] as? [String: Any])?["idHex"] as? String)
            let registered = try f.registeredThumbprints()
            // Never without a working registered credential.
            let oldWorks = registered.contains(oldThumbprint) ? try f.works(id: oldID) : false
            let newWorks = try f.privateKeys().contains { $0.id == newID } ? try f.works(id: newID) : false
            #expect(oldWorks || newWorks, "\(point): the app has no working credential")
            // The old credential stays until the new key was verified (step 4).
            if step < 4 { #expect(registered.contains(oldThumbprint), "\(point): old credential removed before verification") }
            // The label always names a key whose credential is registered and works: it moves to
            // the new key before the old credential is removed.
            #expect(try f.token(extra: ["--no-cache"]).result.status == 0, "\(point): the key URI by label does not get a token")

            let resumed = try f.rotate((deleteOld ? ["--delete-old"] : []) + ["--output", "json"])
            #expect(resumed.status == 0, "\(point): resume failed: \(resumed.stderr)")
            let report = try #require(try JSONSerialization.jsonObject(with: Data(resumed.stdout.utf8)) as? [String: Any])
            #expect(report["resumed"] as? Bool == true, "\(point)")
            let newThumbprint = try #require(report["newThumbprint"] as? String)
            #expect(try f.registeredThumbprints() == [newThumbprint], "\(point): not exactly the new key registered")
            #expect(try f.thumbprintOnToken(label: "app") == newThumbprint, "\(point)")
            #expect(try f.token(extra: ["--no-cache"]).result.status == 0, "\(point)")
            #expect(try f.privateKeys().count == keysBefore + (deleteOld ? 0 : 1), "\(point): a second new key was made or the old one lingers")
            #expect(try f.journal() == nil, "\(point)")
        }
    }

    /// A key the token refuses to make (tpm2: RSA-4096, beyond its 1024–3072; a SoftHSM token
    /// without EC key generation: P-256) stops the run with the token's refusal and drops the
    /// plan, so the next run is not stuck on it; and a plan nothing acted on yet (killed right
    /// after key generation) is replaced when the next run asks for another key type.
    @Test(arguments: TokenImplementation.available)
    func aKeyTheTokenRefusesDropsThePlanAndAnotherKeyTypeReplacesIt(_ implementation: TokenImplementation) throws {
        let f = implementation == .tpm2
            ? try WorkflowFixture(roles: ["Application.ReadWrite.OwnedBy"], implementation: .tpm2)
            : try WorkflowFixture(
                mechanisms: "CKM_RSA_PKCS,CKM_RSA_PKCS_PSS,CKM_RSA_X_509,CKM_RSA_PKCS_KEY_PAIR_GEN,CKM_SHA256",
                roles: ["Application.ReadWrite.OwnedBy"])
        let refused = implementation == .tpm2 ? "rsa:4096" : "ec:p256"
        let keysBefore = try f.privateKeys()
        let registeredBefore = try f.registeredThumbprints()

        let r = try f.rotate(["--key-type", refused])
        #expect(r.status == 1, "\(r.stdout) \(r.stderr)")
        #expect(r.stderr.contains(implementation == .tpm2 ? "3072 bits, not 4096" : "cannot generate"), "\(r.stderr)")
        #expect(r.stderr.contains("plan was dropped") && r.stderr.contains("--key-type"), "\(r.stderr)")
        #expect(try f.journal() == nil, "the refused plan stays")
        #expect(try f.privateKeys().count == keysBefore.count)
        #expect(try f.registeredThumbprints() == registeredBefore)

        // Killed after making a 2048-bit key, before recording it: the plan is still "planned".
        let killed = try f.rotate(["--key-type", "rsa:2048"], crashAt: "keygen")
        #expect(killed.status == 9, "\(killed.stderr)")
        #expect(try f.journal()?["step"] as? Int == 0)
        #expect(try f.privateKeys().count == keysBefore.count + 1)
        // Another key type replaces that plan: its key goes, one 3072-bit key comes.
        let replaced = try f.rotate(["--key-type", "rsa:3072"])
        #expect(replaced.status == 0, "\(replaced.stderr)")
        #expect(replaced.stderr.contains("replacing the planned rotation"), "\(replaced.stderr)")
        let objects = try f.cli(["objects", "--token", "pkcs11:token=\(f.tokenLabel)", "--pin-file", f.hsm.pinFile])
        #expect(objects.stdout.contains("private key  RSA 3072  label 'app'"), "\(objects.stdout)")
        #expect(try f.privateKeys().count == keysBefore.count + 1, "the old key is kept, retired; the unused 2048-bit key is gone")
        #expect(try f.journal() == nil)
        #expect(try f.token(extra: ["--no-cache"]).result.status == 0)
    }

    /// Token requests by label run all the time while the app is rotated three times: none
    /// fails (the label moves to the new key before the old credential is removed, and a lookup
    /// that catches the label between the two keys looks again).
    ///
    /// SoftHSM only: tpm2-pkcs11 reads its store once per process (at C_Initialize), so a
    /// process that started before the relabel keeps signing with the key the label named then,
    /// and its C_DestroyObject fails with CKR_GENERAL_ERROR while other processes use the store.
    @Test func tokensByLabelKeepWorkingWhileRotating() throws {
        let f = try WorkflowFixture(roles: ["Application.ReadWrite.OwnedBy"])
        let stop = LockedBox(false)
        let failures = LockedBox<[String]>([])
        let attempts = LockedBox(0)
        let done = DispatchSemaphore(value: 0)
        for _ in 0..<2 {
            DispatchQueue.global().async {
                while !stop.get() {
                    let r = try? f.token(extra: ["--no-cache"]).result
                    attempts.set(attempts.get() + 1)
                    if r?.status != 0 { failures.set(failures.get() + [r?.stderr ?? "did not run"]) }
                }
                done.signal()
            }
        }
        for n in 0..<3 {
            let r = try f.rotate(n % 2 == 0 ? ["--delete-old"] : [])
            #expect(r.status == 0, "\(r.stderr)")
        }
        stop.set(true)
        done.wait()
        done.wait()
        #expect(attempts.get() >= 6, "too few token requests overlapped the rotations")
        #expect(failures.get().isEmpty, "\(failures.get().count) of \(attempts.get()) failed: \(failures.get().first ?? "")")
    }

    /// A kill inside the token's key generation (the fault-injecting module destroys the private
    /// key, blanks the public key's label and id, and SIGKILLs the process, which is what SoftHSM
    /// leaves) is cleaned up by the resumed run: no anonymous object stays, one new key is made.
    @Test func halfMadeObjectsOfAnInterruptedKeyGenerationAreRemovedOnResume() throws {
        let f = try WorkflowFixture(roles: ["Application.ReadWrite.OwnedBy"])
        let publicBefore = try f.publicKeys()
        let killed = try f.cli(
            ["rotate", "--key", f.keyURI, "--object-id", f.objectID, "--module", try faultsModulePath] + f.entraFlags,
            environment: ["P11JWT_FAULTS": "quirk=keygen-killed-midway"])
        #expect(killed.status == 9, "\(killed.stderr)")
        let anonymous = try f.publicKeys().filter { $0.label.isEmpty && $0.id.isEmpty }
        #expect(anonymous.count == 1, "the fault did not leave a half-made public key")
        let resumed = try f.rotate()
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(resumed.stderr.contains("half-made"), "\(resumed.stderr)")
        let after = try f.publicKeys()
        #expect(after.filter { $0.label.isEmpty && $0.id.isEmpty }.isEmpty, "\(after)")
        #expect(after.count == publicBefore.count + 1, "\(after)")
        #expect(try f.privateKeys().count == 2)
        #expect(try f.token(extra: ["--no-cache"]).result.status == 0)
    }

    /// `rotate --abandon`: before addKey the new key is destroyed and nothing else changes; after
    /// it nothing is changed and the output names both registered credentials; once the old
    /// credential is removed it is refused (only finishing is safe) and rotate finishes.
    @Test func abandonSaysWhatItLeavesAndOnlyDestroysWhatNothingUses() throws {
        let f = try WorkflowFixture(roles: ["Application.ReadWrite.OwnedBy"])
        let oldThumbprint = try f.thumbprintOnToken(label: "app")
        let keysBefore = try f.privateKeys().count

        #expect(try f.rotate(crashAt: "certificate.recorded").status == 9)
        #expect(try f.privateKeys().count == keysBefore + 1)
        let early = try f.rotate(["--abandon", "--output", "json"])
        #expect(early.status == 0, "\(early.stderr)")
        let earlyReport = try #require(try JSONSerialization.jsonObject(with: Data(early.stdout.utf8)) as? [String: Any])
        #expect((earlyReport["destroyed"] as? [String])?.count == 3, "\(early.stdout)")  // private, public, certificate
        #expect(try f.journal() == nil)
        #expect(try f.privateKeys().count == keysBefore)
        #expect(try f.registeredThumbprints() == [oldThumbprint])
        #expect(try f.token(extra: ["--no-cache"]).result.status == 0)

        #expect(try f.rotate(crashAt: "addKey.recorded").status == 9)
        let late = try f.rotate(["--abandon"])
        #expect(late.status == 0, "\(late.stderr)")
        #expect(late.stdout.contains("stay registered and work"), "\(late.stdout)")
        #expect(late.stdout.contains("p11jwt credential remove --object-id \(f.objectID) --key-id"), "\(late.stdout)")
        #expect(try f.journal() == nil)
        #expect(try f.registeredThumbprints().count == 2)
        #expect(try f.token(extra: ["--no-cache"]).result.status == 0)

        #expect(try f.rotate(crashAt: "removeKey.recorded").status == 9)
        let refused = try f.rotate(["--abandon"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("cannot be abandoned"), "\(refused.stderr)")
        #expect(try f.rotate().status == 0)
        #expect(try f.journal() == nil)
        #expect(try f.token(extra: ["--no-cache"]).result.status == 0)
    }
}
