@testable import Agent
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
}
