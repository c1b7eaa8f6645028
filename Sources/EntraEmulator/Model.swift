import Foundation

/// Everything the emulator knows, persisted as `state.json` in its state directory.
public struct EmulatorState: Codable, Sendable, Equatable {
    public var tenants: [Tenant] = []

    public init() {}

    public func tenant(_ idOrDomain: String) -> Tenant? {
        tenants.first { $0.id.lowercased() == idOrDomain.lowercased() || $0.domain.lowercased() == idOrDomain.lowercased() }
    }

    /// Index paths of an application, by its object id or appId, in any tenant.
    func locate(application idOrAppID: String, byAppID: Bool) -> (tenant: Int, app: Int)? {
        for (t, tenant) in tenants.enumerated() {
            if let a = tenant.applications.firstIndex(where: { byAppID ? $0.appId == idOrAppID.lowercased() : $0.id == idOrAppID.lowercased() }) {
                return (t, a)
            }
        }
        return nil
    }

    func locate(servicePrincipal idOrAppID: String, byAppID: Bool) -> (tenant: Int, app: Int)? {
        for (t, tenant) in tenants.enumerated() {
            if let a = tenant.applications.firstIndex(where: { byAppID ? $0.appId == idOrAppID.lowercased() : $0.servicePrincipal.id == idOrAppID.lowercased() }) {
                return (t, a)
            }
        }
        return nil
    }
}

public struct Tenant: Codable, Sendable, Equatable {
    public var id: String
    public var domain: String
    public var applications: [AppRegistration] = []
}

/// An application registration with its service principal in the same tenant.
public struct AppRegistration: Codable, Sendable, Equatable {
    /// Object id.
    public var id: String
    public var appId: String
    public var displayName: String
    public var keyCredentials: [KeyCredential] = []
    public var servicePrincipal: ServicePrincipal
    /// Application permissions granted to this app on Graph (`Application.ReadWrite.OwnedBy`, …).
    public var roles: [String] = []
    /// appIds of the applications that own this one (for `Application.ReadWrite.OwnedBy`).
    public var owners: [String] = []
    /// The App ID URIs (`api://orders`) by which clients name this app as a resource.
    public var identifierUris: [String]?
    /// The application permissions this app defines as a resource (`Orders.Read`).
    public var appRoles: [AppRole]?
    /// `api.requestedAccessTokenVersion`: 1 (Entra's default, also when unset) or 2.
    public var requestedAccessTokenVersion: Int?
    /// Roles granted to this app (as a client) on other applications of its tenant.
    public var grants: [ResourceGrant]?
    /// Federated identity credentials: tokens from these issuers, for these subjects and
    /// audiences, authenticate the app as client assertions.
    public var federatedIdentityCredentials: [FederatedIdentityCredential]?

    public init(id: String, appId: String, displayName: String, servicePrincipal: ServicePrincipal, roles: [String] = [], owners: [String] = []) {
        self.id = id
        self.appId = appId
        self.displayName = displayName
        self.servicePrincipal = servicePrincipal
        self.roles = roles
        self.owners = owners
    }

    /// The access-token version this app gets as a resource.
    public var accessTokenVersion: Int { requestedAccessTokenVersion == 2 ? 2 : 1 }

    /// The roles granted to this app on the resource `resourceAppId`.
    public func roles(on resourceAppId: String) -> [String] {
        if resourceAppId == BuiltInResource.graph.appId { return roles }
        return grants?.first { $0.resourceAppId == resourceAppId }?.roles ?? []
    }
}

/// An application permission an API defines (`appRoles` in Graph, member type Application).
/// A `federatedIdentityCredential` (Graph's shape).
public struct FederatedIdentityCredential: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var issuer: String
    public var subject: String
    public var audiences: [String]
    public var description: String?

    public init(id: String = UUID().uuidString.lowercased(), name: String, issuer: String, subject: String, audiences: [String], description: String? = nil) {
        self.id = id
        self.name = name
        self.issuer = issuer
        self.subject = subject
        self.audiences = audiences
        self.description = description
    }

    /// The audience Entra documents for its own token exchange.
    public static let tokenExchangeAudience = "api://AzureADTokenExchange"

    /// Whether a token's `aud` is one of this credential's audiences. Entra's own tokens for
    /// `api://AzureADTokenExchange` carry that app's id; it counts as the URI (uncertain, see
    /// docs/emulator-fidelity.md).
    public func accepts(audience: String) -> Bool {
        audiences.contains { allowed in
            allowed.lowercased() == audience.lowercased()
                || (allowed.lowercased() == Self.tokenExchangeAudience.lowercased() && audience.lowercased() == BuiltInResource.tokenExchange.appId)
        }
    }
}

public struct AppRole: Codable, Sendable, Equatable {
    public var id: String
    public var value: String
    public var displayName: String
    public var allowedMemberTypes: [String]
    public var isEnabled: Bool
}

/// Roles granted to a client on one resource application (an app role assignment each).
public struct ResourceGrant: Codable, Sendable, Equatable {
    public var resourceAppId: String
    public var roles: [String]
}

/// A first-party resource every tenant has. Graph's roles are not enumerated: any role name
/// may be granted on it, as `app create --role` always allowed.
public struct BuiltInResource: Sendable {
    public var appId: String
    /// Identifiers a `scope` may name it by (compared without case and trailing `/`).
    public var identifiers: [String]
    public var accessTokenVersion: Int

    public static let graph = BuiltInResource(
        appId: "00000003-0000-0000-c000-000000000000",
        identifiers: [
            "https://graph.microsoft.com", "https://graph.microsoft.us", "https://dod-graph.microsoft.us",
            "https://microsoftgraph.chinacloudapi.cn", "00000003-0000-0000-c000-000000000000",
        ],
        accessTokenVersion: 1)

    /// Entra's token exchange: an app's token for it becomes another app's client assertion
    /// through that app's federated identity credential.
    public static let tokenExchange = BuiltInResource(
        appId: "fb60f99c-7a34-4190-8149-302f77469936",
        identifiers: ["api://AzureADTokenExchange", "fb60f99c-7a34-4190-8149-302f77469936"],
        accessTokenVersion: 2)

    /// Whether `name` is one of its identifiers (no case, no trailing `/`), as Entra matches them.
    public func isNamed(by name: String) -> Bool {
        identifiers.contains { Self.normalized($0) == Self.normalized(name) }
    }

    static func normalized(_ identifier: String) -> String {
        (identifier.hasSuffix("/") ? String(identifier.dropLast()) : identifier).lowercased()
    }
}

public struct ServicePrincipal: Codable, Sendable, Equatable {
    public var id: String
    public var keyCredentials: [KeyCredential] = []
}

/// A certificate credential, as Graph's `keyCredential` resource has it.
public struct KeyCredential: Codable, Sendable, Equatable {
    public var keyId: String
    /// Base64 of the SHA-1 thumbprint bytes, as Graph returns it.
    public var customKeyIdentifier: String
    public var displayName: String?
    public var startDateTime: Date
    public var endDateTime: Date
    public var type: String
    public var usage: String
    /// Base64 of the certificate DER.
    public var key: String
    /// When it was added (for the replication-delay fault).
    public var addedDateTime: Date
    /// Registered by `app create`, standing for a credential uploaded long ago: the
    /// propagation-delay fault applies only to credentials added through Graph.
    public var preRegistered: Bool?

    /// Whether it is valid at `date`.
    public func isValid(at date: Date) -> Bool { startDateTime <= date && date <= endDateTime }

    public var certificateDER: [UInt8]? { Data(base64Encoded: key).map { [UInt8]($0) } }
}
