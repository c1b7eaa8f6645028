import FuzzSupport
import JOSE

// JWS compact parsing, header and claims access, and X.509 DER / PEM certificate handling.
runFuzzer { data, size in
    let input = bytes(data, size)
    let text = String(decoding: input, as: UTF8.self)
    if let jws = try? JWS(compact: text) {
        _ = jws.claims
        _ = jws.algorithm
        _ = jws.header["x5c"]?.arrayValue?.first?.stringValue
        _ = jws.signingInput
    }
    if let certificate = try? JWSCertificate(der: input) {
        _ = certificate.thumbprint.hexSHA1
        _ = certificate.pem
    }
    _ = try? JWSCertificate.all(fromPEMOrDER: input, source: "fuzz")
    _ = Base64URL.decode(text)
    return 0
}
