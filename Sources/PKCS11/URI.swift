import CP11Kit
import Foundation

/// An RFC 7512 `pkcs11:` URI, parsed by p11-kit (`p11_kit_uri_parse`).
///
/// Token selection (`token`, `serial`, `manufacturer`, `model`, `slot-id`, …) is matched with
/// p11-kit's own matchers; object selection (`object`, `id`, `type`) becomes a `C_FindObjects`
/// template; `pin-source`, `pin-value`, `module-name` and `module-path` are exposed as values.
public final class PKCS11URI: @unchecked Sendable, CustomStringConvertible {
    // Immutable after init; p11-kit's getters and matchers only read it.
    private let uri: OpaquePointer
    /// The text it was parsed from.
    public let string: String

    public init(_ string: String) throws {
        guard let uri = p11_kit_uri_new() else { fatalError("p11_kit_uri_new: out of memory") }
        let trimmed = string.trimmingCharacters(in: .whitespacesAndNewlines)
        let result = p11_kit_uri_parse(trimmed, P11_KIT_URI_FOR_ANY, uri)
        guard result == P11_KIT_URI_OK.rawValue else {
            p11_kit_uri_free(uri)
            let reason = p11_kit_uri_message(result).map { String(cString: $0) } ?? "error \(result)"
            throw PKCS11Error(
                .invalidURI, "not a valid PKCS#11 URI: '\(Self.redact(trimmed))': \(reason)",
                hint: "a URI looks like pkcs11:token=MyToken;object=my-key;type=private — copy one from the token and object listings")
        }
        if p11_kit_uri_any_unrecognized(uri) != 0 {
            p11_kit_uri_free(uri)
            throw PKCS11Error(
                .invalidURI, "PKCS#11 URI '\(Self.redact(trimmed))' has an attribute or value p11-kit does not recognise",
                hint: "check the spelling: object types are type=private|public|cert|secret-key|data; a URI looks like pkcs11:token=MyToken;object=my-key;type=private")
        }
        self.uri = uri
        self.string = trimmed
    }

    deinit { p11_kit_uri_free(uri) }

    public var description: String { redacted }

    /// The URI with any `pin-value` replaced, safe to log or print.
    public var redacted: String { Self.redact(string) }

    /// `text` with every `pin-value=…` replaced (any case), whether or not it parses: safe to
    /// put in a message about a URI that did not.
    public static func redact(_ text: String) -> String {
        guard text.range(of: "pin-value", options: .caseInsensitive) != nil else { return text }
        return text.replacingOccurrences(
            of: #"(?i)pin-value=[^&;]*"#, with: "pin-value=REDACTED", options: .regularExpression)
    }

    private func optionalString(_ pointer: UnsafePointer<CChar>?) -> String? {
        guard let pointer else { return nil }
        let value = String(cString: pointer)
        return value.isEmpty ? nil : value
    }

    public var pinValue: String? { optionalString(p11_kit_uri_get_pin_value(uri)) }
    public var pinSource: String? { optionalString(p11_kit_uri_get_pin_source(uri)) }
    public var moduleName: String? { optionalString(p11_kit_uri_get_module_name(uri)) }
    public var modulePath: String? { optionalString(p11_kit_uri_get_module_path(uri)) }

    /// `slot-id`, when given.
    public var slotID: CK_SLOT_ID? {
        let id = p11_kit_uri_get_slot_id(uri)
        return id == CK_SLOT_ID(bitPattern: -1) ? nil : id
    }

    private func attribute(_ type: CK_ATTRIBUTE_TYPE) -> [UInt8]? {
        guard let attr = p11_kit_uri_get_attribute(uri, type),
              let value = attr.pointee.pValue
        else { return nil }
        return Array(UnsafeRawBufferPointer(start: value, count: Int(attr.pointee.ulValueLen)))
    }

    /// `object=` (CKA_LABEL).
    public var objectLabel: String? { attribute(CKA_LABEL).map { String(decoding: $0, as: UTF8.self) } }
    /// `id=` (CKA_ID), percent-decoded bytes.
    public var objectID: [UInt8]? { attribute(CKA_ID) }
    /// `type=` (CKA_CLASS).
    public var objectClass: ObjectClass? {
        guard let bytes = attribute(CKA_CLASS), bytes.count == MemoryLayout<CK_OBJECT_CLASS>.size else { return nil }
        return ObjectClass(rawValue: bytes.withUnsafeBytes { $0.loadUnaligned(as: CK_OBJECT_CLASS.self) })
    }

    /// True when the URI names an object (label, id or type).
    public var selectsObject: Bool { objectLabel != nil || objectID != nil || objectClass != nil }

    /// Whether `token` is one this URI selects (an empty URI selects every token).
    public func matches(token: TokenInfo) -> Bool {
        var raw = token.raw
        return p11_kit_uri_match_token_info(uri, &raw) == 1
    }

    /// Whether the slot is one this URI selects (`slot-id`, `slot-description`, …).
    public func matches(slot: Slot) -> Bool {
        var raw = slot.rawInfo
        if let slotID, slotID != slot.id { return false }
        return p11_kit_uri_match_slot_info(uri, &raw) == 1
    }

    /// Whether the module is one this URI selects (`library-manufacturer`, …).
    func matches(moduleInfo: inout CK_INFO) -> Bool {
        p11_kit_uri_match_module_info(uri, &moduleInfo) == 1
    }

    /// Formats a URI for a token, and optionally an object on it and the module it came from,
    /// so the user can paste it into the next command.
    public static func format(
        token: TokenInfo, label: String? = nil, id: [UInt8]? = nil, objectClass: ObjectClass? = nil,
        module: Module? = nil
    ) -> String {
        guard let uri = p11_kit_uri_new() else { fatalError("p11_kit_uri_new: out of memory") }
        defer { p11_kit_uri_free(uri) }
        if let info = p11_kit_uri_get_token_info(uri) {
            info.pointee.label = token.raw.label
            info.pointee.manufacturerID = token.raw.manufacturerID
            info.pointee.model = token.raw.model
            info.pointee.serialNumber = token.raw.serialNumber
        }
        func set(_ type: CK_ATTRIBUTE_TYPE, _ bytes: [UInt8]) {
            var bytes = bytes
            bytes.withUnsafeMutableBytes { buffer in
                var attr = CK_ATTRIBUTE(
                    type: type, pValue: buffer.baseAddress, ulValueLen: CK_ULONG(buffer.count))
                _ = p11_kit_uri_set_attribute(uri, &attr)
            }
        }
        if let label { set(CKA_LABEL, Array(label.utf8)) }
        if let id { set(CKA_ID, id) }
        if let objectClass {
            set(CKA_CLASS, withUnsafeBytes(of: objectClass.rawValue) { Array($0) })
        }
        if let module {
            switch module.spec {
            case .path: if let path = module.path { p11_kit_uri_set_module_path(uri, path) }
            case .name(let name): p11_kit_uri_set_module_name(uri, name)
            case .proxy: break
            }
        }
        var output: UnsafeMutablePointer<CChar>?
        let result = p11_kit_uri_format(uri, P11_KIT_URI_FOR_ANY, &output)
        guard result == P11_KIT_URI_OK.rawValue, let output else { return "pkcs11:" }
        defer { free(output) }
        return String(cString: output)
    }
}
