import Foundation

/// A request that may name a key (a `pkcs11:` URI; nil: the agent's default key).
public protocol AgentKeyedRequest: Codable, Sendable {
    var key: String? { get }
}

/// The agent's HTTP+JSON API over its Unix socket. Requests and answers are plain Codable
/// structs shared by the server and ``AgentClient``; field names are the wire names.
public enum AgentAPI {
    /// `POST /v1/sign`: the Key Vault `sign` shape. `value` is the base64url digest; the answer's
    /// `value` the base64url signature (ES*: raw r‖s), `kid` the key's URI.
    public struct SignRequest: AgentKeyedRequest {
        public var key: String?
        public var alg: String
        public var value: String
        public init(key: String?, alg: String, value: String) {
            self.key = key
            self.alg = alg
            self.value = value
        }
    }

    public struct SignResponse: Codable, Sendable {
        public var kid: String
        public var value: String
    }

    /// One key of `GET /v1/keys`: what a client needs to act as a JWS signer with it.
    public struct KeyInfo: Codable, Sendable {
        public var uri: String
        public var label: String?
        public var id: String?
        /// `rsa:2048`, `ec:p256`, …
        public var keyType: String
        public var algorithms: [String]
        /// The certificate chain, leaf first, base64 DER (empty when the key has none).
        public var certificates: [String]
        /// SubjectPublicKeyInfo, base64 DER, when the token has the public key.
        public var publicKey: String?
    }

    public struct KeysResponse: Codable, Sendable {
        public var keys: [KeyInfo]
    }

    public struct AssertionRequest: AgentKeyedRequest {
        public var key: String?
        public var tenant: String?
        public var clientId: String?
        public var alg: String?
        public var lifetime: Int?
        /// The identity (name or client id) whose tenant, client id and key to use; nil: the default.
        public var identity: String?
        public init(key: String? = nil, tenant: String? = nil, clientId: String? = nil, alg: String? = nil, lifetime: Int? = nil, identity: String? = nil) {
            self.identity = identity
            self.key = key
            self.tenant = tenant
            self.clientId = clientId
            self.alg = alg
            self.lifetime = lifetime
        }
    }

    public struct PopRequest: AgentKeyedRequest {
        public var key: String?
        public var objectId: String
        public init(key: String? = nil, objectId: String) {
            self.key = key
            self.objectId = objectId
        }
    }

    public struct JWTRequest: AgentKeyedRequest {
        public var key: String?
        /// A JSON object.
        public var claims: String
        public var alg: String?
        public init(key: String? = nil, claims: String, alg: String? = nil) {
            self.key = key
            self.claims = claims
            self.alg = alg
        }
    }

    /// A signed token (`/v1/assertion`, `/v1/pop`, `/v1/jwt`).
    public struct TokenResponse: Codable, Sendable {
        public var token: String
    }

    public struct AccessTokenRequest: AgentKeyedRequest {
        public var key: String?
        public var scope: String?
        /// A token for this other application (client id), which trusts the agent's app
        /// through a federated identity credential.
        public var viaFic: String?
        /// The other application's tenant (default: the agent's).
        public var viaFicTenant: String?
        /// The identity (name or client id) to get the token for; nil: the default.
        public var identity: String?
        public init(key: String? = nil, scope: String? = nil, viaFic: String? = nil, viaFicTenant: String? = nil, identity: String? = nil) {
            self.identity = identity
            self.key = key
            self.scope = scope
            self.viaFic = viaFic
            self.viaFicTenant = viaFicTenant
        }
    }

    public struct AccessTokenResponse: Codable, Sendable {
        public var access_token: String
        public var token_type: String
        public var expires_on: Int
        public var scope: String
    }

    public struct Health: Codable, Sendable {
        public var status: String
        public var token: String
        public var loggedIn: Bool
        public var pid: Int32
    }

    /// `GET /v1/status` (`p11jwt agent status`): what the agent serves and how it is doing. It
    /// carries no secret: no PIN, token, assertion or identity header, and key URIs redacted.
    public struct Status: Codable, Sendable {
        public var pid: Int32
        public var version: String
        public var startedAt: String
        public var uptimeSeconds: Int
        public var token: TokenState
        /// The key used when a request names none (redacted URI).
        public var defaultKey: String
        public var identities: [IdentityState]
        public var endpoints: Endpoints
        public var requests: Requests
        /// The latest refusals and failures, newest last (at most ``Agent/recentErrorLimit``).
        public var recentErrors: [RecentError]

        public struct TokenState: Codable, Sendable {
            public var label: String
            public var serial: String
            public var manufacturer: String
            public var model: String
            /// The PKCS#11 module (its path, or the p11-kit name it was loaded by).
            public var module: String
            /// `ready`, `unavailable` (removed; the agent logs in again when it is back) or `stopped`.
            public var state: String
            public var loggedIn: Bool
            public var reason: String?
            public var since: String?
        }

        public struct IdentityState: Codable, Sendable {
            public var name: String
            public var tenant: String
            public var clientId: String
            public var objectId: String?
            public var isDefault: Bool
            public var key: String
            public var keyId: String?
            /// The SHA-1 thumbprint of the key's certificate (the keyId Entra shows), when it has one.
            public var thumbprint: String?
            public var certificateExpires: String?
            public var allowUids: [UInt32]
            public var allowGids: [UInt32]
            public var cachedTokens: [CachedToken]
        }

        public struct CachedToken: Codable, Sendable {
            public var scope: String
            public var expiresOn: String
            public var viaFic: String?
        }

        public struct Endpoints: Codable, Sendable {
            public var socket: String
            /// The socket was passed by systemd (socket activation), which owns its file.
            public var socketFromSystemd: Bool?
            public var managedIdentity: String?
            public var keyVault: String?
            public var assertionFile: String?
        }

        public struct Requests: Codable, Sendable {
            public var served: Int
            public var refused: Int
        }

        public struct RecentError: Codable, Sendable {
            public var time: String
            public var operation: String
            public var error: String
            public var message: String
        }
    }

    /// Every refusal: a stable code, a message, what to do.
    public struct ErrorBody: Codable, Sendable, Error {
        public var error: String
        public var message: String
        public var hint: String?
    }
}
