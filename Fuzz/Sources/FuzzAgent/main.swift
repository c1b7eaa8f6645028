import Foundation
import FuzzSupport
import HTTPTypes
import Hummingbird
import LocalCA
import Logging
import NIOCore
import NIOEmbedded
import PKCS11
import TokenSigning
@testable import Agent

// The agent's request path as a client reaches it: the real router and handlers of the
// Unix-socket API (JSON decoding, key URIs, algorithms, digests, claims, lifetimes) over a real
// SoftHSM token with an RSA key (and certificate) and an EC key. The first byte picks the route;
// the rest is the body (or the /v1/keys query). No Entra configuration: nothing leaves the process.
// A first byte of 0x80 or more goes to the Key Vault endpoint instead: the first line of the rest
// is "METHOD /path?query", the others the body; with bit 0x40 set the request carries no bearer
// token (the challenge path), else one the vault issued.
let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fuzz-agent-\(getpid())").path
try! FileManager.default.createDirectory(atPath: directory + "/tokens", withIntermediateDirectories: true)
try! "directories.tokendir = \(directory)/tokens\nobjectstore.backend = file\nlog.level = ERROR\n".write(toFile: directory + "/softhsm2.conf", atomically: true, encoding: .utf8)
setenv("SOFTHSM2_CONF", directory + "/softhsm2.conf", 1)
atexit { try? FileManager.default.removeItem(atPath: directory) }
let initialise = Process()
initialise.executableURL = URL(fileURLWithPath: "/usr/bin/softhsm2-util")
initialise.arguments = ["--init-token", "--free", "--label", "fuzz", "--pin", "1234", "--so-pin", "5678"]
initialise.standardOutput = FileHandle.nullDevice
try! initialise.run()
initialise.waitUntilExit()

let logger = Logger(label: "fuzz-agent") { _ in SwiftLogNoOpLogHandler() }
let module = try! Module.load(ModuleSpec("/usr/lib/softhsm/libsofthsm2.so"), logger: logger)
let token = try! Token.open(try! PKCS11URI("pkcs11:token=fuzz"), module: module, logger: logger)
try! token.login(heldPIN: SecretBytes(Array("1234".utf8)))
let rsa = try! token.generateKeyPair(.rsa(bits: 2048), label: "rsa", id: [1])
_ = try! token.generateKeyPair(.ec(.p256), label: "ec", id: [2])
let certificate = try! TokenCertificates.selfSigned(
    signer: try! TokenSigner(token: token, key: rsa, certificateChain: []), subject: try! TokenCertificates.distinguishedName("CN=fuzz"), days: 30)
_ = try! token.storeCertificate(der: certificate.der, label: "rsa", id: [1])
var configuration = Agent.Configuration(socketPath: directory + "/agent.sock", defaultKey: "pkcs11:token=fuzz;object=rsa")
configuration.keyVaultPort = 0
let agent = try! Agent(configuration: configuration, token: token, module: module, logger: logger)
let keyVault = KeyVaultEndpoint(
    agent: agent, vault: agent.keyVault!, identity: try! ServerIdentity.loadOrCreate(directory: URL(fileURLWithPath: directory + "/kv"), name: "fuzz"),
    logger: logger)
let bearer = agent.keyVault!.issueToken().token
let responder = AgentRoutes(agent: agent).router().buildResponder()
nonisolated(unsafe) let channel = EmbeddedChannel()
let routes = ["/v1/sign", "/v1/assertion", "/v1/pop", "/v1/jwt", "/v1/token", "/v1/keys", "/v1/health", "/v1/status", "/v1/nothing"]

runFuzzer { data, size in
    let input = bytes(data, size)
    guard let selector = input.first else { return 0 }
    let body = Array(input.dropFirst())
    if selector >= 0x80 {
        let newline = body.firstIndex(of: UInt8(ascii: "\n")) ?? body.endIndex
        let line = String(decoding: body[..<newline], as: UTF8.self).split(separator: " ", maxSplits: 1).map(String.init)
        let method = line.first.flatMap { HTTPRequest.Method($0) } ?? .get
        let target = line.count > 1 && line[1].hasPrefix("/") ? line[1] : "/" + (line.count > 1 ? line[1] : "")
        var headers: HTTPFields = [.contentType: "application/json"]
        if selector & 0x40 == 0 { headers[.authorization] = "Bearer " + bearer }
        let request = Request(
            head: HTTPRequest(method: method, scheme: "https", authority: "127.0.0.1", path: target, headerFields: headers),
            body: RequestBody(buffer: ByteBuffer(bytes: body[min(newline + 1, body.endIndex)...])))
        let done = DispatchSemaphore(value: 0)
        Task.detached {
            _ = await keyVault.answer(request, peerUID: { getuid() })
            done.signal()
        }
        done.wait()
        return 0
    }
    var path = routes[Int(selector) % routes.count]
    var method = HTTPRequest.Method.post
    if path == "/v1/keys" || path == "/v1/health" || path == "/v1/status" {
        method = .get
        path += "?" + String(decoding: body, as: UTF8.self)
    }
    let request = Request(
        head: HTTPRequest(method: method, scheme: "http", authority: "agent", path: path, headerFields: [.contentType: "application/json"]),
        body: RequestBody(buffer: ByteBuffer(bytes: body)))
    let context = AgentRequestContext(source: ApplicationRequestContextSource(channel: channel, logger: logger))
    // Detached: a plain Task made here would inherit the main actor of this top-level code, and
    // the main thread is the one waiting for it.
    let done = DispatchSemaphore(value: 0)
    Task.detached {
        _ = try? await responder.respond(to: request, context: context)
        done.signal()
    }
    done.wait()
    return 0
}
