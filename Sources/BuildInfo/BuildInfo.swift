/// The version of p11jwt and its tools, from one place: `--version` of both executables and the
/// `User-Agent` of requests to Entra and Graph.
public enum BuildInfo {
    public static let version = "0.10.0"

    /// `p11jwt/0.10.0`.
    public static var userAgent: String { "p11jwt/\(version)" }
}

/// The exit statuses of p11jwt and entra-emulator: 0 success, 1 the operation failed, 2 usage.
public enum ExitStatus {
    public static let success: Int32 = 0
    public static let failure: Int32 = 1
    public static let usage: Int32 = 2
}
