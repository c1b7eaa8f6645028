import BuildInfo
import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import Synchronization

/// An answer from the token endpoint or Graph.
public struct HTTPAnswer: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }
}

/// How requests to Entra and Graph are retried and timed out.
public struct RetryPolicy: Sendable {
    /// Attempts in all, for 429 / 503 / 504 answers and for failures before a request was sent.
    public var maxAttempts: Int
    /// First backoff when the answer has no `Retry-After`; doubled each attempt, with jitter.
    public var baseDelay: Double
    /// No wait is longer than this, whatever `Retry-After` says.
    public var maxDelay: Double
    /// Each request, connection included, must be answered within this many seconds.
    public var requestTimeout: Int64

    /// Shared by every client that should back off together: a 429 / 503 / 504 to one of them
    /// holds back the requests of all (a fleet of apps against one tenant), instead of each
    /// request finding out for itself.
    public var gate: ThrottleGate?

    public init(maxAttempts: Int = 5, baseDelay: Double = 0.5, maxDelay: Double = 60, requestTimeout: Int64 = 30, gate: ThrottleGate? = nil) {
        self.maxAttempts = maxAttempts
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.requestTimeout = requestTimeout
        self.gate = gate
    }
}

/// A global backoff: closed until a time a throttling answer set; every request waits for it
/// before it is sent.
public final class ThrottleGate: Sendable {
    private let opensAt = Mutex<ContinuousClock.Instant>(.now)
    /// Times the gate was closed (for reports and tests).
    private let closings = Mutex(0)

    public init() {}

    /// Closes the gate for `seconds` from now (never shortens a longer closure).
    public func close(for seconds: Double) {
        let until = ContinuousClock.now.advanced(by: .milliseconds(Int64(seconds * 1000)))
        opensAt.withLock { $0 = max($0, until) }
        closings.withLock { $0 += 1 }
    }

    /// Waits until the gate is open.
    public func wait() async throws {
        while true {
            let until = opensAt.withLock { $0 }
            guard until > .now else { return }
            try await Task.sleep(until: until, clock: .continuous)
        }
    }

    public var timesClosed: Int { closings.withLock { $0 } }
}

/// The HTTPS client the Entra and Graph clients share: TLS verification always on (the system
/// roots plus an optional extra CA such as the emulator's), timeouts on every request, and
/// 429 / 503 / 504 retried with backoff honouring `Retry-After`. Secrets (assertions, tokens,
/// proofs) are never logged: only method, path, status and attempt.
public final class EntraHTTP: Sendable {
    let client: HTTPClient
    public let retry: RetryPolicy
    let logger: Logger

    /// `caFile`: a PEM file of extra CA certificates to trust besides the system's.
    public init(caFile: String? = nil, retry: RetryPolicy = RetryPolicy(), logger: Logger) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .fullVerification
        if let caFile {
            guard FileManager.default.isReadableFile(atPath: caFile) else {
                throw EntraError(.invalidParameter, "cannot read the CA file \(caFile)", hint: "give a PEM file of CA certificates (for the emulator: <state>/ca.pem)", settings: ["ca-file"])
            }
            do {
                tls.additionalTrustRoots = [.certificates(try NIOSSLCertificate.fromPEMFile(caFile))]
            } catch {
                throw EntraError(.invalidParameter, "the CA file \(caFile) holds no PEM certificate", cause: error)
            }
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.timeout = .init(connect: .seconds(min(retry.requestTimeout, 10)), read: .seconds(retry.requestTimeout))
        configuration.redirectConfiguration = .disallow
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        self.retry = retry
        self.logger = logger
    }

    public func shutdown() async {
        try? await client.shutdown()
    }

    /// Sends a request, retrying throttling and unavailability answers. A failure after the
    /// request may have reached the server is not retried here: it is thrown as
    /// ``EntraError/Code/network`` and the caller decides (addKey and removeKey must not be
    /// blindly repeated).
    public func send(
        _ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], body: [UInt8]? = nil, operation: String
    ) async throws -> HTTPAnswer {
        var attempt = 1
        while true {
            try await retry.gate?.wait()
            let answer = try await sendOnce(method, url, headers: headers, body: body, operation: operation)
            guard [429, 503, 504].contains(answer.status), attempt < retry.maxAttempts else { return answer }
            let delay = backoff(attempt: attempt, retryAfter: answer.header("Retry-After"))
            retry.gate?.close(for: delay)
            logger.notice("\(operation): HTTP \(answer.status), retrying", metadata: ["attempt": "\(attempt)", "delay": "\(delay)"])
            try await Task.sleep(for: .seconds(delay))
            attempt += 1
        }
    }

    func sendOnce(_ method: HTTPMethod, _ url: String, headers: [(String, String)], body: [UInt8]?, operation: String) async throws -> HTTPAnswer {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "User-Agent", value: BuildInfo.userAgent)
        request.headers.add(name: "client-request-id", value: UUID().uuidString.lowercased())
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        let path = URL(string: url).map { $0.path } ?? ""
        let started = Date()
        do {
            let response = try await client.execute(request, timeout: .seconds(retry.requestTimeout))
            let bytes = try await response.body.collect(upTo: 4 << 20)
            logger.debug("\(operation)", metadata: [
                "method": "\(method)", "path": "\(path)", "status": "\(response.status.code)",
                "ms": "\(Int(Date().timeIntervalSince(started) * 1000))",
            ])
            return HTTPAnswer(
                status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) }, body: Array(buffer: bytes))
        } catch let error as NIOSSLError {
            throw EntraError(
                .network, "\(operation): TLS with \(hostOf(url)) failed: \(error)",
                hint: "the server's certificate is not trusted or does not name \(hostOf(url)); for the emulator trust its CA, <state>/ca.pem", settings: ["ca-file"],
                cause: error)
        } catch let error as EntraError {
            throw error
        } catch {
            throw EntraError(
                .network, "\(operation): no answer from \(hostOf(url)) (\(error))",
                hint: "check the network and the endpoint", settings: ["authority-host", "graph-endpoint", "cloud"], cause: error)
        }
    }

    /// `Retry-After` seconds when given (capped), else exponential backoff with jitter.
    func backoff(attempt: Int, retryAfter: String?) -> Double {
        if let text = retryAfter, let seconds = Double(text.trimmingCharacters(in: .whitespaces)), seconds >= 0 {
            return min(seconds, retry.maxDelay)
        }
        let base = retry.baseDelay * pow(2, Double(attempt - 1))
        return min(base * Double.random(in: 0.8...1.2), retry.maxDelay)
    }

    private func hostOf(_ url: String) -> String {
        guard let components = URLComponents(string: url), let host = components.host else { return url }
        return components.port.map { "\(host):\($0)" } ?? host
    }
}
