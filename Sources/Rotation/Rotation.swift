import Entra
import Foundation
import JOSE
import Logging
import PKCS11
import TokenSigning
import SwiftASN1
import Diagnostics
import X509

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
        /// The token's objects as the caller read them shortly before (a fleet reads them once
        /// for all its apps). A run that is not resumed takes the old key's objects and the keys
        /// without label or id from it instead of searching the token.
        public var inventory: TokenInventory?
        /// Called at each point of ``Rotation/checkpoints`` as the run passes it: after each
        /// change, before and after it is journaled. Tests stop the process there to prove that
        /// a run killed anywhere resumes.
        public var checkpoint: (@Sendable (String) -> Void)?

        public init() {}
    }

    /// The points ``Options/checkpoint`` is called at: after each change, before and after it is journaled.
    public static let checkpoints = [
        "planned", "keygen", "keygen.recorded", "certificate", "certificate.recorded", "addKey", "addKey.recorded",
        "verified", "relabel", "relabel.recorded", "removeKey", "removeKey.recorded", "retire.old", "retire.recorded",
    ]

    /// One step of a run: its name, what it did (``outcome``, for people) and the facts a
    /// program reads (attempts, keyId, disposition), and how long it took.
    public struct StepReport: Codable, Sendable {
        public var step: String
        public var outcome: String
        public var seconds: Double
        /// Token requests the verify step made until Entra accepted the new key.
        public var attempts: Int?
        /// The credential's keyId (addKey: the new one; removeKey: the old one).
        public var keyId: String?
        /// removeKey: removed, kept, notRemoved; retire: what became of the old key.
        public var disposition: String?

        /// What a step function returns.
        public struct Result: Sendable {
            var summary: String
            var attempts: Int?
            var keyId: String?
            var disposition: String?
        }

        init(step: String, result: Result, seconds: Double) {
            self.step = step
            outcome = result.summary
            self.seconds = (seconds * 1000).rounded() / 1000
            attempts = result.attempts
            keyId = result.keyId
            disposition = result.disposition
        }
    }

    /// Something left for the user to do, in the rotation's terms; a front end says how (the
    /// CLI prints the command).
    public enum Action: Codable, Sendable, Hashable {
        /// Remove a credential from the object, with a proof signed by `signingKey` (a key URI).
        case removeCredential(objectID: String, keyID: String?, signingKey: String?)
        /// Destroy a key and its certificate on the token (an object URI without a type).
        case destroyObjects(uri: String)
    }

    /// How a run ended.
    public enum Outcome: String, Codable, Sendable {
        /// The application now uses the new key.
        case rotated
        /// The current certificate does not expire within the window: nothing done.
        case notNeeded
        /// A dry run: ``Report/plan`` says what a run would do.
        case planned
    }

    public struct Report: Codable, Sendable {
        public var outcome: Outcome
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
        /// The same as actions a front end can spell out.
        public var actions: [Action] = []
        /// A dry run's steps still to do, in order.
        public var plan: [PlannedStep] = []

        /// JSON names: identifiers written as words (`objectId`, `keyId`, `Uri`), as Graph does.
        enum CodingKeys: String, CodingKey {
            case outcome, resumed, objectID = "objectId", steps, newKeyURI = "newKeyUri", newThumbprint, newKeyId, newNotAfter
            case oldThumbprint, oldKeyId, oldRemoved, oldDisposition, instructions, actions, plan
        }
    }

    /// One step a dry run would do: the journal step it completes, and what it does.
    public struct PlannedStep: Codable, Sendable, Equatable {
        public var step: String
        public var action: String
        /// Already done (a resumed run's preflight).
        public var done: Bool = false
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
            throw RotationError(
                .invalidRequest, "rotation works on an application's credentials: the token endpoint authenticates the app with those",
                hint: "add and remove a service principal's key credentials one by one")
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
    public func run(options: Options, currentSigner: @escaping @Sendable () throws -> TokenSigner) async throws -> Report {
        // One rotation per app at a time: a second run would plan its own key, and whichever lost
        // would keep resuming a journal whose credential the winner removed.
        let lock = try journals.lock(objectID: objectID)
        defer { lock.release() }
        var report = Report(outcome: .rotated, resumed: false, objectID: objectID)
        var journal: RotationJournal
        var currentSignerFound: TokenSigner?
        var found = try journals.load(objectID: objectID)
        if let planned = found, planned.step == .planned, let given = options.keySpec, given.description != planned.new.keySpec {
            // Nothing has acted on that plan: another key type replaces it (a token that refused
            // the planned key would otherwise be asked for it again on every run).
            progress("replacing the planned rotation (a \(planned.new.keySpec) key, not made) with one for a \(given) key")
            try await onToken { try dropPlan(planned) }
            found = nil
        }
        if let existing = found {
            journal = existing
            report.resumed = true
            progress("resuming the rotation of \(objectID) started \(ISO8601DateFormatter().string(from: existing.startedAt)); last step done: \(existing.step)")
            if options.dryRun {
                report.outcome = .planned
                report.plan = Self.plan(after: existing.step, options: options, journal: existing)
                return report
            }
        } else {
            let current = try await onToken(currentSigner)
            currentSignerFound = current
            guard let certificate = current.certificate else {
                throw RotationError(.currentKeyUnusable, "the current key \(current.key.uri) has no certificate",
                                    hint: "give its certificate, or store it on the token with the key's CKA_ID", settings: ["cert"])
            }
            report.oldThumbprint = certificate.thumbprint.hexSHA1
            if let window = options.ifExpiringWithin {
                let notAfter = certificate.certificate.notValidAfter
                if notAfter > Date().addingTimeInterval(window) {
                    report.outcome = .notNeeded
                    progress("certificate \(certificate.thumbprint.hexSHA1) is valid until \(ISO8601DateFormatter().string(from: notAfter)): no rotation needed")
                    return report
                }
            }
            let started = Date()
            progress("preflight: getting a token with the current key \(current.key.uri)")
            _ = try await client.token(scope: client.configuration.graphScope, signer: current, useCache: false)
            let oldKeyID = try await findOldKeyID(options: options, signer: current, thumbprint: certificate.thumbprint.hexSHA1)
            report.steps.append(StepReport(step: "preflight", result: .init(summary: "current credential works"), seconds: Date().timeIntervalSince(started)))
            let planOptions = options
            journal = try await onToken { try plan(current: current, certificate: certificate, oldKeyID: oldKeyID, options: planOptions) }
            if options.dryRun {
                report.outcome = .planned
                report.plan = Self.plan(after: nil, options: options, journal: journal)
                return report
            }
            try journals.save(journal)
            checkpoint("planned", options)
        }
        report.oldThumbprint = journal.old.thumbprint
        try await proceed(&journal, report: &report, options: options, currentSigner: report.resumed ? nil : currentSignerFound)
        return report
    }

    /// What `abandon` did and what it leaves for the user.
    public struct AbandonReport: Codable, Sendable {
        enum CodingKeys: String, CodingKey { case objectID = "objectId", step, destroyed, leftBehind, actions }

        public var objectID: String
        /// The last step the abandoned rotation had completed.
        public var step: String
        /// Objects destroyed on the token (the new key, when nothing of it can be registered).
        public var destroyed: [String] = []
        /// What stays: objects on the token and credentials on the application, each with what
        /// to do if it is not wanted.
        public var leftBehind: [String] = []
        /// What to do about them, if unwanted.
        public var actions: [Action] = []
    }

    /// Gives up the rotation in progress and removes its journal. Before `addKey` the new key is
    /// destroyed (nothing registered it); after it, nothing is changed: both keys are registered
    /// and work, and the report says how to remove either. Refused once the old credential was
    /// removed — then only finishing (`run`) leaves the token coherent.
    public func abandon() throws -> AbandonReport {
        let lock = try journals.lock(objectID: objectID)
        defer { lock.release() }
        guard let journal = try journals.load(objectID: objectID) else {
            throw RotationError(.notInProgress, "no rotation of \(objectID) is in progress (no journal in \(journals.directory.path))")
        }
        guard journal.step < .oldRemoved else {
            throw RotationError(
                .cannotAbandon, "the rotation of \(objectID) is past removing the old credential; it cannot be abandoned",
                hint: "run rotate again to finish it: only the old key's label or its destruction is left")
        }
        guard let newID = Hex.decode(journal.new.idHex), !newID.isEmpty else {
            throw RotationError(.journal, "the rotation journal names a CKA_ID that is not hex", hint: Self.journalHint(journals, journal))
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
                    "The run may have sent addKey before it stopped: if the application lists a credential with thumbprint \(thumbprint), remove it (its key is destroyed; sign the proof with the current key)")
                report.actions.append(.removeCredential(objectID: objectID, keyID: nil, signingKey: nil))
            }
        } else {
            report.leftBehind.append(
                "The new key \(newKeyURI) and its credential \(journal.new.thumbprint ?? "?") (keyId \(journal.new.keyId ?? "unknown")) stay registered and work. If unwanted: remove the credential, then destroy the key.")
            report.actions.append(.removeCredential(objectID: objectID, keyID: journal.new.keyId, signingKey: nil))
            report.actions.append(.destroyObjects(uri: newKeyURI.replacingOccurrences(of: ";type=private", with: "")))
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
            throw RotationError(
                .currentKeyUnusable, "the current key \(current.key.uri) has no CKA_ID",
                hint: "rotation finds keys by CKA_ID; give the key one (keys generated here have one)")
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
        journal.new.anonymousKeysBefore = try anonymousKeys(in: options.inventory).map(\.fingerprint)
        return journal
    }

    /// The state one run carries from step to step: the journal (saved after each step), the
    /// report and what the steps learnt. What this run found or made on the token is kept, so
    /// a run that was not interrupted searches the token as little as it can (a search costs
    /// time in proportion to the objects on the token, and a fleet shares one token); a resumed
    /// run finds everything again by the journal's ids.
    struct Run {
        var journal: RotationJournal
        var report: Report
        let options: Options
        let newID: [UInt8]
        let oldID: [UInt8]
        var newCertificate: JWSCertificate?
        var newSigner: TokenSigner?
        var instructions: [String] = []
        /// The current key's signer, when this run found it (not resumed).
        var currentSigner: TokenSigner?
        /// The new key, when this run generated it.
        var newKey: PrivateKeyObject?
        /// The new key's objects (private, public, certificate), when this run made them all.
        var newObjects: [ObjectIdentity]?
        /// The old key's objects, when this run moved the labels (step 5).
        var oldObjects: [ObjectIdentity]?
    }

    private func proceed(_ journal: inout RotationJournal, report: inout Report, options: Options, currentSigner: TokenSigner?) async throws {
        guard let newID = Hex.decode(journal.new.idHex), !newID.isEmpty, let oldID = Hex.decode(journal.old.idHex), !oldID.isEmpty else {
            throw RotationError(.journal, "the rotation journal names a CKA_ID that is not hex", hint: Self.journalHint(journals, journal))
        }
        var run = Run(journal: journal, report: report, options: options, newID: newID, oldID: oldID)
        run.currentSigner = currentSigner
        defer {
            journal = run.journal
            report = run.report
            report.instructions += run.instructions
        }
        // One function per journal step; each is skipped once the journal records it.
        let steps: [(RotationJournal.Step, String, (inout Run) async throws -> StepReport.Result)] = [
            (.keyGenerated, "keygen", generateKey),
            (.certificateStored, "certificate", makeCertificate),
            (.added, "addKey", addKey),
            (.verified, "verify", verifyNewKey),
            (.relabelled, "relabel", moveLabel),
            (.oldRemoved, "removeKey", removeOldCredential),
            (.retired, "retire", retireOldKey),
        ]
        for (step, name, body) in steps {
            if run.journal.step < step {
                let started = Date()
                let result = try await body(&run)
                run.report.steps.append(StepReport(step: name, result: result, seconds: Date().timeIntervalSince(started)))
            } else if step == .certificateStored {
                try await loadNewSigner(&run)
            }
            switch step {
            case .certificateStored:
                run.report.newThumbprint = run.newCertificate?.thumbprint.hexSHA1
                run.report.newNotAfter = run.newCertificate?.certificate.notValidAfter
            case .added:
                run.report.newKeyId = run.journal.new.keyId
            case .oldRemoved:
                run.report.oldKeyId = run.journal.old.keyId
                run.report.oldRemoved = run.journal.oldRemoved
            default:
                break
            }
        }
        run.report.oldDisposition = run.journal.oldDisposition
        run.report.newKeyURI = token.objectURI(label: run.journal.new.finalLabel, id: nil, objectClass: .privateKey)
        try journals.remove(objectID: objectID)
        progress("done: the application now uses certificate \(run.newCertificate?.thumbprint.hexSHA1 ?? "?") (key \(run.report.newKeyURI ?? ""))")
    }

    /// Records `step` as done: the checkpoint before, the journal write, the checkpoint after.
    private func record(_ step: RotationJournal.Step, _ point: String, _ run: inout Run) throws {
        checkpoint(point, run.options)
        run.journal.step = step
        try journals.save(run.journal)
        checkpoint(point + ".recorded", run.options)
    }

    /// 2a. The new key pair, in the token.
    private func generateKey(_ run: inout Run) async throws -> StepReport.Result {
        let (newID, journal, resumed) = (run.newID, run.journal, run.report.resumed)
        // Only an interrupted run can have made it already.
        let existing = resumed ? try await onToken { try key(id: newID) } : nil
        if let existing {
            progress("new key already in the token (interrupted run): \(existing.uri)")
        } else {
            if resumed { try await onToken { try removeHalfMadeObjects(journal, newID: newID) } }
            progress("generating a \(journal.new.keySpec) key pair in the token")
            do {
                let spec = try Token.KeySpec(journal.new.keySpec)
                let pair = try await token.run { try $0.generateKeyPairObjects(spec, label: journal.new.temporaryLabel, id: newID, freshID: !resumed) }
                run.newKey = pair.privateKey
                run.newObjects = [pair.privateKey.identity, pair.publicKey]
            } catch var error as PKCS11Error where journal.step == .planned && Self.refusesTheKey(error) {
                // The token will not make this key: the plan had no effect, so it goes.
                try? await onToken { try dropPlan(journal) }
                error.hint = (error.hint.map { $0 + ". " } ?? "")
                    + "Nothing was changed (the rotation plan was dropped): rotate again with another key type"
                error.settings.append("key-type")
                throw error
            }
        }
        try record(.keyGenerated, "keygen", &run)
        return .init(summary: "key generated")
    }

    /// 2b. Its self-signed certificate, made by the token, stored next to it.
    private func makeCertificate(_ run: inout Run) async throws -> StepReport.Result {
        let (newID, journal) = (run.newID, run.journal)
        let newKey = try await run.newKey.asyncOr { try await requireNewKey(run) }
        // A certificate already stored for the new key: only after an interruption.
        let stored = run.report.resumed ? try await onToken { try token.certificates(matching: try uri(id: newID, type: .certificate)).first } : nil
        let certificate: JWSCertificate
        if let stored {
            run.newObjects = nil
            certificate = try JWSCertificate(der: stored.der)
        } else {
            progress("making a self-signed certificate for it, signed in the token")
            let subject = try DistinguishedName(derEncoded: Array(Data(base64Encoded: journal.new.subject) ?? Data()))
            let signer = try await TokenSigner.make(token: token, key: newKey, certificateChain: [])
            certificate = try await TokenCertificates.selfSigned(signer: signer, subject: subject, days: journal.new.days)
            let stored = try await token.run { try $0.storeCertificate(der: certificate.der, label: journal.new.temporaryLabel, id: newID) }
            run.newObjects?.append(stored.identity)
        }
        run.journal.new.thumbprint = certificate.thumbprint.hexSHA1
        run.journal.new.certificate = Data(certificate.der).base64EncodedString()
        try record(.certificateStored, "certificate", &run)
        run.newCertificate = certificate
        run.newSigner = try await TokenSigner.make(token: token, key: newKey, certificateChain: [certificate])
        return .init(summary: "certificate \(certificate.thumbprint.hexSHA1)")
    }

    /// The new key's signer from what the journal recorded (a resumed run past 2b).
    private func loadNewSigner(_ run: inout Run) async throws {
        let certificate = try JWSCertificate(der: Array(Data(base64Encoded: run.journal.new.certificate ?? "") ?? Data()))
        let newKey = try await requireNewKey(run)
        run.newCertificate = certificate
        run.newSigner = try await TokenSigner.make(token: token, key: newKey, certificateChain: [certificate])
    }

    private func requireNewKey(_ run: Run) async throws -> PrivateKeyObject {
        let newID = run.newID
        guard let newKey = try await onToken({ try key(id: newID) }) else {
            throw RotationError(
                .keyMissing, "the new key (CKA_ID \(run.journal.new.idHex)) recorded in the journal is not on the token",
                hint: Self.journalHint(journals, run.journal))
        }
        return newKey
    }

    /// 3. addKey, proven by the current key.
    private func addKey(_ run: inout Run) async throws -> StepReport.Result {
        guard let certificate = run.newCertificate, let newSigner = run.newSigner else { throw Self.stepOrder() }
        let oldID = run.oldID
        let oldSigner = try await run.currentSigner.asyncOr { try await onToken { try signer(id: oldID, what: "current") } }
        progress("addKey: registering certificate \(certificate.thumbprint.hexSHA1) (proof signed by the current key)")
        var keyID: String?
        do {
            let added = try await client.addKey(
                target, objectID: objectID, certificateDER: certificate.der, displayName: run.journal.new.displayName, signer: oldSigner)
            keyID = added.keyId
        } catch let error as EntraError where error.code == .graphRefused && error.httpStatus == 400 && run.report.resumed {
            // The interrupted run may have sent it: then the certificate is already there.
            keyID = try await confirmAlreadyAdded(certificate, signer: oldSigner, newSigner: newSigner, refusal: error)
        }
        checkpoint("addKey", run.options)
        run.journal.new.keyId = keyID
        run.journal.step = .added
        try journals.save(run.journal)
        if let keyID { try records.record(objectID: objectID, thumbprint: certificate.thumbprint.hexSHA1, keyID: keyID, displayName: run.journal.new.displayName) }
        checkpoint("addKey.recorded", run.options)
        return .init(summary: "keyId \(keyID ?? "(not reported)")", keyId: keyID)
    }

    /// 4. The new key gets a token (Entra replicates new credentials with a delay).
    private func verifyNewKey(_ run: inout Run) async throws -> StepReport.Result {
        guard let newSigner = run.newSigner else { throw Self.stepOrder() }
        let attempts = try await verify(newSigner, options: run.options, journal: run.journal)
        run.journal.step = .verified
        try journals.save(run.journal)
        checkpoint("verified", run.options)
        return .init(summary: "token acquired with the new key (attempt \(attempts))", attempts: attempts)
    }

    /// 5. The label moves to the new key, while both credentials work: first the new key takes
    ///    it, then the old key is relabelled as retired.
    private func moveLabel(_ run: inout Run) async throws -> StepReport.Result {
        let retiredLabel = run.journal.old.retiredLabel ?? "\(run.journal.old.label ?? "p11jwt")-retired-\(Self.dateStamp(Date()))"
        run.journal.old.retiredLabel = retiredLabel
        let (journal, newID, oldID, newObjects) = (run.journal, run.newID, run.oldID, run.newObjects)
        // The inventory's objects of the old key, if it holds the very key this run signs with.
        var oldObjects: [ObjectIdentity]?
        if let current = run.currentSigner?.key.identity.handle, let known = run.options.inventory?.objects(id: oldID),
           known.contains(where: { $0.objectClass == .privateKey && $0.handle == current }) {
            oldObjects = known
        }
        run.oldObjects = try await onToken { [oldObjects] in try moveLabel(journal, newID: newID, oldID: oldID, newObjects: newObjects, oldObjects: oldObjects) }
        run.journal.oldDisposition = "kept as '\(retiredLabel)'"
        try record(.relabelled, "relabel", &run)
        return .init(summary: "new key labelled '\(run.journal.new.finalLabel)'; old key labelled '\(retiredLabel)'")
    }

    /// 6. removeKey of the old credential, proven by the new key.
    private func removeOldCredential(_ run: inout Run) async throws -> StepReport.Result {
        guard let newSigner = run.newSigner else { throw Self.stepOrder() }
        let result: StepReport.Result
        if run.options.keepOld {
            result = .init(summary: "kept (keep old)", disposition: "kept")
        } else if let oldKeyID = run.journal.old.keyId {
            progress("removeKey: removing the old credential \(oldKeyID) (proof signed by the new key)")
            do {
                try await client.removeKey(target, objectID: objectID, keyID: oldKeyID, signer: newSigner)
            } catch let error as EntraError where error.code == .graphRefused && error.httpStatus == 404 && run.report.resumed {
                progress("the old credential was already removed (interrupted run)")
            }
            checkpoint("removeKey", run.options)
            run.journal.oldRemoved = true
            try? records.forget(objectID: objectID, keyID: oldKeyID)
            try? client.forgetToken(scope: client.configuration.graphScope, thumbprint: run.journal.old.thumbprint)
            result = .init(summary: "removed \(oldKeyID)", keyId: oldKeyID, disposition: "removed")
        } else {
            result = .init(summary: "not removed: its keyId is unknown", disposition: "notRemoved")
            let newKeyURI = token.objectURI(label: run.journal.new.finalLabel, id: run.newID, objectClass: .privateKey)
            run.instructions.append(
                "The old credential (certificate \(run.journal.old.thumbprint)) is still registered. Find its keyId in the portal (App registrations → Certificates & secrets) or with GET /v1.0/applications/\(objectID)?$select=keyCredentials, then remove it with a proof signed by the new key.")
            run.report.actions.append(.removeCredential(objectID: objectID, keyID: nil, signingKey: newKeyURI))
        }
        run.journal.step = .oldRemoved
        try journals.save(run.journal)
        checkpoint("removeKey.recorded", run.options)
        return result
    }

    /// 7. The old key is destroyed (delete old, once its credential is gone) or kept retired.
    private func retireOldKey(_ run: inout Run) async throws -> StepReport.Result {
        let (journal, newID, oldID, deleteOld, movedOld) = (run.journal, run.newID, run.oldID, run.options.deleteOld, run.oldObjects)
        let (disposition, kept): (String, Bool) = try await onToken {
            // Journals written before the label moved ahead of removeKey reach here unmoved.
            let oldObjects = try movedOld ?? moveLabel(journal, newID: newID, oldID: oldID)
            if deleteOld && journal.oldRemoved {
                try token.destroy(oldObjects)
                return ("destroyed", false)
            }
            if oldObjects.isEmpty { return (journal.oldDisposition ?? "already retired", false) }
            return ("kept as '\(journal.old.retiredLabel ?? "")'", true)
        }
        if deleteOld && kept {
            run.instructions.append("The old key was not destroyed: its credential is still registered on the application.")
        }
        run.journal.oldDisposition = disposition
        checkpoint("retire.old", run.options)
        run.journal.step = .retired
        try journals.save(run.journal)
        checkpoint("retire.recorded", run.options)
        return .init(summary: "old key \(disposition); new key labelled '\(run.journal.new.finalLabel)'", disposition: disposition)
    }

    static func stepOrder() -> RotationError {
        RotationError(.journal, "a rotation step ran before the new key's certificate was known (a bug: please report it)")
    }

    /// Blocking token work on the token's executor.
    private func onToken<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await token.run { _ in try body() }
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
                    throw RotationError(
                        .notPropagated,
                        "the new certificate \(journal.new.thumbprint ?? "") was added but Entra still refuses it after \(Int(options.propagationTimeout))s (AADSTS700027)",
                        hint: "the old credential is untouched and still works; run the rotation again later to resume, or allow a longer propagation timeout",
                        settings: ["propagation-timeout"], cause: error)
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
        throw RotationError(
            .addKeyUncertain, "addKey was refused (\(refusal.message)); the interrupted run may have added the certificate and Entra not replicated it yet",
            hint: "run the rotation again in a few minutes to resume; the old credential is untouched", cause: refusal)
    }

    private func findOldKeyID(options: Options, signer: TokenSigner, thumbprint: String) async throws -> String? {
        if let given = options.oldKeyID {
            return try EntraValue.guid(given, what: "old key id", hint: "give the keyId GUID of the current credential", settings: ["old-key-id"])
        }
        if let recorded = try records.keyID(objectID: objectID, thumbprint: thumbprint) { return recorded }
        do {
            let credentials = try await client.keyCredentials(target, signer: signer)
            if let found = credentials.first(where: { $0.thumbprintHex == thumbprint })?.keyId { return found }
        } catch let error as EntraError where error.code == .graphRefused {
            logger.info("cannot read the application's key credentials", metadata: ["reason": "\(error.message)"])
        }
        progress("the current credential's keyId is unknown (none given, no record, no Graph read permission): the old credential will be left for you to remove")
        return nil
    }

    // MARK: - Helpers

    /// Gives the new key's objects the final label, then the old key's the retired label (each
    /// only if needed, so a resumed run repeats nothing). Between the two writes both keys carry
    /// the label; both credentials work then, and a lookup by label that finds two keys tries again.
    /// Returns the old key's objects.
    @discardableResult
    private func moveLabel(
        _ journal: RotationJournal, newID: [UInt8], oldID: [UInt8], newObjects knownNew: [ObjectIdentity]? = nil, oldObjects knownOld: [ObjectIdentity]? = nil
    ) throws -> [ObjectIdentity] {
        let newObjects = try knownNew ?? token.objects(matching: try uri(id: newID))
        if newObjects.contains(where: { $0.label != journal.new.finalLabel }) {
            progress("the new key takes the label '\(journal.new.finalLabel)'")
            try token.relabel(newObjects, to: journal.new.finalLabel)
        }
        let retiredLabel = journal.old.retiredLabel ?? "\(journal.old.label ?? "p11jwt")-retired-\(Self.dateStamp(journal.startedAt))"
        let oldObjects = try knownOld ?? token.objects(matching: try uri(id: oldID))
        if oldObjects.contains(where: { $0.label != retiredLabel }) { try token.relabel(oldObjects, to: retiredLabel) }
        return oldObjects
    }

    /// Key objects with neither a label nor a `CKA_ID`, with a fingerprint of their key
    /// material (the same for objects that have none).
    private func anonymousKeys(in inventory: TokenInventory? = nil) throws -> [(object: ObjectIdentity, fingerprint: String)] {
        let (privateKeys, publicKeys) = try inventory?.keysWithoutLabelOrID ?? token.keysWithoutLabelOrID()
        return privateKeys.map { (object: $0.identity, fingerprint: "private:" + Self.fingerprint($0.publicKey)) }
            + publicKeys.map { (object: $0.identity, fingerprint: "public:" + Self.fingerprint($0.publicKey)) }
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
            throw RotationError(.journal, "the rotation journal names a CKA_ID that is not hex", hint: Self.journalHint(journals, journal))
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
            throw RotationError(.keyMissing, "the \(what) key (CKA_ID \(Self.hex(id))) is not on the token any more", hint: "check the token; the journal is in \(journals.directory.path)")
        }
        return try TokenSigner(token: token, key: key)
    }

    private func uri(id: [UInt8], type: ObjectClass? = nil) throws -> PKCS11URI {
        try PKCS11URI(PKCS11URI.format(token: token.info, id: id, objectClass: type))
    }

    private func checkpoint(_ point: String, _ options: Options) {
        options.checkpoint?(point)
    }

    static func plan(after step: RotationJournal.Step?, options: Options, journal: RotationJournal) -> [PlannedStep] {
        var steps: [PlannedStep] = []
        let done = step ?? .planned
        if step == nil { steps.append(PlannedStep(step: "preflight", action: "the current key gets a token", done: true)) }
        if done < .keyGenerated {
            steps.append(PlannedStep(step: RotationJournal.Step.keyGenerated.name, action: "generate a \(journal.new.keySpec) key pair in the token, labelled '\(journal.new.temporaryLabel)', CKA_ID \(journal.new.idHex)"))
        }
        if done < .certificateStored {
            steps.append(PlannedStep(step: RotationJournal.Step.certificateStored.name, action: "make a self-signed certificate valid \(journal.new.days) days, signed in the token, and store it"))
        }
        if done < .added { steps.append(PlannedStep(step: RotationJournal.Step.added.name, action: "addKey on \(journal.target), proof signed by the current key")) }
        if done < .verified {
            steps.append(PlannedStep(step: RotationJournal.Step.verified.name, action: "get a token with the new key, retrying up to \(Int(options.propagationTimeout))s while Entra replicates"))
        }
        if done < .relabelled {
            steps.append(PlannedStep(step: RotationJournal.Step.relabelled.name, action: "give the new key the label '\(journal.new.finalLabel)' and relabel the old key as retired"))
        }
        if done < .oldRemoved {
            steps.append(PlannedStep(step: RotationJournal.Step.oldRemoved.name, action: options.keepOld ? "keep the old credential"
                : journal.old.keyId.map { "removeKey \($0) (the old credential), proof signed by the new key" } ?? "leave the old credential (keyId unknown) and say how to remove it"))
        }
        if done < .retired {
            steps.append(PlannedStep(step: RotationJournal.Step.retired.name, action: options.deleteOld ? "destroy the old key" : "keep the old key under its retired label"))
        }
        return steps
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

extension Optional {
    /// The value, or `fallback`'s when there is none.
    func asyncOr(_ fallback: () async throws -> Wrapped) async throws -> Wrapped {
        if let self { return self }
        return try await fallback()
    }
}
