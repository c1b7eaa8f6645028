#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Bytes that hold a secret (a PIN): kept in locked memory where the OS allows, never printed,
/// zeroed when released.
public final class SecretBytes: @unchecked Sendable, CustomStringConvertible {
    // Written once in init, read-only afterwards, zeroed in deinit.
    private let buffer: UnsafeMutableRawBufferPointer

    public init<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        buffer = .allocate(byteCount: max(bytes.count, 1), alignment: 16)
        _ = mlock(buffer.baseAddress!, buffer.count)
        buffer.copyBytes(from: bytes)
        count = bytes.count
    }

    public convenience init(_ string: String) { self.init(Array(string.utf8)) }

    public let count: Int

    public var isEmpty: Bool { count == 0 }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
    }

    deinit {
        memset(buffer.baseAddress!, 0, buffer.count)
        munlock(buffer.baseAddress!, buffer.count)
        buffer.deallocate()
    }

    public var description: String { "SecretBytes(\(count) bytes, redacted)" }
}

/// Where a PIN came from (for messages; never the PIN itself).
public enum PINOrigin: Sendable, Hashable, CustomStringConvertible {
    case uriValue, uriSource(String), file(String), environment(String), prompt, protectedPath
    /// The PIN a long-running process logged in with before, held in locked memory.
    case held

    public var description: String {
        switch self {
        case .uriValue: return "pin-value in the URI"
        case .uriSource(let path): return "pin-source \(path)"
        case .file(let path): return "the PIN file \(path)"
        case .environment(let name): return "$\(name)"
        case .prompt: return "the terminal prompt"
        case .protectedPath: return "the token's PIN pad (protected authentication path)"
        case .held: return "the PIN held since the first login"
        }
    }
}

/// How to find the user PIN, in order: `pin-value` / `pin-source` in the URI, a PIN file,
/// an environment variable, then a no-echo prompt when standard input is a terminal.
/// There is deliberately no way to pass a PIN as a command-line value.
public struct PINProvider: Sendable {
    public var pinFile: String?
    public var environmentVariable: String
    public var environment: [String: String]
    public var allowPrompt: Bool

    public init(
        pinFile: String? = nil, environmentVariable: String = "P11JWT_PIN",
        environment: [String: String] = ProcessInfo.processInfo.environment,
        allowPrompt: Bool = true
    ) {
        self.pinFile = pinFile
        self.environmentVariable = environmentVariable
        self.environment = environment
        self.allowPrompt = allowPrompt
    }

    /// The PIN, or nil when no source has one.
    public func pin(uri: PKCS11URI?, tokenLabel: String) throws -> (SecretBytes, PINOrigin)? {
        if let value = uri?.pinValue { return (SecretBytes(value), .uriValue) }
        if let source = uri?.pinSource {
            let path = source.hasPrefix("file:") ? String(source.dropFirst("file:".count)) : source
            return (try Self.read(path: path, origin: .uriSource(path)), .uriSource(path))
        }
        return try secret(prompt: "PIN for token '\(tokenLabel)': ")
    }

    /// A secret from the file, else the environment variable, else a prompt (echo off): the
    /// PIN, or a PFX password read the same way.
    public func secret(prompt: String) throws -> (SecretBytes, PINOrigin)? {
        if let pinFile { return (try Self.read(path: pinFile, origin: .file(pinFile)), .file(pinFile)) }
        if let value = environment[environmentVariable], !value.isEmpty {
            return (SecretBytes(value), .environment(environmentVariable))
        }
        if allowPrompt, isatty(STDIN_FILENO) == 1, let secret = Self.prompt(prompt) {
            return (secret, .prompt)
        }
        return nil
    }

    /// What to tell a user who gave no PIN.
    public var howToGiveAPIN: String {
        "give the PIN in a PIN file, the \(environmentVariable) environment variable, or pin-source=file:PATH in the URI (or run on a terminal to be prompted)"
    }

    /// The most a PIN file may hold: one line of a PIN (PKCS#11 tokens take at most a few dozen
    /// bytes) and its newline.
    static let maximumFileSize = 1024

    /// Reads a PIN file: its first line, without `\r\n`. Refused before anything reaches the
    /// token (a refusal costs no PIN try): anything but a regular file (a directory, a FIFO that
    /// could block for ever, `/dev/zero`), a file that others may read or write, or that its group
    /// may (unless it is root's and the group is the process's own, as Kubernetes mounts a secret
    /// for a pod's `fsGroup`: `0440 root:GID`), one larger than ``maximumFileSize``, and one whose
    /// first line is empty.
    static func read(path: String, origin: PINOrigin, what: String = "the PIN file") throws -> SecretBytes {
        let expanded = (path as NSString).expandingTildeInPath
        // O_NONBLOCK: opening a FIFO with no writer must not hang; it is refused below.
        let fd = open(expanded, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            throw PKCS11Error(.pinSourceUnreadable, "cannot read the PIN from \(origin): \(reason)",
                              hint: "give a file that holds the PIN on its first line, readable by you only (chmod 600)")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw PKCS11Error(.pinSourceUnreadable, "cannot read the PIN from \(origin): \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            let kind = info.st_mode & S_IFMT == S_IFDIR ? "a directory" : info.st_mode & S_IFMT == S_IFIFO ? "a FIFO" : "not a regular file"
            throw PKCS11Error(.pinSourceUnreadable, "the PIN source \(origin) is \(kind)",
                              hint: "give a regular file that holds the PIN on its first line; nothing was sent to the token")
        }
        let groupMayRead = info.st_uid == 0 && info.st_gid == getegid() && info.st_mode & 0o037 == 0
        guard info.st_mode & 0o077 == 0 || groupMayRead else {
            throw PKCS11Error(.pinSourceUnreadable,
                "\(what) \(expanded) may be read or written by others (mode \(String(info.st_mode & 0o777, radix: 8)))",
                hint: "chmod 600 \(expanded); nothing was sent to the token")
        }
        guard info.st_size <= maximumFileSize else {
            throw PKCS11Error(.pinSourceUnreadable,
                "\(what) \(expanded) is \(info.st_size) bytes; it should hold one line",
                hint: "check the path; nothing was sent to the token")
        }
        var buffer = [UInt8](repeating: 0, count: maximumFileSize + 1)
        defer { for i in buffer.indices { buffer[i] = 0 } }
        var length = 0
        while length < buffer.count {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + length, $0.count - length) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            length += n
        }
        guard length <= maximumFileSize else {
            throw PKCS11Error(.pinSourceUnreadable, "\(what) \(expanded) grew past \(maximumFileSize) bytes while it was read")
        }
        var end = buffer[0..<length].firstIndex(of: 0x0a) ?? length
        if end > 0 && buffer[end - 1] == 0x0d { end -= 1 }
        guard end > 0 else {
            throw PKCS11Error(.pinSourceUnreadable, "\(what) \(expanded) is empty (its first line holds nothing)",
                              hint: "write the secret on the file's first line; nothing was sent to the token")
        }
        return SecretBytes(buffer[0..<end])
    }

    /// A secret that is not a PIN (a shared header value, a password) read from a file by the PIN
    /// file's rules: its first line, the file readable by its owner only.
    public static func readSecretFile(_ path: String, what: String) throws -> SecretBytes {
        try read(path: path, origin: .file(path), what: what)
    }

    /// Reads a line from the terminal with echo off.
    static func prompt(_ text: String) -> SecretBytes? {
        FileHandle.standardError.write(Data(text.utf8))
        var saved = termios()
        let haveTermios = tcgetattr(STDIN_FILENO, &saved) == 0
        if haveTermios {
            var quiet = saved
            quiet.c_lflag &= ~tcflag_t(ECHO)
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet)
        }
        defer {
            if haveTermios { tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved) }
            FileHandle.standardError.write(Data("\n".utf8))
        }
        var line: [UInt8] = []
        defer { for i in line.indices { line[i] = 0 } }
        var byte: UInt8 = 0
        while Glibc.read(STDIN_FILENO, &byte, 1) == 1 {
            if byte == 0x0a { break }
            line.append(byte)
        }
        if line.last == 0x0d { line.removeLast() }
        return line.isEmpty ? nil : SecretBytes(line)
    }
}
