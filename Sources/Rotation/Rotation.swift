import Entra
import Foundation
import JOSE
import Logging
import PKCS11
import TokenSigning
import SwiftASN1
import X509
#if canImport(Glibc)
import Glibc
#endif

/// Rotates an application's certificate credential to a new key made in the token, safely:
///
/// 1. preflight: the current key and certificate work (a token is acquired with them);
/// 2. a new key pair is generated in the token, and a self-signed certificate for it is made by
///    the token and stored next to it;
/// 3. `addKey`, with the proof signed by the current key;
/// 4. a token is acquired with the **new** key, retried with backoff while Entra replicates;
/// 5. the new key takes the old key's label and the old key is relabelled as retired, so a URI
///    that selects by label moves to the new key while both credentials still work;
/// 6. `removeKey` of the old credential, with the proof signed by the new key;
/// 7. the old key and certificate are destroyed with `deleteOld`, else kept under the retired label.
///
/// A ``RotationJournal`` records each step; a run killed anywhere is resumed by running again.
/// The old credential is never removed before the new one has got a token, and no second new
/// key is ever made.
public struct Rotation: Sendable {
    public struct Options: Sendable {
        /// Default: the current key's type and size.
        public var keySpec: Token.KeySpec?
        public var days = 365
        /// `CN=…` text; default: the current certificate's subject.
        public var subject: String?
        public var displayName: String?
        public var propagationTimeout: TimeInterval = 600
        /// First wait between verification attempts (grows to 30 s).
        public var verifyInterval: TimeInterval = 2
        public var keepOld = false
        public var deleteOld = false
        /// Do nothing unless the current certificate expires within this many seconds.
        public var ifExpiringWithin: TimeInterval?
        public var oldKeyID: String?
        public var dryRun = false
        /// Test hook: the process kills itself (SIGKILL) on reaching this point (see
        /// ``Rotation/crashPoints``), to prove resumption after a real crash.
        public var crashAt: String?

        public init() {}
    }

    /// Where `crashAt` may stop the process: after each change, before and after it is journaled.
    public static let crashPoints = [
        "planned", "keygen", "keygen.recorded", "certificate", "certificate.recorded", "addKey", "addKey.recorded",
        "verified", "relabel", "relabel.recorded", "removeKey", "removeKey.recorded", "retire.old", "retire.recorded",
    ]

    public struct StepReport: Codable, Sendable {
        public var step: String
        public var outcome: String
        public var seconds: Double
    }

    public struct Report: Codable, Sendable {
        /// rotated, notNeeded, planned.
        public var outcome: String
        public var resumed: Bool
        public var objectID: String
        public var steps: [StepReport] = []
        public var newKeyURI: String?
        public var newThumbprint: String?
        public var newKeyId: String?
        public var newNotAfter: Date?
        public var oldThumbprint: String?
        public var oldKeyId: String?
        public var oldRemoved = false
        public var oldDisposition: String?
        /// What the user still has to do (e.g. remove the old credential by hand).
        public var instructions: [String] = []
        public var plan: [String] = []
    }

    public let client: EntraClient
    public let token: Token
    public let target: GraphKeyTarget
    public let objectID: String
    public let journals: RotationJournalStore
    public let records: CredentialRecords
    public let logger: Logger
    /// Progress lines for a terminal.
    public let progress: @Sendable (String) -> Void

    public init(
        client: EntraClient, token: Token, target: GraphKeyTarget, objectID: String, stateDirectory: URL, logger: Logger,
        progress: @escaping @Sendable (String) -> Void = { _ in }
    ) throws {
        guard !target.isServicePrincipal else {
            throw EntraError(
                .invalidParameter, "rotate works on an application's credentials: the token endpoint authenticates the app with those",
                hint: "use add-key / remove-key with --service-principal for service principal credentials")
        }
        self.client = client
        self.token = token
        self.target = target
        self.objectID = try ProofOfPossession.validated(objectID: objectID)
        self.journals = RotationJournalStore(directory: stateDirectory)
        self.records = CredentialRecords(directory: stateDirectory)
        self.logger = logger
        self.progress = progress
    }

    /// Runs or resumes the rotation. `currentSigner` is asked for only when no rotation is in
    /// progress (a resumed run finds both keys by the ids in the journal).
    public func run(options: Options, currentSigner: () throws -> TokenSigner) async throws -> Report {
        // One rotation per app at a time: a second run would plan its own key, and whichever lost
        // would keep resuming a journal whose credential the winner removed.
        let lock = try journals.lock(objectID: objectID)
        defer { lock.release() }
        var report = Report(outcome: "rotated", resumed: false, objectID: objectID)
        var journal: RotationJournal
        var found = try journals.load(objectID: objectID)
        if let planned = found, planned.step == .planned, let given = options.keySpec, given.description != planned.new.keySpec {
            // Nothing has acted on that plan: another key type replaces it (a token that refused
            // the planned key would otherwise be asked for it again on every run).
            progress("replacing the planned rotation (a \(planned.new.keySpec) key, not made) with one for a \(given) key")
            try dropPlan(planned)
            found = nil
        }
        if let existing = found {
            journal = existing
            report.resumed = true
            progress("resuming the rotation of \(objectID) started \(ISO8601DateFormatter().string(from: existing.startedAt)); last step done: \(existing.step)")
            if options.dryRun {
                report.outcome = "planned"
                report.plan = Self.plan(after: existing.step, options: options, journal: existing)
                return report
            }
        } else {
            let current = try currentSigner()
            guard let certificate = current.certificate else {
                throw EntraError(.invalidParameter, "the current key \(current.key.uri) has no certificate", hint: "give --cert, or store the key's certificate on the token")
            }
            report.oldThumbprint = certificate.thumbprint.hexSHA1
            if let window = options.ifExpiringWithin {
                let notAfter = certificate.certificate.notValidAfter
                if notAfter > Date().addingTimeInterval(window) {
                    report.outcome = "notNeeded"
                    progress("certificate \(certificate.thumbprint.hexSHA1) is valid until \(ISO8601DateFormatter().string(from: notAfter)): no rotation needed")
                    return report
                }
            }
            let started = Date()
            progress("preflight: getting a token with the current key \(current.key.uri)")
            _ = try await client.token(scope: client.configuration.graphScope, signer: current, useCache: false)
            let oldKeyID = try await findOldKeyID(options: options, signer: current, thumbprint: certificate.thumbprint.hexSHA1)
            report.steps.append(StepReport(step: "preflight", outcome: "current credential works", seconds: Date().timeIntervalSince(started)))
            journal = try plan(current: current, certificate: certificate, oldKeyID: oldKeyID, options: options)
            if options.dryRun {
                report.outcome = "planned"
                report.plan = Self.plan(after: nil, options: options, journal: journal)
                return report
            }
            try journals.save(journal)
            crash("planned", options)
        }
        report.oldThumbprint = journal.old.thumbprint
        try await proceed(&journal, report: &report, options: options)
        return report
    }

    /// What `abandon` did and what it leaves for the user.
    public struct AbandonReport: Codable, Sendable {
        public var objectID: String
        /// The last step the abandoned rotation had completed.
        public var step: String
        /// Objects destroyed on the token (the new key, when nothing of it can be registered).
        public var destroyed: [String] = []
        /// What stays: objects on the token and credentials on the application, each with what
        /// to do if it is not wanted.
        public var leftBehind: [String] = []
    }

    /// Gives up the rotation in progress and removes its journal. Before `addKey` the new key is
    /// destroyed (nothing registered it); after it, nothing is changed: both keys are registered
    /// and work, and the report says how to remove either. Refused once the old credential was
    /// removed — then only finishing (`run`) leaves the token coherent.
    public func abandon() throws -> AbandonReport {
        let lock = try journals.lock(objectID: objectID)
        defer { lock.release() }
        guard let journal = try journals.load(objectID: objectID) else {
            throw EntraError(.rotation, "no rotation of \(objectID) is in progress (no journal in \(journals.directory.path))")
        }
        guard journal.step < .oldRemoved else {
            throw EntraError(
                .rotation, "the rotation of \(objectID) is past removing the old credential; it cannot be abandoned",
                hint: "run rotate again to finish it: only the old key's label or its destruction is left")
        }
        guard let newID = Hex.decode(journal.new.idHex), !newID.isEmpty else {
            throw EntraError(.stateFile, "the rotation journal names a CKA_ID that is not hex", hint: Self.journalHint(journals, journal))
        }
        var report = AbandonReport(objectID: objectID, step: journal.step.description)
        let newKeyURI = token.objectURI(label: nil, id: newID, objectClass: .privateKey)
        if journal.step < .added {
            var objects = try token.objects(matching: try uri(id: newID))
            if journal.step == .planned, let before = journal.new.anonymousKeysBefore {
                var known = Dictionary(before.map { ($0, 1) }, uniquingKeysWith: +)
                for (object, fingerprint) in try anonymousKeys() {
                    if let count = known[fingerprint], count > 0 { known[fingerprint] = count - 1 } else { objects.append(object) }
                }
            }
            try token.destroy(objects)
            report.destroyed = objects.map { "\($0.objectClass) '\($0.label ?? "")' (CKA_ID \($0.idHex ?? "none"))" }
            if journal.step == .certificateStored, let thumbprint = journal.new.thumbprint {
                report.leftBehind.append(
                    "The run may have sent addKey before it stopped: if the application lists a credential with thumbprint \(thumbprint), remove it with: p11jwt remove-key --object-id \(objectID) --key-id <keyId> (its key is destroyed; the proof is signed by the current key)")
            }
        } else {
            report.leftBehind.append(
                "The new key \(newKeyURI) and its credential \(journal.new.thumbprint ?? "?") (keyId \(journal.new.keyId ?? "unknown")) stay registered and work. If unwanted: p11jwt remove-key --object-id \(objectID) --key-id \(journal.new.keyId ?? "<keyId>"), then p11jwt destroy '\(newKeyURI.replacingOccurrences(of: ";type=private", with: ""))'")
            report.leftBehind.append(
                "The old credential \(journal.old.thumbprint)\(journal.old.keyId.map { " (keyId \($0))" } ?? "") stays registered and works.")
            if journal.step >= .relabelled {
                report.leftBehind.append(
                    "The label '\(journal.new.finalLabel)' already names the new key; the old key is labelled '\(journal.old.retiredLabel ?? "?")'.")
            } else {
                report.leftBehind.append("The label '\(journal.new.finalLabel)' still names the old key; the new key is labelled '\(journal.new.temporaryLabel)'.")
            }
        }
        try journals.remove(objectID: objectID)
        logger.notice("rotation abandoned", metadata: ["objectID": "\(objectID)", "step": "\(journal.step)"])
        return report
    }

    // MARK: - Steps

    private func plan(current: TokenSigner, certificate: JWSCertificate, oldKeyID: String?, options: Options) throws -> RotationJournal {
        guard let oldID = current.key.id, !oldID.isEmpty else {
            throw EntraError(
                .invalidParameter, "the current key \(current.key.uri) has no CKA_ID",
                hint: "rotate finds keys by CKA_ID; give the key one (keys made by p11jwt keygen have one)")
        }
        let spec: Token.KeySpec
        if let given = options.keySpec {
            spec = given
        } else {
            switch current.keyType {
            case .rsa(let bits): spec = .rsa(bits: bits)
            case .ec(let curve): spec = .ec(ECCurve(curve))
            }
        }
        let subject: DistinguishedName = try options.subject.map { try TokenCertificates.distinguishedName($0) } ?? certificate.certificate.subject
        var serializer = DER.Serializer()
        try serializer.serialize(subject)
        let label = current.key.label ?? "p11jwt"
        var rng = SystemRandomNumberGenerator()
        let newID = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let now = Date()
        var journal = RotationJournal(
            objectID: objectID, target: target.path, startedAt: now, updatedAt: now, step: .planned,
            old: .init(label: current.key.label, idHex: Self.hex(oldID), thumbprint: certificate.thumbprint.hexSHA1, keyId: oldKeyID),
            new: .init(
                temporaryLabel: "\(label)-next-\(Self.hex(Array(newID.prefix(3))))", finalLabel: label, idHex: Self.hex(newID),
                keySpec: spec.description, subject: Data(serializer.serializedBytes).base64EncodedString(), days: options.days,
                displayName: options.displayName))
        journal.new.anonymousKeysBefore = try anonymousKeys().map(\.fingerprint)
        return journal
    }

    private func proceed(_ journal: inout RotationJournal, report: inout Report, options: Options) async throws {
        guard let newID = Hex.decode(journal.new.idHex), !newID.isEmpty, let oldID = Hex.decode(journal.old.idHex), !oldID.isEmpty else {
            throw EntraError(.stateFile, "the rotation journal names a CKA_ID that is not hex", hint: Self.journalHint(journals, journal))
        }
        let resumed = report.resumed
        var instructions: [String] = []
        defer { report.instructions += instructions }

        // 2a. The new key pair, in the token.
        if journal.step < .keyGenerated {
            try await timed("keygen", &report) {
                if let existing = try key(id: newID) {
                    progress("new key already in the token (interrupted run): \(existing.uri)")
                } else {
                    if resumed { try removeHalfMadeObjects(journal, newID: newID) }
                    progress("generating a \(journal.new.keySpec) key pair in the token")
                    do {
                        _ = try token.generateKeyPair(try Token.KeySpec(journal.new.keySpec), label: journal.new.temporaryLabel, id: newID)
                    } catch var error as PKCS11Error where journal.step == .planned && Self.refusesTheKey(error) {
                        // The token will not make this key: the plan had no effect, so it goes.
                        try? dropPlan(journal)
                        error.hint = (error.hint.map { $0 + ". " } ?? "")
                            + "Nothing was changed (the rotation plan was dropped): run rotate again with another --key-type"
                        throw error
                    }
                }
                crash("keygen", options)
                journal.step = .keyGenerated
                try journals.save(journal)
                crash("keygen.recorded", options)
                return "key generated"
            }
        }
        guard let newKey = try key(id: newID) else {
            throw EntraError(.rotation, "the new key (CKA_ID \(journal.new.idHex)) recorded in the journal is not on the token", hint: Self.journalHint(journals, journal))
        }

        // 2b. Its self-signed certificate, made by the token, stored next to it.
        let newCertificate: JWSCertificate
        if journal.step < .certificateStored {
            newCertificate = try await timedValue("certificate", &report) {
                let certificate: JWSCertificate
                if let stored = try token.certificates(matching: try uri(id: newID, type: .certificate)).first {
                    certificate = try JWSCertificate(der: stored.der)
                } else {
                    progress("making a self-signed certificate for it, signed in the token")
                    let subject = try DistinguishedName(derEncoded: Array(Data(base64Encoded: journal.new.subject) ?? Data()))
                    certificate = try TokenCertificates.selfSigned(
                        signer: try TokenSigner(token: token, key: newKey, certificateChain: []), subject: subject, days: journal.new.days)
                    _ = try token.storeCertificate(der: certificate.der, label: journal.new.temporaryLabel, id: newID)
                }
                crash("certificate", options)
                journal.new.thumbprint = certificate.thumbprint.hexSHA1
                journal.new.certificate = Data(certificate.der).base64EncodedString()
                journal.step = .certificateStored
                try journals.save(journal)
                crash("certificate.recorded", options)
                return (certificate, "certificate \(certificate.thumbprint.hexSHA1)")
            }
        } else {
            newCertificate = try JWSCertificate(der: Array(Data(base64Encoded: journal.new.certificate ?? "") ?? Data()))
        }
        let newSigner = try TokenSigner(token: token, key: newKey, certificateChain: [newCertificate])
        report.newThumbprint = newCertificate.thumbprint.hexSHA1
        report.newNotAfter = newCertificate.certificate.notValidAfter

        // 3. addKey, proven by the current key.
        if journal.step < .added {
            try await timed("addKey", &report) {
                let oldSigner = try signer(id: oldID, what: "current")
                progress("addKey: registering certificate \(newCertificate.thumbprint.hexSHA1) (proof signed by the current key)")
                var keyID: String?
                do {
                    let added = try await client.addKey(
                        target, objectID: objectID, certificateDER: newCertificate.der, displayName: journal.new.displayName, signer: oldSigner)
                    keyID = added.keyId
                } catch let error as EntraError where error.code == .graphRefused && error.httpStatus == 400 && resumed {
                    // The interrupted run may have sent it: then the certificate is already there.
                    keyID = try await confirmAlreadyAdded(newCertificate, signer: oldSigner, newSigner: newSigner, refusal: error)
                }
                crash("addKey", options)
                journal.new.keyId = keyID
                journal.step = .added
                try journals.save(journal)
                if let keyID { try records.record(objectID: objectID, thumbprint: newCertificate.thumbprint.hexSHA1, keyID: keyID, displayName: journal.new.displayName) }
                crash("addKey.recorded", options)
                return "keyId \(keyID ?? "(not reported)")"
            }
        }
        report.newKeyId = journal.new.keyId

        // 4. The new key gets a token (Entra replicates new credentials with a delay).
        if journal.step < .verified {
            try await timed("verify", &report) {
                let attempts = try await verify(newSigner, options: options, journal: journal)
                journal.step = .verified
                try journals.save(journal)
                crash("verified", options)
                return "token acquired with the new key (attempt \(attempts))"
            }
        }

        // 5. The label moves to the new key, while both credentials work: first the new key takes
        //    it, then the old key is relabelled as retired.
        if journal.step < .relabelled {
            try await timed("relabel", &report) {
                let retiredLabel = journal.old.retiredLabel ?? "\(journal.old.label ?? "p11jwt")-retired-\(Self.dateStamp(Date()))"
                journal.old.retiredLabel = retiredLabel
                try moveLabel(journal, newID: newID, oldID: oldID)
                journal.oldDisposition = "kept as '\(retiredLabel)'"
                crash("relabel", options)
                journal.step = .relabelled
                try journals.save(journal)
                crash("relabel.recorded", options)
                return "new key labelled '\(journal.new.finalLabel)'; old key labelled '\(retiredLabel)'"
            }
        }

        // 6. removeKey of the old credential, proven by the new key.
        if journal.step < .oldRemoved {
            try await timed("removeKey", &report) {
                let outcome: String
                if options.keepOld {
                    outcome = "kept (--keep-old)"
                } else if let oldKeyID = journal.old.keyId {
                    progress("removeKey: removing the old credential \(oldKeyID) (proof signed by the new key)")
                    do {
                        try await client.removeKey(target, objectID: objectID, keyID: oldKeyID, signer: newSigner)
                    } catch let error as EntraError where error.code == .graphRefused && error.httpStatus == 404 && resumed {
                        progress("the old credential was already removed (interrupted run)")
                    }
                    crash("removeKey", options)
                    journal.oldRemoved = true
                    try? records.forget(objectID: objectID, keyID: oldKeyID)
                    try? client.forgetToken(scope: client.configuration.graphScope, thumbprint: journal.old.thumbprint)
                    outcome = "removed \(oldKeyID)"
                } else {
                    outcome = "not removed: its keyId is unknown"
                    instructions.append(
                        "The old credential (certificate \(journal.old.thumbprint)) is still registered. Find its keyId in the portal (App registrations → Certificates & secrets) or with GET /v1.0/applications/\(objectID)?$select=keyCredentials, then run: p11jwt remove-key --object-id \(objectID) --key '\(token.objectURI(label: journal.new.finalLabel, id: newID, objectClass: .privateKey))' --key-id <keyId>")
                }
                journal.step = .oldRemoved
                try journals.save(journal)
                crash("removeKey.recorded", options)
                return outcome
            }
        }
        report.oldKeyId = journal.old.keyId
        report.oldRemoved = journal.oldRemoved

        // 7. The old key is destroyed (--delete-old, once its credential is gone) or kept retired.
        if journal.step < .retired {
            try await timed("retire", &report) {
                // Journals written before the label moved ahead of removeKey reach here unmoved.
                try moveLabel(journal, newID: newID, oldID: oldID)
                let oldObjects = try token.objects(matching: try uri(id: oldID))
                let disposition: String
                if options.deleteOld && journal.oldRemoved {
                    try token.destroy(oldObjects)
                    disposition = "destroyed"
                } else if oldObjects.isEmpty {
                    disposition = journal.oldDisposition ?? "already retired"
                } else {
                    disposition = "kept as '\(journal.old.retiredLabel ?? "")'"
                    if options.deleteOld {
                        instructions.append("The old key was not destroyed: its credential is still registered on the application.")
                    }
                }
                journal.oldDisposition = disposition
                crash("retire.old", options)
                journal.step = .retired
                try journals.save(journal)
                crash("retire.recorded", options)
                return "old key \(disposition); new key labelled '\(journal.new.finalLabel)'"
            }
        }
        report.oldDisposition = journal.oldDisposition
        report.newKeyURI = token.objectURI(label: journal.new.finalLabel, id: nil, objectClass: .privateKey)
        try journals.remove(objectID: objectID)
        progress("done: the application now uses certificate \(newCertificate.thumbprint.hexSHA1) (key \(report.newKeyURI ?? ""))")
    }

    /// Acquires tokens with the new key until Entra accepts it or the propagation timeout passes.
    /// Returns the attempt that got the token.
    private func verify(_ newSigner: TokenSigner, options: Options, journal: RotationJournal) async throws -> Int {
        let deadline = Date().addingTimeInterval(options.propagationTimeout)
        var wait = options.verifyInterval
        var attempt = 1
        while true {
            do {
                progress("verify: getting a token with the new key (attempt \(attempt))")
                _ = try await client.token(scope: client.configuration.graphScope, signer: newSigner, useCache: false)
                return attempt
            } catch let error as EntraError where error.code == .tokenRefused && error.aadsts == 700027 {
                guard Date().addingTimeInterval(wait) < deadline else {
                    throw EntraError(
                        .rotation,
                        "the new certificate \(journal.new.thumbprint ?? "") was added but Entra still refuses it after \(Int(options.propagationTimeout))s (AADSTS700027)",
                        hint: "the old credential is untouched and still works; run 'p11jwt rotate' again later to resume, or raise --propagation-timeout")
                }
                progress("the new key is not accepted yet (Entra replication, AADSTS700027); retrying in \(Int(wait.rounded()))s")
                try await Task.sleep(for: .seconds(wait))
                wait = min(wait * 1.5, 30)
                attempt += 1
            }
        }
    }

    /// After a 400 to addKey on a resumed run: was the certificate added by the interrupted run?
    private func confirmAlreadyAdded(_ certificate: JWSCertificate, signer: TokenSigner, newSigner: TokenSigner, refusal: EntraError) async throws -> String? {
        if let credentials = try? await client.keyCredentials(target, signer: signer),
           let found = credentials.first(where: { $0.thumbprintHex == certificate.thumbprint.hexSHA1 }) {
            progress("the interrupted run had already added the certificate (keyId \(found.keyId ?? "?"))")
            return found.keyId
        }
        if (try? await client.token(scope: client.configuration.graphScope, signer: newSigner, useCache: false)) != nil {
            progress("the interrupted run had already added the certificate (the new key gets tokens)")
            return nil
        }
        throw EntraError(
            .rotation, "addKey was refused (\(refusal.message)); the interrupted run may have added the certificate and Entra not replicated it yet",
            hint: "run 'p11jwt rotate' again in a few minutes to resume; the old credential is untouched")
    }

    private func findOldKeyID(options: Options, signer: TokenSigner, thumbprint: String) async throws -> String? {
        if let given = options.oldKeyID {
            return try EntraValue.guid(given, what: "old key id", hint: "give --old-key-id as the keyId GUID of the current credential")
        }
        if let recorded = try records.keyID(objectID: objectID, thumbprint: thumbprint) { return recorded }
        do {
            let credentials = try await client.keyCredentials(target, signer: signer)
            if let found = credentials.first(where: { $0.thumbprintHex == thumbprint })?.keyId { return found }
        } catch let error as EntraError where error.code == .graphRefused {
            logger.info("cannot read the application's key credentials", metadata: ["reason": "\(error.message)"])
        }
        progress("the current credential's keyId is unknown (no --old-key-id, no record, no Graph read permission): the old credential will be left for you to remove")
        return nil
    }

    // MARK: - Helpers

    /// Gives the new key's objects the final label, then the old key's the retired label (each
    /// only if needed, so a resumed run repeats nothing). Between the two writes both keys carry
    /// the label; both credentials work then, and a lookup by label that finds two keys tries again.
    private func moveLabel(_ journal: RotationJournal, newID: [UInt8], oldID: [UInt8]) throws {
        let newObjects = try token.objects(matching: try uri(id: newID))
        if newObjects.contains(where: { $0.label != journal.new.finalLabel }) {
            progress("the new key takes the label '\(journal.new.finalLabel)'")
            try token.relabel(newObjects, to: journal.new.finalLabel)
        }
        let retiredLabel = journal.old.retiredLabel ?? "\(journal.old.label ?? "p11jwt")-retired-\(Self.dateStamp(journal.startedAt))"
        let oldObjects = try token.objects(matching: try uri(id: oldID))
        if oldObjects.contains(where: { $0.label != retiredLabel }) { try token.relabel(oldObjects, to: retiredLabel) }
    }

    /// Key objects with neither a label nor a `CKA_ID`, with a fingerprint of their key
    /// material (the same for objects that have none).
    private func anonymousKeys() throws -> [(object: ObjectIdentity, fingerprint: String)] {
        let privateKeys = try token.privateKeys().filter { ($0.label ?? "").isEmpty && ($0.id ?? []).isEmpty }
            .map { ($0.identity, "private:" + Self.fingerprint($0.publicKey)) }
        let publicKeys = try token.publicKeys().filter { ($0.identity.label ?? "").isEmpty && ($0.identity.id ?? []).isEmpty }
            .map { ($0.identity, "public:" + Self.fingerprint($0.publicKey)) }
        return (privateKeys + publicKeys).map { (object: $0.0, fingerprint: $0.1) }
    }

    static func fingerprint(_ key: PublicKey?) -> String {
        switch key {
        case .rsa(let modulus, _)?: return "rsa:" + Hex.encode(Array(JWSAlgorithm.Hash.sha256.hash(modulus).prefix(8)))
        case .ec(_, let point)?: return "ec:" + Hex.encode(Array(JWSAlgorithm.Hash.sha256.hash(point).prefix(8)))
        case nil: return "none"
        }
    }

    /// Drops a plan nothing has acted on (step `planned`): what a killed key generation left
    /// on the token, then the journal.
    private func dropPlan(_ journal: RotationJournal) throws {
        guard journal.step == .planned, let newID = Hex.decode(journal.new.idHex), !newID.isEmpty else {
            throw EntraError(.stateFile, "the rotation journal names a CKA_ID that is not hex", hint: Self.journalHint(journals, journal))
        }
        try removeHalfMadeObjects(journal, newID: newID)
        try journals.remove(objectID: objectID)
    }

    /// A token's refusal of the key asked for (type, size, curve, template), as opposed to a
    /// failure worth resuming after (a removed token, a dropped session).
    static func refusesTheKey(_ error: PKCS11Error) -> Bool {
        if [.mechanismUnsupported, .moduleAnswerInvalid, .invalidArgument].contains(error.code) { return true }
        let refusals: Set<String> = [
            "CKR_ATTRIBUTE_VALUE_INVALID", "CKR_TEMPLATE_INCONSISTENT", "CKR_TEMPLATE_INCOMPLETE", "CKR_KEY_SIZE_RANGE",
            "CKR_MECHANISM_INVALID", "CKR_MECHANISM_PARAM_INVALID", "CKR_DOMAIN_PARAMS_INVALID", "CKR_CURVE_NOT_SUPPORTED",
        ]
        return error.returnValue.map { refusals.contains($0.name) } ?? false
    }

    /// Before generating the key again after an interrupted generation: destroys what the token
    /// kept of the interrupted one — objects with the new key's `CKA_ID`, and key objects with
    /// neither label nor id that were not on the token when the rotation was planned.
    private func removeHalfMadeObjects(_ journal: RotationJournal, newID: [UInt8]) throws {
        var leftovers = try token.objects(matching: try uri(id: newID))
        if let before = journal.new.anonymousKeysBefore {
            var known = Dictionary(before.map { ($0, 1) }, uniquingKeysWith: +)
            for (object, fingerprint) in try anonymousKeys() {
                if let count = known[fingerprint], count > 0 {
                    known[fingerprint] = count - 1
                } else {
                    leftovers.append(object)
                }
            }
        }
        guard !leftovers.isEmpty else { return }
        progress("removing \(leftovers.count) half-made object(s) the interrupted key generation left on the token")
        logger.notice("destroying objects left by an interrupted key generation", metadata: ["count": "\(leftovers.count)"])
        try token.destroy(leftovers)
    }

    private func key(id: [UInt8]) throws -> PrivateKeyObject? {
        try token.privateKeys(matching: try uri(id: id, type: .privateKey)).first
    }

    private func signer(id: [UInt8], what: String) throws -> TokenSigner {
        guard let key = try key(id: id) else {
            throw EntraError(.rotation, "the \(what) key (CKA_ID \(Self.hex(id))) is not on the token any more", hint: "check the token; the journal is in \(journals.directory.path)")
        }
        return try TokenSigner(token: token, key: key)
    }

    private func uri(id: [UInt8], type: ObjectClass? = nil) throws -> PKCS11URI {
        try PKCS11URI(PKCS11URI.format(token: token.info, id: id, objectClass: type))
    }

    private func crash(_ point: String, _ options: Options) {
        guard options.crashAt == point else { return }
        logger.warning("test hook: killing the process at \(point)")
        kill(getpid(), SIGKILL)
    }

    private func timed(_ step: String, _ report: inout Report, _ body: () async throws -> String) async throws {
        let started = Date()
        let outcome = try await body()
        report.steps.append(StepReport(step: step, outcome: outcome, seconds: Date().timeIntervalSince(started)))
    }

    private func timedValue<T>(_ step: String, _ report: inout Report, _ body: () async throws -> (T, String)) async throws -> T {
        let started = Date()
        let (value, outcome) = try await body()
        report.steps.append(StepReport(step: step, outcome: outcome, seconds: Date().timeIntervalSince(started)))
        return value
    }

    static func plan(after step: RotationJournal.Step?, options: Options, journal: RotationJournal) -> [String] {
        var lines: [String] = []
        let done = step ?? .planned
        if step == nil { lines.append("preflight: the current key gets a token (done)") }
        if done < .keyGenerated { lines.append("generate a \(journal.new.keySpec) key pair in the token, labelled '\(journal.new.temporaryLabel)', CKA_ID \(journal.new.idHex)") }
        if done < .certificateStored { lines.append("make a self-signed certificate valid \(journal.new.days) days, signed in the token, and store it") }
        if done < .added { lines.append("addKey on \(journal.target), proof signed by the current key") }
        if done < .verified { lines.append("get a token with the new key, retrying up to \(Int(options.propagationTimeout))s while Entra replicates") }
        if done < .relabelled {
            lines.append("give the new key the label '\(journal.new.finalLabel)' and relabel the old key as retired")
        }
        if done < .oldRemoved {
            lines.append(options.keepOld ? "keep the old credential (--keep-old)"
                : journal.old.keyId.map { "removeKey \($0) (the old credential), proof signed by the new key" } ?? "leave the old credential (keyId unknown) and say how to remove it")
        }
        if done < .retired {
            lines.append(options.deleteOld ? "destroy the old key" : "keep the old key under its retired label")
        }
        return lines
    }

    static func journalHint(_ store: RotationJournalStore, _ journal: RotationJournal) -> String {
        "the journal is \(store.directory.path)/rotate-\(journal.objectID).json; the old credential \(journal.old.thumbprint) is \(journal.oldRemoved ? "removed" : "still registered")"
    }

    static func hex(_ bytes: [UInt8]) -> String { Hex.encode(bytes) }

    static func dateStamp(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss"
        return formatter.string(from: date)
    }
}
