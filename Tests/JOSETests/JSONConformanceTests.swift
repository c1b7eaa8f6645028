import Foundation
import JOSE
import Testing

/// The order-keeping JSON parser against a public conformance corpus: nst/JSONTestSuite's
/// `test_parsing` (Tests/JOSETests/JSONTestSuite, MIT). `y_` documents must parse, `n_` must be
/// refused, `i_` (implementation-defined) must be either, never a crash.
@Suite("JSON parser against JSONTestSuite")
struct JSONConformanceTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("JSONTestSuite")

    static func documents(_ prefix: String) throws -> [(String, [UInt8])] {
        try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasPrefix(prefix) && $0.hasSuffix(".json") }.sorted()
            .map { ($0, Array(try Data(contentsOf: directory.appendingPathComponent($0)))) }
    }

    /// Valid JSON this parser refuses on purpose: an object with a member name twice. RFC 8259
    /// leaves its meaning open, and RFC 7515 §4 has a JWS parser reject such a header or use the
    /// last value; two readers that pick differently would see two different tokens, so it is
    /// refused here.
    static let deliberateRefusals: Set<String> = ["y_object_duplicated_key.json", "y_object_duplicated_key_and_value.json"]

    @Test func everyValidDocumentParses() throws {
        let documents = try Self.documents("y_")
        #expect(documents.count == 95)
        var refused: [String] = []
        for (name, bytes) in documents {
            if (try? JSONValue(parsing: bytes)) == nil { refused.append(name) }
        }
        #expect(Set(refused) == Self.deliberateRefusals, "refused: \(refused)")
    }

    @Test func everyInvalidDocumentIsRefused() throws {
        let documents = try Self.documents("n_")
        #expect(documents.count == 188)
        let accepted = documents.filter { (try? JSONValue(parsing: $0.1)) != nil }.map(\.0)
        #expect(accepted.isEmpty, "accepted: \(accepted)")
    }

    @Test func implementationDefinedDocumentsAreAnsweredEitherWay() throws {
        let documents = try Self.documents("i_")
        #expect(documents.count == 35)
        for (_, bytes) in documents {
            // Parsing or refusing are both allowed; a trap would end the test process.
            _ = try? JSONValue(parsing: bytes)
        }
    }
}
