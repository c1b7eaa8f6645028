import CP11Kit
import Foundation

// Logging in: once, never retried, the PIN held only for keys that ask for it before each signature.

extension Token {
    public var isLoggedIn: Bool { credentials.withLock { $0.loggedIn } }

    /// Logs the user in once, with the first PIN source that has a PIN. A wrong, locked or
    /// expired PIN is reported with the token's PIN state and never retried.
    public func login(pins: PINProvider, uri: PKCS11URI? = nil) throws {
        if isLoggedIn { return }
        let current = try currentInfo()
        guard current.loginRequired else { return }
        // The state check and the C_Login together: another context may be logging in.
        try module.serializingLogins { try login(pins: pins, uri: uri, current: current) }
    }

    private func login(pins: PINProvider, uri: PKCS11URI?, current: TokenInfo) throws {
        let state = try withPrimary { try $0.state() }
        if state == CK_STATE(CKS_RO_USER_FUNCTIONS) || state == CK_STATE(CKS_RW_USER_FUNCTIONS) {
            // Another context in this process logged in already (login is per application).
            // Still hold the PIN, from a source that needs no prompt, for keys that want a
            // CKU_CONTEXT_SPECIFIC login before each signature.
            var quiet = pins
            quiet.allowPrompt = false
            let held = (try? quiet.pin(uri: uri, tokenLabel: current.label))?.0
            credentials.withLock {
                $0.loggedIn = true
                $0.contextPIN = held.map { .pin($0) } ?? (current.protectedAuthenticationPath ? .protectedPath : nil)
            }
            return
        }
        // A locked PIN: no C_Login at all (the token would only answer CKR_PIN_LOCKED, and some
        // count even that).
        if current.pinState.locked {
            throw PKCS11Error(.pinLocked, "the user PIN of token '\(current.label)' is locked; no login was attempted",
                              hint: "unlock it with the SO PIN (e.g. 'pkcs11-tool --init-pin --login --login-type so' or the vendor's tool)")
        }
        let found = try pins.pin(uri: uri, tokenLabel: current.label)
        let contextPIN: ContextPIN
        if let (pin, origin) = found {
            logger.debug("logging in", metadata: ["token": "\(current.label)", "pin-source": "\(origin)"])
            try login(pin: pin, origin: origin)
            contextPIN = .pin(pin)
        } else if current.protectedAuthenticationPath {
            logger.info("enter the PIN on the reader's PIN pad", metadata: ["token": "\(current.label)"])
            try login(pin: nil, origin: .protectedPath)
            contextPIN = .protectedPath
        } else {
            throw PKCS11Error(
                .pinUnavailable, "token '\(current.label)' needs a PIN and none was given",
                hint: pins.howToGiveAPIN, settings: ["pin-file"])
        }
        credentials.withLock {
            $0.loggedIn = true
            $0.contextPIN = contextPIN
        }
    }

    private func login(pin: SecretBytes?, origin: PINOrigin) throws {
        do {
            try withPrimary { try $0.login(pin: pin) }
        } catch var error as PKCS11Error where [.pinIncorrect, .pinLocked, .pinExpired].contains(error.code) {
            let state = (try? currentInfo())?.pinState
            let label = info.label
            switch error.code {
            case .pinIncorrect:
                error.message = "wrong PIN for token '\(label)' (from \(origin))"
                error.hint = "the PIN was not retried. Token PIN state: \(state?.description ?? "unknown")"
                    + (state?.finalTry == true ? " — ONE more wrong PIN locks the token" : "")
                    + ". Check the PIN source before trying again."
            case .pinLocked where state?.locked == false:
                // The token refuses logins without marking its PIN locked: what a TPM in
                // dictionary-attack lockout does (tpm2-pkcs11), for a while, whatever the PIN.
                error.message = "token '\(label)' refuses logins for now (its PIN is not marked locked)"
                error.hint = "a TPM in dictionary-attack lockout does this after too many wrong PINs: wait for its lockout recovery time, "
                    + "or clear it with the lockout authorisation ('tpm2_dictionarylockout --clear-lockout'); the PIN was not retried"
            case .pinLocked:
                error.message = "the user PIN of token '\(label)' is locked"
                error.hint = "unlock it with the SO PIN (e.g. 'pkcs11-tool --init-pin --login --login-type so' or the vendor's tool)"
            default:
                error.message = "the user PIN of token '\(label)' has expired"
                error.hint = "change it with the token's tools (e.g. 'pkcs11-tool --change-pin') and try again"
            }
            throw error
        }
    }

    /// The PIN this token was logged in with, kept in locked memory (nil for a PIN pad or no
    /// login): what a long-running holder (the agent) logs in with again after the token was
    /// removed and came back.
    public var heldPIN: SecretBytes? {
        credentials.withLock {
            if case .pin(let pin) = $0.contextPIN { return pin }
            return nil
        }
    }

    /// Logs in with a PIN held from an earlier login (see ``heldPIN``); a wrong or locked PIN is
    /// an error as with ``login(pins:uri:)``, never retried.
    public func login(heldPIN pin: SecretBytes) throws {
        if isLoggedIn { return }
        guard try currentInfo().loginRequired else { return }
        do {
            try module.serializingLogins { try login(pin: pin, origin: .held) }
        } catch let error as PKCS11Error where error.returnValue == ReturnValue(CK_RV(CKR_USER_ALREADY_LOGGED_IN)) {
            // Another session of this application is logged in already: that is success.
        }
        credentials.withLock {
            $0.loggedIn = true
            $0.contextPIN = .pin(pin)
        }
    }

    /// Logs out and forgets the PIN.
    public func logout() {
        withPrimary { $0.logout() }
        credentials.withLock { $0 = Credentials() }
    }
}
