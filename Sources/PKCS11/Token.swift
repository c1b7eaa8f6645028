import CP11Kit
import Foundation
import Logging
import Synchronization

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
        /// Where the async methods run the token's blocking calls.
        public var executor: BlockingExecutor
        public init(maxPoolSessions: Int = defaultPoolSessions, executor: BlockingExecutor = .shared) {
            self.maxPoolSessions = maxPoolSessions
            self.executor = executor
        }

        public static let defaultPoolSessions = max(4, ProcessInfo.processInfo.activeProcessorCount * 2)
    }

    public let module: Module
    public let slot: Slot
    /// The token's information when it was opened.
    public let info: TokenInfo
    /// A URI that selects this token.
    public let uri: String
    public let mechanisms: MechanismSet
    let logger: Logger
    /// Runs the blocking calls of the async methods.
    public let executor: BlockingExecutor
    let primary: GuardedSession
    let pool: SessionPool
    let credentials = Mutex<Credentials>(Credentials())

    struct Credentials {
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
        self.executor = options.executor
        self.primary = GuardedSession(session)
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
}

/// The token's persistent session, used by one caller at a time under its lock: the one place
/// a `Session` (not `Sendable`) is shared between threads.
final class GuardedSession: @unchecked Sendable {
    private let lock = Mutex(())
    private let session: Session

    init(_ session: Session) { self.session = session }

    func withLock<R>(_ body: (Session) throws -> R) rethrows -> R {
        try lock.withLock { _ in try body(session) }
    }
}
