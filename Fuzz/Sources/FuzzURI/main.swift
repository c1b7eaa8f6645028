import Foundation
import FuzzSupport
import PKCS11

// RFC 7512 URIs through p11-kit and p11jwt's accessors: no input may trap, and redaction must
// never let a pin-value through.
runFuzzer { data, size in
    let text = String(decoding: bytes(data, size), as: UTF8.self)
    let redacted = PKCS11URI.redact(text)
    if let uri = try? PKCS11URI(text) {
        _ = uri.pinSource
        _ = uri.moduleName
        _ = uri.modulePath
        _ = uri.slotID
        _ = uri.pinValue
    }
    // Whatever the text, no pin-value survives redaction (any case).
    if redacted.replacingOccurrences(of: "pin-value=REDACTED", with: "").range(of: "pin-value=", options: .caseInsensitive) != nil {
        fatalError("a pin-value survived redaction")
    }
    return 0
}
