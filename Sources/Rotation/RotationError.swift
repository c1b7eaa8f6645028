import Diagnostics

/// An error from rotating a credential: a stable ``RotationErrorCode``, what went wrong in the
/// rotation's terms, what to do next (resume, wait, inspect the journal), and where it was thrown.
public typealias RotationError = LibraryError<RotationErrorCode>

/// The codes of ``RotationError``.
public struct RotationErrorCode: DiagnosticCode {
    let name: String
    public var description: String { name }
    public static var domain: String { "rotation" }
    public var isUsageError: Bool { self == .invalidRequest || self == .currentKeyUnusable }

    /// Rotation applies to application credentials only, and other misuses of its options.
    public static let invalidRequest = RotationErrorCode(name: "invalidRequest")
    /// The current key cannot start a rotation (no certificate, no `CKA_ID`).
    public static let currentKeyUnusable = RotationErrorCode(name: "currentKeyUnusable")
    /// Another run rotates the same object now.
    public static let alreadyRunning = RotationErrorCode(name: "alreadyRunning")
    /// No rotation of the object is in progress (for abandon).
    public static let notInProgress = RotationErrorCode(name: "notInProgress")
    /// The rotation is past the point where it can be abandoned.
    public static let cannotAbandon = RotationErrorCode(name: "cannotAbandon")
    /// The journal cannot be read, written or understood.
    public static let journal = RotationErrorCode(name: "journal")
    /// A key the journal names is not on the token.
    public static let keyMissing = RotationErrorCode(name: "keyMissing")
    /// Entra did not accept the new credential within the propagation timeout.
    public static let notPropagated = RotationErrorCode(name: "notPropagated")
    /// addKey was refused on a resumed run and whether the interrupted run added it is unknown yet.
    public static let addKeyUncertain = RotationErrorCode(name: "addKeyUncertain")
}
