/// The one shape every p11jwt library error has, so that one place in each front end (the CLI,
/// the agent's HTTP API) renders any of them as text or JSON and maps it to an exit code or
/// status.
///
/// Modelled on swift-nio's `FileSystemError`: a stable code to switch on, a message written for
/// the person reading it in the library's own terms, what to do next, the underlying error and
/// where it was thrown. Libraries never name command-line flags or commands: an error lists the
/// ``settings`` its hint is about, and a front end adds its own wording for them (a flag, an
/// environment variable, a configuration key).
public protocol DiagnosticError: Error, Sendable, CustomStringConvertible {
    /// The library's name for its errors: `pkcs11`, `jose`, `entra`, `rotation`, `agent`, `file`.
    var domain: String { get }
    /// The stable code within the domain, e.g. `pinIncorrect`.
    var codeName: String { get }
    /// What went wrong, naming the thing concerned.
    var message: String { get }
    /// What to do next.
    var hint: String? { get }
    /// The error underneath, if any.
    var underlying: (any Error & Sendable)? { get }
    /// Where it was thrown.
    var location: SourceLocation { get }
    /// Machine-readable particulars: the PKCS#11 function and `CKR_*` name, an AADSTS code, an
    /// HTTP status, a path.
    var details: [String: String] { get }
    /// The settings the hint is about, by their configuration names (`tenant`, `client-id`,
    /// `pin-file`, `module`, …), for a front end to say how to give them.
    var settings: [String] { get }
    /// Whether what the caller gave is at fault (a usage error), rather than the operation.
    var isUsageError: Bool { get }
}

extension DiagnosticError {
    public var underlying: (any Error & Sendable)? { nil }
    public var details: [String: String] { [:] }
    public var settings: [String] { [] }
    public var isUsageError: Bool { false }

    /// `domain.codeName`, e.g. `pkcs11.pinIncorrect`: what JSON output and the agent's API carry.
    public var qualifiedCode: String { "\(domain).\(codeName)" }

    /// The message, then the hint on its own line.
    public var description: String {
        var text = message
        if let hint { text += "\nhint: \(hint)" }
        return text
    }
}

/// A place in the source (`#fileID`, `#line`).
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int

    public init(file: String = #fileID, line: Int = #line) {
        self.file = file
        self.line = line
    }

    public var description: String { "\(file):\(line)" }
}

/// A library's error codes: stable names, and the library's domain.
public protocol DiagnosticCode: Hashable, Sendable, CustomStringConvertible {
    /// The library's name for its errors (`jose`, `rotation`).
    static var domain: String { get }
    /// Whether errors with this code are the caller's fault (a usage error).
    var isUsageError: Bool { get }
}

extension DiagnosticCode {
    public var isUsageError: Bool { false }
}

/// The error of a library whose errors need nothing beyond the common shape: JOSE's and the
/// rotation's (`JOSEError`, `RotationError`).
public struct LibraryError<Code: DiagnosticCode>: DiagnosticError {
    public var code: Code
    public var message: String
    public var hint: String?
    public var settings: [String]
    public var cause: (any Error & Sendable)?
    public var location: SourceLocation

    public init(
        _ code: Code, _ message: String, hint: String? = nil, settings: [String] = [], cause: (any Error & Sendable)? = nil,
        file: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.hint = hint
        self.settings = settings
        self.cause = cause
        self.location = SourceLocation(file: file, line: line)
    }

    public var domain: String { Code.domain }
    public var codeName: String { code.description }
    public var underlying: (any Error & Sendable)? { cause }
    public var isUsageError: Bool { code.isUsageError }
}
