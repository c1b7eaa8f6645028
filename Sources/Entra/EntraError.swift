import Diagnostics

/// An error from the Entra layer: a stable ``Code``, a message naming the value concerned, what
/// to do next, and where it was thrown.
public struct EntraError: DiagnosticError {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }

        /// A tenant, client id, object id, lifetime, URL or claim that cannot be used.
        public static let invalidParameter = Code(name: "invalidParameter")
        /// The key cannot make what Entra or Graph accepts (e.g. an EC key for a PoP proof).
        public static let unsupportedKey = Code(name: "unsupportedKey")
        /// The token endpoint refused: ``EntraError/aadsts`` has Entra's code.
        public static let tokenRefused = Code(name: "tokenRefused")
        /// Graph refused: ``EntraError/graphCode`` and ``EntraError/httpStatus`` say how.
        public static let graphRefused = Code(name: "graphRefused")
        /// No answer: connection, TLS or timeout (``EntraError/cause``).
        public static let network = Code(name: "network")
        /// An answer that is not what the protocol defines.
        public static let protocolViolation = Code(name: "protocolViolation")
        /// The token cache or the credential records could not be read or written.
        public static let stateFile = Code(name: "stateFile")
    }

    public var code: Code
    public var message: String
    public var hint: String?
    /// Entra's AADSTS code, for ``Code/tokenRefused``.
    public var aadsts: Int?
    /// Graph's error code (`Authorization_RequestDenied`, …), for ``Code/graphRefused``.
    public var graphCode: String?
    public var httpStatus: Int?
    public var cause: (any Error & Sendable)?
    public var location: SourceLocation
    /// The settings the hint is about (`tenant`, `client-id`, `ca-file`, …).
    public var settings: [String]

    public init(
        _ code: Code, _ message: String, hint: String? = nil, settings: [String] = [], aadsts: Int? = nil, graphCode: String? = nil,
        httpStatus: Int? = nil, cause: (any Error & Sendable)? = nil, file: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.hint = hint
        self.settings = settings
        self.aadsts = aadsts
        self.graphCode = graphCode
        self.httpStatus = httpStatus
        self.cause = cause
        self.location = SourceLocation(file: file, line: line)
    }

    public var domain: String { "entra" }
    public var codeName: String { code.description }
    public var underlying: (any Error & Sendable)? { cause }
    /// A value the caller gave is wrong.
    public var isUsageError: Bool { code == .invalidParameter }

    public var details: [String: String] {
        var details: [String: String] = [:]
        details["aadsts"] = aadsts.map { "AADSTS\($0)" }
        details["graphCode"] = graphCode
        details["httpStatus"] = httpStatus.map(String.init)
        return details
    }
}
