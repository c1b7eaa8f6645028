import Foundation
import NIOPosix
import Synchronization

/// Where blocking token calls run when async code asks for them: a pool of threads of its own
/// (NIO's `NIOThreadPool`), so a slow smartcard, a PIN pad or a busy network HSM holds these
/// threads and never Swift's few cooperative ones.
///
/// Every async entry point of this module (``Token/run(_:)``, the async `sign`) goes through
/// one; synchronous calls block their caller, which must not be a cooperative thread.
public final class BlockingExecutor: Sendable {
    private let pool = Mutex<NIOThreadPool?>(nil)
    /// Threads in the pool.
    public let threads: Int

    /// A pool of `threads` threads for the life of the process, started by its first `run`
    /// (a one-shot command that never awaits the token starts none).
    public init(threads: Int) {
        self.threads = max(1, threads)
    }

    private var started: NIOThreadPool {
        pool.withLock { pool in
            if let pool { return pool }
            let started = NIOThreadPool._makePerpetualStartedPool(numberOfThreads: threads, threadNamePrefix: "p11jwt-token-")
            pool = started
            return started
        }
    }

    /// The process-wide executor: as many threads as a token's signing pool has sessions by
    /// default, plus two for lookups and logins while every session signs.
    public static let shared = BlockingExecutor(threads: Token.Options.defaultPoolSessions + 2)

    /// Runs `body` on a pool thread; the calling task is suspended meanwhile.
    public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await started.runIfActive(body)
    }
}

extension Token {
    /// Runs blocking work on this token (lookups, key generation, logins) on its executor.
    public func run<T: Sendable>(_ body: @escaping @Sendable (Token) throws -> T) async throws -> T {
        try await executor.run { [self] in try body(self) }
    }
}
