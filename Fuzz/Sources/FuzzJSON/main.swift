import Foundation
import FuzzSupport
import JOSE

/// Equal as JSON: numbers by value (JSON has one number type: 922337.0 is written 922337).
func same(_ a: JSONValue, _ b: JSONValue) -> Bool {
    switch (a, b) {
    case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy(same)
    case (.object(let x), .object(let y)):
        let xs = Array(x), ys = Array(y)
        return xs.count == ys.count && zip(xs, ys).allSatisfy { $0.key == $1.key && same($0.value, $1.value) }
    default:
        if let x = a.numberValue, let y = b.numberValue { return x == y }
        return a == b
    }
}

// The order-keeping JSON parser: no input may trap, and whatever it accepts serialises to text it
// parses back to the same value.
runFuzzer { data, size in
    let input = bytes(data, size)
    guard let value = try? JSONValue(parsing: Data(input)) else { return 0 }
    let again: JSONValue
    do { again = try JSONValue(parsing: value.serialized) } catch { fatalError("serialised text did not parse: \(error)") }
    if !same(again, value) { fatalError("round trip changed the value") }
    _ = value.int64Value
    _ = value.numberValue
    return 0
}
