import Diagnostics
import Entra
import Foundation
import Logging
import PKCS11
import TokenSigning

/// Many applications rotated on one machine: each app's ``Rotation`` (with its own journal, so a
/// kill at any moment resumes exactly where each app was), at most `concurrencyPerToken` at a
/// time on one token (a token makes keys and signs at its own pace), every token at once. An app
/// that fails is reported and never holds up the others. Throttling is shared: give every app's
/// configuration the same ``RetryPolicy/gate`` and a 429 to one holds back all.
public enum Fleet {
    /// One application, resolved: its Entra settings, its key's token and the rotation options.
    public struct App: Sendable {
        public var name: String
        public var configuration: EntraClient.Configuration
        public var objectID: String
        /// The current key (a pkcs11: URI) on `token`.
        public var keyURI: String
        /// Which of the opened tokens holds the key; apps on one token share its concurrency.
        public var tokenKey: String
        public var options: Rotation.Options
        public var stateDirectory: URL

        public init(
            name: String, configuration: EntraClient.Configuration, objectID: String, keyURI: String, tokenKey: String,
            options: Rotation.Options, stateDirectory: URL
        ) {
            self.name = name
            self.configuration = configuration
            self.objectID = objectID
            self.keyURI = keyURI
            self.tokenKey = tokenKey
            self.options = options
            self.stateDirectory = stateDirectory
        }
    }

    /// How one app ended.
    public struct Result: Codable, Sendable {
        public enum Outcome: String, Codable, Sendable { case rotated, skipped, planned, failed }
        public var name: String
        public var objectID: String
        public var outcome: Outcome
        public var resumed = false
        public var oldThumbprint: String?
        public var oldKeyId: String?
        public var newThumbprint: String?
        public var newKeyId: String?
        public var newKeyURI: String?
        /// Why it failed or was skipped, in words.
        public var reason: String?
        /// The error's code (`domain.code`) when it failed.
        public var code: String?
        /// What a dry run would do.
        public var plan: [Rotation.PlannedStep]?
        public var seconds: Double = 0

        enum CodingKeys: String, CodingKey {
            case name, objectID = "objectId", outcome, resumed, oldThumbprint, oldKeyId, newThumbprint, newKeyId, newKeyURI = "newKeyUri"
            case reason, code, plan, seconds
        }

        public init(name: String, objectID: String, outcome: Outcome) {
            self.name = name
            self.objectID = objectID
            self.outcome = outcome
        }
    }

    /// Rotates every app whose token is in `tokens`; an app whose token is missing fails with
    /// `unavailable[app.tokenKey]` as its reason. Results come back in the apps' order.
    public static func run(
        _ apps: [App], tokens: [String: Token], unavailable: [String: any Error] = [:], concurrencyPerToken: Int,
        logger: Logger, progress: @escaping @Sendable (_ app: String, _ line: String) -> Void
    ) async -> [Result] {
        let byToken = Dictionary(grouping: apps.indices, by: { apps[$0].tokenKey })
        var results = [Result?](repeating: nil, count: apps.count)
        await withTaskGroup(of: [(Int, Result)].self) { group in
            for (tokenKey, indices) in byToken {
                group.addTask {
                    guard let token = tokens[tokenKey] else {
                        let why = unavailable[tokenKey].map { "\($0)" } ?? "its token was not opened"
                        return indices.map { i in
                            var result = Result(name: apps[i].name, objectID: apps[i].objectID, outcome: .failed)
                            result.reason = why
                            result.code = (unavailable[tokenKey] as? any DiagnosticError)?.qualifiedCode
                            progress(apps[i].name, "failed: \(why)")
                            return (i, result)
                        }
                    }
                    return await runOnToken(indices.map { ($0, apps[$0]) }, token: token, limit: max(1, concurrencyPerToken), logger: logger, progress: progress)
                }
            }
            for await batch in group {
                for (i, result) in batch { results[i] = result }
            }
        }
        return results.map { $0! }
    }

    /// The apps of one token, at most `limit` at a time.
    static func runOnToken(
        _ apps: [(Int, App)], token: Token, limit: Int, logger: Logger, progress: @escaping @Sendable (String, String) -> Void
    ) async -> [(Int, Result)] {
        var results: [(Int, Result)] = []
        // One read of the token's objects for all its apps: a search per lookup costs time in
        // proportion to the objects on the token, and the token does one thing at a time.
        let inventory: TokenInventory?
        do {
            inventory = try await token.run { try $0.inventory() }
        } catch {
            logger.notice("cannot read the token's objects in one pass; each rotation searches instead", metadata: ["error": "\(error)"])
            inventory = nil
        }
        await withTaskGroup(of: (Int, Result).self) { group in
            var next = apps.makeIterator()
            for _ in 0..<limit {
                guard let (i, app) = next.next() else { break }
                group.addTask { (i, await rotate(app, token: token, inventory: inventory, logger: logger, progress: progress)) }
            }
            for await done in group {
                results.append(done)
                if let (i, app) = next.next() {
                    group.addTask { (i, await rotate(app, token: token, inventory: inventory, logger: logger, progress: progress)) }
                }
            }
        }
        return results
    }

    /// One app's rotation; every error becomes its result.
    static func rotate(
        _ app: App, token: Token, inventory: TokenInventory?, logger: Logger, progress: @escaping @Sendable (String, String) -> Void
    ) async -> Result {
        var logger = logger
        logger[metadataKey: "app"] = "\(app.name)"
        let started = ContinuousClock.now
        var result = Result(name: app.name, objectID: app.objectID, outcome: .failed)
        progress(app.name, "starting")
        var client: EntraClient?
        do {
            let entra = try EntraClient(app.configuration, logger: logger)
            client = entra
            let rotation = try Rotation(
                client: entra, token: token, target: .application(id: app.objectID), objectID: app.objectID,
                stateDirectory: app.stateDirectory, logger: logger, progress: { progress(app.name, $0) })
            let keyURI = app.keyURI
            var options = app.options
            options.inventory = inventory
            let report = try await rotation.run(options: options) {
                let uri = try PKCS11URI(keyURI)
                if let key = inventory?.privateKey(uri) {
                    return try TokenSigner(token: token, key: key, certificateChain: Token.certificateChain(for: key, in: inventory?.certificates ?? []))
                }
                return try TokenSigner(token: token, key: try token.signingKey(uri))
            }
            result.resumed = report.resumed
            result.oldThumbprint = report.oldThumbprint
            result.oldKeyId = report.oldKeyId
            result.newThumbprint = report.newThumbprint
            result.newKeyId = report.newKeyId
            result.newKeyURI = report.newKeyURI
            switch report.outcome {
            case .rotated:
                result.outcome = .rotated
                if !report.instructions.isEmpty { result.reason = report.instructions.joined(separator: "; ") }
                progress(app.name, "rotated: \(report.newThumbprint ?? "?")")
            case .notNeeded:
                result.outcome = .skipped
                result.reason = "the certificate does not expire within the window"
                progress(app.name, "skipped: not expiring within the window")
            case .planned:
                result.outcome = .planned
                result.plan = report.plan
                progress(app.name, "planned: \(report.plan.filter { !$0.done }.count) steps")
            }
        } catch {
            result.outcome = .failed
            if let diagnostic = error as? any DiagnosticError {
                result.reason = diagnostic.message + (diagnostic.hint.map { " (\($0))" } ?? "")
                result.code = diagnostic.qualifiedCode
            } else {
                result.reason = "\(error)"
            }
            progress(app.name, "failed: \(result.reason ?? "")")
        }
        await client?.shutdown()
        let elapsed = (ContinuousClock.now - started).components
        result.seconds = ((Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18) * 1000).rounded() / 1000
        return result
    }
}
