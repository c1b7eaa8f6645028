#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Hummingbird
import NIOCore

/// The uid of the process at the other end of a loopback TCP connection, read from the kernel's
/// socket tables (`/proc/net/tcp`, `/proc/net/tcp6`, readable by every user): the row whose
/// local address is the peer's and whose remote address is the agent's is the peer's socket, and
/// its `uid` column is the peer's owner. This is how an identity's allowUids hold on the
/// managed-identity endpoint, which any local process reaches, as SO_PEERCRED makes them hold
/// on the Unix socket. Only the uid: a TCP peer's gid cannot be learnt this way.
enum LoopbackPeer {
    /// nil when the connection is not found (not Linux, or it closed) or is not loopback.
    static func uid(peer: SocketAddress?, local: SocketAddress?) -> uid_t? {
        guard let peer, let local, let peerKey = key(peer), let localKey = key(local) else { return nil }
        let table = peerKey.hasPrefix("6:") ? "/proc/net/tcp6" : "/proc/net/tcp"
        guard let text = readToEnd(table) else { return nil }
        return uid(in: text, peer: String(peerKey.dropFirst(2)), local: String(localKey.dropFirst(2)))
    }

    /// The whole of a /proc file. Its size reads as 0 and the kernel hands it out a page per
    /// read, so it is read until end of file (Foundation's `String(contentsOfFile:)` stops after
    /// the first page: a busy machine's table is longer).
    static func readToEnd(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { return nil }
            if count == 0 { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The uid of the row `local_address == peer`, `rem_address == local` of a table's text.
    static func uid(in table: String, peer: String, local: String) -> uid_t? {
        for line in table.split(separator: "\n").dropFirst() {
            let columns = line.split(separator: " ", omittingEmptySubsequences: true)
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid …
            guard columns.count > 7, columns[1] == peer, columns[2] == local else { continue }
            return uid_t(columns[7])
        }
        return nil
    }

    /// An address as the table prints it, "ADDR:PORT" in hex: the address's 32-bit words as this
    /// machine's integers (the kernel prints the raw words with %08X), the port as a number;
    /// prefixed "4:" or "6:" for the table it is in. nil for a non-IP address.
    static func key(_ address: SocketAddress) -> String? {
        guard let port = address.port else { return nil }
        func words(_ bytes: [UInt8]) -> String {
            stride(from: 0, to: bytes.count, by: 4).map { start in
                let word = bytes[start..<start + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
                return hex(word, digits: 8)
            }.joined()
        }
        switch address {
        case .v4(let v4):
            let bytes = withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
            return "4:" + words(bytes) + ":" + hex(UInt32(port), digits: 4)
        case .v6(let v6):
            let bytes = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            return "6:" + words(bytes) + ":" + hex(UInt32(port), digits: 4)
        default:
            return nil
        }
    }

    static func hex(_ value: UInt32, digits: Int) -> String {
        let text = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}

/// The managed-identity endpoint's request context: the connection's two addresses, for
/// ``LoopbackPeer``.
struct LoopbackRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let peerAddress: SocketAddress?
    let localAddress: SocketAddress?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        peerAddress = source.channel.remoteAddress
        localAddress = source.channel.localAddress
    }

    /// The peer's uid (nil: unknown).
    var peerUID: uid_t? { LoopbackPeer.uid(peer: peerAddress, local: localAddress) }
}
