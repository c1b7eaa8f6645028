import DurableFiles
import Entra
import Foundation

/// The record of one rotation in progress, written (0600, atomically) before and after every
/// step that changes the token or Entra, so a run killed at any point is resumed by running
/// `rotate` again. The ids chosen for the new key are written before the key exists, so a
/// resumed run finds it instead of making a second one.
public struct RotationJournal: Codable, Sendable, Equatable {
    /// Steps in order; `step` is the last one completed.
    public enum Step: Int, Codable, Sendable, Comparable, CustomStringConvertible {
        case planned, keyGenerated, certificateStored, added, verified, oldRemoved, retired

        public static func < (a: Step, b: Step) -> Bool { a.rawValue < b.rawValue }

        public var description: String {
            switch self {
            case .planned: return "planned"
            case .keyGenerated: return "key generated"
            case .certificateStored: return "certificate stored"
            case .added: return "addKey done"
            case .verified: return "new key verified"
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
                throw EntraError(.rotation, "another rotate of \(objectID) is running (it holds \(url.path))",
                    hint: "let it finish; nothing was changed by this run")
            }
            return held
        } catch let error as DurableFileError {
            throw EntraError(.stateFile, "cannot lock the rotation of \(objectID): \(error)", hint: "give a state directory you can write")
        }
    }

    public func load(objectID: String) throws -> RotationJournal? {
        let url = file(objectID)
        guard let data = FileManager.default.contents(atPath: url.path) else { return nil }
        do {
            return try StateJSON.decoder.decode(RotationJournal.self, from: data)
        } catch {
            throw EntraError(
                .stateFile, "the rotation journal \(url.path) is damaged: \(error)",
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
            throw EntraError(.stateFile, "cannot write the rotation journal: \(error)", hint: "give --state-dir a directory you can write")
        }
    }

    public func remove(objectID: String) throws {
        let url = file(objectID)
        guard FileManager.default.fileExists(atPath: url.path) else { return }
        do { try FileManager.default.removeItem(at: url) } catch {
            throw EntraError(.stateFile, "cannot remove the finished journal \(url.path): \(error)")
        }
    }
}
