import Diagnostics
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Files that survive a crash and concurrent writers: atomic replacement (temporary file, fsync,
/// rename, fsync of the directory) and an exclusive `flock` held for a read-change-write step.
/// The emulator's state, the token cache and the rotate journal are such files.
public enum DurableFile {
    /// Writes `data` to a temporary file beside `url` created with `mode`, fsyncs it, renames it
    /// over `url` and fsyncs the directory. A reader sees the old file or the new one, never a
    /// torn one, and the file never exists with wider permissions than `mode`.
    public static func writeAtomically(_ data: Data, to url: URL, mode: mode_t) throws {
        let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(UUID().uuidString.prefix(8))")
        let fd = open(temporary.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw DurableFileError("cannot create", temporary.path) }
        _ = fchmod(fd, mode)  // the umask may have narrowed it; never widen beyond `mode`
        var ok = data.withUnsafeBytes { buffer -> Bool in
            var offset = 0
            while offset < buffer.count {
                let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += n
            }
            return true
        }
        ok = ok && fsync(fd) == 0
        close(fd)
        guard ok, rename(temporary.path, url.path) == 0 else {
            let error = DurableFileError("cannot write", url.path)
            unlink(temporary.path)
            throw error
        }
        let dir = open(url.deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 {
            fsync(dir)
            close(dir)
        }
    }

    /// Runs `body` holding an exclusive `flock` on `lockFile` (created 0600), across processes.
    public static func withExclusiveLock<R>(_ lockFile: URL, _ body: () throws -> R) throws -> R {
        let fd = open(lockFile.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw DurableFileError("cannot open", lockFile.path) }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw DurableFileError("cannot lock", lockFile.path) }
        }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }

    /// An exclusive `flock` on `lockFile` (created 0600), taken without waiting: nil when another
    /// process holds it. Released by ``HeldLock/release()`` or when the process ends (even by SIGKILL).
    public static func tryExclusiveLock(_ lockFile: URL) throws -> HeldLock? {
        let fd = open(lockFile.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw DurableFileError("cannot open", lockFile.path) }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if errno == EINTR { continue }
            close(fd)
            if errno == EWOULDBLOCK { return nil }
            throw DurableFileError("cannot lock", lockFile.path)
        }
        return HeldLock(fd: fd)
    }

    /// Creates `directory` (and parents) and makes it `mode` (0700 for directories of secrets).
    public static func makeDirectory(_ directory: URL, mode: mode_t = 0o700) throws {
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: mode])
        } catch {
            throw DurableFileError("cannot create directory", directory.path, cause: "\(error)")
        }
        guard chmod(directory.path, mode) == 0 else { throw DurableFileError("cannot set permissions of", directory.path) }
    }
}

/// A file operation that failed: what was attempted, on which path, and the system's reason.
public struct DurableFileError: DiagnosticError {
    public var operation: String
    public var path: String
    public var reason: String
    public var location: SourceLocation

    init(_ operation: String, _ path: String, cause: String? = nil, file: String = #fileID, line: Int = #line) {
        self.operation = operation
        self.path = path
        self.reason = cause ?? String(cString: strerror(errno))
        self.location = SourceLocation(file: file, line: line)
    }

    public var domain: String { "file" }
    public var codeName: String { operation }
    public var message: String { "\(operation) \(path): \(reason)" }
    public var hint: String? { nil }
    public var details: [String: String] { ["path": path] }
    public var description: String { message }
}

/// The JSON form of state files: pretty, sorted keys, ISO 8601 dates.
public enum StateJSON {
    public static var encoder: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .iso8601
        return e
    }

    public static var decoder: JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }
}

/// A held `flock`; ``release()`` unlocks and closes it.
public final class HeldLock: @unchecked Sendable {
    private var fd: Int32
    init(fd: Int32) { self.fd = fd }

    public func release() {
        guard fd >= 0 else { return }
        flock(fd, LOCK_UN)
        close(fd)
        fd = -1
    }

    deinit { release() }
}
