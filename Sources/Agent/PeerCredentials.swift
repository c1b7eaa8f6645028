import Foundation
import Synchronization
import HummingbirdCore
import NIOHTTPTypes
import Logging
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// `struct ucred` of <sys/socket.h> (`SO_PEERCRED`), which Glibc's Swift overlay hides behind
/// `_GNU_SOURCE`: three 32-bit fields, laid out as C lays them out.
struct PeerCredential: Sendable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32
}

/// Connections open per peer uid on the socket, so that one allowed uid cannot take every
/// connection the agent has (the agent's own uid is bounded only by the listener's cap).
final class ConnectionsPerUID: Sendable {
    let limit: Int
    private let counts = Mutex<[UInt32: Int]>([:])

    init(limit: Int) { self.limit = limit }

    /// Counts a connection of `uid`; false (and not counted) when the uid is at its limit.
    func open(_ uid: UInt32) -> Bool {
        counts.withLock { counts in
            let now = counts[uid, default: 0]
            guard uid == getuid() || now < limit else { return false }
            counts[uid] = now + 1
            return true
        }
    }

    func close(_ uid: UInt32) {
        counts.withLock { counts in
            let now = counts[uid, default: 0]
            counts[uid] = now > 1 ? now - 1 : nil
        }
    }
}

/// Closes every connection whose peer (`SO_PEERCRED` of the Unix socket) is neither an allowed
/// uid nor of an allowed gid (the peer's effective gid), or whose uid already holds its share
/// of connections, before any request on it is handled. Sits in the pipeline after HTTP
/// decoding: nothing is passed on until the peer has been checked.
final class PeerCredentialsHandler: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    /// A handler per connection, with who is allowed at the time it connects (a reload may
    /// change the identities and their uids).
    struct Factory: Sendable {
        let allowed: @Sendable () -> (uids: Set<uid_t>, gids: Set<gid_t>)
        let connections: ConnectionsPerUID
        let logger: Logger
        func make() -> PeerCredentialsHandler {
            let (uids, gids) = allowed()
            return PeerCredentialsHandler(allowed: uids, allowedGIDs: gids, connections: connections, logger: logger)
        }
    }

    private let allowed: Set<uid_t>
    private let allowedGIDs: Set<gid_t>
    private let connections: ConnectionsPerUID
    private let logger: Logger
    private var verified = false
    private var counted: UInt32?

    init(allowed: Set<uid_t>, allowedGIDs: Set<gid_t>, connections: ConnectionsPerUID, logger: Logger) {
        self.allowed = allowed
        self.allowedGIDs = allowedGIDs
        self.connections = connections
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard let provider = context.channel as? SocketOptionProvider else {
            logger.error("agent: cannot read the peer credentials of a connection; closing it")
            context.close(promise: nil)
            return
        }
        // On the channel's event loop the option is read at once.
        let future: EventLoopFuture<PeerCredential> = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
        let channel = context.channel
        future.whenComplete { [self] result in
            switch result {
            case .success(let credentials) where allowed.contains(credentials.uid) || allowedGIDs.contains(credentials.gid):
                guard connections.open(credentials.uid) else {
                    logger.warning("agent: uid \(credentials.uid) already holds \(connections.limit) connections; closing another (pid \(credentials.pid))")
                    channel.close(promise: nil)
                    return
                }
                counted = credentials.uid
                verified = true
            case .success(let credentials):
                logger.warning("agent: refused a connection from uid \(credentials.uid) gid \(credentials.gid) (pid \(credentials.pid))")
                channel.close(promise: nil)
            case .failure(let error):
                logger.error("agent: SO_PEERCRED failed (\(error)); closing the connection")
                channel.close(promise: nil)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let uid = counted { connections.close(uid) }
        counted = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard verified else { return }
        context.fireChannelRead(data)
    }
}

/// Ends a connection once the answer to a request whose body passed `limit` bytes has been
/// written (the route answers 413): without it the server reads and discards the rest of the
/// body, however long it is, and keeps the connection. The excess is not passed on, and the
/// connection is closed ``linger`` after the answer.
final class OversizedRequestCloser: ChannelDuplexHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let limit: Int
    private var received = 0
    private var oversized = false

    init(limit: Int) { self.limit = limit }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch part {
        case .head:
            received = 0
        case .body(let buffer):
            guard !oversized else { return }
            received += buffer.readableBytes
            if received > limit { oversized = true }
        case .end:
            if oversized { return }
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard oversized, case .end = unwrapOutboundIn(data) else {
            context.write(data, promise: promise)
            return
        }
        let written = context.eventLoop.makePromise(of: Void.self)
        written.futureResult.cascade(to: promise)
        context.writeAndFlush(data, promise: written)
        // A lingering close: the answer is followed by EOF (write side shut), the rest of the
        // body is read and dropped for a moment, then the connection is closed. Closing at once
        // with unread input would reset the connection and could lose the 413 itself.
        let channel = context.channel
        written.futureResult.whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: Self.linger) { channel.close(promise: nil) }
        }
    }

    static let linger: TimeAmount = .seconds(2)
}
