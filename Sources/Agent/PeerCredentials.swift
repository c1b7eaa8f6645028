import Foundation
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

/// Closes every connection whose peer (`SO_PEERCRED` of the Unix socket) is not an allowed uid,
/// before any request on it is handled. Sits in the pipeline after HTTP decoding: nothing is
/// passed on until the peer has been checked.
final class PeerCredentialsHandler: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    /// A handler per connection.
    struct Factory: Sendable {
        let allowed: Set<uid_t>
        let logger: Logger
        func make() -> PeerCredentialsHandler { PeerCredentialsHandler(allowed: allowed, logger: logger) }
    }

    private let allowed: Set<uid_t>
    private let logger: Logger
    private var verified = false

    init(allowed: Set<uid_t>, logger: Logger) {
        self.allowed = allowed
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
            case .success(let credentials) where allowed.contains(credentials.uid):
                verified = true
            case .success(let credentials):
                logger.warning("agent: refused a connection from uid \(credentials.uid) (pid \(credentials.pid))")
                channel.close(promise: nil)
            case .failure(let error):
                logger.error("agent: SO_PEERCRED failed (\(error)); closing the connection")
                channel.close(promise: nil)
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard verified else { return }
        context.fireChannelRead(data)
    }
}
