// The Swift side of scripts/bench: the same signing loops as bench-ceiling, through p11jwt's
// layers, so each figure can be divided by the ceiling measured in the same run.
//
//   p11jwt-bench library   --module SO --key URI --pin-file F --alg RS256|PS256|ES256 --threads T --seconds S
//   p11jwt-bench assertion --module SO --key URI --pin-file F --alg RS256|PS256|ES256 --threads T --seconds S
//   p11jwt-bench agent     --socket PATH --clients C --seconds S [--alg RS256] [--operation sign|token]
//   p11jwt-bench keygen    --module SO --token URI --pin-file F --threads T --seconds S|--keys N [--key-type rsa:2048]
//                          (the token's own key-generation rate: the limit of a fleet rotation)
//
// Each prints one JSON object with perSecond (and p50Ms / p99Ms for the agent).
import Agent
import Entra
import Foundation
import JOSE
import Logging
import PKCS11
import TokenSigning

let arguments = Array(CommandLine.arguments.dropFirst())
guard let mode = arguments.first else {
    FileHandle.standardError.write(Data("usage: p11jwt-bench library|assertion|agent --option value …\n".utf8))
    exit(2)
}
let options: [String: String] = {
    var options: [String: String] = [:]
    var index = 1
    while index + 1 < arguments.count {
        options[String(arguments[index].dropFirst(2))] = arguments[index + 1]
        index += 2
    }
    return options
}()

func option(_ name: String) -> String {
    guard let value = options[name] else {
        FileHandle.standardError.write(Data("p11jwt-bench: --\(name) is required\n".utf8))
        exit(2)
    }
    return value
}

let seconds = Double(options["seconds"] ?? "2") ?? 2
let threads = Int(options["threads"] ?? options["clients"] ?? "1") ?? 1
let algorithm = JWSAlgorithm(name: options["alg"] ?? "RS256") ?? .RS256

/// Runs `body` on `threads` threads until `seconds` pass (or `limit` calls have started);
/// returns the count and per-call latencies.
func run(threads: Int, seconds: Double, limit: Int = .max, recordLatency: Bool, _ body: @escaping @Sendable (Int) throws -> Void) -> (Int, Double, [Double]) {
    final class Results: @unchecked Sendable {
        let lock = NSLock()
        var started = 0
        var count = 0
        var latencies: [Double] = []
        var failure: (any Error)?
    }
    let results = Results()
    let group = DispatchGroup()
    let start = DispatchTime.now().uptimeNanoseconds
    let deadline = seconds < 1e6 ? start + UInt64(seconds * 1e9) : UInt64.max
    for t in 0..<threads {
        group.enter()
        Thread.detachNewThread {
            var count = 0
            var latencies: [Double] = []
            latencies.reserveCapacity(recordLatency ? 100_000 : 0)
            do {
                while DispatchTime.now().uptimeNanoseconds < deadline,
                      results.lock.withLock({ () -> Bool in results.started += 1; return results.started <= limit }) {
                    let before = DispatchTime.now().uptimeNanoseconds
                    try body(t)
                    if recordLatency { latencies.append(Double(DispatchTime.now().uptimeNanoseconds - before) / 1e6) }
                    count += 1
                }
            } catch {
                results.lock.withLock { results.failure = error }
            }
            results.lock.withLock {
                results.count += count
                results.latencies += latencies
            }
            group.leave()
        }
    }
    group.wait()
    if let failure = results.failure {
        FileHandle.standardError.write(Data("p11jwt-bench: \(failure)\n".utf8))
        exit(1)
    }
    let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    return (results.count, elapsed, results.latencies)
}

func percentile(_ values: [Double], _ p: Double) -> Double {
    guard !values.isEmpty else { return 0 }
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))]
}

func printResult(_ fields: [String: Any]) {
    let data = try! JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}

var logger = Logger(label: "p11jwt-bench")
logger.logLevel = .error

switch mode {
case "library", "assertion":
    let uri = try PKCS11URI(option("key"))
    let module = try Module.load(ModuleSpec(option("module")), logger: logger)
    let token = try Token.open(uri, module: module, options: .init(maxPoolSessions: max(threads, 2)), logger: logger)
    try token.login(pins: PINProvider(pinFile: option("pin-file"), environment: [:], allowPrompt: false))
    let key = try token.signingKey(uri)
    let signer = try TokenSigner(token: token, key: key)
    let digest = [UInt8](repeating: 7, count: algorithm.hash.length)
    let parameters = ClientAssertion.Parameters(
        tenant: "72f988bf-86f1-41af-91ab-2d7cd011db47", clientID: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        authorityHost: EntraCloud.global.authorityHost, algorithm: .fixed(algorithm))
    let benchLogger = logger
    let (count, elapsed, _) = run(threads: threads, seconds: seconds, recordLatency: false) { _ in
        if mode == "library" {
            _ = try signer.sign(digest: digest, algorithm: algorithm)
        } else {
            _ = try ClientAssertion.make(parameters, signer: signer, logger: benchLogger).compact
        }
    }
    printResult(["mode": mode, "alg": algorithm.rawValue, "threads": threads, "seconds": elapsed, "operations": count, "perSecond": Double(count) / elapsed])
    token.close()
    module.finalize()
case "keygen":
    let uri = try PKCS11URI(option("token"))
    let module = try Module.load(ModuleSpec(option("module")), logger: logger)
    let token = try Token.open(uri, module: module, options: .init(maxPoolSessions: max(threads, 2)), logger: logger)
    try token.login(pins: PINProvider(pinFile: option("pin-file"), environment: [:], allowPrompt: false))
    let spec = try Token.KeySpec(options["key-type"] ?? "rsa:2048")
    // --keys N: a fixed number of keys, not a duration (RSA key generation times vary widely:
    // a figure to divide by needs as many keys as the measurement it is compared with).
    let keys = options["keys"].flatMap { Int($0) }
    let (count, elapsed, _) = run(threads: threads, seconds: keys == nil ? seconds : .infinity, limit: keys ?? .max, recordLatency: false) { t in
        // What a rotation asks of the token for its key: the pair (with a fresh id), then
        // (here) its removal, by the handles the generation gave back.
        let id = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let pair = try token.generateKeyPairObjects(spec, label: "bench-keygen-\(t)-\(Hex.encode(id))", id: id, freshID: true)
        try token.destroy([pair.privateKey.identity, pair.publicKey])
    }
    printResult(["mode": mode, "keyType": "\(spec)", "threads": threads, "seconds": elapsed, "operations": count, "perSecond": Double(count) / elapsed])
    token.close()
    module.finalize()
case "agent":
    // A client (a kept-alive connection) per thread, as a real client would hold one.
    let socket = option("socket")
    let clients = (0..<threads).map { _ in AgentClient(socketPath: socket) }
    let operation = options["operation"] ?? "sign"
    let digest = Base64URL.encode([UInt8](repeating: 7, count: algorithm.hash.length))
    let (count, elapsed, latencies) = run(threads: threads, seconds: seconds, recordLatency: true) { t in
        let client = clients[t]
        if operation == "token" {
            let _: AgentAPI.AccessTokenResponse = try client.call("POST", "/v1/token", body: AgentAPI.AccessTokenRequest())
        } else {
            _ = try client.sign(.init(key: nil, alg: algorithm.rawValue, value: digest))
        }
    }
    printResult([
        "mode": "agent-\(operation)", "alg": algorithm.rawValue, "clients": threads, "seconds": elapsed, "operations": count,
        "perSecond": Double(count) / elapsed, "p50Ms": percentile(latencies, 0.5), "p99Ms": percentile(latencies, 0.99),
    ])
default:
    FileHandle.standardError.write(Data("p11jwt-bench: unknown mode \(mode)\n".utf8))
    exit(2)
}
