import DurableFiles
import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import LocalCA
import Logging
import NIOCore
import ServiceLifecycle

/// The emulator server: HTTPS on loopback by default (plain HTTP only with `http`, loopback
/// only), state in a directory, the listening URL printed and written to `url` once bound.
public struct Emulator: Sendable {
    public struct Configuration: Sendable {
        public var stateDirectory: String
        public var host: String
        public var port: Int
        public var http: Bool
        public var faults: Faults.Settings

        public init(stateDirectory: String, host: String = "127.0.0.1", port: Int = 0, http: Bool = false, faults: Faults.Settings = .init()) {
            self.stateDirectory = stateDirectory
            self.host = host
            self.port = port
            self.http = http
            self.faults = faults
        }
    }

    public let configuration: Configuration

    public init(_ configuration: Configuration) throws {
        guard ["127.0.0.1", "::1", "localhost"].contains(configuration.host) else {
            throw EmulatorError("the emulator listens on loopback only (127.0.0.1, ::1 or localhost), not \(configuration.host)")
        }
        self.configuration = configuration
    }

    /// An application to run (with `run()` or in a ServiceGroup); `onListening` gets the base URL.
    public func makeApplication(logger: Logger, onListening: @escaping @Sendable (String) async -> Void = { _ in }) throws -> some ApplicationProtocol {
        let store = try StateStore(directory: configuration.stateDirectory)
        let routes = try EmulatorRoutes(store: store, faults: Faults(configuration.faults))
        let router = routes.router()
        router.middlewares.add(LogRequestsMiddleware(.debug))
        let scheme = configuration.http ? "http" : "https"
        let server: HTTPServerBuilder = configuration.http
            ? .http1()
            : try .tls(.http1(), tlsConfiguration: try ServerIdentity.loadOrCreate(directory: store.directory, name: "entra-emulator").tlsConfiguration())
        let urlFile = store.directory.appendingPathComponent("url")
        let host = configuration.host
        let baseURL = routes.baseURL
        return Hummingbird.Application(
            router: router, server: server,
            configuration: .init(address: .hostname(host, port: configuration.port), serverName: "entra-emulator"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                let url = "\(scheme)://\(host.contains(":") ? "[\(host)]" : host):\(port)"
                baseURL.value = url
                try? DurableFile.writeAtomically(Data((url + "\n").utf8), to: urlFile, mode: 0o644)
                await onListening(url)
            },
            logger: logger)
    }
}
