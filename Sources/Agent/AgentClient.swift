import AsyncHTTPClient
import Foundation
import JOSE
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOPosix
import X509

/// A client of the agent's Unix socket, on AsyncHTTPClient (`http+unix`): async calls for async
/// code, and the same calls blocking (on AsyncHTTPClient's event loops, never a cooperative
/// thread) for synchronous callers such as the CLI's one-shot commands and JWS signers. Nothing
/// secret is sent: digests go in, signatures come out.
public struct AgentClient: Sendable {
    public let socketPath: String
    /// Seconds a call may take.
    public var timeout: Int

    public init(socketPath: String, timeout: Int = 30) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    /// One client for the process: pooled keep-alive connections, closed after 5 s idle (before
    /// the agent's own 15 s idle timeout closes them under a request), as many at once as the
    /// agent serves one user (a caller with more requests in flight than connections would
    /// queue them here, behind requests waiting on a slow token).
    static let http: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(idleTimeout: .seconds(5), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
        configuration.decompression = .disabled
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    /// Whether an agent answers on `path`.
    public static func isListening(_ path: String) -> Bool {
        (try? AgentClient(socketPath: path, timeout: 2).health()) != nil
    }

    public func health() throws -> AgentAPI.Health { try call("GET", "/v1/health") }
    public func health() async throws -> AgentAPI.Health { try await call("GET", "/v1/health") }

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
    public func sign(_ request: AgentAPI.SignRequest) async throws -> AgentAPI.SignResponse { try await call("POST", "/v1/sign", body: request) }

    /// A `JWSSigner` whose signatures the agent makes: the key's type and certificate chain come
    /// from `/v1/keys`.
    public func signer(key: String?) throws -> AgentSigner {
        try AgentSigner(client: self, info: try self.key(key))
    }

    /// Sends one request and decodes the answer (or the agent's error body); blocks the calling
    /// thread, which must not be a cooperative one (async code gets the async overload).
    public func call<Out: Decodable>(_ method: String, _ path: String, body: (some Encodable)? = Optional<String>.none) throws -> Out {
        let request = try makeRequest(method, path, body: body)
        let response: HTTPClient.Response
        do {
            response = try Self.http.execute(request: request, deadline: .now() + .seconds(Int64(timeout))).wait()
        } catch {
            throw transportError(error)
        }
        return try decode(status: Int(response.status.code), body: response.body.map { Array(buffer: $0) } ?? [], path: path)
    }

    /// Sends one request and decodes the answer (or the agent's error body).
    public func call<Out: Decodable>(_ method: String, _ path: String, body: (some Encodable)? = Optional<String>.none) async throws -> Out {
        var request = HTTPClientRequest(url: try url(path))
        request.method = HTTPMethod(rawValue: method)
        request.headers.add(name: "Accept", value: "application/json")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONEncoder().encode(body)))
        }
        do {
            let response = try await Self.http.execute(request, timeout: .seconds(Int64(timeout)))
            let bytes = try await response.body.collect(upTo: Self.maximumAnswer)
            return try decode(status: Int(response.status.code), body: Array(buffer: bytes), path: path)
        } catch let error as AgentError {
            throw error
        } catch {
            throw transportError(error)
        }
    }

    /// The most an answer may hold (a key listing with certificate chains is a few KiB).
    static let maximumAnswer = 4 << 20

    private func url(_ path: String) throws -> String {
        guard let url = URL(httpURLWithSocketPath: socketPath, uri: path) else {
            throw AgentClientError(message: "the agent socket path cannot be used: \(socketPath)")
        }
        return url.absoluteString
    }

    private func makeRequest(_ method: String, _ path: String, body: (some Encodable)?) throws -> HTTPClient.Request {
        var headers = HTTPHeaders([("Accept", "application/json")])
        var payload: HTTPClient.Body?
        if let body {
            headers.add(name: "Content-Type", value: "application/json")
            payload = .bytes(try JSONEncoder().encode(body))
        }
        return try HTTPClient.Request(url: try url(path), method: HTTPMethod(rawValue: method), headers: headers, body: payload)
    }

    private func decode<Out: Decodable>(status: Int, body: [UInt8], path: String) throws -> Out {
        guard (200..<300).contains(status) else {
            if let error = try? JSONDecoder().decode(AgentAPI.ErrorBody.self, from: Data(body)) {
                throw AgentClientError(message: "agent: \(error.message)", hint: error.hint, code: error.error, status: status)
            }
            throw AgentClientError(message: "the agent answered HTTP \(status)", status: status)
        }
        do {
            return try JSONDecoder().decode(Out.self, from: Data(body))
        } catch {
            throw AgentClientError(message: "the agent's answer to \(path) is not what was expected: \(error)")
        }
    }

    /// What a failure to reach or hear the agent means, in its terms.
    private func transportError(_ error: any Error) -> AgentError {
        switch error {
        case let error as HTTPClientError where error == .remoteConnectionClosed:
            return AgentClientError(
                message: "the agent at \(socketPath) closed the connection without an answer",
                hint: "it refuses connections from other users: run as the agent's user, or allow this uid when starting it", settings: ["allow-uid"])
        case let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout:
            return AgentClientError(message: "the agent at \(socketPath) did not answer within \(timeout) s")
        default:
            let reason = (error as? IOError).map { String(cString: strerror($0.errnoCode)) } ?? "\(error)"
            return AgentClientError(
                message: "cannot reach the agent at \(socketPath): \(reason)",
                hint: "start the agent on \(socketPath), or unset P11JWT_AGENT_SOCK to use the token directly", settings: ["no-agent"])
        }
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

    public func sign(digest: [UInt8], algorithm: JWSAlgorithm) async throws -> [UInt8] {
        let answer = try await client.sign(AgentAPI.SignRequest(key: info.uri, alg: algorithm.rawValue, value: Base64URL.encode(digest)))
        guard let signature = Base64URL.decode(answer.value) else { throw AgentClientError(message: "the agent's signature is not base64url") }
        return signature
    }
}

/// A failure talking to the agent: what happened and what to do.
/// What a client of the agent gets when a request fails: the agent's refusal (its code and HTTP
/// status) or a connection failure (code `connection`).
public typealias AgentClientError = AgentError

extension AgentError {
    /// A client-side failure: `code` nil means the connection or the exchange failed.
    init(message: String, hint: String? = nil, settings: [String] = [], code: String? = nil, status: Int? = nil, file: String = #fileID, line: Int = #line) {
        self.init(code ?? Self.connection, message, hint: hint, settings: settings, status: status, file: file, line: line)
    }

    /// The code of failures to reach or talk to the agent.
    public static let connection = "connection"
}
