import BuildInfo
import Entra
import Foundation
import Synchronization
import Hummingbird
import HummingbirdCore
import JOSE
import LocalCA
import Logging
import NIOCore
import PKCS11
import TokenSigning
import ServiceLifecycle
import UnixSignals
import Diagnostics
#if canImport(Glibc)
import Glibc
#endif

/// The signing agent: one logged-in token, served over a Unix socket (HTTP + JSON) to processes
/// of allowed uids, optionally as an App Service managed-identity endpoint on 127.0.0.1 and as a
/// federated token file, so other programs — the p11jwt CLI, unmodified Azure SDKs — use the
/// hardware key without a PIN of their own.
public final class Agent: Sendable {
    /// An application the agent gets tokens for (`identities` in the config file). Its key is on
    /// the agent's token.
    public struct Identity: Sendable {
        public var name: String
        public var entra: EntraClient.Configuration
        /// Its key (a `pkcs11:` URI on the agent's token).
        public var key: String
        /// Matched by `object_id` / `principal_id` (the service principal's object id).
        public var objectID: String?
        /// Matched by `mi_res_id`.
        public var resourceID: String?
        /// When not empty, only these uids (besides the agent's) and the processes of these
        /// gids may use the identity or its key over the socket.
        public var allowedUIDs: Set<uid_t> = []
        public var allowedGIDs: Set<gid_t> = []
        /// The identity answered when a request names none.
        public var isDefault = false

        public init(name: String, entra: EntraClient.Configuration, key: String) {
            self.name = name
            self.entra = entra
            self.key = key
        }

        var isRestricted: Bool { !allowedUIDs.isEmpty || !allowedGIDs.isEmpty }
    }

    public struct Configuration: Sendable {
        public var socketPath: String
        /// The key used when a request names none (a `pkcs11:` URI on the agent's token).
        public var defaultKey: String
        /// Uids allowed to connect besides the agent's own.
        public var allowedUIDs: Set<uid_t>
        /// Peers whose effective gid is one of these are allowed too.
        public var allowedGIDs: Set<gid_t> = []
        /// Tenant, client and endpoints for `/v1/token`, `/v1/assertion` defaults, the managed-
        /// identity endpoint and the assertion file.
        public var entra: EntraClient.Configuration?
        /// Serve the managed-identity endpoint on this 127.0.0.1 port (0: any free port).
        public var managedIdentityPort: Int?
        /// Keep a fresh client assertion in this file.
        public var assertionFile: String?
        /// Lifetime of the assertions written to `assertionFile`.
        public var assertionLifetime: Int
        /// Serve the Key Vault keys API on this 127.0.0.1 port (0: any free port), over HTTPS
        /// with a CA kept in `keyVaultDirectory`. Needs the managed-identity endpoint (its
        /// tokens are the vault's bearer tokens): it is started on any free port if not asked for.
        public var keyVaultPort: Int?
        /// Where the Key Vault endpoint's CA and server key live (`ca.pem` for clients).
        public var keyVaultDirectory: URL?
        /// Key Vault names → key URIs on the token; empty: every key under its label.
        public var keyVaultNames: [String: String] = [:]
        /// The applications served; empty: the one of `entra` with `defaultKey`.
        public var identities: [Identity] = []
        /// The secret the managed-identity endpoint requires in `X-IDENTITY-HEADER`, when it is
        /// shared ahead of time (a Kubernetes secret the app's `IDENTITY_HEADER` also comes
        /// from); nil: a new random one per start, printed by `--print-env`.
        public var identitySecret: String?
        /// A listening socket systemd passed (socket activation): served instead of binding
        /// `socketPath` (which is then its path). systemd owns the file: the agent neither
        /// changes its mode nor removes it.
        public var inheritedSocket: InheritedSocket?

        public init(
            socketPath: String, defaultKey: String, allowedUIDs: Set<uid_t> = [], entra: EntraClient.Configuration? = nil,
            managedIdentityPort: Int? = nil, assertionFile: String? = nil, assertionLifetime: Int = ClientAssertion.defaultLifetime
        ) {
            self.socketPath = socketPath
            self.defaultKey = defaultKey
            self.allowedUIDs = allowedUIDs
            self.entra = entra
            self.managedIdentityPort = managedIdentityPort
            self.assertionFile = assertionFile
            self.assertionLifetime = assertionLifetime
        }
    }

    public let configuration: Configuration
    let keeper: TokenKeeper
    let logger: Logger
    /// The signers resolved so far, by the key URI a request named.
    let signers = Mutex<[String: TokenSigner]>([:])
    /// How often ``KeyWatcher`` looks up again the keys chosen by a URI that does not pin `id=`
    /// (a `rotate` moves the label to the new key).
    static let keyRecheckInterval: Duration = .seconds(1)
    /// The secret the managed-identity endpoint requires in `X-IDENTITY-HEADER`, new per start.
    public let identitySecret: String
    /// The Key Vault surface, when configured.
    let keyVault: KeyVault?
    /// Each identity served with its broker: swapped whole by ``reload(identities:)``, so a
    /// request works with the snapshot it started with.
    private let servedBox: Mutex<[Served]>
    var served: [Served] { servedBox.withLock { $0 } }
    /// Brokers of identities a reload removed: requests under way may still use them, so their
    /// HTTP clients are shut down by a later reload once ``retirementGrace`` has passed (an agent
    /// reloaded often holds only the last few minutes' worth), or with the agent.
    private let retiredBrokers = Mutex(Retirements<TokenBroker>(grace: Agent.retirementGrace))
    /// Longer than any request takes (the token endpoint's timeouts and retries included).
    static let retirementGrace: Duration = .seconds(300)

    struct Served: Sendable {
        let identity: Identity
        let broker: TokenBroker
        /// Its key's `CKA_ID` (for access checks on requests that name the key, not the identity).
        let keyID: [UInt8]?
    }

    let fatal: AsyncStream<String>
    let fatalContinuation: AsyncStream<String>.Continuation

    /// When the agent started, and what it has answered since (for `agent status`).
    let startedAt = Date()
    let activity = Mutex(Activity())
    /// How many of the latest errors `agent status` shows.
    public static let recentErrorLimit = 10

    struct Activity {
        var served = 0
        var refused = 0
        var recentErrors: [AgentAPI.Status.RecentError] = []
    }

    /// Counts an answered request; a refusal or failure is kept among the recent errors.
    func record(_ operation: String, error: (code: String, message: String)? = nil) {
        activity.withLock { activity in
            guard let error else {
                activity.served += 1
                return
            }
            activity.refused += 1
            activity.recentErrors.append(.init(
                time: ISO8601DateFormatter().string(from: Date()), operation: operation, error: error.code, message: error.message))
            if activity.recentErrors.count > Self.recentErrorLimit { activity.recentErrors.removeFirst() }
        }
    }

    /// What `GET /v1/status` answers.
    func status() async -> AgentAPI.Status {
        let token = try? keeper.current()
        let summary = keeper.summary
        let module = keeper.module
        let info = token?.info
        let formatter = ISO8601DateFormatter()
        let snapshot = served
        let defaultName = Self.defaultIdentity(of: snapshot)?.identity.name
        var identities: [AgentAPI.Status.IdentityState] = []
        for served in snapshot {
            let identity = served.identity
            let signer = signers.withLock { $0[identity.key] }
            identities.append(.init(
                name: identity.name, tenant: identity.entra.tenant, clientId: identity.entra.clientID, objectId: identity.objectID,
                isDefault: identity.name == defaultName, key: Self.redacted(identity.key),
                keyId: signer?.key.id.map { Hex.encode($0) }, thumbprint: signer?.certificate?.thumbprint.hexSHA1,
                certificateExpires: signer?.certificate.map { formatter.string(from: $0.certificate.notValidAfter) },
                allowUids: identity.allowedUIDs.sorted(), allowGids: identity.allowedGIDs.sorted(),
                cachedTokens: await served.broker.held()))
        }
        let recorded = activity.withLock { $0 }
        return AgentAPI.Status(
            pid: getpid(), version: BuildInfo.version, startedAt: formatter.string(from: startedAt),
            uptimeSeconds: Int(Date().timeIntervalSince(startedAt)),
            token: .init(
                label: info?.label ?? keeper.label, serial: info?.serialNumber ?? "", manufacturer: info?.manufacturer ?? "",
                model: info?.model ?? "", module: module.registeredName ?? module.path ?? "p11-kit-proxy", state: summary.state,
                loggedIn: token?.isLoggedIn ?? false, reason: summary.reason, since: summary.since.map { formatter.string(from: $0) }),
            defaultKey: Self.redacted(configuration.defaultKey), identities: identities,
            endpoints: .init(
                socket: configuration.socketPath, socketFromSystemd: configuration.inheritedSocket != nil,
                managedIdentity: managedIdentityURL.withLock { $0 }, keyVault: keyVault?.url, assertionFile: configuration.assertionFile),
            requests: .init(served: recorded.served, refused: recorded.refused), recentErrors: recorded.recentErrors)
    }

    /// A key URI as it may be shown: without `pin-value` / `pin-source`.
    static func redacted(_ text: String) -> String {
        (try? PKCS11URI(text).redacted) ?? "(not a pkcs11: URI)"
    }

    /// `token` is logged in by the caller (the PIN is asked for once, before the agent starts).
    public init(configuration: Configuration, token: Token, module: Module, logger: Logger) throws {
        // The default key must exist now, not at the first request.
        let defaultSigner = try Self.resolve(configuration.defaultKey, on: token)
        self.configuration = configuration
        self.logger = logger
        (fatal, fatalContinuation) = AsyncStream.makeStream(of: String.self)
        let continuation = fatalContinuation
        // Signers of a token that was lost are not reused: `signer(_:)` checks the token.
        keeper = TokenKeeper(
            token: token, module: module, uri: try PKCS11URI(configuration.defaultKey), logger: logger,
            onFatal: { continuation.yield($0) })
        signers.withLock { $0[configuration.defaultKey] = defaultSigner }
        var rng = SystemRandomNumberGenerator()
        identitySecret = configuration.identitySecret ?? Base64URL.encode((0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) })
        var served: [Served] = []
        for identity in configuration.identities {
            let signer = try Self.resolve(identity.key, on: token)
            signers.withLock { $0[identity.key] = signer }
            served.append(Served(identity: identity, broker: try TokenBroker(configuration: identity.entra, logger: logger), keyID: signer.key.id))
        }
        if served.isEmpty, let entra = configuration.entra {
            var identity = Identity(name: "default", entra: entra, key: configuration.defaultKey)
            identity.isDefault = true
            served = [Served(identity: identity, broker: try TokenBroker(configuration: entra, logger: logger), keyID: defaultSigner.key.id)]
        }
        servedBox = Mutex(served)
        keyVault = configuration.keyVaultPort.map { KeyVault(port: $0, tenant: configuration.entra?.tenant, names: configuration.keyVaultNames) }
    }

    /// Serves `identities` from now on (SIGHUP re-reads the config file): each key is looked up
    /// on the agent's token, already logged in, before anything changes, so a list with a key the
    /// token lacks changes nothing. Requests under way finish with the identities they started
    /// with; an identity whose application and endpoints are unchanged keeps its broker (and the
    /// tokens it holds). Returns the names added, removed and kept.
    public func reload(identities: [Identity]) async throws -> (added: [String], removed: [String], kept: [String]) {
        guard !identities.isEmpty else {
            throw AgentError("invalidConfiguration", "the reloaded config has no identities; the agent keeps serving the ones it has",
                hint: "list the identities in the config file, or restart the agent to serve its one application")
        }
        let token = try keeper.current()
        var resolved: [(Identity, TokenSigner)] = []
        for identity in identities {
            let signer = try await token.run { try Self.resolve(identity.key, on: $0) }
            resolved.append((identity, signer))
        }
        let current = served
        var next: [Served] = []
        for (identity, signer) in resolved {
            signers.withLock { held in if held[identity.key] == nil { held[identity.key] = signer } }
            let broker: TokenBroker
            if let same = current.first(where: { Self.sameApplication($0.identity, identity) }) {
                broker = same.broker
            } else {
                broker = try TokenBroker(configuration: identity.entra, logger: logger)
            }
            next.append(Served(identity: identity, broker: broker, keyID: signer.key.id))
        }
        let kept = Set(next.map { ObjectIdentifier($0.broker) })
        let due = retiredBrokers.withLock { retired in
            retired.retire(current.map(\.broker).filter { !kept.contains(ObjectIdentifier($0)) })
            return retired.due()
        }
        servedBox.withLock { $0 = next }
        for broker in due { await broker.shutdown() }
        if sharesSocket, ownsSocket.withLock({ $0 }) {
            // Newly allowed uids must reach the socket.
            chmod((configuration.socketPath as NSString).deletingLastPathComponent, 0o711)
            chmod(configuration.socketPath, 0o666)
        }
        let before = Set(current.map(\.identity.name)), after = Set(next.map(\.identity.name))
        return (after.subtracting(before).sorted(), before.subtracting(after).sorted(), after.intersection(before).sorted())
    }

    /// Whether two identities are the same application at the same endpoints (their broker and
    /// its tokens can be kept: the broker's cache is keyed by scope and certificate, so a new key
    /// gets new tokens through it).
    static func sameApplication(_ a: Identity, _ b: Identity) -> Bool {
        a.entra.tenant == b.entra.tenant && a.entra.clientID == b.entra.clientID && a.entra.cloud == b.entra.cloud
            && a.entra.endpoints.authorityHost == b.entra.endpoints.authorityHost && a.entra.caFile == b.entra.caFile
    }

    /// The identity a request names by name or client id (nil: the default one). nil when it
    /// names none the agent serves, or names none and there is no default.
    func identity(_ selector: String?) -> Served? {
        let served = served
        guard let selector else { return Self.defaultIdentity(of: served) }
        return served.first { $0.identity.name == selector || $0.identity.entra.clientID.lowercased() == selector.lowercased() }
    }

    /// The identity answered when a request names none: the one marked default, else the only one.
    static func defaultIdentity(of served: [Served]) -> Served? {
        served.first { $0.identity.isDefault } ?? (served.count == 1 ? served.first : nil)
    }

    /// Refuses a socket peer that an identity's allow list leaves out, for a request that uses
    /// the identity or its key.
    func authorize(_ peer: PeerCredential?, identity: Served?, key signer: TokenSigner?) throws {
        try authorize(uid: { peer?.uid }, gid: peer?.gid, identity: identity, key: signer)
    }

    /// The same for a peer whose uid, or gid, may be unknown (a loopback TCP peer has no gid the
    /// agent can learn): an unknown one matches no allow list.
    /// `uid` is asked for only when an identity is limited.
    func authorize(uid peerUID: () -> uid_t?, gid: gid_t?, identity: Served?, key signer: TokenSigner?) throws {
        var guarded: [Served] = []
        if let identity { guarded.append(identity) }
        if let id = signer?.key.id { guarded += served.filter { $0.keyID == id } }
        for served in guarded where served.identity.isRestricted {
            let identity = served.identity
            guard let uid = peerUID() else {
                logger.warning("agent: refused a connection whose uid is unknown for identity '\(identity.name)'")
                throw AgentError("forbidden", "identity '\(identity.name)' is limited to some users, and this connection's are unknown")
            }
            if uid == getuid() || identity.allowedUIDs.contains(uid) || gid.map(identity.allowedGIDs.contains) == true { continue }
            logger.warning("agent: refused uid \(uid) for identity '\(identity.name)'")
            throw AgentError(
                "forbidden", "uid \(uid) may not use identity '\(identity.name)' or its key",
                hint: gid == nil && identity.allowedUIDs.isEmpty
                    ? "the identity allows only gids, which a TCP connection does not show: add its users to allowUids, or use the socket API"
                    : "the identity's allowUids / allowGids in the agent's config say who may")
        }
    }

    /// The signer for a request's `key` (nil: the default key). Keys are on the agent's token.
    ///
    /// A key already resolved is answered from memory: a request never waits on the token to
    /// find its signer. A key chosen by label (or any URI without `id=`) is looked up again in
    /// the background once per ``keyRecheckInterval`` (``KeyWatcher``), and at once (awaited)
    /// when `recheck` is set (Entra refused the key): after a `rotate` the label names the new key,
    /// and the agent follows it without a restart. While the lookup finds no key or several (a
    /// rotate is moving the label between two keys that both work) the signer already held is kept.
    func signer(_ keyURI: String?, recheck: Bool = false) async throws -> TokenSigner {
        let text = keyURI ?? configuration.defaultKey
        let token = try keeper.current()
        guard let held = signers.withLock({ $0[text] }), held.token === token else {
            let signer = try await token.run { try Self.resolve(text, on: $0) }
            signers.withLock { $0[text] = signer }
            return signer
        }
        let uri = try PKCS11URI(text)
        guard recheck, uri.objectID == nil else { return held }
        return try await self.recheck(text, uri: uri, held: held)
    }

    /// Looks up again every held key chosen without `id=` (``KeyWatcher`` calls this once per
    /// ``keyRecheckInterval``), so requests never wait for it.
    func recheckHeldKeys() async {
        guard let token = try? keeper.current() else { return }
        let held = signers.withLock { $0 }
        for (text, signer) in held where signer.token === token {
            guard let uri = try? PKCS11URI(text), uri.objectID == nil else { continue }
            _ = try? await recheck(text, uri: uri, held: signer)
        }
    }

    /// Looks the key URI up again on the token (on its executor) and moves to the key it now
    /// selects, if that is another single key.
    private func recheck(_ text: String, uri: PKCS11URI, held: TokenSigner) async throws -> TokenSigner {
        let token = held.token
        let found: [PrivateKeyObject]
        do {
            found = try await token.run { try $0.privateKeys(matching: uri) }
        } catch {
            if keeper.noteFailure(error) { throw error }
            logger.debug("key lookup failed; keeping the key already resolved", metadata: ["key": "\(uri.redacted)", "error": "\(error)"])
            return held
        }
        guard found.count == 1, found[0].id != held.key.id || found[0].label != held.key.label else {
            if found.count != 1 {
                logger.debug("key lookup found \(found.count) keys; keeping the key already resolved", metadata: ["key": "\(uri.redacted)"])
            }
            return held
        }
        let signer = try await TokenSigner.make(token: token, key: found[0])
        logger.notice(
            "the key URI now selects another key (rotated); signing with it from now on",
            metadata: ["key": "\(uri.redacted)", "id": "\(Hex.encode(found[0].id ?? []))", "thumbprint": "\(signer.certificate?.thumbprint.hexSHA1 ?? "none")"])
        signers.withLock { $0[text] = signer }
        return signer
    }

    /// An access token from the broker with the signer for `keyURI`; when Entra refuses the key
    /// (AADSTS700027: its credential was removed, as a `rotate` does), the URI is looked up again
    /// and, if it now names another key, the exchange is tried once with that key.
    func accessToken(broker: TokenBroker, scope: String, keyURI: String?, federation: (clientID: String, tenant: String?)? = nil) async throws -> AccessToken {
        let signer = try await signer(keyURI)
        do {
            return try await broker.token(scope: scope, signer: signer, federation: federation)
        } catch let error as EntraError where error.code == .tokenRefused && error.aadsts == 700027 {
            let again = try await self.signer(keyURI, recheck: true)
            guard again.key.id != signer.key.id else { throw error }
            return try await broker.token(scope: scope, signer: again, federation: federation)
        }
    }

    static func resolve(_ text: String, on token: Token) throws -> TokenSigner {
        let uri = try PKCS11URI(text)
        guard uri.matches(token: token.info) else {
            throw AgentError("wrongToken", "key \(uri.redacted) is not on token '\(token.info.label)', the one this agent serves",
                hint: "start an agent for that token, or use the token directly", settings: ["no-agent"])
        }
        return try TokenSigner(token: token, key: try token.signingKey(uri))
    }

    /// The services to run in a ServiceGroup: the socket server, and the managed-identity
    /// endpoint and assertion-file writer when configured. `onReady` gets the environment lines
    /// (`--print-env`) once everything listens.
    ///
    /// `reloadIdentities` re-reads the identities on SIGHUP (nil: SIGHUP only says there is
    /// nothing to reload). The caller blocks SIGHUP in every thread first
    /// (`ShutdownSignals.blockInAllThreads(also: [SIGHUP])`).
    public func services(
        reloadIdentities: (@Sendable () throws -> [Identity])? = nil, onReady: @escaping @Sendable ([String: String]) async -> Void
    ) throws -> [any Service] {
        if configuration.inheritedSocket == nil { try prepareSocketPath() }
        var services: [any Service] = []
        let managedIdentityPort = configuration.managedIdentityPort ?? (keyVault == nil ? nil : 0)
        let ready = ReadinessCounter(expected: 1 + (managedIdentityPort == nil ? 0 : 1) + (keyVault == nil ? 0 : 1)) { [self] in
            await onReady(environment())
        }
        let peerCheck = PeerCredentialsHandler.Factory(
            allowed: { [self] in (allowedUIDs, allowedGIDs) }, connections: ConnectionsPerUID(limit: Self.connectionsPerUID), logger: logger)
        let channel = HTTP1Channel.Configuration(
            additionalChannelHandlers: [peerCheck.make(), OversizedRequestCloser(limit: Self.maximumBody)], idleTimeout: Self.idleTimeout)
        if let inherited = configuration.inheritedSocket {
            services.append(InheritedSocketServer(
                socket: inherited, responder: AgentRoutes(agent: self).router().buildResponder(), channel: channel,
                maximumConnections: Self.maximumConnections, serverName: "p11jwt-agent", logger: logger
            ) { [self] in
                logger.info("agent listening on the socket systemd passed", metadata: ["socket": "\(inherited.path)", "mode": "\(Self.describeFile(inherited.path))"])
                await ready.signal()
            })
        } else {
            services.append(Application(
                router: AgentRoutes(agent: self).router(),
                server: .http1(configuration: channel),
                configuration: .init(
                    address: .unixDomainSocket(path: configuration.socketPath), serverName: "p11jwt-agent",
                    availableConnectionsDelegate: MaximumAvailableConnections(Self.maximumConnections, logger: logger)),
                onServerRunning: { [self] _ in
                    // Other uids named by --allow-uid must be able to connect; SO_PEERCRED decides who is served.
                    chmod(configuration.socketPath, sharesSocket ? 0o666 : 0o600)
                    ownsSocket.withLock { $0 = true }
                    logger.info("agent listening", metadata: ["socket": "\(configuration.socketPath)"])
                    await ready.signal()
                },
                logger: logger))
        }
        if let port = managedIdentityPort {
            guard !served.isEmpty || keyVault != nil else {
                throw AgentError("invalidConfiguration", "the managed-identity endpoint needs a tenant and client id", hint: "give the tenant and the client id", settings: ["tenant", "client-id"])
            }
            services.append(ManagedIdentityEndpoint(agent: self, port: port, logger: logger).application { url in
                self.managedIdentityURL.withLock { $0 = url }
                await ready.signal()
            })
        }
        if let keyVault {
            guard let directory = configuration.keyVaultDirectory else {
                throw AgentError("invalidConfiguration", "the Key Vault endpoint needs a directory for its CA", settings: ["key-vault-dir"])
            }
            let identity: ServerIdentity
            do {
                identity = try ServerIdentity.loadOrCreate(directory: directory, name: "agent key vault")
            } catch {
                throw AgentError(
                    "invalidConfiguration", "cannot make or read the Key Vault endpoint's CA in \(directory.path): \(error)",
                    hint: "give a directory the agent can write (0700)", settings: ["key-vault-dir"])
            }
            services.append(try KeyVaultEndpoint(agent: self, vault: keyVault, identity: identity, logger: logger).application { _ in
                await ready.signal()
            })
        }
        services.append(FatalWatcher(reasons: fatal))
        services.append(HangupReloader(agent: self, read: reloadIdentities))
        services.append(KeyWatcher(agent: self))
        if let path = configuration.assertionFile {
            guard configuration.entra != nil else {
                throw AgentError("invalidConfiguration", "the assertion file needs a tenant and client id", hint: "give the tenant and the client id", settings: ["tenant", "client-id"])
            }
            services.append(AssertionFileWriter(agent: self, path: path, lifetime: configuration.assertionLifetime, logger: logger))
        }
        return services
    }

    let managedIdentityURL = Mutex<String?>(nil)

    /// A socket file's mode and owner, for the log: systemd set them, the agent did not.
    static func describeFile(_ path: String) -> String {
        var info = stat()
        guard stat(path, &info) == 0 else { return "unknown (\(String(cString: strerror(errno))))" }
        return "0" + String(info.st_mode & 0o7777, radix: 8) + " owner \(info.st_uid):\(info.st_gid)"
    }
    /// Set once this agent bound the socket: only then does shutdown remove it.
    let ownsSocket = Mutex(false)

    /// Who may connect: the agent's uid, `--allow-uid`, and every identity's allowed uids (each
    /// request is then checked against the identity it uses).
    var allowedUIDs: Set<uid_t> {
        configuration.allowedUIDs.union([getuid()]).union(served.flatMap(\.identity.allowedUIDs))
    }

    var allowedGIDs: Set<gid_t> { configuration.allowedGIDs.union(served.flatMap(\.identity.allowedGIDs)) }

    /// The `--print-env` variables.
    public func environment() -> [String: String] {
        var env = ["P11JWT_AGENT_SOCK": configuration.socketPath]
        if let url = managedIdentityURL.withLock({ $0 }) {
            env["IDENTITY_ENDPOINT"] = url
            env["IDENTITY_HEADER"] = identitySecret
        }
        if let url = keyVault?.url, let directory = configuration.keyVaultDirectory {
            env["AZURE_KEYVAULT_URL"] = url
            env["P11JWT_KEY_VAULT_CA"] = directory.appendingPathComponent("ca.pem").path
        }
        if let path = configuration.assertionFile, let entra = configuration.entra {
            env["AZURE_FEDERATED_TOKEN_FILE"] = path
            env["AZURE_CLIENT_ID"] = entra.clientID
            env["AZURE_TENANT_ID"] = entra.tenant
            env["AZURE_AUTHORITY_HOST"] = entra.endpoints.authorityHost.absoluteString
        }
        return env
    }

    /// A connection that sends nothing for this long (no request, or no next request) is closed.
    static let idleTimeout: TimeAmount = .seconds(15)
    /// Connections open at once, per listener; beyond it the listener stops accepting until one
    /// closes (backpressure, not an accept loop spinning on EMFILE).
    static let maximumConnections = 128
    /// Connections one uid other than the agent's may hold on the socket.
    static let connectionsPerUID = 16
    /// The largest request body; a larger one is answered 413 and its connection closed.
    static let maximumBody = 1 << 20

    /// Whether other uids are allowed (`--allow-uid`): then the socket is 0666 and its directory
    /// 0711, so they can reach it, and SO_PEERCRED alone decides who is served.
    var sharesSocket: Bool { !allowedUIDs.subtracting([getuid()]).isEmpty || !allowedGIDs.isEmpty }

    /// Refuses a socket path an agent is listening on; removes a stale socket; makes the
    /// directory 0700 (0711 when other uids are allowed).
    func prepareSocketPath() throws {
        let path = configuration.socketPath
        let directory = (path as NSString).deletingLastPathComponent
        let mode: mode_t = sharesSocket ? 0o711 : 0o700
        if !FileManager.default.fileExists(atPath: directory) {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        var info = stat()
        // Group or others may search a shared directory, never list or write it.
        guard stat(directory, &info) == 0, info.st_uid == getuid(), info.st_mode & (sharesSocket ? 0o066 : 0o077) == 0 else {
            throw AgentError("unsafeSocketDirectory", "the socket directory \(directory) must be yours and 0700",
                hint: "chmod 700 \(directory), or put the socket in a private directory (default: $XDG_RUNTIME_DIR/p11jwt)", settings: ["agent-socket"])
        }
        if info.st_mode & 0o777 != mode { chmod(directory, mode) }
        if sharesSocket {
            // The allowed uids must be able to walk to the socket: say so now, not by their EACCES.
            var ancestor = (directory as NSString).deletingLastPathComponent
            while !ancestor.isEmpty && ancestor != "/" {
                var a = stat()
                if stat(ancestor, &a) == 0, a.st_mode & 0o001 == 0 {
                    logger.warning("other uids cannot reach the socket: \(ancestor) is not searchable by others (mode \(String(a.st_mode & 0o777, radix: 8))); put the socket under a directory they can traverse")
                    break
                }
                ancestor = (ancestor as NSString).deletingLastPathComponent
            }
        }
        guard FileManager.default.fileExists(atPath: path) else { return }
        if AgentClient.isListening(path) {
            throw AgentError("agentRunning", "an agent is already listening on \(path)",
                hint: "use it (export P11JWT_AGENT_SOCK=\(path)), stop it, or choose another socket", settings: ["agent-socket"])
        }
        logger.notice("removing a stale agent socket", metadata: ["socket": "\(path)"])
        unlink(path)
    }

    /// After the services stopped: log out, forget keys, remove the socket and assertion file.
    public func shutdown() async {
        for served in served { await served.broker.shutdown() }
        for broker in retiredBrokers.withLock({ $0.all() }) { await broker.shutdown() }
        signers.withLock { $0 = [:] }
        if let token = keeper.shutdown() {
            token.logout()
            token.close()
        }
        keeper.module.finalize()
        if ownsSocket.withLock({ $0 }) {
            unlink(configuration.socketPath)
            if let path = configuration.assertionFile { unlink(path) }
        }
        logger.info("agent stopped")
    }
}

/// Things taken out of service that may still be in use: each handed back by `due()` once
/// `grace` has passed since it was retired.
struct Retirements<Item> {
    let grace: Duration
    private var items: [(item: Item, since: ContinuousClock.Instant)] = []

    init(grace: Duration) { self.grace = grace }

    mutating func retire(_ retired: [Item], at now: ContinuousClock.Instant = .now) {
        items += retired.map { ($0, now) }
    }

    /// Those retired at least `grace` ago, removed from the list.
    mutating func due(at now: ContinuousClock.Instant = .now) -> [Item] {
        let grace = self.grace
        let due = items.filter { now - $0.since >= grace }.map(\.item)
        items.removeAll { now - $0.since >= grace }
        return due
    }

    /// Everything still held, removed from the list (the agent stops).
    mutating func all() -> [Item] {
        defer { items = [] }
        return items.map(\.item)
    }
}

/// Reloads the identities on SIGHUP (`systemctl reload`): `read` re-reads them from the config
/// file. A file that cannot be read, or names a key the token lacks, changes nothing: the agent
/// keeps serving what it served, and says why (the log, `agent status`).
struct HangupReloader: Service {
    let agent: Agent
    let read: (@Sendable () throws -> [Agent.Identity])?

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            guard let read else {
                agent.logger.notice("SIGHUP: nothing to reload (the agent was started without a config file)")
                continue
            }
            do {
                let (added, removed, kept) = try await agent.reload(identities: try read())
                agent.record("reload")
                agent.logger.notice("SIGHUP: identities reloaded", metadata: [
                    "added": "\(added.joined(separator: ","))", "removed": "\(removed.joined(separator: ","))", "kept": "\(kept.joined(separator: ","))",
                ])
            } catch {
                let diagnostic = error as? any DiagnosticError
                agent.record("reload", error: (diagnostic?.qualifiedCode ?? "invalidConfiguration", diagnostic?.message ?? "\(error)"))
                agent.logger.error("SIGHUP: the identities were not reloaded; serving the ones before", metadata: ["error": "\(error)"])
            }
        }
    }
}

/// Ends the service group when the agent must stop (a failed login after the token came back).
/// Follows rotations: looks the held label keys up again once per ``Agent/keyRecheckInterval``.
struct KeyWatcher: Service {
    let agent: Agent

    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try await Task.sleep(for: Agent.keyRecheckInterval)
                await agent.recheckHeldKeys()
            }
        }
    }
}

struct FatalWatcher: Service {
    let reasons: AsyncStream<String>

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            for await reason in reasons {
                throw AgentError("stopped", reason, hint: "check the PIN and the token, then start the agent again")
            }
        }
    }
}

/// Calls `action` once `expected` listeners have signalled.
actor ReadinessCounter {
    private var remaining: Int
    private let action: @Sendable () async -> Void

    init(expected: Int, action: @escaping @Sendable () async -> Void) {
        remaining = expected
        self.action = action
    }

    func signal() async {
        remaining -= 1
        if remaining == 0 { await action() }
    }
}
