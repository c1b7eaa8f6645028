import CP11Kit
import Diagnostics

/// An error from the PKCS#11 layer: what failed, the PKCS#11 function and `CKR_*` value when a
/// module call failed, and what to do next.
///
/// Modelled on swift-nio's `FileSystemError`: a stable ``Code`` to switch on, a message written
/// for the person at the terminal, an optional hint, and where in the source it was thrown.
public struct PKCS11Error: DiagnosticError {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        enum Base: String, Hashable, Sendable {
            case moduleNotFound, moduleLoadFailed, functionFailed, invalidURI
            case tokenNotFound, tokenAmbiguous, objectNotFound, objectAmbiguous
            case pinUnavailable, pinIncorrect, pinLocked, pinExpired, pinSourceUnreadable
            case mechanismUnsupported, keyUnsuitable, invalidDigest, certificateMismatch
            case invalidArgument, invalidObject, moduleAnswerInvalid
        }
        let base: Base
        public var description: String { base.rawValue }

        /// The module file or registered name could not be found.
        public static let moduleNotFound = Code(base: .moduleNotFound)
        /// The module was found but could not be loaded or initialised.
        public static let moduleLoadFailed = Code(base: .moduleLoadFailed)
        /// A PKCS#11 function returned something other than `CKR_OK`.
        public static let functionFailed = Code(base: .functionFailed)
        /// A `pkcs11:` URI could not be parsed.
        public static let invalidURI = Code(base: .invalidURI)
        /// No token matched the URI.
        public static let tokenNotFound = Code(base: .tokenNotFound)
        /// More than one token matched the URI.
        public static let tokenAmbiguous = Code(base: .tokenAmbiguous)
        /// No object matched the URI.
        public static let objectNotFound = Code(base: .objectNotFound)
        /// More than one object matched where one was needed.
        public static let objectAmbiguous = Code(base: .objectAmbiguous)
        /// A PIN is needed and no source provided one.
        public static let pinUnavailable = Code(base: .pinUnavailable)
        /// `CKR_PIN_INCORRECT`: never retried automatically.
        public static let pinIncorrect = Code(base: .pinIncorrect)
        /// `CKR_PIN_LOCKED`.
        public static let pinLocked = Code(base: .pinLocked)
        /// `CKR_PIN_EXPIRED`.
        public static let pinExpired = Code(base: .pinExpired)
        /// A `pin-source` or PIN file could not be read.
        public static let pinSourceUnreadable = Code(base: .pinSourceUnreadable)
        /// The token cannot perform the requested algorithm.
        public static let mechanismUnsupported = Code(base: .mechanismUnsupported)
        /// The key cannot be used for this (wrong type, curve, size, or `CKA_SIGN` false).
        public static let keyUnsuitable = Code(base: .keyUnsuitable)
        /// A digest of the wrong length for the algorithm.
        public static let invalidDigest = Code(base: .invalidDigest)
        /// A certificate's public key is not the private key's.
        public static let certificateMismatch = Code(base: .certificateMismatch)
        /// A caller-supplied value is out of range.
        public static let invalidArgument = Code(base: .invalidArgument)
        /// An object on the token has attributes that make no sense (bad DER, unknown curve).
        public static let invalidObject = Code(base: .invalidObject)
        /// A module answered `CKR_OK` with a value no caller could use (a count or length beyond
        /// any sane bound, more results than room was given for).
        public static let moduleAnswerInvalid = Code(base: .moduleAnswerInvalid)
    }

    public var code: Code
    /// What went wrong, naming the thing concerned.
    public var message: String
    /// The PKCS#11 function that failed, e.g. `C_Login`.
    public var function: String?
    /// The value it returned.
    public var returnValue: ReturnValue?
    /// What to do next.
    public var hint: String?
    /// The underlying error, if any.
    public var cause: (any Error & Sendable)?
    public var location: SourceLocation
    /// The settings the hint is about (`module`, `pin-file`, `label`, …).
    public var settings: [String]

    public init(
        _ code: Code, _ message: String, function: String? = nil, returnValue: ReturnValue? = nil,
        hint: String? = nil, settings: [String] = [], cause: (any Error & Sendable)? = nil,
        file: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.function = function
        self.returnValue = returnValue
        self.hint = hint
        self.settings = settings
        self.cause = cause
        self.location = SourceLocation(file: file, line: line)
    }

    public var domain: String { "pkcs11" }
    public var codeName: String { code.description }
    public var underlying: (any Error & Sendable)? { cause }

    /// The failing PKCS#11 function and the `CKR_*` name it returned.
    public var details: [String: String] {
        var details: [String: String] = [:]
        details["function"] = function
        details["returnValue"] = returnValue?.name
        return details
    }

    /// One line for the terminal: message, then `(C_Function: CKR_NAME)`, then the hint.
    public var description: String {
        var text = message
        if let function, let returnValue {
            text += " (\(function): \(returnValue.name))"
        } else if let function {
            text += " (\(function))"
        }
        if let hint { text += "\nhint: \(hint)" }
        return text
    }
}

extension PKCS11Error {
    /// Whether the session it happened on may be left with an operation active (a module's
    /// nonsense answer, `CKR_OPERATION_ACTIVE`): such a session is closed, not reused.
    var leavesSessionUnusable: Bool {
        code == .moduleAnswerInvalid || returnValue == ReturnValue(CK_RV(CKR_OPERATION_ACTIVE))
    }

    /// A count or length a module returned, as an `Int` no larger than `limit`: every value a
    /// module returns is untrusted input, and `Int(_:)` of a large `CK_ULONG` would trap.
    static func checkedCount(
        _ value: CK_ULONG, limit: Int, _ function: String, _ what: String, file: String = #fileID, line: Int = #line
    ) throws -> Int {
        guard value <= CK_ULONG(limit) else {
            throw PKCS11Error(
                .moduleAnswerInvalid, "the module's \(function) reported \(what) \(value), more than the \(limit) p11jwt accepts",
                function: function, hint: "the PKCS#11 module misbehaves: report it to its vendor, or try another version of it",
                file: file, line: line)
        }
        return Int(value)
    }

    /// The error for a PKCS#11 call that did not return `CKR_OK`.
    static func call(
        _ function: String, _ rv: ReturnValue, _ message: String? = nil, hint: String? = nil,
        file: String = #fileID, line: Int = #line
    ) -> PKCS11Error {
        let code: Code
        switch rv {
        case .pinIncorrect: code = .pinIncorrect
        case .pinLocked: code = .pinLocked
        case .pinExpired: code = .pinExpired
        default: code = .functionFailed
        }
        return PKCS11Error(
            code, message ?? "\(function) failed", function: function, returnValue: rv,
            hint: hint ?? defaultHint(rv), file: file, line: line)
    }

    static func defaultHint(_ rv: ReturnValue) -> String? {
        switch rv.rawValue {
        case CK_RV(CKR_USER_NOT_LOGGED_IN):
            return "log in first: give the PIN in a PIN file, the environment or pin-source in the URI"
        case CK_RV(CKR_TOKEN_NOT_PRESENT), CK_RV(CKR_DEVICE_REMOVED):
            return "the token was removed: insert it again and retry"
        case CK_RV(CKR_KEY_FUNCTION_NOT_PERMITTED):
            return "the key does not allow this operation (CKA_SIGN is false?)"
        case CK_RV(CKR_MECHANISM_INVALID):
            return "the token does not support this mechanism: its mechanism list says what it can do"
        case CK_RV(CKR_SESSION_READ_ONLY), CK_RV(CKR_TOKEN_WRITE_PROTECTED):
            return "the token is write-protected"
        default:
            return nil
        }
    }
}
