import Agent
import Entra
import Foundation
import PKCS11
import Yams

/// The `identities` list of the config file, read by `p11jwt agent`: the applications one agent
/// serves, each `{name, tenant, clientId, key, authorityHost?, caFile?, objectId?, resourceId?,
/// allowUids?, allowGids?, default?}`. A field left out takes the agent's own setting (flag,
/// environment, file). Unknown fields, duplicate names or client ids, and a second default are
/// errors naming the entry.
enum AgentIdentities {
    static let key = "identities"
    static let fields: Set<String> = [
        "name", "tenant", "clientId", "key", "authorityHost", "caFile", "objectId", "resourceId", "allowUids", "allowGids", "default",
    ]

    static func read(path: String, defaults: EntraClient.Configuration) throws -> [Agent.Identity] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CLIError(message: "cannot read the config file \(path)", exitCode: 2)
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: String(decoding: data, as: UTF8.self))
        } catch {
            throw CLIError(message: "\(path) is not valid YAML: \(error)", exitCode: 2)
        }
        guard let list = root?.mapping?[key] else { return [] }
        guard let entries = list.sequence else {
            throw CLIError(message: "\(path): '\(key)' must be a list of applications", exitCode: 2)
        }
        var identities: [Agent.Identity] = []
        for (index, entry) in entries.enumerated() {
            var place = "\(path): \(key)[\(index)]"
            guard let mapping = entry.mapping else { throw CLIError(message: "\(place) must be a mapping", exitCode: 2) }
            var values: [String: Node] = [:]
            for (k, v) in mapping {
                guard let name = k.string else { throw CLIError(message: "\(place): a field must be a name", exitCode: 2) }
                values[name] = v
            }
            if let name = values["name"]?.string { place += " (\(name))" }
            if let unknown = values.keys.sorted().first(where: { !fields.contains($0) }) {
                throw CLIError(message: "\(place): unknown field '\(unknown)'", exitCode: 2, hint: "fields: \(fields.sorted().joined(separator: ", "))")
            }
            func string(_ field: String, required: Bool = false) throws -> String? {
                guard let node = values[field] else {
                    if required { throw CLIError(message: "\(place): '\(field)' is missing", exitCode: 2) }
                    return nil
                }
                guard let scalar = node.scalar, !scalar.string.isEmpty else {
                    throw CLIError(message: "\(place): '\(field)' must be a single value", exitCode: 2)
                }
                return scalar.string
            }
            func ids(_ field: String) throws -> Set<UInt32> {
                guard let node = values[field] else { return [] }
                guard let items = node.sequence else { throw CLIError(message: "\(place): '\(field)' must be a list of numbers", exitCode: 2) }
                return Set(try items.map { item in
                    guard let value = item.scalar.flatMap({ UInt32($0.string) }) else {
                        throw CLIError(message: "\(place): '\(field)' must be a list of numbers", exitCode: 2)
                    }
                    return value
                })
            }
            var entra = defaults
            // The tenant may be the agent's (flag, environment, the file's own `tenant`).
            entra.tenant = try string("tenant", required: defaults.tenant.isEmpty) ?? defaults.tenant
            entra.clientID = try string("clientId", required: true)!
            entra.cacheFile = nil
            if let host = try string("authorityHost") { entra.endpoints.authorityHost = try EntraValue.endpoint(host, what: "\(place): authorityHost") }
            if let caFile = try string("caFile") { entra.caFile = caFile }
            do {
                (entra.tenant, entra.clientID) = try entra.validated()
            } catch let error as EntraError {
                throw CLIError(message: "\(place): \(error.message)", exitCode: 2, hint: error.hint)
            }
            let key = try string("key", required: true)!
            _ = try PKCS11URI(key)
            var identity = Agent.Identity(name: try string("name", required: true)!, entra: entra, key: key)
            identity.objectID = try string("objectId")
            identity.resourceID = try string("resourceId")
            identity.allowedUIDs = try ids("allowUids")
            identity.allowedGIDs = try ids("allowGids")
            if let flag = try string("default") {
                guard let value = Bool(flag) else { throw CLIError(message: "\(place): 'default' is true or false", exitCode: 2) }
                identity.isDefault = value
            }
            if identities.contains(where: { $0.name == identity.name }) {
                throw CLIError(message: "\(place): another identity is named '\(identity.name)'", exitCode: 2)
            }
            if identities.contains(where: { $0.entra.clientID.lowercased() == entra.clientID.lowercased() }) {
                throw CLIError(message: "\(place): another identity has client id \(entra.clientID)", exitCode: 2)
            }
            if identity.isDefault, let other = identities.first(where: \.isDefault) {
                throw CLIError(message: "\(place): '\(other.name)' is already the default identity", exitCode: 2)
            }
            identities.append(identity)
        }
        return identities
    }
}
