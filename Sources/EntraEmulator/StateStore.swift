import Foundation
#if canImport(Glibc)
import Glibc
#endif

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
            return try Self.decoder.decode(EmulatorState.self, from: data)
        } catch {
            throw EmulatorError("the state file \(stateFile.path) is not valid: \(error)")
        }
    }

    private func save(_ state: EmulatorState) throws {
        let data = try Self.encoder.encode(state)
        try writeAtomically(data, to: stateFile, mode: 0o600)
    }

    private func withLock<R>(_ body: () throws -> R) throws -> R {
        let fd = open(lockFile.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw EmulatorError("cannot open \(lockFile.path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw EmulatorError("cannot lock \(lockFile.path): \(String(cString: strerror(errno)))") }
        }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .iso8601
        return e
    }()

    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }()
}

/// Writes `data` to a temporary file beside `url`, fsyncs it, renames it over `url` and fsyncs
/// the directory.
func writeAtomically(_ data: Data, to url: URL, mode: mode_t) throws {
    let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(UUID().uuidString.prefix(8))")
    let fd = open(temporary.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
    guard fd >= 0 else { throw EmulatorError("cannot create \(temporary.path): \(String(cString: strerror(errno)))") }
    var ok = data.withUnsafeBytes { buffer -> Bool in
        var offset = 0
        while offset < buffer.count {
            let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if n < 0 { if errno == EINTR { continue }; return false }
            offset += n
        }
        return true
    }
    ok = ok && fsync(fd) == 0
    close(fd)
    guard ok, rename(temporary.path, url.path) == 0 else {
        unlink(temporary.path)
        throw EmulatorError("cannot write \(url.path): \(String(cString: strerror(errno)))")
    }
    let dir = open(url.deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if dir >= 0 { fsync(dir); close(dir) }
}

/// A failure of the emulator itself (state directory, certificates, arguments).
public struct EmulatorError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
