@testable import Agent
import Foundation
import Testing

/// What systemd passes is checked, not trusted (sd_listen_fds(3)'s rules, then the descriptor
/// itself): each refusal names what to change in the socket unit.
@Suite("socket activation: what systemd passes")
struct SocketActivationTests {
    @Test func theEnvironmentIsTheProcesssOwnOrIgnored() throws {
        // Not activated, or variables meant for another process (a parent's): no socket.
        #expect(try InheritedSocket.parse(environment: [:], pid: 42) == nil)
        #expect(try InheritedSocket.parse(environment: ["LISTEN_PID": "41", "LISTEN_FDS": "1"], pid: 42) == nil)
        #expect(try InheritedSocket.parse(environment: ["LISTEN_PID": "x", "LISTEN_FDS": "1"], pid: 42) == nil)
        for (fds, needle) in [("", "not a number"), ("one", "not a number"), ("-1", "not a number"), ("0", "passed 0 sockets"), ("3", "passed 3 sockets")] {
            let error = #expect(throws: AgentError.self) {
                try InheritedSocket.parse(environment: ["LISTEN_PID": "42", "LISTEN_FDS": fds, "LISTEN_FDNAMES": "a:b:c"], pid: 42)
            }
            #expect(error?.code == "socketActivation" && error?.message.contains(needle) == true, "\(fds): \(error?.message ?? "")")
            #expect(error?.hint?.contains("ListenStream=") == true)
        }
    }

    /// Descriptors that are not a listening Unix stream socket bound to a path.
    @Test func aDescriptorThatIsNotAListeningUnixSocketWithAPathIsRefused() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("p11jwt-activation-\(UUID().uuidString.prefix(6))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func refused(_ fd: Int32, _ needle: String) {
            defer { close(fd) }
            let error = #expect(throws: AgentError.self) { try InheritedSocket.inspect(fd) }
            #expect(error?.message.contains(needle) == true, "\(error?.message ?? "")")
        }
        refused(open(dir.appendingPathComponent("file").path, O_CREAT | O_RDWR, 0o600), "is not a socket")
        let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        listen(tcp, 1)
        refused(tcp, "not a Unix socket")
        let datagram = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        refused(datagram, "not a stream socket")
        // A connection (Accept=yes): one end of a connected pair.
        var pair: [Int32] = [0, 0]
        socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair)
        close(pair[1])
        refused(pair[0], "Accept=yes")
        // Listening, but on an abstract name (no file whose mode guards it).
        let abstract = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let name = Array("\0p11jwt-test-\(getpid())".utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: name) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + name.count)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(abstract, $0, length) } }
        listen(abstract, 1)
        refused(abstract, "has no path")
        // The one accepted: listening on a path.
        let path = dir.appendingPathComponent("agent.sock").path
        let good = unixSocket(path, bind: true)
        listen(good, 1)
        defer { close(good) }
        #expect(try InheritedSocket.inspect(good) == InheritedSocket(descriptor: good, path: path))
        #expect(fcntl(good, F_GETFD) & FD_CLOEXEC != 0)
    }
}
