import Foundation
import JOSE
import Testing
import TestSupport

@Suite("Base64url")
struct Base64URLTests {
    @Test func roundTripsEveryLengthAndMatchesFoundationsAlphabetSwap() throws {
        for length in 0...70 {
            let bytes = randomBytes(length)
            let encoded = Base64URL.encode(bytes)
            // Independent: Foundation's base64 with the RFC 4648 §5 substitutions, padding dropped.
            #expect(encoded == base64url(bytes))
            #expect(!encoded.contains("=") && !encoded.contains("+") && !encoded.contains("/"))
            #expect(Base64URL.decode(encoded) == bytes)
        }
    }

    @Test(arguments: ["YQ==", "YWI=", "a+b/", "YW J", "Y", "YWJj\n", "YR", "YWK"])
    func refusesPaddingForeignCharactersAndNonCanonicalEndings(_ text: String) {
        // "YR" and "YWK" carry non-zero bits past the last byte: a second spelling of "a" / "ab".
        #expect(Base64URL.decode(text) == nil)
    }

    @Test func decodesTheCanonicalForms() {
        #expect(Base64URL.decode("YQ") == Array("a".utf8))
        #expect(Base64URL.decode("YWI") == Array("ab".utf8))
        #expect(Base64URL.decode("_-8") == [0xff, 0xef])
        #expect(Base64URL.decode("") == [])
    }
}

@Suite("JSON values")
struct JSONValueTests {
    @Test func serialisesCompactlyInInsertionOrderWithRFC8259Escapes() throws {
        var object = JSONObject()
        object["z"] = "first"
        object["a"] = .string("quote\" backslash\\ newline\n tab\t bell\u{07} slash/ é ✓")
        object["n"] = .int(-17)
        object["big"] = .int(1_795_390_727)
        object["f"] = .double(1.5)
        object["t"] = true
        object["nil"] = .null
        object["arr"] = .array([1, "x", .object(JSONObject(["k": false]))])
        let text = object.serialized
        #expect(text.hasPrefix(#"{"z":"first","a":"quote\" backslash\\ newline\n tab\t bell\u0007 slash/ é ✓","n":-17"#))
        #expect(!text.contains(" :") && !text.contains(", "))
        // An independent parser reads back the same values.
        let parsed = try #require(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(parsed["a"] as? String == "quote\" backslash\\ newline\n tab\t bell\u{07} slash/ é ✓")
        #expect(parsed["n"] as? Int == -17)
        #expect(parsed["big"] as? Int == 1_795_390_727)
        #expect(parsed["f"] as? Double == 1.5)
        #expect(parsed["t"] as? Bool == true)
        #expect(parsed["nil"] is NSNull)
        #expect(parsed.count == 8)
    }

    @Test func parsesTypesWithoutConfusingBooleansAndNumbers() throws {
        let object = try JSONObject(parsing: Data(#"{"b":true,"i":42,"d":4.25,"s":"x","a":[1,null],"o":{"k":"v"},"e":1.7e9}"#.utf8))
        #expect(object["b"] == .bool(true))
        #expect(object["i"] == .int(42))
        #expect(object["d"] == .double(4.25))
        #expect(object["s"] == .string("x"))
        #expect(object["a"] == .array([.int(1), .null]))
        #expect(object["o"]?.objectValue?["k"] == "v")
        #expect(object["e"]?.int64Value == 1_700_000_000)
    }

    @Test func parsingKeepsTheMembersInTheOrderWritten() throws {
        let text = #"{"zeta":1,"alpha":{"y":[true,false],"b":"\u00e9\ud83d\ude00\n"},"mid":-0.5e-3,"a":null}"#
        // Parsed and serialised again, the text is the same (claims go out as the user wrote them).
        for _ in 0..<20 {
            let object = try JSONObject(parsing: Data(text.utf8))
            #expect(object.serialized == #"{"zeta":1,"alpha":{"y":[true,false],"b":"é😀\n"},"mid":-0.0005,"a":null}"#)
        }
        #expect(try JSONValue(parsing: "9223372036854775807") == .int(Int64.max))
        #expect(try JSONValue(parsing: "9223372036854775808") == .double(9.223372036854775808e18))
    }

    /// RFC 8259 only: and a JWS header or claims object with a duplicate name is refused
    /// (RFC 7515 §5.2), where Foundation would keep one of them silently.
    @Test(arguments: [
        #"{"a":1,"a":2}"#, #"{"a":1,}"#, "[1,2,]", #"{"a":01}"#, #"{"a":1.}"#, #"{"a":.5}"#, #"{'a':1}"#, #"{"a":tru}"#,
        #"{"a":"\x"}"#, #"{"a":"\ud83d"}"#, "{\"a\":\"tab\there\"}", #"{"a":1} x"#, "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    ])
    func refusesWhatRFC8259Refuses(_ text: String) {
        #expect(throws: JOSEError.self) { try JSONValue(parsing: text) }
    }

    /// What a signer must not change silently: infinities, integers beyond 64 bits, invalid UTF-8.
    @Test(arguments: [
        Array(#"{"exp":1e999}"#.utf8), Array(#"{"exp":-1e400}"#.utf8), Array(#"{"n":123456789012345678901234567890}"#.utf8),
        Array(#"{"n":-9223372036854775809}"#.utf8), Array(#"{"s":""#.utf8) + [0xff, 0xfe] + Array(#""}"#.utf8),
        Array(#"{"s":""#.utf8) + [0xc3] + Array(#""}"#.utf8), Array(#"{"s":""#.utf8) + [0xed, 0xa0, 0x80] + Array(#""}"#.utf8),
    ])
    func refusesValuesItCouldOnlyKeepByChangingThem(_ bytes: [UInt8]) {
        let error = #expect(throws: JOSEError.self) { try JSONObject(parsing: bytes, what: "the claims") }
        #expect(error?.code == .malformed)
    }

    /// Found by scripts/fuzz (Fuzz/Corpus/FuzzJSON/integral-double): an integral double is
    /// written as an integer, the same JSON number.
    @Test func anIntegralDoubleRoundTripsAsTheSameNumber() throws {
        let value = try JSONValue(parsing: "922337.0")
        #expect(value.serialized == "922337")
        #expect(try JSONValue(parsing: value.serialized).numberValue == value.numberValue)
    }

    @Test func keepsTheExtremesThatFit() throws {
        let object = try JSONObject(parsing: Array(#"{"a":9223372036854775807,"b":-9223372036854775808,"c":1.7976931348623157e308,"d":"é😀"}"#.utf8), what: "test")
        #expect(object["a"] == .int(.max) && object["b"] == .int(.min))
        #expect(object["c"]?.numberValue == .greatestFiniteMagnitude)
        #expect(object["d"]?.stringValue == "é😀")
    }

    @Test(arguments: ["{bad", "[1,2]", "\"text\"", ""])
    func refusesWhatIsNotAnObject(_ text: String) {
        let error = #expect(throws: JOSEError.self) { try JSONObject(parsing: Data(text.utf8), what: "the claims") }
        #expect(error?.code == .malformed)
    }

    @Test func mergeKeepsExistingMembersUnlessToldToOverwrite() {
        var base = JSONObject(["aud": "a", "iss": "i"])
        let conflicts = base.merge(JSONObject(["aud": "other", "iss": "i", "extra": 1]), overwrite: false)
        #expect(conflicts == ["aud"])
        #expect(base["aud"] == "a")
        #expect(base["extra"] == 1)
        #expect(base.keys == ["aud", "iss", "extra"])
        base.merge(JSONObject(["aud": "other"]), overwrite: true)
        #expect(base["aud"] == "other")
    }
}

@Suite("Hex")
struct HexTests {
    @Test func roundTripsAndMatchesFoundationFormatting() {
        let bytes = (0...255).map(UInt8.init)
        #expect(Hex.encode(bytes) == bytes.map { String(format: "%02x", $0) }.joined())
        #expect(Hex.encode(bytes, uppercase: true) == bytes.map { String(format: "%02X", $0) }.joined())
        #expect(Hex.decode(Hex.encode(bytes)) == bytes)
        #expect(Hex.decode("A29C09a6") == [0xa2, 0x9c, 0x09, 0xa6])
        #expect(Hex.decode("") == [])
    }

    @Test(arguments: ["a", "abc", "0g", "zz", "0x01", " 01", "01 "])
    func refusesWhatIsNotAnEvenRunOfHexDigits(_ text: String) {
        #expect(Hex.decode(text) == nil)
    }
}
