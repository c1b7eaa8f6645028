import Agent
import Crypto
import Foundation
import JOSE
import Testing
import TestSupport

/// `p11jwt agent` as a real process, started with `--print-env`; its environment once listening.
final class RunningAgent: @unchecked Sendable {
    private let child = BackgroundProcess()
    var process: Process { child.process }
    let environment: [String: String]
    let logPath: String
    /// What `--print-env` wrote, as a shell reads it.
    let envFile: String
    let fixture: WorkflowFixture

    var socket: String { environment["P11JWT_AGENT_SOCK"]! }
    var client: AgentClient { AgentClient(socketPath: socket) }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    init(_ f: WorkflowFixture, _ extra: [String] = [], environment extraEnvironment: [String: String] = [:]) throws {
        fixture = f
        let out = f.dir.file("agent-\(UUID().uuidString.prefix(6)).env")
        envFile = out
        logPath = out + ".log"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let runtime = f.dir.file("run")
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let process = child.process
        process.executableURL = URL(fileURLWithPath: try p11jwtBinary)
        process.arguments = ["agent", "--key", f.keyURI, "--print-env"] + f.entraFlags + extra
        var env = f.hsm.environment.merging(f.environment) { $1 }.merging(extraEnvironment) { $1 }
        env["XDG_RUNTIME_DIR"] = runtime
        process.environment = env
        process.standardOutput = FileHandle(forWritingAtPath: out)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        try process.run()
        let deadline = Date().addingTimeInterval(30)
        var parsed: [String: String] = [:]
        while Date() < deadline, process.isRunning {
            let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
            if text.contains("P11JWT_AGENT_SOCK") && text.hasSuffix("\n") {
                for line in text.split(separator: "\n") where line.hasPrefix("export ") {
                    let assignment = line.dropFirst("export ".count)
                    guard let eq = assignment.firstIndex(of: "=") else { continue }
                    parsed[String(assignment[..<eq])] = String(assignment[assignment.index(after: eq)...]).trimmingCharacters(in: CharacterSet(charactersIn: "'"))
                }
                break
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        environment = parsed
        guard parsed["P11JWT_AGENT_SOCK"] != nil else {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            throw RunningEmulatorError(message: "the agent did not start: \((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")")
        }
    }

    /// `p11jwt` with the agent's environment exported.
    func cli(_ arguments: [String], agent: Bool = true) throws -> ProcessResult {
        try fixture.cli(arguments, environment: agent ? environment : [:])
    }

    @discardableResult
    func stop() -> Int32 { child.stop() }
}

@Suite("p11jwt agent: PIN once, serve many")
struct AgentTests {
    @Test(arguments: TokenImplementation.available)
    func everyEndpointAnswersAndSignaturesVerify(_ implementation: TokenImplementation) throws {
        let f = try WorkflowFixture(implementation: implementation)
        let agent = try RunningAgent(f)
        defer { agent.stop() }
        let client = agent.client
        let health = try client.health()
        #expect(health.status == "ok" && health.loggedIn && health.token == f.tokenLabel)

        // /v1/keys: the key, its type, algorithms, certificate and public key.
        let key = try client.key(nil)
        #expect(key.keyType == "rsa:2048")
        #expect(key.algorithms.contains("PS256") && key.algorithms.contains("RS256"))
        let leafText = try #require(key.certificates.first)
        let certificate = try JWSCertificate(der: [UInt8](try #require(Data(base64Encoded: leafText))))
        #expect(certificate.thumbprint.hexSHA1 == (try opensslThumbprint(f.bootstrapCertificate)))
        #expect(try client.keys().count == 1)

        // /v1/sign (the Key Vault shape), checked by openssl with the certificate's key.
        let publicKeyPEM = try run("openssl", ["x509", "-in", f.bootstrapCertificate, "-noout", "-pubkey"]).stdout
        let message = Array("signed by the agent".utf8)
        for alg in [JWSAlgorithm.RS256, .PS256] {
            let answer = try client.sign(.init(key: nil, alg: alg.rawValue, value: Base64URL.encode(Array(SHA256.hash(data: message)))))
            #expect(answer.kid == key.uri)
            #expect(try IndependentVerifier.openssl(try #require(Base64URL.decode(answer.value)), message: message, algorithm: alg, publicKeyPEM: publicKeyPEM))
        }
        // /v1/assertion, /v1/pop, /v1/jwt: tokens the emulator and openssl accept.
        let assertion: AgentAPI.TokenResponse = try client.call("POST", "/v1/assertion", body: AgentAPI.AssertionRequest())
        let parsed = try independentlyParse(assertion.token)
        #expect(parsed.header["alg"] as? String == "PS256")
        #expect(parsed.claims["iss"] as? String == f.appId)
        #expect(try IndependentVerifier.openssl(parsed.signature, message: parsed.signingInput, algorithm: .PS256, publicKeyPEM: publicKeyPEM))
        let pop: AgentAPI.TokenResponse = try client.call("POST", "/v1/pop", body: AgentAPI.PopRequest(objectId: f.objectID))
        #expect(try independentlyParse(pop.token).claims["iss"] as? String == f.objectID)
        let jwt: AgentAPI.TokenResponse = try client.call("POST", "/v1/jwt", body: AgentAPI.JWTRequest(claims: #"{"sub":"x"}"#))
        let parsedJWT = try independentlyParse(jwt.token)
        #expect(parsedJWT.claims["sub"] as? String == "x")
        #expect(try IndependentVerifier.openssl(parsedJWT.signature, message: parsedJWT.signingInput, algorithm: .RS256, publicKeyPEM: publicKeyPEM))
        // /v1/token: from the emulator, then from the agent's cache.
        let first: AgentAPI.AccessTokenResponse = try client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest())
        let second: AgentAPI.AccessTokenResponse = try client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest())
        #expect(first.access_token == second.access_token)
        #expect(try independentlyParse(first.access_token).claims["appid"] as? String == f.appId)

        // Refusals are JSON with a code and a hint.
        #expect(throws: AgentClientError.self) { try client.sign(.init(key: nil, alg: "HS256", value: "AAAA")) }
        do {
            _ = try client.sign(.init(key: "pkcs11:token=another", alg: "RS256", value: Base64URL.encode(Array(repeating: 1, count: 32))))
            Issue.record("a key on another token was accepted")
        } catch let error as AgentClientError {
            #expect(error.code == "wrongToken")
            #expect(error.status == 400)
        }
        // Nothing secret in the log.
        #expect(!agent.log.contains(first.access_token) && !agent.log.contains(assertion.token))
    }

    /// 16 threads, each with its own connection, released together so 16 requests are in flight
    /// at once (tasks would run two at a time on two cores: these are real threads).
    @Test(arguments: TokenImplementation.available)
    func sixteenConcurrentClientsAllGetValidSignatures(_ implementation: TokenImplementation) throws {
        let f = try WorkflowFixture(implementation: implementation)
        let agent = try RunningAgent(f)
        defer { agent.stop() }
        let publicKeyPEM = try run("openssl", ["x509", "-in", f.bootstrapCertificate, "-noout", "-pubkey"]).stdout
        let socket = agent.socket
        final class Outcomes: @unchecked Sendable {
            let lock = NSLock()
            var signatures: [(String, [UInt8])] = []
            var errors: [String] = []
        }
        let outcomes = Outcomes()
        let clients = 16, perClient = 4
        let start = DispatchSemaphore(value: 0)
        let group = DispatchGroup()
        for c in 0..<clients {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                let client = AgentClient(socketPath: socket)
                start.wait()
                for n in 0..<perClient {
                    let message = "client \(c) message \(n)"
                    do {
                        let answer = try client.sign(.init(key: nil, alg: "RS256", value: Base64URL.encode(Array(SHA256.hash(data: Array(message.utf8))))))
                        outcomes.lock.withLock { outcomes.signatures.append((message, Base64URL.decode(answer.value) ?? [])) }
                    } catch {
                        outcomes.lock.withLock { outcomes.errors.append("\(error)") }
                    }
                }
            }
        }
        for _ in 0..<clients { start.signal() }
        group.wait()
        #expect(outcomes.errors.isEmpty, "\(outcomes.errors)")
        #expect(outcomes.signatures.count == clients * perClient)
        let leaf = try #require(try agent.client.key(nil).certificates.first.flatMap { Data(base64Encoded: $0) })
        let publicKey = try JWSCertificate(der: [UInt8](leaf)).publicKey
        for (message, signature) in outcomes.signatures {
            #expect(try JWSVerifier.verify(signature: signature, message: Array(message.utf8), algorithm: .RS256, publicKey: publicKey), "\(message)")
        }
        // And openssl agrees on one of them.
        let (message, signature) = try #require(outcomes.signatures.first)
        #expect(try IndependentVerifier.openssl(signature, message: Array(message.utf8), algorithm: .RS256, publicKeyPEM: publicKeyPEM))
    }

    /// Many clients asking for the same token at once: one request reaches Entra.
    /// `p11jwt agent status`: the token and its login, the identity and its certificate, the
    /// token held in memory, the requests served and refused with the latest refusal — and no
    /// secret; exit 1 once no agent listens.
    @Test func statusReportsWhatTheAgentServesAndNoSecret() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f)
        let client = agent.client
        let token: AgentAPI.AccessTokenResponse = try client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest())
        #expect(throws: AgentClientError.self) { try client.sign(.init(key: nil, alg: "HS256", value: "AAAA")) }

        let result = try agent.cli(["agent", "status", "--output", "json"])
        #expect(result.status == 0, "\(result.stderr)")
        let status = try JSONDecoder().decode(AgentAPI.Status.self, from: Data(result.stdout.utf8))
        #expect(status.pid == agent.process.processIdentifier)
        #expect(status.token.label == f.tokenLabel && status.token.state == "ready" && status.token.loggedIn)
        #expect(status.endpoints.socket == agent.socket)
        let identity = try #require(status.identities.first)
        #expect(identity.clientId == f.appId && identity.isDefault)
        #expect(identity.thumbprint == (try opensslThumbprint(f.bootstrapCertificate)))
        let scopes = identity.cachedTokens.map(\.scope)
        #expect(scopes == [token.scope], "\(scopes)")
        #expect(status.requests.served == 1 && status.requests.refused == 1, "\(status.requests)")
        #expect(status.recentErrors.map(\.operation) == ["sign"] && status.recentErrors.first?.error == "badRequest")
        let text = try agent.cli(["agent", "status"])
        #expect(text.status == 0 && text.stdout.contains("ready, logged in") && text.stdout.contains(f.appId), "\(text.stdout)")
        for output in [result.stdout, text.stdout] {
            #expect(!output.contains(token.access_token) && !output.contains("pin-value"), "a secret in the status")
        }

        #expect(agent.stop() == 0)
        let gone = try agent.cli(["agent", "status"])
        #expect(gone.status == 1 && gone.stderr.contains("no agent is listening"), "\(gone.stderr)")
    }

    /// A header secret shared ahead of time is read by the PIN file's rules and refused, before
    /// the token is opened, when it is short, readable by others, or given without an endpoint.
    @Test func aBadIdentityHeaderFileIsRefusedBeforeTheToken() throws {
        let f = try WorkflowFixture()
        let short = try f.dir.write("short-header", "abc\n")
        let open = try f.dir.write("open-header", String(repeating: "a", count: 32) + "\n", mode: 0o644)
        let good = try f.dir.write("good-header", String(repeating: "a", count: 32) + "\n")
        let base = ["agent", "--key", f.keyURI] + f.entraFlags
        // Exit 2 for usage, 1 for a file that cannot be used (as for a PIN file).
        for (extra, status, needle) in [
            (["--managed-identity", "--identity-header-file", short], Int32(2), "at least 16 printable characters"),
            (["--managed-identity", "--identity-header-file", open], Int32(1), "may be read or written by others"),
            (["--identity-header-file", good], Int32(2), "needs --managed-identity"),
        ] {
            let result = try f.cli(base + extra)
            #expect(result.status == status, "\(extra): \(result.stderr)")
            #expect(result.stderr.contains(needle), "\(extra): \(result.stderr)")
        }
    }

    @Test func concurrentTokenRequestsAreOneFlightThenCached() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f)
        defer { agent.stop() }
        let socket = agent.socket
        final class Tokens: @unchecked Sendable {
            let lock = NSLock()
            var values: [String] = []
        }
        let tokens = Tokens()
        let start = DispatchSemaphore(value: 0)
        let group = DispatchGroup()
        for _ in 0..<8 {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                let client = AgentClient(socketPath: socket)
                start.wait()
                if let answer: AgentAPI.AccessTokenResponse = try? client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest()) {
                    tokens.lock.withLock { tokens.values.append(answer.access_token) }
                }
            }
        }
        for _ in 0..<8 { start.signal() }
        group.wait()
        #expect(tokens.values.count == 8)
        #expect(Set(tokens.values).count == 1, "every client got the one token fetched")
        #expect(agent.log.components(separatedBy: "access token fetched").count - 1 == 1, "\(agent.log)")
    }

    @Test func theCLIGivesIdenticalResultsWithAndWithoutTheAgent() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f)
        defer { agent.stop() }
        let digest = Base64URL.encode(Array(SHA256.hash(data: Array("same".utf8))))
        // RS256 is deterministic: byte-identical output.
        let viaAgent = try agent.cli(["sign", "--key", f.keyURI, "--alg", "RS256", "--digest", digest, "--output", "json"])
        let direct = try agent.cli(["sign", "--key", f.keyURI, "--alg", "RS256", "--digest", digest, "--output", "json", "--no-agent", "--pin-file", f.hsm.pinFile])
        #expect(viaAgent.status == 0, "\(viaAgent.stderr)")
        #expect(viaAgent.stdout == direct.stdout)
        let jwtArgs = ["jwt", "--key", f.keyURI, "--claims", #"{"sub":"same","n":1}"#, "--x5t", "--kid", "thumbprint"]
        let jwtAgent = try agent.cli(jwtArgs)
        let jwtDirect = try agent.cli(jwtArgs + ["--no-agent", "--pin-file", f.hsm.pinFile])
        #expect(jwtAgent.status == 0, "\(jwtAgent.stderr)")
        #expect(jwtAgent.stdout == jwtDirect.stdout, "\(jwtDirect.stderr)")
        // The Entra commands work through the agent with no PIN at all.
        let token = try agent.cli(["access-token", "--key", f.keyURI, "--no-cache", "--output", "json"] + f.entraFlags.filter { $0 != "--pin-file" && $0 != f.hsm.pinFile })
        #expect(token.status == 0, "\(token.stderr)")
        let assertion = try agent.cli(["assertion", "--key", f.keyURI, "--tenant", f.tenant, "--client-id", f.appId, "--output", "json"])
        #expect(assertion.status == 0, "\(assertion.stderr)")
        let csr = try agent.cli(["cert", "csr", "--key", f.keyURI, "--subject", "CN=through the agent", "--out", f.dir.file("agent.csr")])
        #expect(csr.status == 0, "\(csr.stderr)")
        #expect(try run("openssl", ["req", "-in", f.dir.file("agent.csr"), "-noout", "-verify"]).status == 0)
        // An agent that is gone is named, with the way around it.
        agent.stop()
        let gone = try agent.cli(["sign", "--key", f.keyURI, "--alg", "RS256", "--digest", digest])
        #expect(gone.status == 1)
        #expect(gone.stderr.contains("cannot reach the agent") && gone.stderr.contains("--no-agent"))
    }

    @Test(.enabled(if: getuid() == 0, "needs root to run a client as another uid"))
    func connectionsFromOtherUIDsAreClosed() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f)
        defer { agent.stop() }
        // Open the directories and socket to everyone, as a mistake would: SO_PEERCRED still refuses.
        let runtime = f.dir.file("run"), socketDirectory = (agent.socket as NSString).deletingLastPathComponent
        for directory in [f.dir.path, runtime, socketDirectory] { chmod(directory, 0o755) }
        chmod(agent.socket, 0o666)
        let asNobody = try run("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-sS", "--unix-socket", agent.socket, "http://agent/v1/health"])
        #expect(asNobody.status != 0)
        #expect(!asNobody.stdout.contains("ok"))
        #expect(agent.log.contains("refused a connection from uid 65534"))
        let asOwner = try run("curl", ["-sS", "--unix-socket", agent.socket, "http://agent/v1/health"])
        #expect(asOwner.stdout.contains("\"status\":\"ok\""))
        agent.stop()
        // With --allow-uid the other user is served: the agent makes its socket reachable (0666 in a
        // 0711 directory) and SO_PEERCRED decides. (Only the ancestors are the caller's to open.)
        chmod(socketDirectory, 0o700)
        let allowing = try RunningAgent(f, ["--allow-uid", "65534"])
        defer { allowing.stop() }
        var socketInfo = stat(), directoryInfo = stat()
        #expect(stat(allowing.socket, &socketInfo) == 0 && socketInfo.st_mode & 0o777 == 0o666)
        #expect(stat(socketDirectory, &directoryInfo) == 0 && directoryInfo.st_mode & 0o777 == 0o711)
        let allowed = try run("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "curl", "-sS", "--unix-socket", allowing.socket, "http://agent/v1/health"])
        #expect(allowed.stdout.contains("\"status\":\"ok\""), "\(allowed.stderr)")
    }

    /// Another uid allowed by --allow-uid (or by its gid with --allow-gid) holds at most 16
    /// connections: the 17th and later are closed, so it cannot take every connection the agent
    /// has, while the owner is still served.
    @Test(.enabled(if: getuid() == 0, "needs root to run a client as another uid"))
    func anotherUIDHoldsAtMostItsShareOfConnections() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f, ["--allow-gid", "4242"])
        defer { agent.stop() }
        // Only the ancestors are the caller's to open; the agent opens its directory and socket.
        for directory in [f.dir.path, f.dir.file("run")] { chmod(directory, 0o711) }
        let script = """
            import socket, sys
            held, served = [], 0
            for _ in range(24):
                s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
                try:
                    s.sendall(b"GET /v1/health HTTP/1.1\\r\\nHost: agent\\r\\n\\r\\n")
                    answer = s.recv(4096)
                except OSError:
                    answer = b""
                if answer.startswith(b"HTTP/1.1 200"): served += 1
                held.append(s)
            print(served)
            """
        let asOther = try run("setpriv", ["--reuid=65534", "--regid=4242", "--clear-groups", "/usr/bin/python3", "-c", script, agent.socket])
        #expect(asOther.status == 0, "\(asOther.stderr)")
        #expect(asOther.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "16", "\(asOther.stdout) \(asOther.stderr)")
        #expect(agent.log.contains("uid 65534 already holds 16 connections"))
        // A gid that is not allowed is refused outright.
        let other = try run("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script, agent.socket])
        #expect(other.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "\(other.stdout) \(other.stderr)")
        #expect(try agent.client.health().status == "ok")
    }

    /// A request body over 1 MiB is answered 413 and its connection closed at once, not read to
    /// its end (a client announcing 100 MB would otherwise keep the connection busy).
    @Test func anOversizedRequestIsAnswered413AndItsConnectionClosed() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f)
        defer { agent.stop() }
        let script = """
            import socket, sys, time
            s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
            s.sendall(b"POST /v1/sign HTTP/1.1\\r\\nHost: agent\\r\\nContent-Type: application/json\\r\\nContent-Length: 100000000\\r\\n\\r\\n")
            try:
                for _ in range(64):
                    s.sendall(b"x" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = b""
            started = time.time()
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk: break
                    answer += chunk
            except socket.timeout:
                print("open"); sys.exit(0)
            except ConnectionResetError:
                print("reset before the answer was read:", answer[:40]); sys.exit(0)
            print(answer.split(b"\\r\\n")[0].decode(), "closed")
            """
        let r = try run("python3", ["-c", script, agent.socket])
        #expect(r.stdout.contains("413"), "\(r.stdout) \(r.stderr)")
        #expect(r.stdout.contains("closed"), "\(r.stdout) \(r.stderr)")
        #expect(try agent.client.health().status == "ok")
    }

    @Test func managedIdentityEndpointFollowsTheAppServiceContract() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f, ["--managed-identity"])
        defer { agent.stop() }
        let endpoint = try #require(agent.environment["IDENTITY_ENDPOINT"])
        let secret = try #require(agent.environment["IDENTITY_HEADER"])
        #expect(endpoint.hasPrefix("http://127.0.0.1:"))
        func get(_ query: String, header: String?) throws -> (Int, [String: Any]) {
            var arguments = ["-sS", "-o", "-", "-w", "\n%{http_code}", "\(endpoint)?\(query)"]
            if let header { arguments += ["-H", "X-IDENTITY-HEADER: \(header)"] }
            let r = try run("curl", arguments)
            let lines = r.stdout.split(separator: "\n")
            let status = Int(lines.last ?? "") ?? 0
            let json = (try? JSONSerialization.jsonObject(with: Data(lines.dropLast().joined(separator: "\n").utf8))) as? [String: Any] ?? [:]
            return (status, json)
        }
        let good = "resource=https://graph.microsoft.com&api-version=2019-08-01"
        let (status, answer) = try get(good, header: secret)
        #expect(status == 200)
        // The published shape: expires_on is a string of epoch seconds.
        let expiresOn = try #require(answer["expires_on"] as? String)
        #expect(Int(expiresOn).map { $0 > Int(Date().timeIntervalSince1970) } == true)
        #expect(answer["resource"] as? String == "https://graph.microsoft.com")
        #expect(answer["token_type"] as? String == "Bearer")
        #expect(answer["client_id"] as? String == f.appId)
        let token = try #require(answer["access_token"] as? String)
        #expect(try independentlyParse(token).claims["appid"] as? String == f.appId)
        #expect(try get(good, header: nil).0 == 401)
        #expect(try get(good, header: "wrong").0 == 401)
        #expect(try get("api-version=2019-08-01", header: secret).0 == 400)
        #expect(try get("resource=https://graph.microsoft.com&api-version=2017-09-01", header: secret).0 == 400)
        #expect(try get("resource=not%20a%20resource&api-version=2019-08-01", header: secret).1["error"] as? String == "invalid_resource")
    }

    @Test(.enabled(if: canImportAzureIdentity(), "needs the azure-identity Python package (scripts/test installs it)"))
    func unmodifiedAzureSDKCredentialsGetTokens() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f, ["--managed-identity", "--assertion-file", f.dir.file("run/assertion.jwt")])
        defer { agent.stop() }
        let script = """
            import sys
            from azure.identity import ManagedIdentityCredential, WorkloadIdentityCredential
            kind = sys.argv[1]
            credential = ManagedIdentityCredential() if kind == "mi" else WorkloadIdentityCredential()
            print(credential.get_token("https://graph.microsoft.com/.default").token)
            """
        let path = try f.dir.write("sdk.py", script, mode: 0o644)
        // The PIN was entered once, when the agent started: it is not needed again.
        try FileManager.default.removeItem(atPath: f.hsm.pinFile)
        for kind in ["mi", "workload"] {
            var env = ProcessInfo.processInfo.environment.merging(agent.environment) { $1 }
            env["REQUESTS_CA_BUNDLE"] = f.emulator.caFile
            env["SSL_CERT_FILE"] = f.emulator.caFile
            let r = try run(testPython, (testPython == "/usr/bin/env" ? ["python3"] : []) + [path, kind], environment: env)
            #expect(r.status == 0, "\(kind): \(r.stderr)")
            let token = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(try independentlyParse(token).claims["appid"] as? String == f.appId, "\(kind)")
        }
    }

    /// Any local uid can open connections to the loopback managed-identity port and send nothing:
    /// the agent's socket API keeps answering, the accept loop does not spin, and idle connections
    /// are closed so the port serves again.
    @Test func idleConnectionsCannotExhaustTheAgent() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f, ["--managed-identity"])
        defer { agent.stop() }
        let endpointText = try #require(agent.environment["IDENTITY_ENDPOINT"])
        let endpoint = try #require(URL(string: endpointText))
        let port = try #require(endpoint.port)
        var sockets: [Int32] = []
        defer { sockets.forEach { close($0) } }
        for _ in 0..<300 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if connected == 0 { sockets.append(fd) } else { close(fd) }
        }
        // The owner's socket API answers at once.
        let started = Date()
        #expect(try agent.client.health().status == "ok")
        #expect(Date().timeIntervalSince(started) < 2)
        // No busy accept loop: the agent uses little CPU while the connections sit idle.
        func cpuTicks() throws -> Int {
            let stat = try String(contentsOfFile: "/proc/\(agent.process.processIdentifier)/stat", encoding: .utf8)
            let fields = stat.split(separator: ")").last!.split(separator: " ")
            return Int(fields[11])! + Int(fields[12])!
        }
        let before = try cpuTicks()
        Thread.sleep(forTimeInterval: 2)
        #expect(try cpuTicks() - before < 100, "the agent spent more than half of 2 s on the CPU")
        // Idle connections are closed by the agent (EOF on read) within its idle timeout.
        var buffer = [UInt8](repeating: 0, count: 16)
        var timeout = timeval(tv_sec: 25, tv_usec: 0)
        setsockopt(sockets[0], SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        #expect(recv(sockets[0], &buffer, buffer.count, 0) == 0, "the idle connection was not closed")
        // Then the endpoint serves a real request again.
        let secret = try #require(agent.environment["IDENTITY_HEADER"])
        var answered = false
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && !answered {
            let r = try run("curl", ["-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-IDENTITY-HEADER: \(secret)",
                                     "\(endpoint.absoluteString)?resource=https://graph.microsoft.com&api-version=2019-08-01"])
            answered = r.stdout == "200"
        }
        #expect(answered)
    }

    /// The agent through the fault-injecting module: a token failing mid-sign gives the client a
    /// clear error and the agent keeps serving; odd-but-legal token info changes nothing.
    /// A running agent follows a `rotate` of its label-selected key: assertions carry the new
    /// certificate and Entra accepts them, and `/v1/token` fetches with the new key — without a
    /// restart (issue: it kept signing with the retired key, AADSTS700027).
    /// SoftHSM only: tpm2-pkcs11 reads its store once per process, so a running agent does not
    /// see another process's relabel (the agent would have to initialise the module afresh).
    @Test func theAgentFollowsARotationOfItsKey() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f)
        defer { agent.stop() }
        let client = agent.client
        let before: AgentAPI.AccessTokenResponse = try client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest())
        let rotated = try f.rotate(["--old-key-id", f.bootstrapKeyID, "--output", "json"])
        #expect(rotated.status == 0, "\(rotated.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(rotated.stdout.utf8)) as? [String: Any])
        let newThumbprint = try #require(report["newThumbprint"] as? String)
        #expect(try f.registeredThumbprints() == [newThumbprint])
        // The agent looks label keys up again once a second, in the background.
        var assertion: AgentAPI.TokenResponse = try client.call("POST", "/v1/assertion", body: AgentAPI.AssertionRequest(alg: "RS256"))
        var thumbprint: String?
        let deadline = Date().addingTimeInterval(10)
        repeat {
            assertion = try client.call("POST", "/v1/assertion", body: AgentAPI.AssertionRequest(alg: "RS256"))
            let x5t = try #require(try independentlyParse(assertion.token).header["x5t"] as? String)
            thumbprint = Hex.encode(try #require(Base64URL.decode(x5t)), uppercase: true)
            if thumbprint != newThumbprint { Thread.sleep(forTimeInterval: 0.2) }
        } while thumbprint != newThumbprint && Date() < deadline
        #expect(thumbprint == newThumbprint)
        let exchanged = try run("curl", [
            "-sS", "--cacert", f.emulator.caFile, "\(f.emulator.url)/\(f.tenant)/oauth2/v2.0/token", "-d", "grant_type=client_credentials",
            "-d", "client_id=\(f.appId)", "-d", "scope=https://graph.microsoft.com/.default",
            "-d", "client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "--data-urlencode", "client_assertion=\(assertion.token)",
        ])
        #expect(exchanged.stdout.contains("access_token"), "\(exchanged.stdout)")
        let after: AgentAPI.AccessTokenResponse = try client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest())
        #expect(after.access_token != before.access_token, "the token cached for the old key was served as the new key's")
        #expect(try independentlyParse(after.access_token).claims["appid"] as? String == f.appId)
        #expect(agent.log.contains("now selects another key"), "\(agent.log)")
    }

    /// Signatures wait on a slow token (C_Sign held at a gate, as a PIN pad or a busy network HSM
    /// holds it) on the token's own threads: 16 of them waiting do not keep cached access tokens
    /// or health answers from being served meanwhile. Latencies are printed, not asserted; the
    /// p99 target is scripts/bench's.
    @Test func cachedTokensAreServedWhileSignaturesWaitOnTheToken() throws {
        let f = try WorkflowFixture()
        let gate = f.dir.file("sign-gate")
        let agent = try RunningAgent(f, ["--module", try faultsModulePath], environment: ["P11JWT_FAULTS_SIGN_GATE": gate])
        defer {
            try? FileManager.default.removeItem(atPath: gate)
            agent.stop()
        }
        let first: AgentAPI.AccessTokenResponse = try agent.client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest())
        #expect(FileManager.default.createFile(atPath: gate, contents: nil))

        let message = Array("held at the gate".utf8)
        let digest = Base64URL.encode(Array(SHA256.hash(data: message)))
        let signs = DispatchGroup()
        let results = LockedBox<[Result<AgentAPI.SignResponse, any Error>]>([])
        for _ in 0..<16 {
            DispatchQueue.global().async(group: signs) {
                let answer = Result { try AgentClient(socketPath: agent.socket, timeout: 120).sign(.init(key: nil, alg: "RS256", value: digest)) }
                results.withLock { $0.append(answer) }
            }
        }
        // The signatures reach the token and wait there (its log shows nothing signed yet).
        Thread.sleep(forTimeInterval: 1)
        #expect(results.withLock { $0.isEmpty }, "a signature finished through a closed gate")

        let cached = DispatchGroup()
        let latencies = LockedBox<[Double]>([])
        let answers = LockedBox<[String]>([])
        DispatchQueue.global().async(group: cached) {
            let client = AgentClient(socketPath: agent.socket, timeout: 10)
            for _ in 0..<200 {
                let started = DispatchTime.now()
                guard let token: AgentAPI.AccessTokenResponse = try? client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest()),
                      (try? client.health().status) == "ok" else { return }
                latencies.withLock { $0.append(Double(DispatchTime.now().uptimeNanoseconds - started.uptimeNanoseconds) / 1e6) }
                answers.withLock { $0.append(token.access_token) }
            }
        }
        let servedInTime = cached.wait(timeout: .now() + 30) == .success
        #expect(servedInTime, "cached tokens were not served while signatures waited on the token")
        #expect(answers.withLock { $0.count } == 200 && answers.withLock { $0.allSatisfy { $0 == first.access_token } })
        #expect(results.withLock { $0.isEmpty }, "the signatures did not wait at the gate")
        let sorted = latencies.withLock { $0.sorted() }
        if !sorted.isEmpty {
            print("cached /v1/token + /v1/health while 16 signatures wait: p50 \(sorted[sorted.count / 2]) ms, p99 \(sorted[sorted.count * 99 / 100]) ms")
        }

        try FileManager.default.removeItem(atPath: gate)
        #expect(signs.wait(timeout: .now() + 60) == .success)
        let publicKeyPEM = try run("openssl", ["x509", "-in", f.bootstrapCertificate, "-noout", "-pubkey"]).stdout
        let finished = results.withLock { $0 }
        #expect(finished.count == 16)
        for result in finished {
            let answer = try result.get()
            #expect(try IndependentVerifier.openssl(try #require(Base64URL.decode(answer.value)), message: message, algorithm: .RS256, publicKeyPEM: publicKeyPEM))
        }
    }

    @Test func theAgentThroughAFaultInjectingModule() throws {
        let f = try WorkflowFixture()
        let log = f.dir.file("calls.log")
        let agent = try RunningAgent(f, ["--module", try faultsModulePath],
                                     environment: ["P11JWT_FAULTS": "quirk=token-huge;quirk=nul-padded;C_Sign@3=CKR_DEVICE_ERROR", "P11JWT_FAULTS_LOG": log])
        defer { agent.stop() }
        let digest = Base64URL.encode(Array(SHA256.hash(data: Array("fault".utf8))))
        _ = try agent.client.sign(.init(key: nil, alg: "RS256", value: digest))
        _ = try agent.client.sign(.init(key: nil, alg: "RS256", value: digest))
        do {
            _ = try agent.client.sign(.init(key: nil, alg: "RS256", value: digest))
            Issue.record("the injected CKR_DEVICE_ERROR did not reach the client")
        } catch let error as AgentClientError {
            #expect("\(error)".contains("CKR_DEVICE_ERROR"), "\(error)")
        }
        // A device error reads as a token gone: the agent recovers by itself (the module initialised
        // again, one login with the PIN it holds) and serves again; no login ever failed or was retried.
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline, (try? agent.client.health().status) != "ok" { Thread.sleep(forTimeInterval: 0.2) }
        _ = try agent.client.sign(.init(key: nil, alg: "RS256", value: digest))
        #expect(agent.process.isRunning)
        let logins = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").filter { $0.hasPrefix("C_Login ") }
        #expect(!logins.isEmpty && logins.allSatisfy { $0 == "C_Login 0x0" }, "\(logins)")
    }

    /// The PIN read from $P11JWT_PIN does not stay in the agent's environment block.
    @Test func thePINIsScrubbedFromTheAgentsEnvironment() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f, environment: ["P11JWT_PIN": testPIN, "P11JWT_MARKER": "still-here"])
        defer { agent.stop() }
        let environ = try #require(FileManager.default.contents(atPath: "/proc/\(agent.process.processIdentifier)/environ"))
        let text = String(decoding: environ, as: UTF8.self)
        #expect(text.contains("P11JWT_MARKER=still-here"), "the environment was read")
        #expect(!text.contains("P11JWT_PIN=\(testPIN)"))
    }

    /// `eval "$(p11jwt agent --print-env)"` must assign, never run, whatever a path contains.
    @Test func printEnvIsSafeToEvalWithQuotesInThePath() throws {
        let f = try WorkflowFixture()
        let marker = f.dir.file("pwned")
        let socket = f.dir.file("it's $(touch \(marker))/a.sock")
        let agent = try RunningAgent(f, ["--socket", socket])
        defer { agent.stop() }
        let r = try run("/bin/sh", ["-c", ". \"$1\" && printf %s \"$P11JWT_AGENT_SOCK\"", "sh", agent.envFile])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == socket)
        #expect(!FileManager.default.fileExists(atPath: marker))
    }

    @Test func theAssertionFileIsRenewedBeforeACachedCopyCouldExpire() throws {
        let f = try WorkflowFixture()
        let file = f.dir.file("run/assertion.jwt")
        // 335 s assertions: renewed every 5 s, so a copy read now lives > 300 s more.
        let agent = try RunningAgent(f, ["--assertion-file", file, "--assertion-lifetime", "335"])
        defer { agent.stop() }
        #expect(agent.environment["AZURE_FEDERATED_TOKEN_FILE"] == file)
        var seen = Set<String>()
        let deadline = Date().addingTimeInterval(12)
        while Date() < deadline {
            let text = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            let claims = try independentlyParse(text).claims
            let exp = try #require(claims["exp"] as? Double ?? (claims["exp"] as? Int).map(Double.init))
            #expect(exp - Date().timeIntervalSince1970 > 300, "a reader caching this for 5 minutes would send it expired")
            seen.insert(text)
            Thread.sleep(forTimeInterval: 0.5)
        }
        #expect(seen.count >= 2, "the file was not renewed")
        let attributes = try FileManager.default.attributesOfItem(atPath: file)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        // The emulator takes it as a client assertion.
        let assertion = try String(contentsOfFile: file, encoding: .utf8)
        let exchanged = try run("curl", [
            "-sS", "--cacert", f.emulator.caFile, "\(f.emulator.url)/\(f.tenant)/oauth2/v2.0/token", "-d", "grant_type=client_credentials",
            "-d", "client_id=\(f.appId)", "-d", "scope=https://graph.microsoft.com/.default",
            "-d", "client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer", "--data-urlencode", "client_assertion=\(assertion)",
        ])
        #expect(exchanged.stdout.contains("access_token"), "\(exchanged.stdout)")
    }

    @Test func startStopAndStaleSockets() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f)
        let socket = agent.socket
        // A second agent on the same socket refuses to start; the first is unharmed.
        let second = try f.cli(["agent", "--key", f.keyURI, "--socket", socket, "--pin-file", f.hsm.pinFile])
        #expect(second.status == 1)
        #expect(second.stderr.contains("already listening"))
        #expect(try agent.client.health().status == "ok")
        // SIGTERM: exit 0, no socket left.
        #expect(agent.stop() == 0, "\(agent.log)")
        #expect(!FileManager.default.fileExists(atPath: socket))
        // A stale socket file (no one listening) is replaced.
        let fd = unixSocket(socket, bind: true)
        close(fd)
        #expect(FileManager.default.fileExists(atPath: socket))
        let restarted = try RunningAgent(f)
        #expect(try restarted.client.health().status == "ok")
        #expect(restarted.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: socket))
    }
}

/// A Unix stream socket bound to `path` (`bind`), else connected to it.
func unixSocket(_ path: String, bind shouldBind: Bool) -> Int32 {
    let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        let bytes = Array(path.utf8)
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    let length = socklen_t(MemoryLayout<sockaddr_un>.size)
    _ = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { shouldBind ? bind(fd, $0, length) : connect(fd, $0, length) }
    }
    return fd
}

/// The Python with azure-identity that scripts/test prepared (else whatever python3 is).
let testPython = ProcessInfo.processInfo.environment["P11JWT_TEST_PYTHON"] ?? "/usr/bin/env"

extension AgentTests {
    /// The token's directory vanishes (a pulled card, a restarted HSM) and comes back.
    @Test func aRemovedTokenFailsFastAndTheAgentRecoversByItself() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f)
        defer { agent.stop() }
        let client = agent.client
        let digest = Base64URL.encode(Array(SHA256.hash(data: Array("before".utf8))))
        _ = try client.sign(.init(key: nil, alg: "RS256", value: digest))
        // The PIN was read once, at start: the agent logs in again with the PIN it holds.
        try FileManager.default.removeItem(atPath: f.hsm.pinFile)
        let tokens = f.hsm.directory.file("tokens")
        let tokenDirectory = try #require(try FileManager.default.contentsOfDirectory(atPath: tokens).first)
        let away = f.dir.file("token-away")
        try FileManager.default.moveItem(atPath: tokens + "/" + tokenDirectory, toPath: away)

        let started = Date()
        for _ in 0..<3 {
            do {
                _ = try client.sign(.init(key: nil, alg: "RS256", value: digest))
                Issue.record("signed with the token gone")
            } catch let error as AgentClientError {
                #expect(error.status == 503)
                #expect(error.code == "tokenUnavailable")
                #expect(error.hint?.contains("logs in again by itself") == true)
            }
        }
        #expect(Date().timeIntervalSince(started) < 2, "requests must fail fast while the token is away")
        #expect(try client.health().status == "tokenUnavailable")

        try FileManager.default.moveItem(atPath: away, toPath: tokens + "/" + tokenDirectory)
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline, (try? client.health().status) != "ok" { Thread.sleep(forTimeInterval: 0.2) }
        #expect(try client.health().status == "ok")
        let message = Array("after".utf8)
        let answer = try client.sign(.init(key: nil, alg: "RS256", value: Base64URL.encode(Array(SHA256.hash(data: message)))))
        let publicKeyPEM = try run("openssl", ["x509", "-in", f.bootstrapCertificate, "-noout", "-pubkey"]).stdout
        #expect(try IndependentVerifier.openssl(try #require(Base64URL.decode(answer.value)), message: message, algorithm: .RS256, publicKeyPEM: publicKeyPEM))
        #expect(agent.log.contains("token back"))
    }

    /// A second process re-initialises the token with another PIN: the agent's login with the
    /// PIN it holds fails once, and it stops instead of trying again.
    @Test func aWrongPINAtReLoginStopsTheAgent() throws {
        let f = try WorkflowFixture()
        let agent = try RunningAgent(f)
        let socket = agent.socket
        let reinit = try run("softhsm2-util", ["--init-token", "--token", f.tokenLabel, "--label", f.tokenLabel, "--so-pin", testSOPIN, "--pin", "999999"], environment: f.hsm.environment)
        #expect(reinit.status == 0, "\(reinit.stderr)")
        #expect(throws: AgentClientError.self) { try agent.client.sign(.init(key: nil, alg: "RS256", value: Base64URL.encode(Array(repeating: 7, count: 32)))) }
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline, agent.process.isRunning { Thread.sleep(forTimeInterval: 0.2) }
        #expect(!agent.process.isRunning, "the agent kept running after a wrong PIN")
        #expect(agent.stop() == 1)
        #expect(agent.log.contains("CKR_PIN_INCORRECT") && agent.log.contains("not retried"))
        // Exactly one failed login: the token's PIN counter is not run down.
        #expect(agent.log.components(separatedBy: "CKR_PIN_INCORRECT").count - 1 <= 2)
        #expect(!FileManager.default.fileExists(atPath: socket))
    }
}

func canImportAzureIdentity() -> Bool {
    (try? run(testPython, (testPython == "/usr/bin/env" ? ["python3"] : []) + ["-c", "import azure.identity"]).status) == 0
}

/// `systemd-socket-activate`, systemd's own implementation of the socket-passing protocol: it
/// binds the socket, waits for the first connection and execs the command with LISTEN_FDS.
let socketActivator: String? = ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate", "/lib/systemd/systemd-socket-activate"]
    .first { FileManager.default.isExecutableFile(atPath: $0) }

/// `p11jwt agent` under systemd-socket-activate (what p11jwt-agent.socket does), which execs it
/// on a client's first connection, so the agent keeps the activator's pid.
///
/// Spawned with posix_spawn and reaped here, not by Foundation's `Process`: the activator closes
/// the descriptors it inherits, among them the one `Process` watches for the child's exit, and
/// `Process` would then block its reaper thread in `waitpid` on a process still running.
final class ActivatedAgent: @unchecked Sendable {
    let pid: pid_t
    let logPath: String
    private var exitStatus: Int32?
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    init(_ f: WorkflowFixture, socket: String, activatorFlags: [String] = [], extra: [String] = []) throws {
        logPath = f.dir.file("activated-\(UUID().uuidString.prefix(6)).log")
        let environment = f.hsm.environment.merging(f.environment) { $1 }.merging(["PATH": "/usr/bin:/bin"]) { $1 }
        let arguments = [try #require(socketActivator), "--listen", socket] + activatorFlags
            + environment.keys.sorted().flatMap { ["-E", $0] } + [try p11jwtBinary, "agent", "--key", f.keyURI] + f.entraFlags + extra
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // The signals as a fresh process has them: none blocked, none ignored.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, envp)
        try #require(spawned == 0, "posix_spawn: \(String(cString: strerror(spawned)))")
        self.pid = pid
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline, !FileManager.default.fileExists(atPath: socket) { Thread.sleep(forTimeInterval: 0.02) }
        try #require(FileManager.default.fileExists(atPath: socket), "systemd-socket-activate did not listen: \(log)")
    }

    /// SIGTERM to the agent (or the activator still waiting); its exit status.
    @discardableResult
    func stop() -> Int32 {
        if exitStatus == nil { kill(pid, SIGTERM) }
        return waitForExit()
    }

    /// The exit status (128 + the signal for a signalled exit).
    func waitForExit() -> Int32 {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        exitStatus = code
        return code
    }

    var status: Int32 { waitForExit() }

    deinit {
        if exitStatus == nil {
            kill(pid, SIGKILL)
            _ = waitForExit()
        }
    }
}

extension AgentTests {
    /// Socket activation: the agent serves on the listening socket systemd made and passed,
    /// started by the first client, which is answered; systemd's mode stays on the file, and on
    /// SIGTERM the agent leaves the file to systemd. The agent is the activator's own process
    /// (exec keeps the pid), so it did not bind a socket of its own.
    @Test(.enabled(if: socketActivator != nil, "needs systemd-socket-activate (the systemd package)"))
    func theAgentServesOnTheSocketSystemdPasses() throws {
        let f = try WorkflowFixture()
        let directory = f.dir.file("activated")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let socket = directory + "/agent.sock"
        let agent = try ActivatedAgent(f, socket: socket, extra: ["--socket", socket])
        defer { agent.stop() }
        // The socket unit's SocketMode=: one the agent never sets on a socket of its own.
        chmod(socket, 0o640)
        let client = AgentClient(socketPath: socket)
        let health = try client.health()
        #expect(health.status == "ok" && health.loggedIn, "\(agent.log)")
        let publicKeyPEM = try run("openssl", ["x509", "-in", f.bootstrapCertificate, "-noout", "-pubkey"]).stdout
        let message = Array("signed on an inherited socket".utf8)
        let answer = try client.sign(.init(key: nil, alg: "PS256", value: Base64URL.encode(Array(SHA256.hash(data: message)))))
        #expect(try IndependentVerifier.openssl(try #require(Base64URL.decode(answer.value)), message: message, algorithm: .PS256, publicKeyPEM: publicKeyPEM))

        let status = try f.cli(["agent", "status", "--socket", socket, "--output", "json"])
        #expect(status.status == 0, "\(status.stderr)")
        let report = try JSONDecoder().decode(AgentAPI.Status.self, from: Data(status.stdout.utf8))
        #expect(report.pid == agent.pid)
        #expect(report.endpoints.socket == socket && report.endpoints.socketFromSystemd == true)
        var info = stat()
        #expect(stat(socket, &info) == 0 && info.st_mode & 0o777 == 0o640, "the agent changed systemd's mode: \(String(info.st_mode & 0o777, radix: 8))")
        #expect(agent.stop() == 0, "\(agent.log)")
        #expect(FileManager.default.fileExists(atPath: socket), "the agent removed the socket systemd owns")
        #expect(agent.log.contains("agent listening on the socket systemd passed"), "\(agent.log)")
    }

    /// A socket systemd should not have passed is refused with what to change in the socket
    /// unit, before the PIN is used: a connection (Accept=yes), two sockets, a --socket that is
    /// not the one passed. LISTEN_PID naming another process is not this agent's activation.
    @Test(.enabled(if: socketActivator != nil, "needs systemd-socket-activate (the systemd package)"))
    func aSocketSystemdShouldNotHavePassedIsRefused() throws {
        let f = try WorkflowFixture()
        let directory = f.dir.file("refused")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        func firstConnection(_ socket: String) {
            let fd = unixSocket(socket, bind: false)
            var timeout = timeval(tv_sec: 30, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var byte: UInt8 = 0
            _ = read(fd, &byte, 1)  // until the agent exits (its end closes)
            close(fd)
        }
        func refused(_ agent: ActivatedAgent, _ socket: String, _ needle: String) {
            firstConnection(socket)
            let status = agent.waitForExit()
            #expect(status != 0 && agent.log.contains(needle), "\(agent.log)")
            #expect(!agent.log.contains("agent listening"), "\(agent.log)")
        }
        // Two ListenStream= lines.
        refused(try ActivatedAgent(f, socket: directory + "/one.sock", activatorFlags: ["--listen", directory + "/two.sock"]),
                directory + "/one.sock", "systemd passed 2 sockets")
        // --socket naming another path: a usage error, exit 2.
        let mismatched = try ActivatedAgent(f, socket: directory + "/passed.sock", extra: ["--socket", directory + "/other.sock"])
        refused(mismatched, directory + "/passed.sock", "is not the socket systemd passed")
        #expect(mismatched.status == 2)
        // Accept=yes: the activator forks an agent per connection and goes on listening.
        let accepting = try ActivatedAgent(f, socket: directory + "/accept.sock", activatorFlags: ["--accept"])
        firstConnection(directory + "/accept.sock")
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, !accepting.log.contains("Accept=yes") { Thread.sleep(forTimeInterval: 0.05) }
        #expect(accepting.log.contains("the socket unit has Accept=yes") && !accepting.log.contains("agent listening"), "\(accepting.log)")
        accepting.stop()

        // LISTEN_PID of another process: the agent binds its own socket, as without systemd.
        let agent = try RunningAgent(f, environment: ["LISTEN_PID": "1", "LISTEN_FDS": "1"])
        defer { agent.stop() }
        var info = stat()
        #expect(stat(agent.socket, &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect(try agent.client.health().status == "ok")
    }
}
