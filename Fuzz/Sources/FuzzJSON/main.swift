import Foundation
import FuzzSupport
import JOSE

// The order-keeping JSON parser: no input may trap, and whatever it accepts serialises to text it
// parses back to the same value.
runFuzzer { data, size in
    let input = bytes(data, size)
    guard let value = try? JSONValue(parsing: Data(input)) else { return 0 }
    let again: JSONValue
    do { again = try JSONValue(parsing: value.serialized) } catch { fatalError("serialised text did not parse: \(error)") }
    if again != value { fatalError("round trip changed the value") }
    _ = value.int64Value
    _ = value.numberValue
    return 0
}
