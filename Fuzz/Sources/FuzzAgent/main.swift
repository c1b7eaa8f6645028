import Foundation
import FuzzSupport
import HTTPTypes
import Hummingbird
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
let agent = try! Agent(
    configuration: .init(socketPath: directory + "/agent.sock", defaultKey: "pkcs11:token=fuzz;object=rsa"), token: token, module: module, logger: logger)
let responder = AgentRoutes(agent: agent).router().buildResponder()
nonisolated(unsafe) let channel = EmbeddedChannel()
let routes = ["/v1/sign", "/v1/assertion", "/v1/pop", "/v1/jwt", "/v1/token", "/v1/keys", "/v1/health", "/v1/status", "/v1/nothing"]

runFuzzer { data, size in
    let input = bytes(data, size)
    guard let selector = input.first else { return 0 }
    let body = Array(input.dropFirst())
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
