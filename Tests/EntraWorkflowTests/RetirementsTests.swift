@testable import Agent
import Testing

/// Brokers a reload removed are shut down by a later reload once the grace has passed, not
/// kept until the agent stops.
@Suite("retired brokers")
struct RetirementsTests {
    @Test func retiredItemsAreDueOnlyAfterTheGraceAndOnlyOnce() {
        var retired = Retirements<String>(grace: .seconds(300))
        let start = ContinuousClock.now
        retired.retire(["first"], at: start)
        retired.retire(["second"], at: start + .seconds(200))
        #expect(retired.due(at: start + .seconds(299)).isEmpty)
        #expect(retired.due(at: start + .seconds(300)) == ["first"])
        #expect(retired.due(at: start + .seconds(300)).isEmpty)
        #expect(retired.due(at: start + .seconds(499)).isEmpty)
        retired.retire(["third"], at: start + .seconds(450))
        #expect(retired.all() == ["second", "third"])
        #expect(retired.all().isEmpty && retired.due(at: start + .seconds(10_000)).isEmpty)
    }
}
