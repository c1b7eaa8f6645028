import DurableFiles
import Entra
import Foundation

/// The record of one rotation in progress, written (0600, atomically) before and after every
/// step that changes the token or Entra, so a run killed at any point is resumed by running
/// `rotate` again. The ids chosen for the new key are written before the key exists, so a
/// resumed run finds it instead of making a second one.
public struct RotationJournal: Codable, Sendable, Equatable {
    /// Steps; `step` is the last one completed. Raw values are what journals store (they were
    /// numbered before `relabelled` existed), so order comes from ``order``, not the raw value.
    public enum Step: Int, Codable, Sendable, Comparable, CustomStringConvertible {
        case planned = 0, keyGenerated = 1, certificateStored = 2, added = 3, verified = 4, relabelled = 7, oldRemoved = 5, retired = 6

        /// The order the steps run in: the label moves to the new key before the old credential
        /// is removed, so a URI that selects by label never names a key Entra refuses.
        public static let order: [Step] = [.planned, .keyGenerated, .certificateStored, .added, .verified, .relabelled, .oldRemoved, .retired]

        var position: Int { Self.order.firstIndex(of: self) ?? 0 }

        public static func < (a: Step, b: Step) -> Bool { a.position < b.position }

        /// The step's name in JSON reports: `keyGenerated`, `oldRemoved`, …
        public var name: String {
            switch self {
            case .planned: return "planned"
            case .keyGenerated: return "keyGenerated"
            case .certificateStored: return "certificateStored"
            case .added: return "added"
            case .verified: return "verified"
            case .relabelled: return "relabelled"
            case .oldRemoved: return "oldRemoved"
            case .retired: return "retired"
            }
        }

        public var description: String {
            switch self {
            case .planned: return "planned"
            case .keyGenerated: return "key generated"
            case .certificateStored: return "certificate stored"
            case .added: return "addKey done"
            case .verified: return "new key verified"
            case .relabelled: return "label moved to the new key"
            case .oldRemoved: return "old credential removed"
            case .retired: return "old key retired"
            }
        }
    }

    public struct OldKey: Codable, Sendable, Equatable {
        public var label: String?
        public var idHex: String
        public var thumbprint: String
        /// The old credential's keyId, when known.
        public var keyId: String?
        /// The label the old key gets when the new one takes its label.
        public var retiredLabel: String?
    }

    public struct NewKey: Codable, Sendable, Equatable {
        /// The label while the rotation runs; the old key's label once it is done.
        public var temporaryLabel: String
        public var finalLabel: String
        public var idHex: String
        public var keySpec: String
        /// DER of the subject, base64.
        public var subject: String
        public var days: Int
        public var displayName: String?
        public var thumbprint: String?
        public var certificate: String?
        public var keyId: String?
        /// Key objects on the token with neither label nor `CKA_ID` before the key generation
        /// (fingerprints): a run killed inside the token's key generation can leave such objects
        /// behind, and the resumed run removes the ones that were not there before.
        public var anonymousKeysBefore: [String]?
    }

    public var version = 1
    public var objectID: String
    public var target: String
    public var startedAt: Date
    public var updatedAt: Date
    public var step: Step
    public var old: OldKey
    public var new: NewKey
    /// The old credential was removed from Entra.
    public var oldRemoved = false
    public var oldDisposition: String?
}

/// Where journals live: `rotate-<object id>.json` in the state directory.
public struct RotationJournalStore: Sendable {
    public let directory: URL

    public init(directory: URL) {
        self.directory = directory
    }

    func file(_ objectID: String) -> URL { directory.appendingPathComponent("rotate-\(objectID.lowercased()).json") }

    /// Holds `rotate-<objectID>.lock` beside the journal for the length of one run; an error
    /// when another process rotates the same object now.
    public func lock(objectID: String) throws -> HeldLock {
        let url = directory.appendingPathComponent("rotate-\(objectID.lowercased()).lock")
        do {
            try DurableFile.makeDirectory(directory)
            guard let held = try DurableFile.tryExclusiveLock(url) else {
                throw RotationError(.alreadyRunning, "another rotate of \(objectID) is running (it holds \(url.path))",
                    hint: "let it finish; nothing was changed by this run")
            }
            return held
        } catch let error as DurableFileError {
            throw RotationError(.journal, "cannot lock the rotation of \(objectID): \(error)", hint: "use a state directory you can write",
                                settings: ["state-dir"], cause: error)
        }
    }

    public func load(objectID: String) throws -> RotationJournal? {
        let url = file(objectID)
        guard let data = FileManager.default.contents(atPath: url.path) else { return nil }
        do {
            return try StateJSON.decoder.decode(RotationJournal.self, from: data)
        } catch {
            throw RotationError(
                .journal, "the rotation journal \(url.path) is damaged: \(error)",
                hint: "inspect it: it names the new key's CKA_ID and the credentials involved; move it aside only once the app's credentials are checked")
        }
    }

    public func save(_ journal: RotationJournal) throws {
        var journal = journal
        journal.updatedAt = Date()
        do {
            try DurableFile.makeDirectory(directory)
            try DurableFile.writeAtomically(try StateJSON.encoder.encode(journal), to: file(journal.objectID), mode: 0o600)
        } catch let error as DurableFileError {
            throw RotationError(.journal, "cannot write the rotation journal: \(error)", hint: "use a state directory you can write",
                                settings: ["state-dir"], cause: error)
        }
    }

    public func remove(objectID: String) throws {
        let url = file(objectID)
        guard FileManager.default.fileExists(atPath: url.path) else { return }
        do { try FileManager.default.removeItem(at: url) } catch {
            throw RotationError(.journal, "cannot remove the finished journal \(url.path): \(error)", cause: error)
        }
    }
}
