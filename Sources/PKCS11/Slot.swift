import CP11Kit

/// A slot of a module. Slot ids are not stable (SoftHSM moves a token to a new slot when it is
/// initialised): find tokens by label or serial, through a ``PKCS11URI``.
public struct Slot: Sendable {
    public let module: Module
    public let id: CK_SLOT_ID
    public let description: String
    public let manufacturer: String
    public let flags: CK_FLAGS

    init(module: Module, id: CK_SLOT_ID) throws {
        var info = CK_SLOT_INFO()
        let rv = ReturnValue(module.functions.pointee.C_GetSlotInfo(id, &info))
        guard rv.isOK else { throw PKCS11Error.call("C_GetSlotInfo", rv, "cannot read slot \(id)") }
        self.module = module
        self.id = id
        self.description = paddedString(info.slotDescription)
        self.manufacturer = paddedString(info.manufacturerID)
        self.flags = info.flags
        var normalized = info
        blankPadded(&normalized.slotDescription)
        blankPadded(&normalized.manufacturerID)
        self.rawInfo = normalized
    }

    let rawInfo: CK_SLOT_INFO

    public var tokenPresent: Bool { flags & CK_FLAGS(CKF_TOKEN_PRESENT) != 0 }

    /// Reads the token's information afresh (`C_GetTokenInfo`): PIN state changes over time.
    public func tokenInfo() throws -> TokenInfo {
        var info = CK_TOKEN_INFO()
        let rv = ReturnValue(module.functions.pointee.C_GetTokenInfo(id, &info))
        guard rv.isOK else { throw PKCS11Error.call("C_GetTokenInfo", rv, "cannot read the token in slot \(id)") }
        return TokenInfo(info)
    }

    /// The mechanisms the token offers, with their info.
    public func mechanisms() throws -> [MechanismInfo] {
        let f = module.functions.pointee
        var count: CK_ULONG = 0
        var rv = ReturnValue(f.C_GetMechanismList(id, nil, &count))
        guard rv.isOK else { throw PKCS11Error.call("C_GetMechanismList", rv) }
        var types = [CK_MECHANISM_TYPE](repeating: 0, count: try PKCS11Error.checkedCount(count, limit: 65536, "C_GetMechanismList", "a mechanism count of"))
        rv = ReturnValue(f.C_GetMechanismList(id, &types, &count))
        guard rv.isOK else { throw PKCS11Error.call("C_GetMechanismList", rv) }
        return try types.prefix(try PKCS11Error.checkedCount(count, limit: types.count, "C_GetMechanismList", "a mechanism count of")).map { type in
            var info = CK_MECHANISM_INFO()
            let rv = ReturnValue(f.C_GetMechanismInfo(id, type, &info))
            guard rv.isOK else { throw PKCS11Error.call("C_GetMechanismInfo", rv) }
            return MechanismInfo(
                type: MechanismType(type), minKeySize: UInt(info.ulMinKeySize),
                maxKeySize: UInt(info.ulMaxKeySize), flags: info.flags)
        }
    }
}

/// `CK_TOKEN_INFO`, decoded.
public struct TokenInfo: Sendable {
    public let label: String
    public let manufacturer: String
    public let model: String
    public let serialNumber: String
    public let flags: CK_FLAGS
    public let maxSessionCount: CK_ULONG
    public let minPinLength: CK_ULONG
    public let maxPinLength: CK_ULONG
    /// The raw structure, for p11-kit URI matching and formatting.
    public let raw: CK_TOKEN_INFO

    init(_ info: CK_TOKEN_INFO) {
        // Some modules (tpm2-pkcs11) pad with NUL where PKCS#11 says blanks: p11-kit would then
        // match nothing and print %00 in every URI. The raw copy is blank-padded, as p11-kit expects.
        var normalized = info
        blankPadded(&normalized.label)
        blankPadded(&normalized.manufacturerID)
        blankPadded(&normalized.model)
        blankPadded(&normalized.serialNumber)
        raw = normalized
        label = paddedString(info.label)
        manufacturer = paddedString(info.manufacturerID)
        model = paddedString(info.model)
        serialNumber = paddedString(info.serialNumber)
        flags = info.flags
        maxSessionCount = info.ulMaxSessionCount
        minPinLength = info.ulMinPinLen
        maxPinLength = info.ulMaxPinLen
    }

    private func has(_ flag: CK_FLAGS) -> Bool { flags & CK_FLAGS(flag) != 0 }

    public var isInitialized: Bool { has(CKF_TOKEN_INITIALIZED) }
    public var loginRequired: Bool { has(CKF_LOGIN_REQUIRED) }
    public var userPinInitialized: Bool { has(CKF_USER_PIN_INITIALIZED) }
    public var protectedAuthenticationPath: Bool { has(CKF_PROTECTED_AUTHENTICATION_PATH) }
    public var writeProtected: Bool { has(CKF_WRITE_PROTECTED) }
    public var hasRNG: Bool { has(CKF_RNG) }

    /// The user PIN state flags, for error messages and `p11jwt tokens`.
    public var pinState: PINState {
        PINState(
            countLow: has(CKF_USER_PIN_COUNT_LOW), finalTry: has(CKF_USER_PIN_FINAL_TRY),
            locked: has(CKF_USER_PIN_LOCKED), toBeChanged: has(CKF_USER_PIN_TO_BE_CHANGED))
    }

    /// The flags, by their `CKF_*` names.
    public var flagNames: [String] {
        let table: [(CK_FLAGS, String)] = [
            (CKF_RNG, "CKF_RNG"), (CKF_WRITE_PROTECTED, "CKF_WRITE_PROTECTED"),
            (CKF_LOGIN_REQUIRED, "CKF_LOGIN_REQUIRED"), (CKF_USER_PIN_INITIALIZED, "CKF_USER_PIN_INITIALIZED"),
            (CKF_PROTECTED_AUTHENTICATION_PATH, "CKF_PROTECTED_AUTHENTICATION_PATH"),
            (CKF_TOKEN_INITIALIZED, "CKF_TOKEN_INITIALIZED"),
            (CKF_USER_PIN_COUNT_LOW, "CKF_USER_PIN_COUNT_LOW"), (CKF_USER_PIN_FINAL_TRY, "CKF_USER_PIN_FINAL_TRY"),
            (CKF_USER_PIN_LOCKED, "CKF_USER_PIN_LOCKED"), (CKF_USER_PIN_TO_BE_CHANGED, "CKF_USER_PIN_TO_BE_CHANGED"),
            (CKF_SO_PIN_LOCKED, "CKF_SO_PIN_LOCKED"),
        ]
        return table.filter { has($0.0) }.map(\.1)
    }
}

/// The user PIN's state as the token reports it.
public struct PINState: Sendable, Hashable, Codable, CustomStringConvertible {
    public var countLow: Bool
    public var finalTry: Bool
    public var locked: Bool
    public var toBeChanged: Bool

    public var description: String {
        if locked { return "locked" }
        if finalTry { return "final try left" }
        if countLow { return "failed attempts counted (count low)" }
        if toBeChanged { return "must be changed" }
        return "ok"
    }
}
