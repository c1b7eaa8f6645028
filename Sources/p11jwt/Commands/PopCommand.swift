import ArgumentParser
import Entra
import Foundation
import JOSE
import PKCS11
import TokenSigning

struct PopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pop",
        abstract: "Make the Graph proof-of-possession token for addKey / removeKey, signed by a key on the token.",
        discussion: """
            The key must be one whose certificate is already registered on the application or service \
            principal. The proof is RS256 with x5t and kid, aud 00000002-0000-0000-c000-000000000000, \
            iss the object id, and is valid for 10 minutes.

            EXAMPLES:
              p11jwt pop --object-id 6666… --key "$KEY"
            """)

    @Option(name: .long, help: "The object id of the application or service principal (not its appId). Default: $P11JWT_OBJECT_ID, else the config file's object-id.")
    var objectID: String?

    @Option(name: .long, help: "RS256 (what Graph documents) or PS256.")
    var alg: ProofAlgorithmArgument = .RS256

    @OptionGroup var signing: SigningOptions
    @OptionGroup var outputOptions: OutputOptions

    func run() throws {
        // Check what needs no token before asking for a PIN.
        guard let objectID = try signing.moduleOptions.settings().value(.objectID, flag: objectID) else {
            throw CLIError(message: "no object id: give --object-id, set $P11JWT_OBJECT_ID, or put object-id: in the config file", exitCode: 2)
        }
        _ = try ProofOfPossession.validated(objectID: objectID)
        let session = try signing.open(requireCertificate: true)
        defer { session.close() }
        let jws = try ProofOfPossession.make(objectID: objectID, signer: session.signer, algorithm: alg.algorithm, logger: session.logger)
        try printToken(jws, format: outputOptions.output)
    }
}
