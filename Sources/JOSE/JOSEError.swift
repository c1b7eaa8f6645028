import Diagnostics

/// An error from building, parsing or verifying a JWS: a stable ``Code``, a message naming the
/// thing concerned, what to do next, and where it was thrown.
public struct JOSEError: DiagnosticError {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }

        /// Not a compact JWS: wrong number of parts, bad base64url, `=` padding, bad JSON.
        public static let malformed = Code(name: "malformed")
        /// A header or claim value is missing, of the wrong type or out of range.
        public static let invalidValue = Code(name: "invalidValue")
        /// The signer cannot produce the requested algorithm with its key.
        public static let unsupportedAlgorithm = Code(name: "unsupportedAlgorithm")
        /// A certificate is needed for a thumbprint header and none was given.
        public static let certificateMissing = Code(name: "certificateMissing")
        /// Certificate bytes or PEM that could not be parsed.
        public static let invalidCertificate = Code(name: "invalidCertificate")
        /// The certificate's public key is not the signer's key.
        public static let certificateMismatch = Code(name: "certificateMismatch")
        /// The signature does not verify.
        public static let signatureInvalid = Code(name: "signatureInvalid")
    }

    public var code: Code
    public var message: String
    public var hint: String?
    public var cause: (any Error & Sendable)?
    public var location: SourceLocation
    /// The settings the hint is about (`certificate`, `alg`).
    public var settings: [String]

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

    public var domain: String { "jose" }
    public var codeName: String { code.description }
    public var underlying: (any Error & Sendable)? { cause }
}
