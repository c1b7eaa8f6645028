/// An error from the Entra layer: a stable ``Code``, a message naming the value concerned, what
/// to do next, and where it was thrown.
public struct EntraError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        let name: String
        public var description: String { name }

        /// A tenant, client id, object id, lifetime, URL or claim that cannot be used.
        public static let invalidParameter = Code(name: "invalidParameter")
        /// The key cannot make what Entra or Graph accepts (e.g. an EC key for a PoP proof).
        public static let unsupportedKey = Code(name: "unsupportedKey")
    }

    public var code: Code
    public var message: String
    public var hint: String?
    public var location: String

    public init(_ code: Code, _ message: String, hint: String? = nil, file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.hint = hint
        self.location = "\(file):\(line)"
    }

    public var description: String {
        var text = message
        if let hint { text += "\nhint: \(hint)" }
        return text
    }
}
