@testable import Agent
import Foundation
import NIOCore
import Testing

/// The kernel's socket-table format, as Linux prints it (fs/proc, tcp4_seq_show): addresses as
/// raw 32-bit words in %08X, ports in %04X, the uid in the eighth column.
@Suite("loopback peer uid")
struct LoopbackPeerTests {
    static let table = """
          sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           0: 0100007F:A4B0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
           1: 0100007F:D2F0 0100007F:A4B0 01 00000000:00000000 00:00000000 00000000 65534        0 4243 1 0000000000000000 20 4 30 10 -1
           2: 0100007F:A4B0 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4244 1 0000000000000000 20 4 31 10 -1
        """

    @Test func thePeersRowGivesItsUid() throws {
        let server = try SocketAddress(ipAddress: "127.0.0.1", port: 0xA4B0)
        let client = try SocketAddress(ipAddress: "127.0.0.1", port: 0xD2F0)
        #expect(LoopbackPeer.key(server) == "4:0100007F:A4B0")
        let peer = try #require(LoopbackPeer.key(client)).dropFirst(2), local = try #require(LoopbackPeer.key(server)).dropFirst(2)
        // The client's own socket (local = the client, remote = the server), not the server's side.
        #expect(LoopbackPeer.uid(in: Self.table, peer: String(peer), local: String(local)) == 65534)
        #expect(LoopbackPeer.uid(in: Self.table, peer: "0100007F:1234", local: String(local)) == nil)
        #expect(LoopbackPeer.key(try SocketAddress(ipAddress: "::1", port: 80)) == "6:00000000000000000000000001000000:0050")
    }

    /// The live table, made longer than a page (the kernel hands /proc files out a page per
    /// read): every one of 200 loopback connections is found, as this process's.
    @Test func everyConnectionIsFoundInATableLongerThanAPage() throws {
        func address(_ fd: Int32) -> UInt16 {
            var address = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
            return UInt16(bigEndian: address.sin_port)
        }
        let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(server) }
        var bound = sockaddr_in()
        bound.sin_family = sa_family_t(AF_INET)
        bound.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        _ = withUnsafePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(server, 512)
        bound.sin_port = address(server).bigEndian
        var clients: [Int32] = []
        defer { clients.forEach { close($0) } }
        for _ in 0..<200 {
            let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            let connected = withUnsafePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            try #require(connected == 0)
            clients.append(client)
        }
        let table = try #require(LoopbackPeer.readToEnd("/proc/net/tcp"))
        #expect(table.utf8.count > 4096 * 2, "\(table.utf8.count) bytes")
        let local = try SocketAddress(ipAddress: "127.0.0.1", port: Int(address(server)))
        let found = try clients.filter { LoopbackPeer.uid(peer: try SocketAddress(ipAddress: "127.0.0.1", port: Int(address($0))), local: local) == getuid() }
        #expect(found.count == clients.count)
    }
}
