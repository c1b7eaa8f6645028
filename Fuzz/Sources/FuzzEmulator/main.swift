import Foundation
import FuzzSupport
@testable import EntraEmulator

// The emulator's parsing of what clients send: the token endpoint's form (and the client
// assertion in it, through every check up to the signature), Graph paths, Graph bearer tokens,
// and the addKey / removeKey / PATCH bodies (key credentials, certificates, dates, proofs),
// against a real state directory with one application. The first byte picks the entry point.
let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fuzz-emulator-\(getpid())").path
let store = try! StateStore(directory: directory)
let app = try! store.createApplication(name: "fuzz", certificate: nil, roles: ["Application.ReadWrite.All"])
let key = try! EmulatorSigningKey.loadOrCreate(in: store)
let tokens = TokenEndpoint(store: store, key: key, faults: Faults(Faults.Settings()))
let graph = GraphAPI(store: store, key: key)
let caller = GraphCaller(appId: app.appId, roles: ["Application.ReadWrite.All"], tenantId: app.tenantId)
let authorities = ["https://login.microsoftonline.com", "https://127.0.0.1:8443"]
atexit { try? FileManager.default.removeItem(atPath: directory) }

runFuzzer { data, size in
    let input = bytes(data, size)
    guard let selector = input.first else { return 0 }
    let body = Array(input.dropFirst())
    let text = String(decoding: body, as: UTF8.self)
    let now = Date()
    switch selector % 7 {
    case 0, 1:
        var form = (try? EmulatorRoutes.parseForm(text)) ?? [:]
        if selector % 7 == 1 {
            // Reach the assertion checks: a well-formed request around the fuzzed assertion.
            form = ["grant_type": "client_credentials", "client_id": app.appId, "scope": "https://graph.microsoft.com/.default",
                    "client_assertion_type": TokenEndpoint.assertionType, "client_assertion": text]
        }
        _ = try? tokens.issue(tenant: app.tenantId, form: form, authorities: authorities, now: now, endpoint: selector & 8 == 0 ? .v2 : .v1)
    case 2:
        _ = try? EmulatorRoutes.parseGraphPath(text)
    case 3:
        _ = try? graph.authenticate("Bearer " + text, now: now)
    case 4:
        _ = try? graph.addKey(.application(id: app.id), body: body, caller: caller, now: now)
    case 5:
        _ = try? graph.removeKey(.applicationByAppID(app.appId), body: body, caller: caller, now: now)
    default:
        _ = try? graph.patch(.application(id: app.id), body: body, caller: caller, now: now)
    }
    return 0
}
