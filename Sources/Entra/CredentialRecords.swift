import DurableFiles
import Foundation

/// What p11jwt learnt of registered credentials: for each object id, the keyId Graph gave each
/// certificate (by SHA-1 thumbprint). `credential add` and `rotate` write it, so a later `rotate` can
/// remove the old credential without a Graph read permission. One file, 0600, in the state
/// directory (`$XDG_STATE_HOME/p11jwt`, else `~/.local/state/p11jwt`).
public struct CredentialRecords: Sendable {
    public let directory: URL
    var file: URL { directory.appendingPathComponent("credentials.json") }
    var lockFile: URL { directory.appendingPathComponent(".credentials.lock") }

    public init(directory: URL) {
        self.directory = directory
    }

    public static func defaultDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> URL {
        let base = environment["XDG_STATE_HOME"].flatMap { $0.isEmpty ? nil : URL(fileURLWithPath: $0) }
            ?? URL(fileURLWithPath: environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? FileManager.default.homeDirectoryForCurrentUser.path)
                .appendingPathComponent(".local/state")
        return base.appendingPathComponent("p11jwt")
    }

    public struct Record: Codable, Sendable, Equatable {
        public var keyId: String
        public var thumbprint: String
        public var displayName: String?
        public var recordedAt: Date
    }

    /// The keyId recorded for `thumbprint` (hex SHA-1) on `objectID`.
    public func keyID(objectID: String, thumbprint: String) throws -> String? {
        try locked { try load()[objectID.lowercased()]?.first { $0.thumbprint == thumbprint.uppercased() }?.keyId }
    }

    public func record(objectID: String, thumbprint: String, keyID: String, displayName: String? = nil) throws {
        try locked {
            var all = try load()
            var list = all[objectID.lowercased(), default: []].filter { $0.thumbprint != thumbprint.uppercased() && $0.keyId != keyID }
            list.append(Record(keyId: keyID.lowercased(), thumbprint: thumbprint.uppercased(), displayName: displayName, recordedAt: Date()))
            all[objectID.lowercased()] = list
            try save(all)
        }
    }

    public func forget(objectID: String, keyID: String) throws {
        try locked {
            var all = try load()
            all[objectID.lowercased()]?.removeAll { $0.keyId == keyID.lowercased() }
            try save(all)
        }
    }

    func locked<R>(_ body: () throws -> R) throws -> R {
        do {
            try DurableFile.makeDirectory(directory)
            return try DurableFile.withExclusiveLock(lockFile, body)
        } catch let error as DurableFileError {
            throw EntraError(.stateFile, "state directory: \(error)", hint: "use a state directory you can write", settings: ["state-dir"])
        }
    }

    private func load() throws -> [String: [Record]] {
        guard let data = FileManager.default.contents(atPath: file.path) else { return [:] }
        do {
            return try StateJSON.decoder.decode([String: [Record]].self, from: data)
        } catch {
            throw EntraError(.stateFile, "\(file.path) is damaged: \(error)", hint: "move it aside; a rotation then needs the old credential's key id", settings: ["old-key-id"])
        }
    }

    private func save(_ all: [String: [Record]]) throws {
        try DurableFile.writeAtomically(try StateJSON.encoder.encode(all), to: file, mode: 0o600)
    }
}
