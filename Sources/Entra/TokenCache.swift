import Crypto
import DurableFiles
import Foundation
import JOSE

/// Access tokens kept between runs: one file (0600, in a 0700 directory) under the user's cache
/// directory, keyed by authority, tenant, client, scope and the key's certificate thumbprint,
/// reused until `refreshMargin` before expiry. Read-change-write under a file lock, replaced
/// atomically.
public struct TokenCache: Sendable {
    public static let refreshMargin: TimeInterval = 300

    public let file: URL
    var lockFile: URL { file.deletingLastPathComponent().appendingPathComponent(".\(file.lastPathComponent).lock") }

    public init(file: URL) {
        self.file = file
    }

    /// `$XDG_CACHE_HOME/p11jwt/tokens.json`, else `~/.cache/p11jwt/tokens.json`.
    public static func defaultFile(environment: [String: String] = ProcessInfo.processInfo.environment) -> URL {
        let base = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : URL(fileURLWithPath: $0) }
            ?? URL(fileURLWithPath: environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? FileManager.default.homeDirectoryForCurrentUser.path)
                .appendingPathComponent(".cache")
        return base.appendingPathComponent("p11jwt").appendingPathComponent("tokens.json")
    }

    public struct Key: Sendable, Hashable {
        public var authority: String
        public var tenant: String
        public var clientID: String
        public var scope: String
        public var thumbprint: String

        public init(authority: String, tenant: String, clientID: String, scope: String, thumbprint: String) {
            self.authority = authority
            self.tenant = tenant.lowercased()
            self.clientID = clientID.lowercased()
            self.scope = scope
            self.thumbprint = thumbprint.uppercased()
        }

        /// The entry's name in the file: a hash, so the file does not list tenants and apps.
        var digest: String {
            let text = [authority, tenant, clientID, scope, thumbprint].joined(separator: "\n")
            return Hex.encode(SHA256.hash(data: Data(text.utf8)))
        }
    }

    struct Entry: Codable {
        var accessToken: String
        var tokenType: String
        var expiresOn: Double
    }

    /// A cached token still valid for more than `refreshMargin`.
    public func lookup(_ key: Key, now: Date = Date()) throws -> AccessToken? {
        try locked {
            // An entry no token endpoint could have given (edited or damaged file) is no entry.
            guard let entry = try load()[key.digest], entry.expiresOn.isFinite,
                  entry.expiresOn - Self.refreshMargin > now.timeIntervalSince1970,
                  entry.expiresOn <= now.timeIntervalSince1970 + AccessToken.maximumLifetime else { return nil }
            return AccessToken(
                accessToken: entry.accessToken, tokenType: entry.tokenType,
                expiresOn: Date(timeIntervalSince1970: entry.expiresOn), fromCache: true)
        }
    }

    /// Stores a token and drops expired entries.
    public func store(_ token: AccessToken, for key: Key, now: Date = Date()) throws {
        try locked {
            var entries = try load().filter { $0.value.expiresOn > now.timeIntervalSince1970 }
            entries[key.digest] = Entry(accessToken: token.accessToken, tokenType: token.tokenType, expiresOn: token.expiresOn.timeIntervalSince1970)
            try save(entries)
        }
    }

    /// Forgets the tokens of one key (e.g. after its credential was removed).
    public func remove(_ key: Key) throws {
        try locked {
            var entries = try load()
            guard entries.removeValue(forKey: key.digest) != nil else { return }
            try save(entries)
        }
    }

    private func locked<R>(_ body: () throws -> R) throws -> R {
        do {
            try DurableFile.makeDirectory(file.deletingLastPathComponent())
            return try DurableFile.withExclusiveLock(lockFile, body)
        } catch let error as DurableFileError {
            throw EntraError(.stateFile, "token cache: \(error)", hint: "do without the cache, or fix the permissions of \(file.deletingLastPathComponent().path)", settings: ["no-cache"])
        }
    }

    private func load() throws -> [String: Entry] {
        guard let data = FileManager.default.contents(atPath: file.path) else { return [:] }
        // A damaged cache is only a cache: start again rather than fail the command.
        return (try? JSONDecoder().decode([String: Entry].self, from: data)) ?? [:]
    }

    private func save(_ entries: [String: Entry]) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try DurableFile.writeAtomically(try encoder.encode(entries), to: file, mode: 0o600)
    }
}
