import Foundation
import Synchronization

/// Faults the emulator injects, set at start and changed at run time through
/// `POST /_emulator/faults` (so tests can flip them).
public final class Faults: Sendable {
    public struct Settings: Codable, Sendable, Equatable {
        /// Added to every response's latency, in milliseconds.
        public var latencyMilliseconds: Int = 0
        /// Seconds after addKey during which the token endpoint does not yet know the new key.
        public var propagationDelaySeconds: Double = 0
        /// Seconds added to the emulator's clock.
        public var clockOffsetSeconds: Double = 0
        /// Refuse a client assertion whose `jti` was seen before.
        public var rejectReplay = false
        /// The next `count` requests of `route` ("token", "addKey", "removeKey", "graph") get
        /// `status` (429 with `Retry-After`, or 503), or, with `dropAfterApply` (addKey and
        /// removeKey), are applied and then answered by closing the connection.
        public var failures: [Failure] = []

        public init() {}

        /// Members left out keep their defaults, so `{"rejectReplay":true}` is a whole setting.
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            latencyMilliseconds = try c.decodeIfPresent(Int.self, forKey: .latencyMilliseconds) ?? 0
            propagationDelaySeconds = try c.decodeIfPresent(Double.self, forKey: .propagationDelaySeconds) ?? 0
            clockOffsetSeconds = try c.decodeIfPresent(Double.self, forKey: .clockOffsetSeconds) ?? 0
            rejectReplay = try c.decodeIfPresent(Bool.self, forKey: .rejectReplay) ?? false
            failures = try c.decodeIfPresent([Failure].self, forKey: .failures) ?? []
        }
    }

    public struct Failure: Codable, Sendable, Equatable {
        public var route: String
        public var count: Int
        public var status: Int?
        public var retryAfter: Int?
        /// Commit the change, then close the connection without a response.
        public var dropAfterApply: Bool?

        public init(route: String, count: Int, status: Int? = nil, retryAfter: Int? = nil, dropAfterApply: Bool? = nil) {
            self.route = route
            self.count = count
            self.status = status
            self.retryAfter = retryAfter
            self.dropAfterApply = dropAfterApply
        }
    }

    private struct State {
        var current: Settings
        var seenJTIs: [String: Double] = [:]
    }

    private let state: Mutex<State>

    public init(_ settings: Settings = Settings()) { state = Mutex(State(current: settings)) }

    public var settings: Settings {
        get { state.withLock { $0.current } }
        set { state.withLock { $0.current = newValue } }
    }

    var propagationDelay: TimeInterval { settings.propagationDelaySeconds }
    var rejectReplay: Bool { settings.rejectReplay }
    var now: Date { Date().addingTimeInterval(settings.clockOffsetSeconds) }

    /// Takes one injected failure for `route`, if any is pending: an error status before the
    /// request is handled, or (`afterApply`) a connection drop after it was applied.
    func takeFailure(_ route: String, afterApply: Bool = false) -> Failure? {
        state.withLock { state in
            guard let i = state.current.failures.firstIndex(where: {
                $0.route == route && $0.count > 0 && ($0.dropAfterApply ?? false) == afterApply
            }) else { return nil }
            state.current.failures[i].count -= 1
            return state.current.failures[i]
        }
    }

    /// Records a `jti`; false when it was already used and has not expired.
    func recordAssertion(jti: String, until exp: Double) -> Bool {
        state.withLock { state in
            let now = Date().timeIntervalSince1970
            state.seenJTIs = state.seenJTIs.filter { $0.value + 300 > now }
            if state.seenJTIs[jti] != nil { return false }
            state.seenJTIs[jti] = exp
            return true
        }
    }
}
