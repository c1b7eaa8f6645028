import CP11Kit

/// A PKCS#11 session: a thin, typed wrapper of the session functions.
///
/// Like rust-cryptoki's `Session`, it is used by one caller at a time: ``Token`` keeps its
/// persistent session under a `Mutex` and hands pool sessions to one caller at a time. Internal
/// and not `Sendable`: only `Token` and its pool hold sessions. A session not closed by then is
/// closed when it goes away.
final class Session {
    public let module: Module
    public let slotID: CK_SLOT_ID
    public let handle: CK_SESSION_HANDLE
    private var f: CK_FUNCTION_LIST { module.functions.pointee }

    public init(module: Module, slotID: CK_SLOT_ID, readWrite: Bool) throws {
        var flags = CK_FLAGS(CKF_SERIAL_SESSION)
        if readWrite { flags |= CK_FLAGS(CKF_RW_SESSION) }
        var handle: CK_SESSION_HANDLE = 0
        let rv = ReturnValue(module.functions.pointee.C_OpenSession(slotID, flags, nil, nil, &handle))
        guard rv.isOK else {
            throw PKCS11Error.call("C_OpenSession", rv, "cannot open a session on slot \(slotID)")
        }
        self.module = module
        self.slotID = slotID
        self.handle = handle
    }

    private var isClosed = false

    /// `C_CloseSession` (once); errors are ignored (the session is gone either way).
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        _ = f.C_CloseSession(handle)
    }

    deinit { close() }

    /// `C_Login`. `pin` nil logs in through a protected authentication path (PIN pad).
    /// `CKR_USER_ALREADY_LOGGED_IN` is success: login state is per application.
    public func login(userType: CK_USER_TYPE = CK_USER_TYPE(CKU_USER), pin: SecretBytes?) throws {
        let rv: ReturnValue
        if let pin {
            rv = pin.withUnsafeBytes { bytes in
                ReturnValue(f.C_Login(
                    handle, userType,
                    UnsafeMutablePointer(mutating: bytes.baseAddress?.assumingMemoryBound(to: CK_UTF8CHAR.self)),
                    CK_ULONG(bytes.count)))
            }
        } else {
            rv = ReturnValue(f.C_Login(handle, userType, nil, 0))
        }
        if rv.isOK || (rv == .userAlreadyLoggedIn && userType == CK_USER_TYPE(CKU_USER)) { return }
        throw PKCS11Error.call("C_Login", rv)
    }

    public func logout() {
        _ = f.C_Logout(handle)
    }

    /// `C_GetSessionInfo` state (`CKS_*`).
    public func state() throws -> CK_STATE {
        var info = CK_SESSION_INFO()
        let rv = ReturnValue(f.C_GetSessionInfo(handle, &info))
        guard rv.isOK else { throw PKCS11Error.call("C_GetSessionInfo", rv) }
        return info.state
    }

    /// The longest attribute value read (a certificate chain is a few KiB).
    static let maximumAttributeLength = 1 << 20
    /// The longest signature (RSA-16384 is 2 KiB).
    static let maximumSignatureLength = 1 << 16

    /// `C_FindObjectsInit` / `C_FindObjects` / `C_FindObjectsFinal`.
    public func findObjects(_ template: [Attribute]) throws -> [CK_OBJECT_HANDLE] {
        var rv = withTemplate(template) { ReturnValue(f.C_FindObjectsInit(handle, $0, $1)) }
        guard rv.isOK else { throw PKCS11Error.call("C_FindObjectsInit", rv) }
        defer { _ = f.C_FindObjectsFinal(handle) }
        var found: [CK_OBJECT_HANDLE] = []
        var batch = [CK_OBJECT_HANDLE](repeating: 0, count: 64)
        while true {
            var count: CK_ULONG = 0
            rv = ReturnValue(f.C_FindObjects(handle, &batch, CK_ULONG(batch.count), &count))
            guard rv.isOK else { throw PKCS11Error.call("C_FindObjects", rv) }
            if count == 0 { break }
            found += batch.prefix(try PKCS11Error.checkedCount(count, limit: batch.count, "C_FindObjects", "an object count of"))
        }
        return found
    }

    /// `C_GetAttributeValue` for several attributes at once. Attributes the token will not
    /// give (sensitive, or not of this object type) are absent from the result.
    public func attributes(_ object: CK_OBJECT_HANDLE, _ types: [CK_ATTRIBUTE_TYPE]) throws -> AttributeValues {
        var query = types.map { CK_ATTRIBUTE(type: $0, pValue: nil, ulValueLen: 0) }
        var rv = ReturnValue(f.C_GetAttributeValue(handle, object, &query, CK_ULONG(query.count)))
        guard rv.isOK || rv == .attributeSensitive || rv == .attributeTypeInvalid || rv == .bufferTooSmall else {
            throw PKCS11Error.call("C_GetAttributeValue", rv)
        }
        let unavailable = CK_ULONG(bitPattern: -1)
        var result: [CK_ATTRIBUTE_TYPE: [UInt8]] = [:]
        let wanted = query.filter { $0.ulValueLen != unavailable }
        guard !wanted.isEmpty else { return AttributeValues(values: result) }
        let lengths = try wanted.map { try PKCS11Error.checkedCount($0.ulValueLen, limit: Self.maximumAttributeLength, "C_GetAttributeValue", "an attribute length of") }
        let buffers = lengths.map { UnsafeMutableRawBufferPointer.allocate(byteCount: max($0, 1), alignment: 8) }
        defer { buffers.forEach { $0.deallocate() } }
        var filled = zip(wanted, buffers).map { attr, buffer in
            CK_ATTRIBUTE(type: attr.type, pValue: buffer.baseAddress, ulValueLen: attr.ulValueLen)
        }
        rv = ReturnValue(f.C_GetAttributeValue(handle, object, &filled, CK_ULONG(filled.count)))
        guard rv.isOK || rv == .attributeSensitive || rv == .attributeTypeInvalid else {
            throw PKCS11Error.call("C_GetAttributeValue", rv)
        }
        for (attr, buffer) in zip(filled, buffers) where attr.ulValueLen != unavailable {
            result[attr.type] = Array(buffer.prefix(try PKCS11Error.checkedCount(attr.ulValueLen, limit: buffer.count, "C_GetAttributeValue", "an attribute length of")))
        }
        return AttributeValues(values: result)
    }

    /// `C_SetAttributeValue`.
    public func setAttributes(_ object: CK_OBJECT_HANDLE, _ template: [Attribute]) throws {
        let rv = withTemplate(template) { ReturnValue(f.C_SetAttributeValue(handle, object, $0, $1)) }
        guard rv.isOK else { throw PKCS11Error.call("C_SetAttributeValue", rv) }
    }

    /// `C_SignInit` + `C_Sign` over `data` (a digest, DigestInfo or encoded block — never the
    /// message). `contextPIN` is given for `CKA_ALWAYS_AUTHENTICATE` keys: a
    /// `CKU_CONTEXT_SPECIFIC` login follows `C_SignInit`.
    public func sign(
        mechanism: MechanismType, parameter: [UInt8]? = nil, key: CK_OBJECT_HANDLE, data: [UInt8],
        contextPIN: ContextPIN? = nil
    ) throws -> [UInt8] {
        var rv = withMechanism(mechanism, parameter) { ReturnValue(f.C_SignInit(handle, $0, key)) }
        guard rv.isOK else { throw PKCS11Error.call("C_SignInit", rv, "\(mechanism) sign init failed") }
        if let contextPIN {
            switch contextPIN {
            case .pin(let pin): try login(userType: CK_USER_TYPE(CKU_CONTEXT_SPECIFIC), pin: pin)
            case .protectedPath: try login(userType: CK_USER_TYPE(CKU_CONTEXT_SPECIFIC), pin: nil)
            }
        }
        var input = data
        var output = [UInt8](repeating: 0, count: 512)
        var length = CK_ULONG(output.count)
        rv = ReturnValue(f.C_Sign(handle, &input, CK_ULONG(input.count), &output, &length))
        if rv == .bufferTooSmall {
            output = [UInt8](repeating: 0, count: try PKCS11Error.checkedCount(length, limit: Self.maximumSignatureLength, "C_Sign", "a signature length of"))
            rv = ReturnValue(f.C_Sign(handle, &input, CK_ULONG(input.count), &output, &length))
        }
        guard rv.isOK else { throw PKCS11Error.call("C_Sign", rv, "\(mechanism) signature failed") }
        return Array(output.prefix(try PKCS11Error.checkedCount(length, limit: output.count, "C_Sign", "a signature length of")))
    }

    /// A `CK_MECHANISM` with its parameter bytes (none: a null pointer), valid during `body`.
    private func withMechanism<R>(_ mechanism: MechanismType, _ parameter: [UInt8]?, _ body: (UnsafeMutablePointer<CK_MECHANISM>) -> R) -> R {
        var parameterBytes = parameter ?? []
        return parameterBytes.withUnsafeMutableBytes { buffer in
            var mech = CK_MECHANISM(
                mechanism: mechanism.rawValue,
                pParameter: parameter == nil ? nil : buffer.baseAddress,
                ulParameterLen: CK_ULONG(parameter == nil ? 0 : buffer.count))
            return body(&mech)
        }
    }

    /// `C_VerifyInit` + `C_Verify` of `signature` over `data` with a public key: false for
    /// `CKR_SIGNATURE_INVALID` / `CKR_SIGNATURE_LEN_RANGE`, an error for any other failure.
    public func verify(mechanism: MechanismType, parameter: [UInt8]? = nil, key: CK_OBJECT_HANDLE, data: [UInt8], signature: [UInt8]) throws -> Bool {
        var rv = withMechanism(mechanism, parameter) { ReturnValue(f.C_VerifyInit(handle, $0, key)) }
        guard rv.isOK else { throw PKCS11Error.call("C_VerifyInit", rv, "\(mechanism) verify init failed") }
        var input = data
        var signature = signature
        rv = ReturnValue(f.C_Verify(handle, &input, CK_ULONG(input.count), &signature, CK_ULONG(signature.count)))
        if rv.rawValue == CK_RV(CKR_SIGNATURE_INVALID) || rv.rawValue == CK_RV(CKR_SIGNATURE_LEN_RANGE) { return false }
        guard rv.isOK else { throw PKCS11Error.call("C_Verify", rv, "\(mechanism) verification failed") }
        return true
    }

    /// `C_GenerateKeyPair`; returns (public, private) handles.
    public func generateKeyPair(
        mechanism: MechanismType, publicTemplate: [Attribute], privateTemplate: [Attribute]
    ) throws -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
        var mech = CK_MECHANISM(mechanism: mechanism.rawValue, pParameter: nil, ulParameterLen: 0)
        var publicKey: CK_OBJECT_HANDLE = 0
        var privateKey: CK_OBJECT_HANDLE = 0
        let rv = withTemplate(publicTemplate) { pub, pubCount in
            withTemplate(privateTemplate) { priv, privCount in
                ReturnValue(f.C_GenerateKeyPair(handle, &mech, pub, pubCount, priv, privCount, &publicKey, &privateKey))
            }
        }
        guard rv.isOK else { throw PKCS11Error.call("C_GenerateKeyPair", rv, "\(mechanism) key generation failed") }
        return (publicKey, privateKey)
    }

    /// `C_CreateObject`.
    public func createObject(_ template: [Attribute]) throws -> CK_OBJECT_HANDLE {
        var object: CK_OBJECT_HANDLE = 0
        let rv = withTemplate(template) { ReturnValue(f.C_CreateObject(handle, $0, $1, &object)) }
        guard rv.isOK else { throw PKCS11Error.call("C_CreateObject", rv) }
        return object
    }

    /// `C_DestroyObject`.
    public func destroyObject(_ object: CK_OBJECT_HANDLE) throws {
        let rv = ReturnValue(f.C_DestroyObject(handle, object))
        guard rv.isOK else { throw PKCS11Error.call("C_DestroyObject", rv) }
    }

    /// `C_GenerateRandom`.
    public func random(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let rv = ReturnValue(f.C_GenerateRandom(handle, &bytes, CK_ULONG(count)))
        guard rv.isOK else { throw PKCS11Error.call("C_GenerateRandom", rv) }
        return bytes
    }
}

/// How a `CKA_ALWAYS_AUTHENTICATE` key is re-authenticated before each signature.
public enum ContextPIN: Sendable {
    case pin(SecretBytes)
    case protectedPath
}
