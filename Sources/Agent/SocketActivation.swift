#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A listening Unix stream socket passed by systemd (socket activation: `p11jwt-agent.socket`),
/// taken as `sd_listen_fds(3)` takes it: `LISTEN_PID` is this process, `LISTEN_FDS` counts the
/// descriptors from 3, `LISTEN_FDNAMES` names them. systemd owns the socket file (its path,
/// mode, owner and group, and its removal); the agent only accepts on it.
///
/// What the environment and the descriptor say is checked, not trusted: one descriptor, a
/// socket, a stream socket, of the Unix family, listening (not `Accept=yes`'s connection), bound
/// to a path in the file system (not an abstract name, which file permissions cannot guard).
public struct InheritedSocket: Sendable, Equatable {
    /// The listening descriptor (3).
    public let descriptor: CInt
    /// The path it is bound to (`ListenStream=`).
    public let path: String

    /// `SD_LISTEN_FDS_START`.
    static let firstDescriptor: CInt = 3

    /// The socket systemd passed to this process, or nil when it passed none (`LISTEN_PID`
    /// unset, or naming another process: the variables were meant for a parent). On success
    /// the variables are removed from the environment, so that no child takes them for its own,
    /// and the descriptor is closed on exec.
    public static func fromEnvironment() throws -> InheritedSocket? {
        let environment = ProcessInfo.processInfo.environment
        guard let socket = try parse(environment: environment, pid: getpid()) else { return nil }
        for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(name) }
        return socket
    }

    /// `fromEnvironment` without its effects on the process, for `environment` and `pid`.
    static func parse(environment: [String: String], pid: pid_t) throws -> InheritedSocket? {
        guard let listenPID = environment["LISTEN_PID"], pid_t(listenPID) == pid else { return nil }
        guard let text = environment["LISTEN_FDS"], let count = Int(text), count >= 0 else {
            throw refusal("LISTEN_FDS is '\(environment["LISTEN_FDS"] ?? "")', not a number of sockets")
        }
        let names = environment["LISTEN_FDNAMES"].map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) } ?? []
        guard count == 1 else {
            let named = names.isEmpty ? "" : " (\(names.joined(separator: ", ")))"
            throw refusal("systemd passed \(count) sockets\(named); the agent takes exactly one")
        }
        return try inspect(firstDescriptor)
    }

    /// The descriptor checked to be a listening Unix stream socket bound to a path.
    static func inspect(_ descriptor: CInt) throws -> InheritedSocket {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else {
            throw refusal("descriptor \(descriptor) is not open (\(String(cString: strerror(errno))))")
        }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw refusal("descriptor \(descriptor) is not a socket")
        }
        func option(_ name: CInt) -> CInt? {
            var value: CInt = 0
            var length = socklen_t(MemoryLayout<CInt>.size)
            return getsockopt(descriptor, SOL_SOCKET, name, &value, &length) == 0 ? value : nil
        }
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) == 0 }
        }
        guard named, address.sun_family == sa_family_t(AF_UNIX) else {
            throw refusal("the socket is not a Unix socket: the agent's API is for local processes, whose uid it checks")
        }
        #if canImport(Glibc)
        let streamType = CInt(SOCK_STREAM.rawValue)
        #else
        let streamType = SOCK_STREAM
        #endif
        guard option(SO_TYPE) == streamType else {
            throw refusal("the socket is not a stream socket (ListenDatagram= or ListenSequentialPacket=)")
        }
        guard option(SO_ACCEPTCONN) == 1 else {
            throw refusal("the socket is a connection, not a listening socket: the socket unit has Accept=yes")
        }
        // The path: sun_path up to its NUL, within what getsockname filled in. An unnamed or
        // abstract socket (a leading NUL) has no file whose mode and owner guard it.
        let offset = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)!
        let filled = max(0, min(Int(length) - offset, MemoryLayout.size(ofValue: address.sun_path)))
        let bytes = withUnsafeBytes(of: address.sun_path) { Array($0.prefix(filled)) }
        guard let first = bytes.first, first != 0 else {
            throw refusal("the socket has no path (an abstract or unnamed socket), so no file mode or owner guards it")
        }
        let path = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        return InheritedSocket(descriptor: descriptor, path: path)
    }

    static func refusal(_ message: String) -> AgentError {
        AgentError(
            "socketActivation", "the socket systemd passed cannot be used: \(message)",
            hint: "give p11jwt-agent.socket one ListenStream= with a file-system path and Accept=no (the defaults of the packaged unit)")
    }
}
