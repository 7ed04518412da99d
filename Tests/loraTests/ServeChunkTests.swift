import Foundation
import XCTest
@testable import lora

/// `lora serve`'s hand-built token chunks (TextChunk): each must parse to the object the
/// dictionary path (JSONSerialization) gives, for text that needs every kind of escape.
final class ServeChunkTests: XCTestCase {
    static let texts = [
        "", " Hello", "say \"hi\"", "back\\slash", "a/b </script>", "line\nbreak\r\n", "tab\there",
        "\u{01}\u{08}\u{0C}\u{1F}\u{7F}", "é ü 日本", "🙂 family 👨‍👩‍👧", "\u{2028}\u{2029}", "\\u0041 not an escape",
    ]

    func parse(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let s = String(decoding: bytes, as: UTF8.self)
        XCTAssertTrue(s.hasPrefix("data: "), file: file, line: line)
        XCTAssertTrue(s.hasSuffix("}\n\n"), file: file, line: line)
        let body = Data(bytes[6..<(bytes.count - 2)])
        return try XCTUnwrap(JSONSerialization.jsonObject(with: body) as? [String: Any], file: file, line: line)
    }

    func testChunksParseToTheDictionaryPathsObject() throws {
        for chat in [false, true] {
            for model in ["qs", "mix \"q\"\\x"] {
                let c = TextChunk(id: "cmpl-abc", object: chat ? "chat.completion.chunk" : "text_completion", created: 1_790_000_000,
                                  model: model, chat: chat)
                for text in Self.texts {
                    let o = try parse(c.bytes(text))
                    XCTAssertEqual(o["id"] as? String, "cmpl-abc")
                    XCTAssertEqual(o["object"] as? String, chat ? "chat.completion.chunk" : "text_completion")
                    XCTAssertEqual((o["created"] as? NSNumber)?.intValue, 1_790_000_000)
                    XCTAssertEqual(o["model"] as? String, model)
                    XCTAssertEqual(o.count, 5)
                    let choices = try XCTUnwrap(o["choices"] as? [[String: Any]])
                    XCTAssertEqual(choices.count, 1)
                    let choice = choices[0]
                    XCTAssertEqual((choice["index"] as? NSNumber)?.intValue, 0)
                    XCTAssertTrue(choice["finish_reason"] is NSNull)
                    XCTAssertTrue(choice["logprobs"] is NSNull)
                    XCTAssertEqual(choice.count, 4)
                    if chat {
                        let delta = try XCTUnwrap(choice["delta"] as? [String: Any])
                        XCTAssertEqual(delta.count, 1)
                        XCTAssertEqual(delta["content"] as? String, text, "chat text \(text.debugDescription)")
                    } else {
                        XCTAssertEqual(choice["text"] as? String, text, "text \(text.debugDescription)")
                    }
                }
            }
        }
    }

    /// The escapes are JSON's short forms where it has them, else \u00XX; the rest is UTF-8 as is.
    func testEscapes() {
        var out: [UInt8] = []
        appendJSONString("\"\\\n\r\t\u{01}\u{1F}/é", to: &out)
        XCTAssertEqual(String(decoding: out, as: UTF8.self), #""\"\\\n\r\t\u0001\u001f/é""#)
    }
}
