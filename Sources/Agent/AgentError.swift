import Diagnostics

/// An error of the agent itself (its configuration, its socket, a request it cannot serve),
/// and what a client of the agent is told when the agent refuses: one shape with the other
/// libraries' errors. On the wire it is ``AgentAPI/ErrorBody``.
public struct AgentError: DiagnosticError {
    /// The agent's code, e.g. `tokenUnavailable`; a refusal relayed from another library
    /// carries that library's qualified code (`pkcs11.pinIncorrect`).
    public var code: String
    public var message: String
    public var hint: String?
    public var settings: [String]
    /// The HTTP status the agent answered with, for an error a client received.
    public var status: Int?
    public var cause: (any Error & Sendable)?
    public var location: SourceLocation

    public init(
        _ code: String, _ message: String, hint: String? = nil, settings: [String] = [], status: Int? = nil,
        cause: (any Error & Sendable)? = nil, file: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.hint = hint
        self.settings = settings
        self.status = status
        self.cause = cause
        self.location = SourceLocation(file: file, line: line)
    }

    public var domain: String { "agent" }
    public var codeName: String { code }
    public var underlying: (any Error & Sendable)? { cause }
    public var details: [String: String] { status.map { ["httpStatus": String($0)] } ?? [:] }

    /// The message and, after "; ", the hint: one line for an error body that has no hint field.
    var messageWithHint: String { message + (hint.map { "; \($0)" } ?? "") }

    /// The agent's own failures that mean "try again later" (503).
    var meansUnavailable: Bool { code == "tokenUnavailable" || code == "stopped" }
}
