import CP11Kit
import Foundation
import Logging

/// A bounded pool of sessions on one slot, for parallel signing.
///
/// A session whose call fails with `CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`,
/// `CKR_DEVICE_REMOVED` or `CKR_TOKEN_NOT_PRESENT` is closed and dropped, never handed out
/// again; the next caller opens a fresh one in its place.
final class SessionPool: @unchecked Sendable {
    private let module: Module
    private let slotID: CK_SLOT_ID
    private let logger: Logger
    let capacity: Int
    // Guarded by `condition`.
    private let condition = NSCondition()
    private var idle: [Session] = []
    private var open = 0
    private var closed = false

    init(module: Module, slotID: CK_SLOT_ID, capacity: Int, logger: Logger) {
        self.module = module
        self.slotID = slotID
        self.capacity = max(1, capacity)
        self.logger = logger
    }

    /// Sessions currently open (idle or lent out).
    var openCount: Int { condition.withLock { open } }

    func withSession<R>(_ body: (Session) throws -> R) throws -> R {
        let session = try acquire()
        do {
            let result = try body(session)
            release(session)
            return result
        } catch let error as PKCS11Error where error.returnValue?.sessionIsDead == true || error.leavesSessionUnusable {
            // A dead session, or one a misbehaving module may have left mid-operation: not reused.
            logger.debug("evicting session", metadata: ["session": "\(session.handle)", "error": "\(error.code)"])
            evict(session)
            throw error
        } catch {
            release(session)
            throw error
        }
    }

    private func acquire() throws -> Session {
        condition.lock()
        while idle.isEmpty && open >= capacity && !closed { condition.wait() }
        if closed {
            condition.unlock()
            throw PKCS11Error(.invalidArgument, "the token has been closed")
        }
        if let session = idle.popLast() {
            condition.unlock()
            return session
        }
        open += 1
        condition.unlock()
        do {
            return try Session(module: module, slotID: slotID, readWrite: false)
        } catch {
            condition.withLock {
                open -= 1
                condition.signal()
            }
            throw error
        }
    }

    private func release(_ session: Session) {
        condition.lock()
        if closed {
            open -= 1
            condition.unlock()
            session.close()
            return
        }
        idle.append(session)
        condition.signal()
        condition.unlock()
    }

    private func evict(_ session: Session) {
        session.close()
        condition.withLock {
            open -= 1
            condition.signal()
        }
    }

    /// Closes idle sessions now and lent ones as they come back.
    func close() {
        let sessions = condition.withLock { () -> [Session] in
            closed = true
            open -= idle.count
            defer { idle.removeAll() }
            condition.broadcast()
            return idle
        }
        sessions.forEach { $0.close() }
    }
}
