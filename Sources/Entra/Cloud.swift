import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The Microsoft clouds: each has its own login (authority) host and Graph host.
public enum EntraCloud: String, Sendable, Hashable, CaseIterable {
    case global = "public"
    case usGov = "usgov"
    case usGovDoD = "usgov-dod"
    case china

    /// Where tokens come from: `{authorityHost}/{tenant}/oauth2/v2.0/token`.
    public var authorityHost: URL {
        switch self {
        case .global: return URL(string: "https://login.microsoftonline.com")!
        case .usGov, .usGovDoD: return URL(string: "https://login.microsoftonline.us")!
        case .china: return URL(string: "https://login.partner.microsoftonline.cn")!
        }
    }

    /// Microsoft Graph for this cloud.
    public var graphEndpoint: URL {
        switch self {
        case .global: return URL(string: "https://graph.microsoft.com")!
        case .usGov: return URL(string: "https://graph.microsoft.us")!
        case .usGovDoD: return URL(string: "https://dod-graph.microsoft.us")!
        case .china: return URL(string: "https://microsoftgraph.chinacloudapi.cn")!
        }
    }
}

/// Checks on the identifiers and endpoints Entra takes.
public enum EntraValue {
    /// A GUID in its usual 8-4-4-4-12 hex form.
    public static func isGUID(_ text: String) -> Bool {
        UUID(uuidString: text) != nil && text.count == 36
    }

    /// A tenant: its GUID or a verified domain (`contoso.onmicrosoft.com`). `common`,
    /// `organizations` and `consumers` cannot issue app-only tokens.
    public static func tenant(_ text: String) throws -> String {
        let tenant = trimmed(text)
        guard !tenant.isEmpty else {
            throw EntraError(
                .invalidParameter, "the tenant is empty",
                hint: "give the directory (tenant) id GUID or a domain such as contoso.onmicrosoft.com", settings: ["tenant"])
        }
        // ASCII first (GUIDs and DNS names are), CharacterSet only for the rest: this runs for
        // every assertion.
        let asciiOK = tenant.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || b == 0x2e || b == 0x2d
        }
        let allowed = asciiOK || tenant.unicodeScalars.allSatisfy(CharacterSet.alphanumerics.union(CharacterSet(charactersIn: ".-")).contains)
        guard allowed, tenant.first != ".", tenant.first != "-" else {
            throw EntraError(
                .invalidParameter, "tenant '\(tenant)' is neither a GUID nor a domain name",
                hint: "give the directory (tenant) id GUID or a domain such as contoso.onmicrosoft.com")
        }
        if ["common", "organizations", "consumers"].contains(tenant.lowercased()) {
            throw EntraError(
                .invalidParameter, "tenant '\(tenant)' is a multi-tenant alias; app-only tokens need a specific tenant",
                hint: "give the directory (tenant) id GUID of the tenant the application lives in")
        }
        return tenant
    }

    /// A GUID identifier (`what` names it in the error: "client id", "object id").
    public static func guid(_ text: String, what: String, hint: String, settings: [String] = []) throws -> String {
        let value = trimmed(text)
        guard !value.isEmpty else { throw EntraError(.invalidParameter, "the \(what) is empty", hint: hint, settings: settings) }
        guard isGUID(value) else {
            throw EntraError(.invalidParameter, "the \(what) '\(value)' is not a GUID", hint: hint, settings: settings)
        }
        return value.lowercased()
    }

    /// An endpoint base URL: `https://…`, or `http://` on a loopback address only; no query or
    /// fragment; trailing `/` removed.
    public static func endpoint(_ text: String, what: String) throws -> URL {
        var trimmed = text.trimmingCharacters(in: .whitespaces)
        while trimmed.hasSuffix("/") { trimmed.removeLast() }
        guard let components = URLComponents(string: trimmed), let scheme = components.scheme?.lowercased(),
              let host = components.host, !host.isEmpty, let url = components.url
        else {
            throw EntraError(.invalidParameter, "\(what) '\(text)' is not a URL", hint: "give it as https://host[:port]")
        }
        guard components.query == nil, components.fragment == nil else {
            throw EntraError(.invalidParameter, "\(what) '\(text)' has a query or fragment; give only scheme, host and path")
        }
        switch scheme {
        case "https":
            return url
        case "http" where isLoopback(host):
            return url
        case "http":
            throw EntraError(
                .invalidParameter, "\(what) '\(text)' is plain http on a non-loopback host",
                hint: "use https; plain http is allowed only for 127.0.0.1, ::1 and localhost (e.g. the emulator over plain HTTP)")
        default:
            throw EntraError(.invalidParameter, "\(what) '\(text)' must be an https URL")
        }
    }

    /// Leading and trailing blanks removed; the common case (none) costs no Foundation call.
    static func trimmed(_ text: String) -> String {
        guard let first = text.unicodeScalars.first, let last = text.unicodeScalars.last else { return text }
        let blank = CharacterSet.whitespaces
        if !blank.contains(first) && !blank.contains(last) { return text }
        return text.trimmingCharacters(in: .whitespaces)
    }

    /// `localhost`, `::1`, or an IPv4 address literal in 127.0.0.0/8 — a name that merely starts
    /// with `127.` (`127.0.0.1.nip.io`) resolves wherever its owner says, so it is not loopback.
    static func isLoopback(_ host: String) -> Bool {
        let h = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        if h == "localhost" || h == "::1" { return true }
        var address = in_addr()
        guard inet_pton(AF_INET, h, &address) == 1 else { return false }
        return UInt32(bigEndian: address.s_addr) >> 24 == 127
    }
}
