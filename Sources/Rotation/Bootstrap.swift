import DurableFiles
import Entra
import Foundation
import JOSE
import Logging
import PKCS11
import TokenSigning

/// From a short-lived temporary credential (a PFX a central step made, or a key already on the
/// token) to a long-lived key made in the token, in one crash-safe, resumable run: the temporary
/// key is imported into the token (not extractable), the application is rotated to a new key
/// generated in the token (``Rotation``, proof by the temporary key), the temporary credential
/// is removed from the application (proof by the new key) and the temporary key destroyed on the
/// token, and the new key is checked to get a token. Only the token and Entra ever know the new
/// key, and no central agent needs Graph permissions over the application.
///
/// A journal (`bootstrap-<object id>.json`, 0600, beside the rotation's) names the temporary
/// key's `CKA_ID` before it is imported; a run killed at any point is resumed by running again.
public struct Bootstrap: Sendable {
    /// The temporary credential.
    public enum Temporary: Sendable {
        /// Key material to import (from a PFX), with its certificate chain, leaf first.
        case material(PrivateKeyMaterial, chain: [JWSCertificate], label: String)
        /// A key already on the token, by its `CKA_ID`, with its certificate stored beside it.
        case onToken(id: [UInt8])
    }

    public struct Options: Sendable {
        /// The new key and certificate, and the propagation timeout; `deleteOld` is always set
        /// (the temporary key is destroyed) and `keepOld` never.
        public var rotation = Rotation.Options()
        /// The temporary credential's keyId on the application (default: read from Graph with
        /// the temporary key, which needs a Graph read permission).
        public var temporaryKeyID: String?
        /// Called at each of ``Bootstrap/checkpoints`` (and the rotation's): tests stop the
        /// process there.
        public var checkpoint: (@Sendable (String) -> Void)?

        public init() {}
    }

    /// Where ``Options/checkpoint`` is called, besides the rotation's own points.
    public static let checkpoints = ["bootstrap.planned", "bootstrap.imported", "bootstrap.rotated"]

    /// What a run did.
    public struct Report: Codable, Sendable {
        public var objectID: String
        public var resumed = false
        /// The temporary credential, now removed from the application and the token.
        public var temporaryThumbprint: String?
        public var temporaryKeyId: String?
        public var newKeyURI: String?
        public var newThumbprint: String?
        public var newKeyId: String?
        /// The rotation that replaced the temporary key (nil when a resumed run found it done).
        public var rotation: Rotation.Report?
        /// The new key got a token after everything else was done.
        public var verified = false

        enum CodingKeys: String, CodingKey {
            case objectID = "objectId", resumed, temporaryThumbprint, temporaryKeyId, newKeyURI = "newKeyUri", newThumbprint, newKeyId
            case rotation, verified
        }
    }

    struct Journal: Codable, Sendable {
        enum Step: String, Codable, Sendable { case planned, imported, rotated }
        var objectID: String
        var step: Step
        /// The temporary key's CKA_ID (hex), chosen before it is imported.
        var temporaryIdHex: String
        var temporaryThumbprint: String
        var temporaryKeyId: String?
        /// The label the new key ends with (the temporary key's).
        var label: String
        var imported: Bool
        var startedAt: Date
    }

    public let rotation: Rotation

    public init(rotation: Rotation) {
        self.rotation = rotation
    }

    var objectID: String { rotation.objectID }
    var token: Token { rotation.token }
    var directory: URL { rotation.journals.directory }
    var journalFile: URL { directory.appendingPathComponent("bootstrap-\(objectID.lowercased()).json") }

    /// Runs or resumes the bootstrap. `temporary` may be nil only when one is in progress.
    public func run(_ temporary: Temporary?, options: Options) async throws -> Report {
        let lockFile = directory.appendingPathComponent("bootstrap-\(objectID.lowercased()).lock")
        try DurableFile.makeDirectory(directory)
        guard let lock = try DurableFile.tryExclusiveLock(lockFile) else {
            throw RotationError(.alreadyRunning, "another bootstrap of \(objectID) is running (it holds \(lockFile.path))",
                                hint: "let it finish; nothing was changed by this run")
        }
        defer { lock.release() }
        var report = Report(objectID: objectID)
        var journal: Journal
        if let existing = try load() {
            journal = existing
            report.resumed = true
            rotation.progress("resuming the bootstrap of \(objectID); last step done: \(existing.step.rawValue)")
        } else {
            guard let temporary else {
                throw RotationError(.notInProgress, "no bootstrap of \(objectID) is in progress",
                                    hint: "give the temporary credential: a PFX, or a key on the token")
            }
            journal = try await onToken { try plan(temporary, options: options) }
            try save(journal)
            checkpoint("bootstrap.planned", options)
        }
        report.temporaryThumbprint = journal.temporaryThumbprint
        if journal.step == .planned {
            if case .material(let material, let chain, _)? = temporary {
                let planned = journal
                try await onToken { try importTemporary(material, chain: chain, journal: planned) }
            } else if journal.imported {
                throw RotationError(.keyMissing, "the bootstrap of \(objectID) was importing its temporary key when it stopped",
                                    hint: "run bootstrap again with the same PFX to import it again")
            }
            journal.step = .imported
            try save(journal)
            checkpoint("bootstrap.imported", options)
        }
        if journal.step == .imported {
            report.rotation = try await rotate(&journal, options: options)
            journal.step = .rotated
            try save(journal)
            checkpoint("bootstrap.rotated", options)
        }
        report.temporaryKeyId = journal.temporaryKeyId
        // The end state, checked: the new key (the label's) gets a token, and no key with the
        // temporary key's CKA_ID is left on the token.
        let finished = journal
        let (newSigner, leftovers) = try await onToken { () -> (TokenSigner, [ObjectIdentity]) in
            let labelled = try PKCS11URI(PKCS11URI.format(token: token.info, label: finished.label, objectClass: .privateKey))
            let leftovers = try token.objects(matching: try uri(id: Hex.decode(finished.temporaryIdHex)))
            return (try TokenSigner(token: token, key: try token.signingKey(labelled)), leftovers)
        }
        if !leftovers.isEmpty {
            try await onToken { try token.destroy(leftovers) }
            rotation.progress("destroyed what was left of the temporary key: \(leftovers.map(\.uri).joined(separator: ", "))")
        }
        _ = try await rotation.client.token(scope: rotation.client.configuration.graphScope, signer: newSigner, useCache: false)
        report.verified = true
        report.newKeyURI = newSigner.key.uri
        report.newThumbprint = newSigner.certificate?.thumbprint.hexSHA1
        report.newKeyId = report.rotation?.newKeyId
        try remove()
        rotation.progress("bootstrapped \(objectID): key \(newSigner.key.uri) is its credential; the temporary one is gone")
        return report
    }

    /// Chooses the temporary key's CKA_ID (and checks the token has room for its label).
    private func plan(_ temporary: Temporary, options: Options) throws -> Journal {
        switch temporary {
        case .material(_, let chain, let label):
            guard let leaf = chain.first else { throw RotationError(.invalidRequest, "the temporary credential has no certificate") }
            if let clash = try token.privateKeys().first(where: { $0.label == label }) {
                throw RotationError(.invalidRequest, "token '\(token.info.label)' already has a key labelled '\(label)': \(clash.uri)",
                                    hint: "choose another label, or bootstrap from that key with --key", settings: ["label"])
            }
            var rng = SystemRandomNumberGenerator()
            let id = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
            return Journal(
                objectID: objectID, step: .planned, temporaryIdHex: Hex.encode(id), temporaryThumbprint: leaf.thumbprint.hexSHA1,
                temporaryKeyId: options.temporaryKeyID, label: label, imported: true, startedAt: Date())
        case .onToken(let id):
            let signer = try temporarySigner(id: id)
            guard let certificate = signer.certificate, let label = signer.key.label, !label.isEmpty else {
                throw RotationError(.currentKeyUnusable, "the temporary key \(signer.key.uri) needs a label and its certificate on the token",
                                    hint: "store its certificate with 'cert import', or give a PFX", settings: ["key"])
            }
            return Journal(
                objectID: objectID, step: .planned, temporaryIdHex: Hex.encode(id), temporaryThumbprint: certificate.thumbprint.hexSHA1,
                temporaryKeyId: options.temporaryKeyID, label: label, imported: false, startedAt: Date())
        }
    }

    /// Imports the temporary key under the journal's CKA_ID, after destroying what an
    /// interrupted import left under it.
    private func importTemporary(_ material: PrivateKeyMaterial, chain: [JWSCertificate], journal: Journal) throws {
        let id = Hex.decode(journal.temporaryIdHex) ?? []
        let half = try token.objects(matching: try uri(id: id))
        if !half.isEmpty { try token.destroy(half) }
        let key = try token.importPrivateKey(material, label: journal.label, id: id)
        guard token.isKey(key, publicKey: chain[0].publicKey) else {
            try? token.destroy(try token.objects(matching: try uri(id: id)))
            throw RotationError(.invalidRequest, "the temporary certificate \(chain[0].thumbprint.hexSHA1) does not belong to its private key; nothing was imported")
        }
        // The leaf only: the temporary chain's issuers would outlive the temporary key.
        _ = try TokenCertificates.store([chain[0]], for: key, on: token)
        rotation.progress("imported the temporary key as \(key.uri) (sensitive, not extractable)")
    }

    /// Rotates from the temporary key to a new one, removing the temporary credential and
    /// destroying the temporary key. nil: a resumed run found the rotation already done.
    private func rotate(_ journal: inout Journal, options: Options) async throws -> Rotation.Report? {
        let id = Hex.decode(journal.temporaryIdHex) ?? []
        let inProgress = try rotation.journals.load(objectID: objectID) != nil
        let temporaryOnToken = try await onToken { try !token.privateKeys(matching: try uri(id: id)).isEmpty }
        if !inProgress && !temporaryOnToken {
            // Killed after the rotation finished and before this journal said so.
            return nil
        }
        if !inProgress && journal.temporaryKeyId == nil {
            journal.temporaryKeyId = try await temporaryKeyID(id: id, thumbprint: journal.temporaryThumbprint)
            try save(journal)
        }
        var rotationOptions = options.rotation
        rotationOptions.deleteOld = true
        rotationOptions.keepOld = false
        rotationOptions.ifExpiringWithin = nil
        rotationOptions.oldKeyID = journal.temporaryKeyId
        rotationOptions.checkpoint = options.checkpoint
        let report = try await rotation.run(options: rotationOptions) { try temporarySigner(id: id) }
        guard report.oldRemoved else {
            throw RotationError(.journal, "the temporary credential \(journal.temporaryThumbprint) is still registered on \(objectID)",
                                hint: "remove it with 'credential remove', signed by the new key; then run bootstrap again")
        }
        return report
    }

    /// The temporary credential's keyId, read from Graph with the temporary key.
    private func temporaryKeyID(id: [UInt8], thumbprint: String) async throws -> String {
        let signer = try await onToken { try temporarySigner(id: id) }
        let credentials: [KeyCredentialInfo]
        do {
            credentials = try await rotation.client.keyCredentials(rotation.target, signer: signer)
        } catch {
            throw RotationError(
                .invalidRequest, "cannot read the application's credentials to find the temporary one's keyId: \(error)",
                hint: "give the temporary credential's keyId (the central step that registered it has it)",
                settings: ["temporary-key-id"], cause: error)
        }
        guard let keyID = credentials.first(where: { $0.thumbprintHex == thumbprint })?.keyId else {
            throw RotationError(.invalidRequest, "the temporary certificate \(thumbprint) is not registered on \(objectID)",
                                hint: "register it first (the central provisioning step), or check the object id", settings: ["object-id"])
        }
        return keyID
    }

    private func temporarySigner(id: [UInt8]) throws -> TokenSigner {
        try TokenSigner(token: token, key: try token.signingKey(try uri(id: id, objectClass: .privateKey)))
    }

    /// The URI of the objects with CKA_ID `id` on the token (of one class when given).
    private func uri(id: [UInt8]?, objectClass: ObjectClass? = nil) throws -> PKCS11URI {
        try PKCS11URI(PKCS11URI.format(token: token.info, id: id, objectClass: objectClass))
    }

    private func checkpoint(_ point: String, _ options: Options) { options.checkpoint?(point) }

    private func onToken<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await token.run { _ in try body() }
    }

    private func load() throws -> Journal? {
        guard let data = FileManager.default.contents(atPath: journalFile.path) else { return nil }
        do {
            return try StateJSON.decoder.decode(Journal.self, from: data)
        } catch {
            throw RotationError(.journal, "the bootstrap journal \(journalFile.path) is damaged: \(error)",
                                hint: "it names the temporary key's CKA_ID; check the app's credentials before moving it aside")
        }
    }

    private func save(_ journal: Journal) throws {
        try DurableFile.writeAtomically(try StateJSON.encoder.encode(journal), to: journalFile, mode: 0o600)
    }

    private func remove() throws {
        if FileManager.default.fileExists(atPath: journalFile.path) { try FileManager.default.removeItem(at: journalFile) }
    }
}
