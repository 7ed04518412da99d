import Foundation
import XCTest
@testable import LLaMA
import Tensor

/// Byte-level BPE against Hugging Face `tokenizers`: the committed tiny tokenizer and its reference
/// (Tests/Fixtures/bpe/, written by scripts/make_bpe_reference.py), and SmolLM2-135M-Instruct's
/// real vocabulary from its GGUF when models/ has it.
final class BPETokenizerTests: XCTestCase {
    static let folder = Fixtures.model("bpe")

    func tiny() throws -> BPETokenizer {
        let tok = try loadTokenizer(folder: Self.folder)
        return try XCTUnwrap(tok as? BPETokenizer)
    }

    func reference(_ name: String = "reference.json") throws -> JSON {
        try JSON.parse(contentsOf: Self.folder.appendingPathComponent(name))
    }

    func cases(_ ref: JSON) throws -> [(text: String, ref: JSON)] {
        try XCTUnwrap(ref["cases"]?.array).map { (try XCTUnwrap($0["text"]?.string), $0) }
    }

    // MARK: the tiny tokenizer against tokenizers

    func testTinyTokenizerShape() throws {
        let tok = try tiny()
        XCTAssertEqual(tok.vocabSize, 803)
        XCTAssertEqual(tok.preTokenizer, .smollm)
        XCTAssertFalse(tok.addsBOS, "no post-processor: tokenizer(text) adds nothing")
        XCTAssertEqual(tok.bosID, 1)
        XCTAssertEqual(tok.eosID, 2)
        XCTAssertEqual(tok.eosIDs, [2])
        XCTAssertEqual(tok.padID, 2)
        XCTAssertEqual(tok.unkID, 0)
        XCTAssertEqual(tok.piece(0), "<|endoftext|>")
        XCTAssertEqual(tok.piece(802), "<think>")
        XCTAssertEqual(tok.piece(803), "")
        XCTAssertEqual(tok.piece(-1), "")
        XCTAssertEqual(tok.id(ofPiece: "<|im_end|>"), 2)
        XCTAssertTrue(tok.isSpecial(2))
        XCTAssertFalse(tok.isSpecial(802), "<think> is added but not special")
        XCTAssertEqual(tok.encode("", addBOS: true), [1], "BOS on request")
    }

    func testTinyIDsEqualTokenizers() throws {
        let tok = try tiny()
        let ref = try reference()
        let all = try cases(ref)
        XCTAssertGreaterThanOrEqual(all.count, 30)
        for (text, c) in all {
            XCTAssertEqual(tok.encode(text, addBOS: false), try XCTUnwrap(c["ids"]).ints32, "ids of \(text.debugDescription)")
        }
    }

    func testTinyCorpusEqualsTokenizers() throws {
        let tok = try tiny()
        let corpus = try XCTUnwrap(reference()["corpus"])
        let text = try String(contentsOf: Fixtures.root.appendingPathComponent("spm_corpus.txt"), encoding: .utf8)
        let ids = tok.encode(text, addBOS: false)
        XCTAssertEqual(ids.count, corpus["count"]?.int)
        XCTAssertEqual(Self.fnv1a64(ids), corpus["fnv1a64"]?.string)
    }

    func testLLaMA3PreTokenizerIDsEqualTokenizers() throws {
        // The same vocabulary under LLaMA 3's pre-tokenizer, spelled as LLaMA 3's tokenizer.json does.
        let url = try Self.editedTokenizerJSON { root in
            root.set(["pre_tokenizer"], try JSON.parse("""
                {"type": "Sequence", "pretokenizers": [
                  {"type": "Split", "pattern": {"Regex": \(Self.quoted(BPETokenizer.llama3Regex))},
                   "behavior": "Isolated", "invert": false},
                  {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}
                """, source: "test"))
        }
        defer { try? FileManager.default.removeItem(at: url.deletingLastPathComponent()) }
        let tok = try BPETokenizer(tokenizerJSON: url)
        XCTAssertEqual(tok.preTokenizer, .llama3)
        for (text, c) in try cases(reference()) {
            XCTAssertEqual(tok.encode(text, addBOS: false), try XCTUnwrap(c["ids_llama3"]).ints32,
                           "llama3 ids of \(text.debugDescription)")
        }
    }

    func testPreTokenizerPiecesEqualTokenizers() throws {
        for (text, c) in try cases(reference()) {
            for kind in PreTokenizer.allCases {
                let expected = try XCTUnwrap(c["pieces_\(kind.rawValue)"]?.array).compactMap(\.string)
                XCTAssertEqual(kind.split(text), expected, "\(kind) pieces of \(text.debugDescription)")
            }
        }
    }

    func testDecodeEqualsTokenizers() throws {
        let tok = try tiny()
        let decode = try XCTUnwrap(reference()["decode"]?.array)
        XCTAssertGreaterThan(decode.count, 5)
        for d in decode {
            let ids = try XCTUnwrap(d["ids"]).ints32
            XCTAssertEqual(tok.decode(ids), try XCTUnwrap(d["text"]?.string), "decode \(ids)")
        }
    }

    func testRoundTrips() throws {
        let tok = try tiny()
        for (text, _) in try cases(reference()) {
            // BOS/EOS text decodes to nothing, and <sep> swallows the whitespace around it.
            if text.contains("<|im_") || text.contains("<sep>") { continue }
            XCTAssertEqual(tok.decode(tok.encode(text, addBOS: false)), text, "round trip of \(text.debugDescription)")
        }
        let chat = "<|im_start|>user\nHi<|im_end|>\n"
        XCTAssertEqual(tok.decode(tok.encode(chat, addBOS: false)), "user\nHi\n", "BOS and EOS are invisible")
        XCTAssertEqual(tok.decode(tok.encode("a<|endoftext|>b <|a b|> <think>", addBOS: false)),
                       "a<|endoftext|>b <|a b|> <think>", "other added tokens print their text")
        XCTAssertEqual(tok.decode([-1, 803, Int32.max] + tok.encode("ok", addBOS: false)), "ok", "ids outside are skipped")
    }

    func testStreamingDecoderHoldsSplitCharacters() throws {
        let tok = try tiny()
        let text = "Café 日本語 😀👍🏽🇫🇷 👨‍👩‍👧 done ½"
        let ids = tok.encode(text, addBOS: false) + [2]
        // The tiny vocabulary has no token for most of these characters: their bytes arrive one by one.
        XCTAssertGreaterThan(ids.filter { tok.decode([$0]) == "\u{FFFD}" }.count, 10)
        var d = StreamingDecoder(tokenizer: tok, context: tok.encode("<|im_start|>assistant\n", addBOS: false))
        var chunks = ids.map { d.push($0) }
        chunks.append(d.finish())
        XCTAssertEqual(chunks.joined(), text)
        XCTAssertEqual(chunks.last, "")
        for chunk in chunks { XCTAssertFalse(chunk.unicodeScalars.contains("\u{FFFD}"), "chunk \(chunk.debugDescription)") }
        let emoji = tok.encode("😀", addBOS: false)
        XCTAssertGreaterThanOrEqual(emoji.count, 2, "the emoji's 4 bytes are split over several ids")
        var e = StreamingDecoder(tokenizer: tok)
        XCTAssertEqual(emoji.map { e.push($0) }, [String](repeating: "", count: emoji.count - 1) + ["😀"])
        var f = StreamingDecoder(tokenizer: tok)
        XCTAssertEqual(emoji.prefix(2).map { f.push($0) }, ["", ""])
        XCTAssertEqual(f.finish(), "\u{FFFD}", "a truncated character is one U+FFFD, as tokenizers' decode gives")
    }

    func testEncodeIsSafeFromSeveralThreads() throws {
        let tok = try tiny()
        let texts = (0..<16).map { "Sentence \($0): café 日本 😀 \(String(repeating: "ab", count: $0)) 12345" }
        let serial = texts.map { tok.encode($0, addBOS: false) }
        let fresh = try tiny()
        let results = UnsafeMutableBufferPointer<[Int32]>.allocate(capacity: texts.count * 8)
        defer { results.deallocate() }
        _ = results.initialize(from: repeatElement([], count: results.count))
        DispatchQueue.concurrentPerform(iterations: results.count) { i in
            results[i] = fresh.encode(texts[i % texts.count], addBOS: false)
        }
        for i in 0..<results.count { XCTAssertEqual(results[i], serial[i % texts.count]) }
    }

    // MARK: post-processor, GGUF arrays

    func testTemplateProcessingPutsBOSInFront() throws {
        let url = try Self.editedTokenizerJSON { root in
            root.set(["post_processor"], try JSON.parse("""
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [], "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}}}
                """, source: "test"))
        }
        defer { try? FileManager.default.removeItem(at: url.deletingLastPathComponent()) }
        let tok = try BPETokenizer(tokenizerJSON: url)
        XCTAssertTrue(tok.addsBOS)
        XCTAssertEqual(tok.bosID, 1)
        XCTAssertEqual(tok.encode("Hello world", addBOS: true), [1] + (try tiny()).encode("Hello world", addBOS: false))
    }

    func testGGUFArraysGiveTheSameTokenizer() throws {
        let json = try Self.tinyJSON()
        let tok = try tiny()
        // What a GGUF converter writes: every id's token, control (3) or user-defined (4) types, "a b" merges.
        let tokens = (0..<Int32(tok.vocabSize)).map(tok.piece)
        let types: [Int32] = (0..<Int32(tok.vocabSize)).map { tok.isSpecial($0) ? 3 : $0 == 802 ? 4 : 1 }  // 802: <think>
        let merges = try XCTUnwrap(json["model"]?["merges"]?.array).map { m in
            m.array!.compactMap(\.string).joined(separator: " ")
        }
        let gguf = try BPETokenizer(ggufTokens: tokens, tokenTypes: types, merges: merges, pre: "smollm",
                                    bosID: 1, eosID: 2, unkID: 0, padID: 2, addBOS: false, source: "arrays")
        XCTAssertEqual(gguf.vocabSize, tok.vocabSize)
        XCTAssertEqual(gguf.mergeCount, tok.mergeCount)
        XCTAssertFalse(gguf.addsBOS)
        for (text, c) in try cases(reference()) where !text.contains("<sep>") {  // GGUF has no lstrip/rstrip
            XCTAssertEqual(gguf.encode(text, addBOS: false), try XCTUnwrap(c["ids"]).ints32, "ids of \(text.debugDescription)")
        }
        XCTAssertEqual(gguf.decode(gguf.encode("<|im_start|>x<|im_end|><|endoftext|>", addBOS: false)), "x<|endoftext|>")
    }

    // MARK: errors

    func testGGUFErrorsNameKeyAndValue() throws {
        func error(pre: String? = "smollm", tokens: [String] = ["a", "b", "ab"], types: [Int32]? = nil,
                   merges: [String] = ["a b"]) -> String {
            do {
                _ = try BPETokenizer(ggufTokens: tokens, tokenTypes: types, merges: merges, pre: pre, bosID: nil,
                                     eosID: nil, unkID: nil, padID: nil, addBOS: nil, source: "/m/x.gguf")
                return "no error"
            } catch { return "\(error)" }
        }
        let unknown = error(pre: "qwen2")
        for part in ["/m/x.gguf", "tokenizer.ggml.pre", "\"qwen2\"", "\"smollm\"", "\"gpt-2\"", "\"llama-bpe\""] {
            XCTAssertTrue(unknown.contains(part), "\(unknown) should name \(part)")
        }
        XCTAssertEqual(error(), "no error")
        XCTAssertEqual(error(pre: nil), "no error", "no pre-tokenizer key: default")
        XCTAssertTrue(error(merges: ["a b", "ab"]).contains("tokenizer.ggml.merges[1] \"ab\""))
        XCTAssertTrue(error(merges: ["a c"]).contains("tokenizer.ggml.merges[0]"))
        XCTAssertTrue(error(types: [1]).contains("tokenizer.ggml.token_type"))
    }

    func testMalformedTokenizerJSONErrorsNameFileAndKey() throws {
        func error(_ edit: (inout JSON) throws -> Void, config: String? = nil) throws -> (TokenizerError?, String) {
            let url = try Self.editedTokenizerJSON(edit)
            defer { try? FileManager.default.removeItem(at: url.deletingLastPathComponent()) }
            var configURL: URL?
            if let config {
                configURL = url.deletingLastPathComponent().appendingPathComponent("tokenizer_config.json")
                try Data(config.utf8).write(to: configURL!)
            }
            do {
                _ = try BPETokenizer(tokenizerJSON: url, tokenizerConfig: configURL)
                return (nil, "no error")
            } catch {
                let text = "\(error)"
                XCTAssertTrue(text.contains(configURL?.path ?? url.path) || text.contains(url.path), "\(text) names no file")
                return (error as? TokenizerError, text)
            }
        }
        func expect(_ parts: [String], unsupported: Bool = false, config: String? = nil,
                    _ edit: (inout JSON) throws -> Void, line: UInt = #line) throws {
            let (e, text) = try error(edit, config: config)
            for p in parts { XCTAssertTrue(text.contains(p), "\(text) should contain \(p)", line: line) }
            switch e {
            case .unsupported?: XCTAssertTrue(unsupported, "\(text)", line: line)
            case .unreadable?: XCTAssertFalse(unsupported, "\(text)", line: line)
            default: XCTFail("expected a TokenizerError, got \(text)", line: line)
            }
        }
        try expect(["model.vocab", "an array"]) { $0.set(["model", "vocab"], .array([])) }
        try expect(["model.vocab[\"Ġ\"]", "\"x\""]) { $0.set(["model", "vocab", "Ġ"], .string("x")) }
        try expect(["model.merges[3]", "5"]) { $0.set(["model", "merges", 3], .int(5)) }
        try expect(["model.merges[0]", "\"zzz\" is not in the vocabulary"]) {
            $0.set(["model", "merges", 0], .array([.string("zzz"), .string("t")]))
        }
        try expect(["model.merges"]) { $0.set(["model", "merges"], nil) }
        try expect(["added_tokens[1].id"]) { $0.set(["added_tokens", 1, "id"], nil) }
        try expect(["model.type \"Unigram\""], unsupported: true) { $0.set(["model", "type"], .string("Unigram")) }
        try expect(["model.byte_fallback"], unsupported: true) { $0.set(["model", "byte_fallback"], .bool(true)) }
        try expect(["pre_tokenizer", "Metaspace"], unsupported: true) {
            $0.set(["pre_tokenizer"], try JSON.parse(#"{"type": "Metaspace", "replacement": "▁"}"#, source: "test"))
        }
        try expect(["normalizer"], unsupported: true) { $0.set(["normalizer"], try JSON.parse(#"{"type": "NFC"}"#, source: "test")) }
        try expect(["tokenizer_config.json", "eos_token \"</s>\""], config: #"{"eos_token": "</s>"}"#) { _ in }
        let (ok, _) = try error({ _ in }, config: #"{"eos_token": {"content": "<|im_end|>"}, "bos_token": null}"#)
        XCTAssertNil(ok)

        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let broken = dir.appendingPathComponent("tokenizer.json")
        try Data("{\"model\": [1, 2".utf8).write(to: broken)
        XCTAssertThrowsError(try loadTokenizer(folder: dir)) { error in
            guard case .unreadable(let file, let reason)? = error as? TokenizerError else {
                return XCTFail("expected TokenizerError.unreadable, got \(error)")
            }
            XCTAssertEqual(file, broken.path)
            XCTAssertTrue(reason.contains("invalid JSON"), reason)
        }
    }

    // MARK: SmolLM2's real vocabulary

    static let smolLM2 = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf")

    /// SmolLM2-135M-Instruct's tokenizer from its GGUF metadata, the way the GGUF loader builds it.
    static func smolLM2Tokenizer() throws -> BPETokenizer {
        guard FileManager.default.fileExists(atPath: smolLM2.path) else {
            throw XCTSkip("\(smolLM2.path) not present (git-ignored; download it to run this test)")
        }
        let f = try GGUFFile(path: smolLM2.path)
        func id(_ key: String) throws -> Int32? { try f.int(key).map(Int32.init) }
        return try BPETokenizer(
            ggufTokens: try XCTUnwrap(f.strings("tokenizer.ggml.tokens")),
            tokenTypes: try f.ints("tokenizer.ggml.token_type")?.map(Int32.init),
            merges: try XCTUnwrap(f.strings("tokenizer.ggml.merges")),
            pre: try f.string("tokenizer.ggml.pre"),
            bosID: try id("tokenizer.ggml.bos_token_id"), eosID: try id("tokenizer.ggml.eos_token_id"),
            unkID: try id("tokenizer.ggml.unknown_token_id"), padID: try id("tokenizer.ggml.padding_token_id"),
            addBOS: try f.bool("tokenizer.ggml.add_bos_token"), source: smolLM2.path)
    }

    func testSmolLM2IDsEqualTokenizers() throws {
        let tok = try Self.smolLM2Tokenizer()
        XCTAssertEqual(tok.vocabSize, 49152)
        XCTAssertEqual(tok.mergeCount, 48900)
        XCTAssertEqual(tok.preTokenizer, .smollm)
        XCTAssertFalse(tok.addsBOS)
        XCTAssertEqual([tok.bosID, tok.eosID, tok.unkID, tok.padID], [1, 2, 0, 2])
        XCTAssertEqual(tok.piece(2), "<|im_end|>")
        let ref = try reference("smollm2_reference.json")
        for (text, c) in try cases(ref) {
            XCTAssertEqual(tok.encode(text, addBOS: false), try XCTUnwrap(c["ids"]).ints32, "ids of \(text.debugDescription)")
        }
        for d in try XCTUnwrap(ref["decode"]?.array) {
            let ids = try XCTUnwrap(d["ids"]).ints32.filter { ![1, 2].contains($0) }  // BOS/EOS: invisible here
            XCTAssertEqual(tok.decode(ids), try XCTUnwrap(d["text"]?.string))
        }
        // The chat template's text, as SmolLM2 sees it.
        XCTAssertEqual(tok.encode("<|im_start|>user\nHi<|im_end|>", addBOS: false), [1, 4093, 198, 26843, 2])

        let corpus = try XCTUnwrap(ref["corpus"])
        let text = try String(contentsOf: Fixtures.root.appendingPathComponent("spm_corpus.txt"), encoding: .utf8)
        let fresh = try Self.smolLM2Tokenizer()  // empty word cache
        let start = Date()
        let ids = fresh.encode(text, addBOS: false)
        let seconds = Date().timeIntervalSince(start)
        XCTAssertEqual(ids.count, corpus["count"]?.int)
        XCTAssertEqual(Self.fnv1a64(ids), corpus["fnv1a64"]?.string)
        XCTAssertEqual(tok.decode(ids), text)
        print("SmolLM2: encoded \(text.utf8.count) bytes to \(ids.count) ids in \(String(format: "%.3f", seconds)) s")
    }

    func testEncodingSpeed() throws {
        // 100 KB of varied text, on a fresh tokenizer (empty word cache).
        let tok = try tiny()
        var text = try String(contentsOf: Fixtures.root.appendingPathComponent("spm_corpus.txt"), encoding: .utf8)
        for (t, _) in try cases(reference()) where !t.contains("<|im_") && !t.contains("<sep>") { text += t + "\n" }
        while text.utf8.count < 100_000 { text += "Numbers 1234567 and 日本語 text, naïve café 😀 ok?\n" }
        let start = Date()
        let ids = tok.encode(text, addBOS: false)
        let seconds = Date().timeIntervalSince(start)
        print("tiny BPE: encoded \(text.utf8.count) bytes to \(ids.count) ids in \(String(format: "%.3f", seconds)) s")
        XCTAssertEqual(tok.decode(ids), text)
        // Well under a second in release; generous for a debug build on a busy machine.
        XCTAssertLessThan(seconds, 5)

        // Worst cases for the merge loop: one 100 KB word, and 100 KB of words never seen twice.
        var rng = RNG(seed: 5)
        func letters(_ n: Int, from alphabet: String) -> String {
            let a = Array(alphabet)
            return String((0..<n).map { _ in a[rng.int(below: a.count)] })
        }
        let long = letters(100_000, from: "abcdefghij")
        let unique = (0..<12_000).map { _ in letters(7, from: "abcdefghijklmnopqrstuvwxyz") }.joined(separator: " ")
        for (name, t) in [("one word", long), ("unique words", unique)] {
            let start = Date()
            let ids = try tiny().encode(t, addBOS: false)
            let seconds = Date().timeIntervalSince(start)
            print("tiny BPE, \(name): encoded \(t.utf8.count) bytes to \(ids.count) ids in \(String(format: "%.3f", seconds)) s")
            XCTAssertEqual(tok.decode(ids), t)
            XCTAssertLessThan(seconds, 5)
        }
    }

    // MARK: helpers

    static func fnv1a64(_ ids: [Int32]) -> String {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for id in ids {
            withUnsafeBytes(of: UInt32(bitPattern: id).littleEndian) { bytes in
                for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
            }
        }
        return String(format: "%016llx", h)
    }

    static func quoted(_ s: String) -> String {
        var out = ""
        JSON.escape(s, into: &out)
        return out
    }

    static func tinyJSON() throws -> JSON {
        try JSON.parse(contentsOf: folder.appendingPathComponent("tokenizer.json"))
    }

    static func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-bpe-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// A copy of the tiny tokenizer.json with `edit` applied, in a fresh temporary folder.
    static func editedTokenizerJSON(_ edit: (inout JSON) throws -> Void) throws -> URL {
        var root = try tinyJSON()
        try edit(&root)
        let url = try temporaryDirectory().appendingPathComponent("tokenizer.json")
        try Data(root.serialized(pretty: false).utf8).write(to: url)
        return url
    }
}

/// Editing parsed JSON in tests: `root.set(["model", "merges", 3], .int(5))`; nil removes a key.
extension JSON {
    mutating func set(_ path: [Any], _ value: JSON?) {
        guard let first = path.first else {
            if let value { self = value }
            return
        }
        let rest = Array(path.dropFirst())
        switch (self, first) {
        case (.object(var items), let key as String):
            if let i = items.firstIndex(where: { $0.0 == key }) {
                if rest.isEmpty && value == nil { items.remove(at: i) } else { items[i].1.set(rest, value) }
            } else if rest.isEmpty, let value {
                items.append((key, value))
            }
            self = .object(items)
        case (.array(var a), let i as Int):
            if rest.isEmpty && value == nil { a.remove(at: i) } else { a[i].set(rest, value) }
            self = .array(a)
        default:
            preconditionFailure("no \(first) in \(typeName)")
        }
    }
}
