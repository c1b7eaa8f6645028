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
        case .file(let path): return "--pin-file \(path)"
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
        "give the PIN with --pin-file FILE, the \(environmentVariable) environment variable, or pin-source=file:PATH in the URI (or run on a terminal to be prompted)"
    }

    /// Reads a PIN file: its contents less one trailing newline.
    static func read(path: String, origin: PINOrigin) throws -> SecretBytes {
        let expanded = (path as NSString).expandingTildeInPath
        guard let handle = FileHandle(forReadingAtPath: expanded) else {
            throw PKCS11Error(.pinSourceUnreadable, "cannot read the PIN from \(origin): no readable file at \(expanded)")
        }
        defer { try? handle.close() }
        var bytes = [UInt8]((try? handle.readToEnd()) ?? Data())
        defer { for i in bytes.indices { bytes[i] = 0 } }
        if bytes.last == 0x0a { bytes.removeLast() }
        if bytes.last == 0x0d { bytes.removeLast() }
        return SecretBytes(bytes)
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
