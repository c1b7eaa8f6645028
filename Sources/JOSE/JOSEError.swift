import Diagnostics

/// An error from building, parsing or verifying a JWS: a stable ``JOSEErrorCode``, a message
/// naming the thing concerned, what to do next, and where it was thrown.
public typealias JOSEError = LibraryError<JOSEErrorCode>

/// The codes of ``JOSEError``.
public struct JOSEErrorCode: DiagnosticCode {
    let name: String
    public var description: String { name }
    public static var domain: String { "jose" }

    /// Not a compact JWS: wrong number of parts, bad base64url, `=` padding, bad JSON.
    public static let malformed = JOSEErrorCode(name: "malformed")
    /// A header or claim value is missing, of the wrong type or out of range.
    public static let invalidValue = JOSEErrorCode(name: "invalidValue")
    /// The signer cannot produce the requested algorithm with its key.
    public static let unsupportedAlgorithm = JOSEErrorCode(name: "unsupportedAlgorithm")
    /// A certificate is needed for a thumbprint header and none was given.
    public static let certificateMissing = JOSEErrorCode(name: "certificateMissing")
    /// Certificate bytes or PEM that could not be parsed.
    public static let invalidCertificate = JOSEErrorCode(name: "invalidCertificate")
    /// The certificate's public key is not the signer's key.
    public static let certificateMismatch = JOSEErrorCode(name: "certificateMismatch")
    /// The signature does not verify.
    public static let signatureInvalid = JOSEErrorCode(name: "signatureInvalid")
}
