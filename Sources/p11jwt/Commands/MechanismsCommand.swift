import ArgumentParser
import Foundation
import JOSE
import PKCS11
import TokenSigning

struct MechanismsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mechanisms", abstract: "List a token's signing mechanisms and the JWS algorithms they make possible.",
        discussion: """
            By default: the RSA and EC mechanisms that sign or generate key pairs, by name, with the key sizes \
            the token allows. --all lists every mechanism the token reports (HMAC, DSA, ciphers, digests).

            EXAMPLES:
              p11jwt mechanisms
              p11jwt mechanisms --token pkcs11:token=ops --output json
            """)

    @Option(name: .long, help: ArgumentHelp("The token (a pkcs11: URI; default: the only token there is).", valueName: "uri"))
    var token: String = "pkcs11:"

    @Flag(name: .long, help: "List every mechanism the token reports, not only the RSA and EC ones that sign or make key pairs.")
    var all = false

    @OptionGroup var moduleOptions: ModuleOptions
    @OptionGroup var outputOptions: OutputOptions

    struct Report: Encodable {
        var token: String
        var mechanisms: [Mechanism]
        var algorithms: [Algorithm]
    }

    struct Mechanism: Encodable {
        var name: String
        var sign: Bool
        var generateKeyPair: Bool
        var minKeySize: UInt
        var maxKeySize: UInt
    }

    struct Algorithm: Encodable {
        var alg: String
        var possible: Bool
        var via: String?
    }

    func run() throws {
        let context = try TokenContext.open(token, moduleOptions: moduleOptions, pins: nil, login: false)
        defer { context.close() }
        let set = context.token.mechanisms
        let shown = set.all.filter { all || Self.isSigningView($0) }.sorted { $0.type.description < $1.type.description }
        let report = Report(
            token: context.token.uri,
            mechanisms: shown.map {
                Mechanism(
                    name: $0.type.description, sign: $0.canSign, generateKeyPair: $0.canGenerateKeyPair,
                    minKeySize: $0.minKeySize, maxKeySize: $0.maxKeySize)
            },
            algorithms: JWSAlgorithm.allCases.map { alg in
                let path = set.path(for: alg)
                return Algorithm(alg: alg.rawValue, possible: path != nil, via: path?.rawValue)
            })
        if outputOptions.output == .json { return try printJSON(report) }
        print("token: \(report.token)")
        print("mechanisms:")
        for m in report.mechanisms {
            let uses = [m.sign ? "sign" : nil, m.generateKeyPair ? "generate-key-pair" : nil].compactMap { $0 }
            print("  \(m.name.padding(toLength: 28, withPad: " ", startingAt: 0)) \(uses.joined(separator: ","))  keys \(m.minKeySize)–\(m.maxKeySize)")
        }
        print("JWS algorithms:")
        for a in report.algorithms {
            print("  \(a.alg)  \(a.possible ? "yes, via \(a.via!)" : "no")")
        }
    }
}

extension MechanismsCommand {
    /// RSA and EC mechanisms that sign, or make RSA / EC key pairs: what keys for JWS need.
    static func isSigningView(_ info: MechanismInfo) -> Bool {
        let name = info.type.description
        let keyFamily = name.contains("RSA") || name.contains("ECDSA") || name.hasPrefix("CKM_EC_")
        let hmacOrDSA = name.contains("HMAC") || name.contains("DSA") && !name.contains("ECDSA")
        return keyFamily && !hmacOrDSA && (info.canSign || info.canGenerateKeyPair)
    }
}
