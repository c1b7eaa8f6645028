import CP11Kit
import Foundation
import Logging
import PKCS11
import TokenSigning
import Synchronization

/// The agent's token across removals: requests fail fast while it is gone, and it is opened and
/// logged in again by itself when it comes back, with the PIN held in locked memory since the
/// first login (zeroed when released). A wrong PIN at that login stops the agent rather than
/// risk locking the token.
final class TokenKeeper: Sendable {
    enum State {
        case ready(Token)
        case unavailable(reason: String, since: Date)
        case stopped(reason: String)
    }

    /// `CKR_*` values that mean the token, its session, its login or its objects are gone (a
    /// token whose store vanished and came back, as SoftHSM's does, has new object handles).
    static let lost: Set<CK_RV> = [
        CK_RV(CKR_DEVICE_REMOVED), CK_RV(CKR_TOKEN_NOT_PRESENT), CK_RV(CKR_SESSION_HANDLE_INVALID), CK_RV(CKR_SESSION_CLOSED),
        CK_RV(CKR_USER_NOT_LOGGED_IN), CK_RV(CKR_TOKEN_NOT_RECOGNIZED), CK_RV(CKR_DEVICE_ERROR), CK_RV(CKR_CRYPTOKI_NOT_INITIALIZED),
        CK_RV(CKR_OBJECT_HANDLE_INVALID), CK_RV(CKR_KEY_HANDLE_INVALID),
    ]

    /// The module, initialised again (`C_Finalize`, `C_Initialize`) while the token stays away:
    /// some modules (SoftHSM among them) only see a token that came back after that.
    private let moduleHolder: Mutex<Module>
    var module: Module { moduleHolder.withLock { $0 } }
    /// Selects the token (its key URI: the token attributes are what matter).
    let uri: PKCS11URI
    let label: String
    private let held: SecretBytes?
    private let state: Mutex<State>
    private let recovery = Mutex<Task<Void, Never>?>(nil)
    private let logger: Logger
    /// Called with the reason when the agent must stop.
    private let onFatal: @Sendable (String) -> Void

    init(token: Token, module: Module, uri: PKCS11URI, logger: Logger, onFatal: @escaping @Sendable (String) -> Void) {
        moduleHolder = Mutex(module)
        self.uri = uri
        label = token.info.label
        held = token.heldPIN
        state = Mutex(.ready(token))
        self.logger = logger
        self.onFatal = onFatal
    }

    /// The token, or a fast error saying why there is none.
    func current() throws -> Token {
        switch state.withLock({ $0 }) {
        case .ready(let token):
            return token
        case .unavailable(let reason, let since):
            throw AgentError("tokenUnavailable", "token '\(label)' is not available since \(ISO8601DateFormatter().string(from: since)) (\(reason))",
                hint: "insert the token again / bring the HSM back: the agent logs in again by itself")
        case .stopped(let reason):
            throw AgentError("stopped", "the agent is stopping: \(reason)")
        }
    }

    /// For `agent status`: ready / unavailable / stopped, why, and since when.
    var summary: (state: String, reason: String?, since: Date?) {
        switch state.withLock({ $0 }) {
        case .ready: return ("ready", nil, nil)
        case .unavailable(let reason, let since): return ("unavailable", reason, since)
        case .stopped(let reason): return ("stopped", reason, nil)
        }
    }

    var isReady: Bool {
        if case .ready = state.withLock({ $0 }) { return true }
        return false
    }

    /// Looks at a failure: when it says the token is gone, requests fail fast from now on and the
    /// token is reopened in the background. Returns whether it was such a failure.
    @discardableResult
    func noteFailure(_ error: any Error) -> Bool {
        guard let error = error as? PKCS11Error, let rv = error.returnValue?.rawValue, Self.lost.contains(rv) else { return false }
        let lostToken: Token? = state.withLock { state in
            guard case .ready(let token) = state else { return nil }
            state = .unavailable(reason: error.returnValue?.name ?? "\(error.code)", since: Date())
            return token
        }
        guard let lostToken else { return true }
        logger.warning("token lost; requests fail until it is back", metadata: ["token": "\(label)", "reason": "\(error)"])
        recovery.withLock { task in
            guard task == nil else { return }
            task = Task { [self] in
                // Closing calls the module: on the token's executor, like every token call here.
                _ = try? await lostToken.run { $0.close() }
                await recover()
                recovery.withLock { $0 = nil }
            }
        }
        return true
    }

    /// Tries to open the token and log in again until it works, with backoff (at most a second);
    /// after an attempt that finds no token the module is initialised afresh.
    private func recover() async {
        var wait: Duration = .milliseconds(100)
        var reinitialize = false
        while !Task.isCancelled {
            do {
                let (uri, held, logger) = (self.uri, self.held, self.logger)
                let reopen = reinitialize
                let outcome: Result<Token, PKCS11Error> = try await BlockingExecutor.shared.run { [self] in
                    if reopen { reinitializeModule() }
                    let token = try Token.open(uri, module: self.module, logger: logger)
                    do {
                        if let held { try token.login(heldPIN: held) }
                        _ = try token.signingKey(uri)
                    } catch let error as PKCS11Error where [.pinIncorrect, .pinLocked, .pinExpired].contains(error.code) {
                        token.close()
                        return .failure(error)
                    } catch {
                        token.close()
                        throw error
                    }
                    return .success(token)
                }
                switch outcome {
                case .success(let token):
                    state.withLock { $0 = .ready(token) }
                    logger.notice("token back; logged in again", metadata: ["token": "\(label)"])
                    return
                case .failure(let error):
                    let reason = "logging in to token '\(label)' again failed (\(error.returnValue?.name ?? "\(error.code)")); not retried, to keep the PIN from locking"
                    state.withLock { $0 = .stopped(reason: reason) }
                    logger.critical("\(reason)")
                    onFatal(reason)
                    return
                }
            } catch {
                logger.debug("token still unavailable", metadata: ["reason": "\(error)"])
                reinitialize = (error as? PKCS11Error)?.code == .tokenNotFound || (error as? PKCS11Error)?.code == .objectNotFound
            }
            try? await Task.sleep(for: wait)
            wait = min(wait * 2, .seconds(1))
        }
    }

    private func reinitializeModule() {
        moduleHolder.withLock { module in
            let spec = module.spec
            module.finalize()
            do {
                module = try Module.load(spec, logger: logger)
                logger.debug("module initialised again", metadata: ["module": "\(spec)"])
            } catch {
                logger.warning("cannot initialise the module again", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Stops recovering and closes the token.
    func shutdown() -> Token? {
        recovery.withLock { $0?.cancel() }
        return state.withLock { state in
            defer { state = .stopped(reason: "shut down") }
            if case .ready(let token) = state { return token }
            return nil
        }
    }
}
