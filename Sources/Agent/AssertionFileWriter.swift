import DurableFiles
import Entra
import Foundation
import Logging
import ServiceLifecycle

/// Keeps a fresh client assertion in a file (0600, replaced atomically) for
/// `WorkloadIdentityCredential` (`AZURE_FEDERATED_TOKEN_FILE`). A reader may cache the file's
/// content for up to 5 minutes, so it is renewed while the current assertion still has more than
/// 5 minutes and a margin to live: what a reader holds never expires before it is used.
struct AssertionFileWriter: Service {
    static let readerCache: TimeInterval = 300
    static let margin: TimeInterval = 30

    let agent: Agent
    let path: String
    let lifetime: Int
    let logger: Logger

    /// Seconds between renewals: the lifetime less the reader cache and the margin.
    var interval: TimeInterval { max(1, TimeInterval(lifetime) - Self.readerCache - Self.margin) }

    func run() async throws {
        guard TimeInterval(lifetime) > Self.readerCache + Self.margin else {
            throw AgentError("invalidConfiguration", "an assertion file needs assertions living more than \(Int(Self.readerCache + Self.margin))s (readers cache them up to 5 minutes)",
                hint: "give the assertions a longer lifetime", settings: ["assertion-lifetime"])
        }
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await write()
            } catch {
                agent.keeper.noteFailure(error)
                logger.error("assertion file: cannot renew", metadata: ["path": "\(path)", "error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(interval)) }
        }
    }

    func write() async throws {
        guard let entra = agent.configuration.entra else { return }
        let parameters = ClientAssertion.Parameters(
            tenant: entra.tenant, clientID: entra.clientID, authorityHost: entra.endpoints.authorityHost, lifetime: lifetime,
            algorithm: entra.algorithm)
        let jws = try await ClientAssertion.make(parameters, signer: try await agent.signer(nil), logger: logger)
        try DurableFile.writeAtomically(Data(jws.compact.utf8), to: URL(fileURLWithPath: path), mode: 0o600)
        logger.debug("assertion file renewed", metadata: ["path": "\(path)"])
    }
}
