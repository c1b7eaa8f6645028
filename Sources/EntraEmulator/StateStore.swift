import DurableFiles
import Foundation

/// The state directory: `state.json` read and written under an exclusive `flock`, so the
/// server and the admin commands (separate processes) see one consistent state, and written
/// atomically (temporary file, fsync, rename), so a crash never leaves a torn file.
public struct StateStore: Sendable {
    public let directory: URL
    var stateFile: URL { directory.appendingPathComponent("state.json") }
    var lockFile: URL { directory.appendingPathComponent("state.lock") }

    public init(directory: String) throws {
        self.directory = URL(fileURLWithPath: directory)
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }

    /// The current state.
    public func read() throws -> EmulatorState {
        try withLock { try load() }
    }

    /// Reads, changes and writes the state as one step; `body`'s result is returned. Nothing is
    /// written when `body` throws.
    @discardableResult
    public func update<R>(_ body: (inout EmulatorState) throws -> R) throws -> R {
        try withLock {
            var state = try load()
            let before = state
            let result = try body(&state)
            if state != before { try save(state) }
            return result
        }
    }

    private func load() throws -> EmulatorState {
        guard let data = FileManager.default.contents(atPath: stateFile.path) else { return EmulatorState() }
        do {
            return try StateJSON.decoder.decode(EmulatorState.self, from: data)
        } catch {
            throw EmulatorError("the state file \(stateFile.path) is not valid: \(error)")
        }
    }

    private func save(_ state: EmulatorState) throws {
        let data = try StateJSON.encoder.encode(state)
        try DurableFile.writeAtomically(data, to: stateFile, mode: 0o600)
    }

    /// The admin secret for `/_emulator/faults` (`admin-token`, 0600), made on first use.
    public func adminToken() throws -> String {
        let url = directory.appendingPathComponent("admin-token")
        return try withLock {
            if let data = FileManager.default.contents(atPath: url.path) {
                let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                if !text.isEmpty { return text }
            }
            var bytes = [UInt8](repeating: 0, count: 32)
            var generator = SystemRandomNumberGenerator()
            for i in bytes.indices { bytes[i] = generator.next() }
            let token = bytes.map { String(format: "%02x", $0) }.joined()
            try DurableFile.writeAtomically(Data((token + "\n").utf8), to: url, mode: 0o600)
            return token
        }
    }

    private func withLock<R>(_ body: () throws -> R) throws -> R {
        try DurableFile.withExclusiveLock(lockFile, body)
    }
}

/// A failure of the emulator itself (state directory, certificates, arguments).
public struct EmulatorError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
