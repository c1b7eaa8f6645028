import CP11Kit

/// `CKO_*`.
public struct ObjectClass: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: CK_OBJECT_CLASS
    public init(rawValue: CK_OBJECT_CLASS) { self.rawValue = rawValue }
    init(_ value: CK_ULONG) { rawValue = value }

    public static let data = ObjectClass(CKO_DATA)
    public static let certificate = ObjectClass(CKO_CERTIFICATE)
    public static let publicKey = ObjectClass(CKO_PUBLIC_KEY)
    public static let privateKey = ObjectClass(CKO_PRIVATE_KEY)
    public static let secretKey = ObjectClass(CKO_SECRET_KEY)

    /// The RFC 7512 `type=` word.
    public var description: String {
        switch self {
        case .data: return "data"
        case .certificate: return "cert"
        case .publicKey: return "public"
        case .privateKey: return "private"
        case .secretKey: return "secret-key"
        default: return "CKO_0x" + String(rawValue, radix: 16)
        }
    }
}

/// `CKK_*`.
public struct KeyType: RawRepresentable, Hashable, Sendable {
    public var rawValue: CK_KEY_TYPE
    public init(rawValue: CK_KEY_TYPE) { self.rawValue = rawValue }
    init(_ value: CK_ULONG) { rawValue = value }
    public static let rsa = KeyType(CKK_RSA)
    public static let ec = KeyType(CKK_EC)
}

/// One attribute of a template: a type and its value bytes in the module's native layout.
public struct Attribute: Sendable, Hashable {
    public var type: CK_ATTRIBUTE_TYPE
    public var value: [UInt8]

    public init(_ type: CK_ATTRIBUTE_TYPE, bytes: [UInt8]) {
        self.type = type
        self.value = bytes
    }

    static func bool(_ type: CK_ATTRIBUTE_TYPE, _ value: Bool) -> Attribute {
        Attribute(type, bytes: [value ? UInt8(CK_TRUE) : UInt8(CK_FALSE)])
    }

    static func ulong(_ type: CK_ATTRIBUTE_TYPE, _ value: CK_ULONG) -> Attribute {
        Attribute(type, bytes: withUnsafeBytes(of: value) { Array($0) })
    }

    public static func objectClass(_ value: ObjectClass) -> Attribute { .ulong(CKA_CLASS, value.rawValue) }
    public static func keyType(_ value: KeyType) -> Attribute { .ulong(CKA_KEY_TYPE, value.rawValue) }
    public static func label(_ value: String) -> Attribute { Attribute(CKA_LABEL, bytes: Array(value.utf8)) }
    public static func id(_ value: [UInt8]) -> Attribute { Attribute(CKA_ID, bytes: value) }
    public static func token(_ value: Bool) -> Attribute { .bool(CKA_TOKEN, value) }
}

/// Runs `body` with a `CK_ATTRIBUTE` array pointing at copies of the template's values.
/// The copies are zeroed and freed afterwards (templates may carry secrets).
func withTemplate<R>(_ template: [Attribute], _ body: (UnsafeMutablePointer<CK_ATTRIBUTE>?, CK_ULONG) throws -> R) rethrows -> R {
    let buffers = template.map { attribute -> UnsafeMutableRawBufferPointer in
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(attribute.value.count, 1), alignment: 8)
        buffer.copyBytes(from: attribute.value)
        return buffer
    }
    defer {
        for buffer in buffers {
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            buffer.deallocate()
        }
    }
    var attributes = zip(template, buffers).map { attribute, buffer in
        CK_ATTRIBUTE(type: attribute.type, pValue: buffer.baseAddress, ulValueLen: CK_ULONG(attribute.value.count))
    }
    return try attributes.withUnsafeMutableBufferPointer { try body($0.baseAddress, CK_ULONG(template.count)) }
}

/// Attribute values read from an object; a missing key means the token would not give it.
public struct AttributeValues: Sendable {
    var values: [CK_ATTRIBUTE_TYPE: [UInt8]]

    public subscript(_ type: CK_ATTRIBUTE_TYPE) -> [UInt8]? { values[type] }

    func bool(_ type: CK_ATTRIBUTE_TYPE) -> Bool? { self[type].flatMap { $0.first.map { $0 != 0 } } }

    func ulong(_ type: CK_ATTRIBUTE_TYPE) -> CK_ULONG? {
        guard let bytes = self[type], bytes.count == MemoryLayout<CK_ULONG>.size else { return nil }
        return bytes.withUnsafeBytes { $0.loadUnaligned(as: CK_ULONG.self) }
    }

    func string(_ type: CK_ATTRIBUTE_TYPE) -> String? { self[type].map { String(decoding: $0, as: UTF8.self) } }
}
