import Foundation
import JOSE
import X509
#if canImport(Glibc)
import Glibc
#endif

/// A client of the agent's Unix socket, for the CLI: blocking HTTP/1.1 exchanges on one kept-
/// alive connection (calls on one client are serialised; use a client per thread), because JWS
/// signers are synchronous, as PKCS#11 is. Nothing secret is sent: digests go in, signatures
/// come out.
public struct AgentClient: Sendable {
    public let socketPath: String
    /// Seconds a call may take.
    public var timeout: Int
    private let connection = Connection()

    public init(socketPath: String, timeout: Int = 30) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    /// The kept-alive socket, opened on first use and again after the agent closed it.
    final class Connection: @unchecked Sendable {
        let lock = NSLock()
        var fd: Int32 = -1

        deinit { if fd >= 0 { close(fd) } }
    }

    /// Whether something accepts connections on `path`.
    public static func isListening(_ path: String) -> Bool {
        guard let fd = try? connect(path, timeout: 2) else { return false }
        close(fd)
        return true
    }

    public func health() throws -> AgentAPI.Health { try call("GET", "/v1/health") }

    /// Every key on the agent's token.
    public func keys() throws -> [AgentAPI.KeyInfo] {
        let answer: AgentAPI.KeysResponse = try call("GET", "/v1/keys")
        return answer.keys
    }

    /// One key: the one `key` (a pkcs11: URI) selects, or the agent's default key.
    public func key(_ key: String?) throws -> AgentAPI.KeyInfo {
        let query = key.map { "?key=" + ($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0) } ?? "?default"
        let answer: AgentAPI.KeysResponse = try call("GET", "/v1/keys" + query)
        guard let info = answer.keys.first else { throw AgentClientError(message: "the agent has no key \(key ?? "")") }
        return info
    }

    public func sign(_ request: AgentAPI.SignRequest) throws -> AgentAPI.SignResponse { try call("POST", "/v1/sign", body: request) }

    /// A `JWSSigner` whose signatures the agent makes: the key's type and certificate chain come
    /// from `/v1/keys`.
    public func signer(key: String?) throws -> AgentSigner {
        try AgentSigner(client: self, info: try self.key(key))
    }

    /// Sends one request and decodes the answer (or the agent's error body).
    public func call<Out: Decodable>(_ method: String, _ path: String, body: (some Encodable)? = Optional<String>.none) throws -> Out {
        let payload = try body.map { try JSONEncoder().encode($0) } ?? Data()
        var request = "\(method) \(path) HTTP/1.1\r\nHost: p11jwt-agent\r\nAccept: application/json\r\n"
        if body != nil { request += "Content-Type: application/json\r\n" }
        request += "Content-Length: \(payload.count)\r\n\r\n"
        let bytes = Array(request.utf8) + Array(payload)
        let (status, answer) = try connection.lock.withLock { () throws -> (Int, [UInt8]) in
            // A kept-alive connection the agent has closed fails at once: open a new one, once.
            // (Every request is safe to send again: none changes anything twice.)
            let reused = connection.fd >= 0
            do {
                return try exchange(bytes)
            } catch let error as AgentClientError where reused && error.code == nil {
                reset()
                return try exchange(bytes)
            }
        }
        guard (200..<300).contains(status) else {
            if let error = try? JSONDecoder().decode(AgentAPI.ErrorBody.self, from: Data(answer)) {
                throw AgentClientError(message: "agent: \(error.message)", hint: error.hint, code: error.error, status: status)
            }
            throw AgentClientError(message: "the agent answered HTTP \(status)", status: status)
        }
        do {
            return try JSONDecoder().decode(Out.self, from: Data(answer))
        } catch {
            throw AgentClientError(message: "the agent's answer to \(path) is not what was expected: \(error)")
        }
    }

    private func reset() {
        if connection.fd >= 0 { close(connection.fd) }
        connection.fd = -1
    }

    /// One request and its answer on the kept-alive connection (under the lock).
    private func exchange(_ bytes: [UInt8]) throws -> (Int, [UInt8]) {
        if connection.fd < 0 { connection.fd = try Self.connect(socketPath, timeout: timeout) }
        do {
            try Self.writeAll(connection.fd, bytes)
            let (status, body, keepAlive) = try Self.readResponse(connection.fd, socketPath: socketPath)
            if !keepAlive { reset() }
            return (status, body)
        } catch {
            reset()
            throw error
        }
    }

    static func connect(_ path: String, timeout: Int) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw AgentClientError(message: "socket(): \(String(cString: strerror(errno)))") }
        var tv = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw AgentClientError(message: "the agent socket path is too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw AgentClientError(
                message: "cannot reach the agent at \(path): \(reason)",
                hint: "start it with 'p11jwt agent --socket \(path)', or unset P11JWT_AGENT_SOCK / add --no-agent to use the token directly")
        }
        return fd
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw AgentClientError(message: "writing to the agent: \(String(cString: strerror(errno)))")
            }
            offset += n
        }
    }

    /// Reads one answer: the head, then the body by Content-Length (or chunks, or to the end).
    /// Returns the status, the body and whether the connection stays open.
    static func readResponse(_ fd: Int32, socketPath: String) throws -> (Int, [UInt8], Bool) {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        func fill() throws -> Bool {
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw AgentClientError(message: "reading from the agent: \(String(cString: strerror(errno)))")
                }
                if n == 0 { return false }
                data += buffer[0..<n]
                return true
            }
        }
        var split = data.firstRange(of: [13, 10, 13, 10])
        while split == nil {
            guard try fill() else {
                throw AgentClientError(
                    message: "the agent at \(socketPath) closed the connection without an answer",
                    hint: "it refuses connections from other users: run as the agent's user, or start it with --allow-uid")
            }
            split = data.firstRange(of: [13, 10, 13, 10])
        }
        let head = String(decoding: data[..<split!.lowerBound], as: UTF8.self)
        let lines = head.components(separatedBy: "\r\n")
        let parts = lines[0].split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { throw AgentClientError(message: "the agent's answer is not HTTP", code: "protocol") }
        let headers = lines.dropFirst().map { $0.lowercased() }
        func header(_ name: String) -> String? {
            headers.first { $0.hasPrefix(name + ":") }.map { String($0.dropFirst(name.count + 1)).trimmingCharacters(in: .whitespaces) }
        }
        let keepAlive = header("connection") != "close"
        let bodyStart = split!.upperBound
        if let length = header("content-length").flatMap({ Int($0) }) {
            while data.count - bodyStart < length {
                guard try fill() else { throw AgentClientError(message: "the agent's answer was cut short") }
            }
            return (status, Array(data[bodyStart..<bodyStart + length]), keepAlive)
        }
        if header("transfer-encoding")?.contains("chunked") == true {
            // One request at a time: the answer ends with the last chunk.
            while !data[bodyStart...].suffix(5).elementsEqual("0\r\n\r\n".utf8) {
                guard try fill() else { break }
            }
            return (status, try dechunk(Array(data[bodyStart...])), keepAlive)
        }
        while try fill() {}
        return (status, Array(data[bodyStart...]), false)
    }

    static func dechunk(_ bytes: [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = []
        var index = bytes.startIndex
        while let lineEnd = bytes[index...].firstRange(of: [13, 10]) {
            let sizeText = String(decoding: bytes[index..<lineEnd.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else { throw AgentClientError(message: "bad chunk from the agent") }
            if size == 0 { break }
            let start = lineEnd.upperBound
            guard start + size <= bytes.endIndex else { throw AgentClientError(message: "truncated answer from the agent") }
            out += bytes[start..<start + size]
            index = start + size + 2
        }
        return out
    }
}

/// A key the agent holds, as a JWS signer.
public struct AgentSigner: JWSSigner {
    public let client: AgentClient
    public let info: AgentAPI.KeyInfo
    public let keyType: JWSKeyType
    public let certificateChain: [JWSCertificate]
    let algorithms: Set<String>

    init(client: AgentClient, info: AgentAPI.KeyInfo) throws {
        self.client = client
        self.info = info
        let parts = info.keyType.split(separator: ":")
        switch (parts.first, parts.last) {
        case ("rsa", let bits?) where Int(bits) != nil: keyType = .rsa(bits: Int(bits)!)
        case ("ec", "p256"): keyType = .ec(.p256)
        case ("ec", "p384"): keyType = .ec(.p384)
        case ("ec", "p521"): keyType = .ec(.p521)
        default: throw AgentClientError(message: "the agent's key \(info.uri) has an unknown type \(info.keyType)")
        }
        certificateChain = try info.certificates.map { text in
            guard let der = Data(base64Encoded: text) else { throw AgentClientError(message: "the agent sent a certificate that is not base64") }
            return try JWSCertificate(der: [UInt8](der))
        }
        algorithms = Set(info.algorithms)
    }

    public var publicKey: Certificate.PublicKey? {
        if let text = info.publicKey, let der = Data(base64Encoded: text), let key = try? Certificate.PublicKey(derEncoded: [UInt8](der)) { return key }
        return certificateChain.first?.publicKey
    }

    public func canSign(_ algorithm: JWSAlgorithm) -> Bool { algorithms.contains(algorithm.rawValue) }

    public func sign(digest: [UInt8], algorithm: JWSAlgorithm) throws -> [UInt8] {
        let answer = try client.sign(AgentAPI.SignRequest(key: info.uri, alg: algorithm.rawValue, value: Base64URL.encode(digest)))
        guard let signature = Base64URL.decode(answer.value) else { throw AgentClientError(message: "the agent's signature is not base64url") }
        return signature
    }
}

/// A failure talking to the agent: what happened and what to do.
public struct AgentClientError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var hint: String?
    /// The agent's error code, when it answered with one.
    public var code: String?
    public var status: Int?

    public init(message: String, hint: String? = nil, code: String? = nil, status: Int? = nil) {
        self.message = message
        self.hint = hint
        self.code = code
        self.status = status
    }

    public var description: String { message + (hint.map { "\nhint: \($0)" } ?? "") }
}
