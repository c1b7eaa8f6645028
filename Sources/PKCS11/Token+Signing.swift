import CP11Kit
import Foundation

// Signing on the token: a mechanism with its parameters over the data given. The caller prepares
// the data (a DigestInfo, a digest, an encoded block); the token never sees the message.

extension Token {
    /// Why `key` cannot sign with `mechanism` on this token, or nil when it can.
    public func refusal(_ mechanism: Mechanism, key: PrivateKeyObject) -> PKCS11Error? {
        guard key.canSign else {
            return PKCS11Error(
                .keyUnsuitable, "key \(key.uri) may not sign (CKA_SIGN is false)",
                hint: "use a key generated for signing (keys made here set CKA_SIGN)")
        }
        guard mechanism.isRSA ? key.keyType == .rsa : key.keyType == .ec else {
            return PKCS11Error(
                .keyUnsuitable, "\(mechanism.type) needs an \(mechanism.isRSA ? "RSA" : "EC") key; \(key.uri) is \(key.typeDescription)")
        }
        guard mechanisms.canSign(mechanism.type, keyBits: mechanism.isRSA ? key.modulusBits : nil) else {
            return PKCS11Error(
                .mechanismUnsupported,
                "token '\(info.label)' offers no \(mechanism.type) for signing with \(key.typeDescription)",
                hint: "the token's mechanism list says what it can do")
        }
        return nil
    }

    /// Signs `data` with `key` (`C_SignInit`, then `C_Sign`, on a pooled session). Blocks while
    /// the token works: from async code, use the `async` overload, which runs on the token's
    /// thread pool.
    public func sign(_ data: [UInt8], mechanism: Mechanism, key: PrivateKeyObject) throws -> [UInt8] {
        if let refusal = refusal(mechanism, key: key) { throw refusal }
        let contextPIN = key.alwaysAuthenticate ? credentials.withLock { $0.contextPIN } : nil
        if key.alwaysAuthenticate && contextPIN == nil {
            throw PKCS11Error(
                .pinUnavailable, "key \(key.uri) needs the PIN before every signature (CKA_ALWAYS_AUTHENTICATE) and none is held")
        }
        let signature = try pool.withSession { session in
            try session.sign(
                mechanism: mechanism.type, parameter: mechanism.parameter, key: key.identity.handle, data: data,
                contextPIN: contextPIN)
        }
        logger.trace("signed", metadata: ["mechanism": "\(mechanism)"])
        return signature
    }

    /// ``sign(_:mechanism:key:)`` on the token's thread pool: the calling task waits, no
    /// cooperative thread does.
    public func sign(_ data: [UInt8], mechanism: Mechanism, key: PrivateKeyObject) async throws -> [UInt8] {
        try await run { try $0.sign(data, mechanism: mechanism, key: key) }
    }

    /// Verifies `signature` over `data` with the public key object of `key` (same `CKA_ID`) on a
    /// pooled session: the token checks it, as Key Vault's `verify` has the HSM check it.
    public func verify(_ data: [UInt8], signature: [UInt8], mechanism: Mechanism, key: PrivateKeyObject) throws -> Bool {
        guard let id = key.id, !id.isEmpty,
              let publicKey = try withPrimary({ try $0.findObjects([.objectClass(.publicKey), .id(id)]) }).first else {
            throw PKCS11Error(
                .objectNotFound, "token '\(info.label)' holds no public key object for \(key.uri) to verify with",
                hint: "verify with the public key itself (p11jwt export gives it)")
        }
        return try pool.withSession { session in
            try session.verify(mechanism: mechanism.type, parameter: mechanism.parameter, key: publicKey, data: data, signature: signature)
        }
    }
}
