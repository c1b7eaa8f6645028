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
    public func createApplication(
        name: String, certificate: [UInt8]?, roles: [String] = [], owners: [String] = [], tenant: String? = nil,
        now: Date = Date()
    ) throws -> CreatedApplication {
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
            var app = AppRegistration(
                id: UUID().uuidString.lowercased(), appId: UUID().uuidString.lowercased(), displayName: name,
                servicePrincipal: ServicePrincipal(id: UUID().uuidString.lowercased()), roles: roles,
                owners: owners.map { $0.lowercased() })
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
