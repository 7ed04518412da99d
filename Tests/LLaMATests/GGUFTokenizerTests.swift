import XCTest
@testable import LLaMA

/// A GGUF's SentencePiece vocabulary (tokenizer.ggml.model "llama") becomes a ModelProto that
/// libsentencepiece loads: ids equal the tokenizer.model the GGUF was written from.
final class GGUFTokenizerTests: XCTestCase {
    func testSentencePieceFromGGUFMatchesTokenizerModel() throws {
        let fromFolder = try loadTokenizer(folder: Fixtures.model("tiny-mha"))
        let fromGGUF = try loadTokenizer(path: Fixtures.root.appendingPathComponent("gguf/tiny-mha.gguf").path)
        XCTAssert(fromGGUF is SentencePieceTokenizer)
        XCTAssertEqual(fromGGUF.bosID, fromFolder.bosID)
        XCTAssertEqual(fromGGUF.eosID, fromFolder.eosID)
        XCTAssertEqual(fromGGUF.vocabSize, fromFolder.vocabSize)
        let ref = try Fixtures.json("tiny-mha.forward.json")
        let cases = try XCTUnwrap(ref["tokenizer_cases"]?["encode"]?.array)
        XCTAssertGreaterThan(cases.count, 10)
        for c in cases {
            let text = c["text"]!.string!
            XCTAssertEqual(fromGGUF.encode(text, addBOS: false), c["sp_ids"]!.ints32, "ids of \(text.debugDescription)")
            XCTAssertEqual(fromGGUF.decode(fromGGUF.encode(text, addBOS: true)), fromFolder.decode(fromFolder.encode(text, addBOS: true)))
        }
    }

    func testQuantizedGGUFCarriesTheSameTokenizer() throws {
        let fromGGUF = try loadTokenizer(path: Fixtures.root.appendingPathComponent("gguf/tiny-gqa-q8.gguf").path)
        let fromFolder = try loadTokenizer(folder: Fixtures.model("tiny-gqa"))
        let text = "Below is an instruction that describes a task.\n\n### Response:\n café 42"
        XCTAssertEqual(fromGGUF.encode(text, addBOS: true), fromFolder.encode(text, addBOS: true))
        XCTAssertEqual(fromGGUF.addsBOS, fromFolder.addsBOS)
    }
}
