import CP11Kit
import Foundation
import JOSE
import Logging
import SwiftASN1
import Synchronization
import X509

/// An open token: one persistent session kept for the token's life (it holds the login and
/// keeps object handles valid) plus a bounded pool of sessions for parallel signing.
///
/// All methods are thread-safe. Work on the persistent session (finding objects, key
/// generation, creating objects) is serialised; signatures run in parallel on the pool.
public final class Token: Sendable {
    public struct Options: Sendable {
        /// The most sessions the signing pool opens (further bounded by the token's
        /// `ulMaxSessionCount`).
        public var maxPoolSessions: Int
        public init(maxPoolSessions: Int = max(4, ProcessInfo.processInfo.activeProcessorCount * 2)) {
            self.maxPoolSessions = maxPoolSessions
        }
    }

    public let module: Module
    public let slot: Slot
    /// The token's information when it was opened.
    public let info: TokenInfo
    /// A URI that selects this token.
    public let uri: String
    public let mechanisms: MechanismSet
    let logger: Logger
    private let primary: Mutex<Session>
    let pool: SessionPool
    private let credentials = Mutex<Credentials>(Credentials())

    private struct Credentials {
        var loggedIn = false
        /// Kept only for `CKA_ALWAYS_AUTHENTICATE` keys; zeroed when the token is closed.
        var contextPIN: ContextPIN?
    }

    /// Finds the one token `uri` selects and opens it.
    public static func open(_ uri: PKCS11URI, module: Module, options: Options = Options(), logger: Logger) throws -> Token {
        try Token(slot: try find(uri, module: module), options: options, logger: logger)
    }

    /// The one initialised token the URI selects; an error naming the tokens seen otherwise.
    /// Finding none, it looks once more after ``labelSettleTime``: a token can be unreadable for
    /// a moment while another process writes its store (seen with SoftHSM during a rotation).
    public static func find(_ uri: PKCS11URI, module: Module) throws -> Slot {
        do {
            return try findOnce(uri, module: module)
        } catch let error as PKCS11Error where error.code == .tokenNotFound {
            Thread.sleep(forTimeInterval: labelSettleTime)
            return try findOnce(uri, module: module)
        }
    }

    private static func findOnce(_ uri: PKCS11URI, module: Module) throws -> Slot {
        var moduleInfo = module.rawInfo
        let slots = try module.slots(tokenPresent: true)
        var seen: [(Slot, TokenInfo)] = []
        for slot in slots {
            guard let info = try? slot.tokenInfo(), info.isInitialized else { continue }
            seen.append((slot, info))
        }
        let moduleMatches = uri.matches(moduleInfo: &moduleInfo)
        let matches = seen.filter { slot, info in
            moduleMatches && uri.matches(slot: slot) && uri.matches(token: info)
        }
        func list(_ tokens: [(Slot, TokenInfo)]) -> String {
            tokens.map { "  \(PKCS11URI.format(token: $0.1, module: module))" }.joined(separator: "\n")
        }
        if matches.count == 1 { return matches[0].0 }
        if matches.isEmpty {
            throw PKCS11Error(
                .tokenNotFound,
                "no token matches \(uri.redacted) in \(module.spec)",
                hint: seen.isEmpty
                    ? "the module reports no initialised token: is the token inserted / initialised? (SoftHSM: check SOFTHSM2_CONF and hsm-config/init-softhsm)"
                    : "tokens seen:\n\(list(seen))")
        }
        throw PKCS11Error(
            .tokenAmbiguous, "\(matches.count) tokens match \(uri.redacted)",
            hint: "add serial= to the URI to pick one:\n\(list(matches))")
    }

    public init(slot: Slot, options: Options = Options(), logger: Logger) throws {
        let info = try slot.tokenInfo()
        let session: Session
        if info.writeProtected {
            session = try Session(module: slot.module, slotID: slot.id, readWrite: false)
        } else {
            session = try Session(module: slot.module, slotID: slot.id, readWrite: true)
        }
        self.module = slot.module
        self.slot = slot
        self.info = info
        self.uri = PKCS11URI.format(token: info, module: slot.module)
        self.logger = logger
        self.primary = Mutex(session)
        do {
            self.mechanisms = MechanismSet(try slot.mechanisms())
        } catch {
            session.close()
            throw error
        }
        // ulMaxSessionCount: 0 is "effectively infinite", ~0 is "unavailable".
        var capacity = options.maxPoolSessions
        let maxCount = info.maxSessionCount
        if maxCount != 0 && maxCount != CK_ULONG(bitPattern: -1) {
            capacity = min(capacity, max(1, Int(clamping: maxCount) - 1))
        }
        self.pool = SessionPool(module: slot.module, slotID: slot.id, capacity: capacity, logger: logger)
        logger.debug("opened token", metadata: ["token": "\(info.label)", "slot": "\(slot.id)", "pool": "\(capacity)"])
    }

    /// Closes the pool and the persistent session and forgets the PIN. The module stays loaded.
    public func close() {
        pool.close()
        primary.withLock { $0.close() }
        credentials.withLock { $0 = Credentials() }
    }

    /// Sessions open in the signing pool now.
    public var poolSessionCount: Int { pool.openCount }
    public var poolCapacity: Int { pool.capacity }

    /// Runs `body` on the persistent session; `writing` for calls that change token objects.
    func withPrimary<R>(writing: Bool = false, _ body: (Session) throws -> R) rethrows -> R {
        try module.withObjectStore(writing: writing) { try primary.withLock { try body($0) } }
    }

    /// Reads the token's information afresh.
    public func currentInfo() throws -> TokenInfo { try slot.tokenInfo() }

    /// A URI for an object on this token.
    public func objectURI(label: String?, id: [UInt8]?, objectClass: ObjectClass) -> String {
        PKCS11URI.format(token: info, label: label, id: id, objectClass: objectClass, module: module)
    }

    // MARK: - Login

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
                hint: pins.howToGiveAPIN)
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

    // MARK: - Objects

    private func identity(_ session: Session, _ handle: CK_OBJECT_HANDLE, _ values: AttributeValues, _ objectClass: ObjectClass) -> ObjectIdentity {
        let label = values.string(CKA_LABEL).flatMap { $0.isEmpty ? nil : $0 }
        let id = values[CKA_ID].flatMap { $0.isEmpty ? nil : $0 }
        return ObjectIdentity(
            handle: handle, objectClass: objectClass, label: label, id: id,
            uri: objectURI(label: label, id: id, objectClass: objectClass))
    }

    private func template(_ uri: PKCS11URI?, _ objectClass: ObjectClass) -> [Attribute] {
        var template: [Attribute] = [.objectClass(objectClass)]
        if let label = uri?.objectLabel { template.append(.label(label)) }
        if let id = uri?.objectID { template.append(.id(id)) }
        return template
    }

    /// Private keys selected by the URI's `object` / `id` (all when it has neither).
    public func privateKeys(matching uri: PKCS11URI? = nil) throws -> [PrivateKeyObject] {
        try withPrimary { session in
            try session.findObjects(template(uri, .privateKey)).map { try privateKey(session, $0) }
        }
    }

    func privateKey(_ session: Session, _ handle: CK_OBJECT_HANDLE) throws -> PrivateKeyObject {
        let v = try session.attributes(handle, [
            CKA_LABEL, CKA_ID, CKA_KEY_TYPE, CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS, CKA_SIGN,
            CKA_ALWAYS_AUTHENTICATE, CKA_SENSITIVE, CKA_EXTRACTABLE,
        ])
        let identity = identity(session, handle, v, .privateKey)
        let keyType = KeyType(rawValue: v.ulong(CKA_KEY_TYPE) ?? CK_KEY_TYPE(bitPattern: -1))
        var publicKey: PublicKey?
        var curve: Curve?
        var bits: Int?
        if keyType == .rsa, let n = v[CKA_MODULUS], let e = v[CKA_PUBLIC_EXPONENT] {
            publicKey = .rsa(modulus: n, exponent: e)
            bits = publicKey?.bits
        } else if keyType == .ec {
            curve = v[CKA_EC_PARAMS].flatMap { Curve(ecParameters: $0) }
            // PKCS#11 private EC keys carry no point: take it from the public key object.
            if let curve, let id = identity.id {
                let pubs = try session.findObjects([.objectClass(.publicKey), .id(id)])
                for pub in pubs {
                    let pv = try session.attributes(pub, [CKA_EC_POINT, CKA_EC_PARAMS])
                    if pv[CKA_EC_PARAMS] == curve.ecParameters, let raw = pv[CKA_EC_POINT],
                       let point = PublicKey.ecPoint(raw, curve: curve) {
                        publicKey = .ec(curve: curve, point: point)
                        break
                    }
                }
            }
        }
        return PrivateKeyObject(
            identity: identity, keyType: keyType, publicKey: publicKey, curve: curve, modulusBits: bits,
            canSign: v.bool(CKA_SIGN) ?? false, alwaysAuthenticate: v.bool(CKA_ALWAYS_AUTHENTICATE) ?? false,
            sensitive: v.bool(CKA_SENSITIVE) ?? true, extractable: v.bool(CKA_EXTRACTABLE) ?? false)
    }

    /// Public key objects selected by the URI.
    public func publicKeys(matching uri: PKCS11URI? = nil) throws -> [PublicKeyObject] {
        try withPrimary { session in
            try session.findObjects(template(uri, .publicKey)).map { handle in
                let v = try session.attributes(handle, [
                    CKA_LABEL, CKA_ID, CKA_KEY_TYPE, CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS, CKA_EC_POINT,
                ])
                var publicKey: PublicKey?
                let keyType = KeyType(rawValue: v.ulong(CKA_KEY_TYPE) ?? 0)
                if keyType == .rsa, let n = v[CKA_MODULUS], let e = v[CKA_PUBLIC_EXPONENT] {
                    publicKey = .rsa(modulus: n, exponent: e)
                } else if keyType == .ec, let curve = v[CKA_EC_PARAMS].flatMap({ Curve(ecParameters: $0) }),
                          let point = v[CKA_EC_POINT].flatMap({ PublicKey.ecPoint($0, curve: curve) }) {
                    publicKey = .ec(curve: curve, point: point)
                }
                return PublicKeyObject(identity: identity(session, handle, v, .publicKey), publicKey: publicKey)
            }
        }
    }

    /// X.509 certificate objects selected by the URI.
    public func certificates(matching uri: PKCS11URI? = nil) throws -> [CertificateObject] {
        try withPrimary { session in
            var t = template(uri, .certificate)
            t.append(.ulong(CKA_CERTIFICATE_TYPE, CK_CERTIFICATE_TYPE(CKC_X_509)))
            return try session.findObjects(t).map { handle in
                let v = try session.attributes(handle, [CKA_LABEL, CKA_ID, CKA_VALUE])
                let der = v[CKA_VALUE] ?? []
                return CertificateObject(
                    identity: identity(session, handle, v, .certificate), der: der,
                    certificate: try? Certificate(derEncoded: der))
            }
        }
    }

    /// How long a lookup by label that finds no key or several waits before looking once more:
    /// a rotation moves a label from one key to another in two writes, which no token makes atomic.
    public static let labelSettleTime: TimeInterval = 0.25

    /// The one private key the URI selects. Zero or several matches are errors that say what
    /// was seen (a URI that selects by label without `id=` is looked up once more after
    /// ``labelSettleTime`` first).
    public func signingKey(_ uri: PKCS11URI) throws -> PrivateKeyObject {
        var keys = try privateKeys(matching: uri)
        if keys.count != 1 && uri.objectLabel != nil && uri.objectID == nil {
            Thread.sleep(forTimeInterval: Self.labelSettleTime)
            keys = try privateKeys(matching: uri)
        }
        if keys.count == 1 { return keys[0] }
        if keys.isEmpty {
            let all = (try? privateKeys()) ?? []
            var hint = all.isEmpty
                ? "the token shows no private keys" + (isLoggedIn ? "" : " (not logged in: private keys are hidden until you log in)")
                : "private keys on this token:\n" + all.map { "  \($0.uri)" }.joined(separator: "\n")
            if !uri.selectsObject { hint = "the URI names no object: add object=LABEL or id=… — " + hint }
            throw PKCS11Error(.objectNotFound, "no private key matches \(uri.redacted) on token '\(info.label)'", hint: hint)
        }
        throw PKCS11Error(
            .objectAmbiguous, "\(keys.count) private keys match \(uri.redacted) on token '\(info.label)'",
            hint: "use one of these URIs:\n" + keys.map { "  \($0.uri)" }.joined(separator: "\n"))
    }

    /// The one certificate the URI selects. Zero or several matches are errors that say what
    /// was seen.
    public func certificate(matching uri: PKCS11URI) throws -> CertificateObject {
        let found = try certificates(matching: uri)
        if found.count == 1 { return found[0] }
        if found.isEmpty {
            throw PKCS11Error(
                .objectNotFound, "no certificate matches \(uri.redacted) on token '\(info.label)'",
                hint: "list certificates with 'p11jwt objects --token pkcs11:token=\(info.label)'")
        }
        throw PKCS11Error(
            .objectAmbiguous, "\(found.count) certificates match \(uri.redacted) on token '\(info.label)'",
            hint: "use one of these URIs:\n" + found.map { "  \($0.uri)" }.joined(separator: "\n"))
    }

    /// The certificate stored with a key: same `CKA_ID`, else same label.
    public func certificate(for key: PrivateKeyObject) throws -> CertificateObject? {
        Self.certificate(for: key, in: try certificates())
    }

    /// The certificate for `key` among `certificates` already read from the token.
    public static func certificate(for key: PrivateKeyObject, in certificates: [CertificateObject]) -> CertificateObject? {
        if let id = key.id, let match = certificates.first(where: { $0.id == id }) { return match }
        if let label = key.label, let match = certificates.first(where: { $0.label == label }) { return match }
        return nil
    }

    /// Whether the certificate is this key's. EC keys whose point the token does not expose are
    /// checked by a test signature verified with the certificate's key.
    public func pairing(_ key: PrivateKeyObject, _ cert: CertificateObject?) -> Pairing {
        guard let cert else { return .noCertificate }
        guard let certificate = cert.certificate else { return .mismatch }
        return isKey(key, publicKey: certificate.publicKey) ? .matches : .mismatch
    }

    /// Whether `publicKey` is the public half of `key`.
    public func isKey(_ key: PrivateKeyObject, publicKey: Certificate.PublicKey) -> Bool {
        if let own = key.publicKey {
            return (try? own.certificatePublicKey()) == publicKey
        }
        guard let algorithm = key.algorithmsByKeyType.first, isLoggedIn else { return false }
        let message = Array("p11jwt key/certificate pairing check".utf8) + Self.randomID()
        guard let signature = try? sign(digest: algorithm.hash.hash(message), algorithm: algorithm, key: key) else {
            return false
        }
        return (try? JWSVerifier.verify(
            signature: signature, message: message, algorithm: algorithm, publicKey: publicKey)) ?? false
    }

    /// The certificate chain for `key` from what the token holds: its certificate (same
    /// `CKA_ID`, else label), then its issuers. Empty when the token has no certificate for the key.
    public func certificateChain(for key: PrivateKeyObject) throws -> [JWSCertificate] {
        let all = try certificates()
        guard let leafObject = Self.certificate(for: key, in: all), let leaf = try? JWSCertificate(der: leafObject.der) else {
            return []
        }
        return [leaf] + Self.issuers(of: leaf, in: all)
    }

    /// `leaf` followed by each issuer the token holds, found by subject name, up to a
    /// self-issued certificate.
    public func certificateChain(startingWith leaf: JWSCertificate) throws -> [JWSCertificate] {
        [leaf] + Self.issuers(of: leaf, in: try certificates())
    }

    static func issuers(of leaf: JWSCertificate, in objects: [CertificateObject]) -> [JWSCertificate] {
        let others = objects.compactMap { try? JWSCertificate(der: $0.der) }.filter { $0.der != leaf.der }
        var chain = [leaf]
        while let last = chain.last, !last.isSelfIssued, chain.count < 10,
              let issuer = others.first(where: { $0.certificate.subject == last.certificate.issuer && !chain.contains($0) }) {
            chain.append(issuer)
        }
        return Array(chain.dropFirst())
    }

    /// Refuses a certificate that is not the key's.
    public func requireMatch(_ key: PrivateKeyObject, _ cert: CertificateObject) throws {
        guard pairing(key, cert) == .matches else {
            throw PKCS11Error(
                .certificateMismatch,
                "certificate \(cert.uri) does not belong to key \(key.uri): its public key is a different key",
                hint: "store the key's own certificate with the key's CKA_ID, or point at the right one (--cert)")
        }
    }

    // MARK: - Signing

    /// How this token would sign `algorithm` with `key`; an error when it cannot.
    public func signingPath(_ algorithm: JWSAlgorithm, key: PrivateKeyObject) throws -> SigningPath {
        guard key.canSign else {
            throw PKCS11Error(
                .keyUnsuitable, "key \(key.uri) may not sign (CKA_SIGN is false)",
                hint: "use a key generated for signing (p11jwt keygen sets CKA_SIGN)")
        }
        if algorithm.isRSA {
            guard key.keyType == .rsa else {
                throw PKCS11Error(
                    .keyUnsuitable, "\(algorithm.rawValue) needs an RSA key; \(key.uri) is \(key.typeDescription)",
                    hint: key.algorithmsByKeyType.isEmpty ? nil : "this key can do \(key.algorithmsByKeyType.map(\.rawValue).joined(separator: ", "))")
            }
        } else {
            guard key.keyType == .ec, let curve = key.curve, curve == algorithm.curve else {
                throw PKCS11Error(
                    .keyUnsuitable,
                    "\(algorithm.rawValue) needs an EC \(algorithm.curve!.rawValue) key; \(key.uri) is \(key.typeDescription)",
                    hint: key.algorithmsByKeyType.isEmpty ? nil : "this key can do \(key.algorithmsByKeyType.map(\.rawValue).joined(separator: ", "))")
            }
        }
        guard let path = mechanisms.path(for: algorithm, keyBits: key.modulusBits) else {
            let needed: String
            switch algorithm.family {
            case .rsaPKCS1: needed = "CKM_RSA_PKCS"
            case .rsaPSS: needed = "CKM_RSA_PKCS_PSS or CKM_RSA_X_509"
            case .ecdsa: needed = "CKM_ECDSA"
            }
            let possible = key.algorithmsByKeyType.filter { mechanisms.path(for: $0, keyBits: key.modulusBits) != nil }
            throw PKCS11Error(
                .mechanismUnsupported,
                "token '\(info.label)' cannot do \(algorithm.rawValue) with \(key.typeDescription): it offers no \(needed) for signing",
                hint: possible.isEmpty ? "see 'p11jwt mechanisms'" : "possible with this key: \(possible.map(\.rawValue).joined(separator: ", "))")
        }
        return path
    }

    /// Signs a digest — never the message — as JWS `algorithm` wants it: PKCS#1 v1.5 over the
    /// DigestInfo, PSS (MGF1 = hash, salt = hash length), or ECDSA as raw `r ‖ s`.
    public func sign(digest: [UInt8], algorithm: JWSAlgorithm, key: PrivateKeyObject) throws -> [UInt8] {
        guard digest.count == algorithm.digestLength else {
            throw PKCS11Error(
                .invalidDigest,
                "\(algorithm.rawValue) signs a \(algorithm.hash.rawValue) digest of \(algorithm.digestLength) bytes; got \(digest.count) bytes",
                hint: "hash the message with \(algorithm.hash.rawValue) and pass the digest (base64url)")
        }
        let path = try signingPath(algorithm, key: key)
        let data: [UInt8]
        var parameter: [UInt8]?
        switch path {
        case .rsaPKCS1:
            data = algorithm.hash.digestInfoPrefix + digest
        case .rsaPSS:
            var params = CK_RSA_PKCS_PSS_PARAMS()
            switch algorithm.hash {
            case .sha256: params.hashAlg = CK_MECHANISM_TYPE(CKM_SHA256); params.mgf = CK_RSA_PKCS_MGF_TYPE(CKG_MGF1_SHA256)
            case .sha384: params.hashAlg = CK_MECHANISM_TYPE(CKM_SHA384); params.mgf = CK_RSA_PKCS_MGF_TYPE(CKG_MGF1_SHA384)
            case .sha512: params.hashAlg = CK_MECHANISM_TYPE(CKM_SHA512); params.mgf = CK_RSA_PKCS_MGF_TYPE(CKG_MGF1_SHA512)
            }
            params.sLen = CK_ULONG(algorithm.hash.length)
            parameter = withUnsafeBytes(of: params) { Array($0) }
            data = digest
        case .rsaPSSOverX509:
            guard let bits = key.modulusBits else {
                throw PKCS11Error(.invalidObject, "the token does not give the modulus of \(key.uri)")
            }
            data = try Encoding.emsaPSS(digest: digest, hash: algorithm.hash, modulusBits: bits)
        case .ecdsa:
            data = digest
        }
        let contextPIN = key.alwaysAuthenticate ? credentials.withLock { $0.contextPIN } : nil
        if key.alwaysAuthenticate && contextPIN == nil {
            throw PKCS11Error(
                .pinUnavailable, "key \(key.uri) needs the PIN before every signature (CKA_ALWAYS_AUTHENTICATE) and none is held")
        }
        let signature = try pool.withSession { session in
            try session.sign(
                mechanism: path.mechanism, parameter: parameter, key: key.identity.handle, data: data,
                contextPIN: contextPIN)
        }
        logger.trace("signed", metadata: ["alg": "\(algorithm.rawValue)", "mechanism": "\(path.mechanism)"])
        return signature
    }

    // MARK: - Key generation and objects

    /// Key pair types `keygen` makes.
    public enum KeySpec: Sendable, Hashable, CustomStringConvertible {
        case rsa(bits: Int)
        case ec(Curve)

        /// `rsa:2048|rsa:3072|rsa:4096|ec:p256|ec:p384`.
        public init(_ text: String) throws {
            switch text.lowercased() {
            case "rsa:2048": self = .rsa(bits: 2048)
            case "rsa:3072": self = .rsa(bits: 3072)
            case "rsa:4096": self = .rsa(bits: 4096)
            case "ec:p256", "ec:p-256", "ec:prime256v1": self = .ec(.p256)
            case "ec:p384", "ec:p-384", "ec:secp384r1": self = .ec(.p384)
            case "ec:p521", "ec:p-521", "ec:secp521r1": self = .ec(.p521)
            default:
                throw PKCS11Error(
                    .invalidArgument, "unknown key type '\(text)'",
                    hint: "use rsa:2048, rsa:3072, rsa:4096, ec:p256, ec:p384 or ec:p521")
            }
        }

        public var description: String {
            switch self {
            case .rsa(let bits): return "rsa:\(bits)"
            case .ec(.p256): return "ec:p256"
            case .ec(.p384): return "ec:p384"
            case .ec(.p521): return "ec:p521"
            }
        }
    }

    /// Generates a key pair on the token: private key sensitive, never extractable, for signing.
    /// `id` defaults to 16 random bytes. Refuses a label or id another private key already has.
    public func generateKeyPair(_ spec: KeySpec, label: String, id: [UInt8]? = nil) throws -> PrivateKeyObject {
        guard !label.isEmpty else { throw PKCS11Error(.invalidArgument, "a key needs a label (--label)") }
        let id = id ?? Self.randomID()
        let existing = try privateKeys()
        if let clash = existing.first(where: { $0.label == label || $0.id == id }) {
            throw PKCS11Error(
                .invalidArgument,
                "token '\(info.label)' already has a private key with this \(clash.label == label ? "label" : "id"): \(clash.uri)",
                hint: "choose another --label / --id, or remove the old key with 'p11jwt destroy'")
        }
        let mechanism: MechanismType
        var publicTemplate: [Attribute] = [.token(true), .bool(CKA_VERIFY, true), .label(label), .id(id)]
        let privateTemplate: [Attribute] = [
            .token(true), .bool(CKA_PRIVATE, true), .bool(CKA_SENSITIVE, true), .bool(CKA_EXTRACTABLE, false),
            .bool(CKA_SIGN, true), .label(label), .id(id),
        ]
        switch spec {
        case .rsa(let bits):
            mechanism = .rsaPKCSKeyPairGen
            publicTemplate += [.ulong(CKA_MODULUS_BITS, CK_ULONG(bits)), Attribute(CKA_PUBLIC_EXPONENT, bytes: [0x01, 0x00, 0x01])]
        case .ec(let curve):
            mechanism = .ecKeyPairGen
            publicTemplate.append(Attribute(CKA_EC_PARAMS, bytes: curve.ecParameters))
        }
        guard let info = mechanisms.info(mechanism), info.canGenerateKeyPair else {
            throw PKCS11Error(
                .mechanismUnsupported, "token '\(self.info.label)' cannot generate \(spec) keys (no \(mechanism))",
                hint: "see 'p11jwt mechanisms' for what it can do")
        }
        // The mechanism's key-size range (bits, for RSA): a clear refusal before the token's
        // own (tpm2-pkcs11 answers RSA-4096 with a bare CKR_ATTRIBUTE_VALUE_INVALID).
        if case .rsa(let bits) = spec, !info.allows(bits: UInt(bits)) {
            throw PKCS11Error(
                .mechanismUnsupported,
                "token '\(self.info.label)' makes RSA keys of \(info.minKeySize)–\(info.maxKeySize) bits, not \(bits)",
                function: "C_GetMechanismInfo",
                hint: "choose --type rsa:\(info.maxKeySize >= 3072 ? 3072 : 2048) (Entra accepts RSA keys of 2048 bits and more)")
        }
        // Writes are serialised per module (see Module.withObjectStore).
        let (publicHandle, handle) = try withPrimary(writing: true) { session in
            try session.generateKeyPair(mechanism: mechanism, publicTemplate: publicTemplate, privateTemplate: privateTemplate)
        }
        let key = try withPrimary { try privateKey($0, handle) }
        // A key whose public half the token cannot give back can have no certificate and no
        // verifiable signature: remove the pair rather than leave a trap (tpm2-pkcs11 1.9 makes
        // P-521 keys like that, and then fails C_SignInit with CKR_HOST_MEMORY).
        if key.publicKey == nil {
            try? withPrimary(writing: true) { session in
                try? session.destroyObject(handle)
                try? session.destroyObject(publicHandle)
            }
            throw PKCS11Error(
                .moduleAnswerInvalid,
                "token '\(self.info.label)' made a \(spec) key pair but gives back no usable public key for it; the pair was removed",
                function: "C_GetAttributeValue",
                hint: "this token cannot use such keys: choose another --type (rsa:2048, ec:p256 or ec:p384)")
        }
        logger.info("generated key pair", metadata: ["type": "\(spec)", "label": "\(label)"])
        return key
    }

    static func randomID() -> [UInt8] {
        var rng = SystemRandomNumberGenerator()
        return (0..<16).map { _ in rng.next() }
    }

    /// Stores an X.509 certificate (`CKO_CERTIFICATE`, `CKC_X_509`) with the key's `CKA_ID`.
    public func storeCertificate(der: [UInt8], label: String, id: [UInt8]) throws -> CertificateObject {
        let certificate: Certificate
        do {
            certificate = try Certificate(derEncoded: der)
        } catch {
            throw PKCS11Error(.invalidArgument, "not an X.509 certificate: \(error)", cause: error)
        }
        var subject = DER.Serializer()
        try subject.serialize(certificate.subject)
        var issuer = DER.Serializer()
        try issuer.serialize(certificate.issuer)
        let serial = Array(certificate.serialNumber.bytes)
        let template: [Attribute] = [
            .objectClass(.certificate), .ulong(CKA_CERTIFICATE_TYPE, CK_CERTIFICATE_TYPE(CKC_X_509)),
            .token(true), .bool(CKA_PRIVATE, false), .label(label), .id(id),
            Attribute(CKA_VALUE, bytes: der), Attribute(CKA_SUBJECT, bytes: subject.serializedBytes),
            Attribute(CKA_ISSUER, bytes: issuer.serializedBytes),
            Attribute(CKA_SERIAL_NUMBER, bytes: [0x02] + derLength(serial.count) + serial),
        ]
        let handle = try withPrimary(writing: true) { try $0.createObject(template) }
        return CertificateObject(
            identity: ObjectIdentity(
                handle: handle, objectClass: .certificate, label: label, id: id,
                uri: objectURI(label: label, id: id, objectClass: .certificate)),
            der: der, certificate: certificate)
    }

    /// Every object the URI selects (any class), for `destroy`.
    public func objects(matching uri: PKCS11URI) throws -> [ObjectIdentity] {
        var template: [Attribute] = []
        if let label = uri.objectLabel { template.append(.label(label)) }
        if let id = uri.objectID { template.append(.id(id)) }
        if let cls = uri.objectClass { template.append(.objectClass(cls)) }
        return try withPrimary { session in
            try session.findObjects(template).map { handle in
                let v = try session.attributes(handle, [CKA_LABEL, CKA_ID, CKA_CLASS])
                let cls = ObjectClass(rawValue: v.ulong(CKA_CLASS) ?? 0)
                return identity(session, handle, v, cls)
            }
        }
    }

    /// Sets the label of objects (`C_SetAttributeValue` of `CKA_LABEL`): `rotate` relabels a
    /// retired key and its certificate, and gives the new key the label the old one had.
    public func relabel(_ objects: [ObjectIdentity], to label: String) throws {
        guard !label.isEmpty else { throw PKCS11Error(.invalidArgument, "an empty label") }
        try withPrimary(writing: true) { session in
            for object in objects { try session.setAttributes(object.handle, [.label(label)]) }
        }
        logger.info("relabelled objects", metadata: ["count": "\(objects.count)", "label": "\(label)"])
    }

    /// Destroys objects (`C_DestroyObject`).
    public func destroy(_ objects: [ObjectIdentity]) throws {
        try withPrimary(writing: true) { session in
            for object in objects { try session.destroyObject(object.handle) }
        }
    }
}
