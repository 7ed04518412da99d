import Foundation
import XCTest
import LLaMA
import Tensor

/// The streamed text, concatenated, must equal a decode of the whole sequence; and no chunk may
/// end inside a character.
final class StreamingDecoderTests: XCTestCase {
    /// Pushes `ids` one at a time, then finishes; returns the chunks (the last one from `finish`).
    func stream(_ tok: Tokenizer, _ ids: [Int32], context: [Int32] = []) -> [String] {
        var decoder = StreamingDecoder(tokenizer: tok, context: context)
        var chunks = ids.map { decoder.push($0) }
        chunks.append(decoder.finish())
        return chunks
    }

    func testMultibyteTextThroughByteFallback() throws {
        let tok = try SentencePieceTokenizer(path: TokenizerTests.fixtureModel)
        let text = "Café crème brûlée, naïve Ångström — 日本語のテキスト 😀👍🏽🇫🇷 done.\nNext line: ½ €"
        let ids = tok.encode(text, addBOS: true) + [tok.eosID!]
        XCTAssertGreaterThan(ids.filter(tok.isByte).count, 30, "the text should exercise byte fallback")
        let chunks = stream(tok, ids)
        XCTAssertEqual(chunks.joined(), tok.decode(ids))
        XCTAssertEqual(chunks.joined(), text)
        XCTAssertEqual(chunks.last, "", "nothing was held back at the end")
        for chunk in chunks { XCTAssertFalse(chunk.unicodeScalars.contains("\u{FFFD}"), "chunk \(chunk.debugDescription)") }
        // Every character arrives exactly when its last byte does: the emoji's 4 byte ids give
        // "", "", "", "😀".
        let emoji = tok.encode("😀", addBOS: false).filter(tok.isByte)
        XCTAssertEqual(emoji.count, 4)
        var d = StreamingDecoder(tokenizer: tok, context: tok.encode("x", addBOS: true))
        XCTAssertEqual(emoji.map { d.push($0) }, ["", "", "", "😀"])
    }

    func testLeadingSpaceDependsOnContext() throws {
        let v = HandmadeSentencePiece.self
        let tok = try v.tokenizer()
        let hello = v.id("▁hello")
        // At the start of a sequence SentencePiece drops the dummy-prefix space...
        XCTAssertEqual(stream(tok, [1, hello, hello]), ["", "hello", " hello", ""])
        // ...but after a prompt the first generated piece keeps it.
        let prompt = tok.encode("hello", addBOS: true)
        XCTAssertEqual(stream(tok, [hello, v.id("▁"), v.id("w")], context: prompt), [" hello", " ", "w", ""])
        XCTAssertEqual(tok.decode(prompt + [hello]), "hello hello")
    }

    func testIncompleteSequenceIsHeldUntilFinish() throws {
        let tok = try HandmadeSentencePiece.tokenizer()
        var d = StreamingDecoder(tokenizer: tok)
        XCTAssertEqual(d.push(HandmadeSentencePiece.id("a")), "a")
        XCTAssertEqual(d.push(3 + 0xF0), "")
        XCTAssertEqual(d.push(3 + 0x9F), "")
        XCTAssertEqual(d.push(1), "", "a control id adds no text")
        XCTAssertEqual(d.finish(), "\u{FFFD}\u{FFFD}", "a truncated sequence decodes to U+FFFD per byte, as decode does")
        XCTAssertEqual(tok.decode([HandmadeSentencePiece.id("a"), 3 + 0xF0, 3 + 0x9F, 1]), "a\u{FFFD}\u{FFFD}")
        // A stray continuation byte is final as soon as a later byte cannot complete it.
        var e = StreamingDecoder(tokenizer: tok)
        XCTAssertEqual(e.push(3 + 0xA9), "")
        XCTAssertEqual(e.push(3 + 0x41), "\u{FFFD}A")
    }

    /// Random id sequences (control, unknown, bytes in any order, space pieces) under the three
    /// normalizer settings that change how leading spaces decode.
    func testRandomSequencesMatchFullDecode() throws {
        let v = HandmadeSentencePiece.self
        var rng = RNG(seed: 0x5EED)
        for (dummy, squeeze) in [(true, false), (true, true), (false, false)] {
            let tok = try v.tokenizer(addDummyPrefix: dummy, removeExtraWhitespaces: squeeze)
            // Bias towards the interesting ids: spaces, controls, UTF-8 lead and continuation bytes.
            let interesting: [Int32] = [0, 1, 2, v.id("▁"), v.id("▁▁"), v.id("▁hello"), v.id("▁a"), v.id("a"),
                                        3 + 0xC3, 3 + 0xA9, 3 + 0xE6, 3 + 0x97, 3 + 0xF0, 3 + 0x9F, 3 + 0x41]
            for trial in 0..<400 {
                let n = Int(rng.next() % 24)
                let ids: [Int32] = (0..<n).map { _ in
                    rng.next() % 2 == 0 ? interesting[Int(rng.next() % UInt64(interesting.count))]
                                        : Int32(rng.next() % UInt64(tok.vocabSize))
                }
                let chunks = stream(tok, ids)
                XCTAssertEqual(chunks.joined(), tok.decode(ids),
                               "dummy \(dummy) squeeze \(squeeze) trial \(trial): ids \(ids) chunks \(chunks)")
                // Split anywhere into context + generated: the stream continues the context.
                let cut = n == 0 ? 0 : Int(rng.next() % UInt64(n))
                let context = Array(ids[..<cut]), rest = Array(ids[cut...])
                let full = Array(tok.decode(ids).utf8), head = Array(tok.decode(context).utf8)
                if full.starts(with: head) {  // the cut is not inside a character
                    XCTAssertEqual(Array(stream(tok, rest, context: context).joined().utf8), Array(full[head.count...]),
                                   "dummy \(dummy) squeeze \(squeeze) trial \(trial): context \(context) rest \(rest)")
                }
            }
        }
    }

    func testRealTextWithTheFixtureAndAContext() throws {
        let tok = try SentencePieceTokenizer(path: TokenizerTests.fixtureModel)
        let prompter = try Prompter(named: "alpaca")
        let prompt = tok.encode(prompter.generatePrompt(instruction: "Say hi in French.", input: nil), addBOS: true)
        let answer = "  Bonjour ! Ça va très bien, merci. 你好 🙂\n\n- fin"
        let generated = tok.encode(answer, addBOS: false) + [2]
        let streamed = stream(tok, generated, context: prompt).joined()
        let full = tok.decode(prompt + generated)
        XCTAssertEqual(streamed, String(full.dropFirst(tok.decode(prompt).count)))
        XCTAssertEqual(prompter.response(from: full), "Bonjour ! Ça va très bien, merci. 你好 🙂\n\n- fin")
    }

    /// A byte-level tokenizer (id = byte), whose decode replaces invalid UTF-8 the Swift way.
    func testByteLevelTokenizer() {
        let tok = BytesTokenizer()
        let text = "héllo wörld — 日本 😀 👍🏽"
        let ids = text.utf8.map(Int32.init)
        let chunks = stream(tok, ids)
        XCTAssertEqual(chunks.joined(), text)
        XCTAssertEqual(chunks.filter { !$0.isEmpty }.count, text.unicodeScalars.count)
        for chunk in chunks { XCTAssertFalse(chunk.unicodeScalars.contains("\u{FFFD}")) }
    }
}

/// One id per byte; for exercising StreamingDecoder without SentencePiece's rules.
private struct BytesTokenizer: Tokenizer {
    func encode(_ text: String, addBOS: Bool) -> [Int32] { text.utf8.map(Int32.init) }
    func decode(_ ids: [Int32]) -> String { String(decoding: ids.map { UInt8($0) }, as: UTF8.self) }
    var bosID: Int32? { nil }
    var addsBOS: Bool { false }
    var eosID: Int32? { nil }
    var eosIDs: Set<Int32> { [] }
    var padID: Int32? { nil }
    var vocabSize: Int { 256 }
    func piece(_ id: Int32) -> String { String(format: "<0x%02X>", id) }
}

