import Diagnostics

/// An error from rotating a credential: a stable ``Code``, what went wrong in the rotation's
/// terms, what to do next (resume, wait, inspect the journal), and where it was thrown.
public struct RotationError: DiagnosticError {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }

        /// Rotation applies to application credentials only, and other misuses of its options.
        public static let invalidRequest = Code(name: "invalidRequest")
        /// The current key cannot start a rotation (no certificate, no `CKA_ID`).
        public static let currentKeyUnusable = Code(name: "currentKeyUnusable")
        /// Another run rotates the same object now.
        public static let alreadyRunning = Code(name: "alreadyRunning")
        /// No rotation of the object is in progress (for abandon).
        public static let notInProgress = Code(name: "notInProgress")
        /// The rotation is past the point where it can be abandoned.
        public static let cannotAbandon = Code(name: "cannotAbandon")
        /// The journal cannot be read, written or understood.
        public static let journal = Code(name: "journal")
        /// A key the journal names is not on the token.
        public static let keyMissing = Code(name: "keyMissing")
        /// Entra did not accept the new credential within the propagation timeout.
        public static let notPropagated = Code(name: "notPropagated")
        /// addKey was refused on a resumed run and whether the interrupted run added it is unknown yet.
        public static let addKeyUncertain = Code(name: "addKeyUncertain")
    }

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

    public var domain: String { "rotation" }
    public var codeName: String { code.description }
    public var underlying: (any Error & Sendable)? { cause }
    public var isUsageError: Bool { code == .invalidRequest || code == .currentKeyUnusable }
}
