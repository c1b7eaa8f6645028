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
