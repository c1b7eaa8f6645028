import Crypto
import Foundation
import JOSE

/// What `entra-emulator app create` prints.
public struct CreatedApplication: Codable, Sendable {
    public var tenantId: String
    public var appId: String
    public var id: String
    public var servicePrincipalId: String
    public var keyId: String?
}

extension StateStore {
    /// Registers an application (and its service principal) with an optional first certificate
    /// credential, in `tenant` (created on first use; default: the first tenant, else a new one).
    /// As a resource it may have App ID URIs, app roles (application permissions) and an
    /// access-token version (1, Entra's default, or 2).
    public func createApplication(
        name: String, certificate: [UInt8]?, roles: [String] = [], owners: [String] = [], tenant: String? = nil,
        identifierURIs: [String] = [], appRoles: [String] = [], accessTokenVersion: Int? = nil,
        now: Date = Date()
    ) throws -> CreatedApplication {
        if let accessTokenVersion, ![1, 2].contains(accessTokenVersion) {
            throw EmulatorError("the access-token version is 1 or 2, not \(accessTokenVersion)")
        }
        for uri in identifierURIs where URL(string: uri)?.scheme == nil {
            throw EmulatorError("an identifier URI needs a scheme (api://…, https://…): '\(uri)'")
        }
        for role in appRoles where role.isEmpty || role.contains(where: \.isWhitespace) {
            throw EmulatorError("an app role value has no spaces: '\(role)'")
        }
        var credential = try certificate.map { try KeyCredential.make(certificateDER: $0, displayName: nil, now: now) }
        credential?.preRegistered = true
        return try update { state in
            let t: Int
            if let tenant, let found = state.tenants.firstIndex(where: { $0.id == tenant.lowercased() || $0.domain.lowercased() == tenant.lowercased() }) {
                t = found
            } else if tenant == nil, !state.tenants.isEmpty {
                t = 0
            } else {
                let id = tenant.flatMap { UUID(uuidString: $0) != nil ? $0.lowercased() : nil } ?? UUID().uuidString.lowercased()
                let domain = tenant.flatMap { UUID(uuidString: $0) == nil ? $0 : nil } ?? "emulator\(state.tenants.count + 1).onmicrosoft.com"
                state.tenants.append(Tenant(id: id, domain: domain))
                t = state.tenants.count - 1
            }
            for uri in identifierURIs {
                let taken = state.tenants[t].applications.contains { ($0.identifierUris ?? []).contains { $0.lowercased() == uri.lowercased() } }
                if taken { throw EmulatorError("another application of the tenant already has the identifier URI '\(uri)'") }
            }
            var app = AppRegistration(
                id: UUID().uuidString.lowercased(), appId: UUID().uuidString.lowercased(), displayName: name,
                servicePrincipal: ServicePrincipal(id: UUID().uuidString.lowercased()), roles: roles,
                owners: owners.map { $0.lowercased() })
            if !identifierURIs.isEmpty { app.identifierUris = identifierURIs }
            if !appRoles.isEmpty {
                app.appRoles = appRoles.map {
                    AppRole(id: UUID().uuidString.lowercased(), value: $0, displayName: $0, allowedMemberTypes: ["Application"], isEnabled: true)
                }
            }
            app.requestedAccessTokenVersion = accessTokenVersion
            if var credential {
                credential.displayName = name
                app.keyCredentials.append(credential)
            }
            state.tenants[t].applications.append(app)
            return CreatedApplication(
                tenantId: state.tenants[t].id, appId: app.appId, id: app.id, servicePrincipalId: app.servicePrincipal.id,
                keyId: app.keyCredentials.first?.keyId)
        }
    }

    /// Grants the client application `clientAppID` the application permission `role` on a
    /// resource: Graph (by its URL or appId, any role name) or an application of the client's
    /// tenant (by appId or App ID URI; the role must be one of its app roles). Granting twice
    /// is harmless. Returns the resource's appId.
    @discardableResult
    public func grant(client clientAppID: String, resource: String, roles: [String]) throws -> String {
        guard !roles.isEmpty else { throw EmulatorError("name at least one role to grant") }
        return try update { state in
            guard let (t, c) = state.locate(application: clientAppID, byAppID: true) else {
                throw EmulatorError("no application with appId \(clientAppID)")
            }
            guard let resolved = TokenEndpoint.resolve(resource, in: state.tenants[t]) else {
                throw EmulatorError("no resource '\(resource)' in tenant \(state.tenants[t].domain): give Graph (https://graph.microsoft.com) or an application's appId or identifier URI")
            }
            if let api = resolved.application {
                let defined = (api.appRoles ?? []).map(\.value)
                for role in roles where !defined.contains(role) {
                    throw EmulatorError("'\(api.displayName)' defines no app role '\(role)' (it has: \(defined.isEmpty ? "none" : defined.joined(separator: ", ")))")
                }
            }
            var client = state.tenants[t].applications[c]
            if resolved.appId == BuiltInResource.graph.appId {
                client.roles += roles.filter { !client.roles.contains($0) }
            } else {
                var grants = client.grants ?? []
                if let g = grants.firstIndex(where: { $0.resourceAppId == resolved.appId }) {
                    grants[g].roles += roles.filter { !grants[g].roles.contains($0) }
                } else {
                    grants.append(ResourceGrant(resourceAppId: resolved.appId, roles: roles))
                }
                client.grants = grants
            }
            state.tenants[t].applications[c] = client
            return resolved.appId
        }
    }

    /// Adds a federated identity credential to the application with object id `id`, offline.
    public func addFederatedCredential(applicationID id: String, _ credential: FederatedIdentityCredential) throws -> FederatedIdentityCredential {
        try update { state in
            guard let (t, a) = state.locate(application: id, byAppID: false) else { throw EmulatorError("no application with id \(id)") }
            var list = state.tenants[t].applications[a].federatedIdentityCredentials ?? []
            guard list.count < 20 else { throw EmulatorError("an application can have at most 20 federated identity credentials") }
            guard !list.contains(where: { $0.issuer == credential.issuer && $0.subject == credential.subject }) else {
                throw EmulatorError("the application already has a federated identity credential for that issuer and subject")
            }
            list.append(credential)
            state.tenants[t].applications[a].federatedIdentityCredentials = list
            return credential
        }
    }

    /// An application by object id or appId.
    public func application(id: String? = nil, appId: String? = nil) throws -> (Tenant, AppRegistration)? {
        let state = try read()
        guard let (t, a) = id.map({ state.locate(application: $0, byAppID: false) }) ?? appId.map({ state.locate(application: $0, byAppID: true) }) ?? nil else {
            return nil
        }
        return (state.tenants[t], state.tenants[t].applications[a])
    }
}

extension KeyCredential {
    /// A credential for a certificate, valid as long as the certificate unless given dates.
    static func make(
        certificateDER der: [UInt8], displayName: String?, start: Date? = nil, end: Date? = nil, now: Date = Date()
    ) throws -> KeyCredential {
        let certificate = try JWSCertificate(der: der)
        return KeyCredential(
            keyId: UUID().uuidString.lowercased(),
            customKeyIdentifier: Data(certificate.thumbprint.sha1).base64EncodedString(),
            displayName: displayName,
            startDateTime: start ?? certificate.certificate.notValidBefore,
            endDateTime: end ?? certificate.certificate.notValidAfter,
            type: "AsymmetricX509Cert", usage: "Verify",
            key: Data(der).base64EncodedString(),
            addedDateTime: now)
    }

    var thumbprint: Thumbprint? { certificateDER.map { Thumbprint(der: $0) } }
}

/// Certificate files for the admin commands.
public enum EmulatorCertificates {
    /// The first certificate of a PEM or DER file, as DER.
    public static func der(fromPEMOrDER bytes: [UInt8], source: String) throws -> [UInt8] {
        try JWSCertificate.all(fromPEMOrDER: bytes, source: source)[0].der
    }
}
