import Foundation
import XCTest
import TestHelpers
@testable import LLaMA
import Tensor

/// A GGUF's tokenizer written as Hugging Face files (merge --format hf from a GGUF base), and a
/// tokenizer.json-only folder written as GGUF metadata (merge --format gguf): both directions
/// must encode every text to the same ids as the tokenizer they came from.
final class TokenizerExportTests: XCTestCase {
    static let texts = [
        "Hello, world! Grüße aus Köln, 1234 Äpfel.",
        "東京は晴れ。Привет, как дела? مرحبا بالعالم",
        "  leading spaces\n\n\ttabs and emoji 😀👍🏽 and 3.14159",
        "### Instruction:\nName three primary colors.\n\n### Response:\n",
    ]

    func write(_ files: [(name: String, text: [UInt8])], to dir: URL) throws {
        for f in files { try Data(f.text).write(to: dir.appendingPathComponent(f.name)) }
    }

    func assertSameIDs(_ a: Tokenizer, _ b: Tokenizer, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        for t in Self.texts {
            XCTAssertEqual(a.encode(t, addBOS: a.addsBOS), b.encode(t, addBOS: b.addsBOS), "\(what): \(t)", file: file, line: line)
        }
        XCTAssertEqual(a.addsBOS, b.addsBOS, what, file: file, line: line)
        XCTAssertEqual(a.bosID, b.bosID, what, file: file, line: line)
        XCTAssertEqual(a.eosID, b.eosID, what, file: file, line: line)
    }

    /// SentencePiece GGUF (the tiny fixtures) -> tokenizer.model + tokenizer_config.json.
    func testSentencePieceGGUFToHFFolder() throws {
        let g = try GGUFFile(path: Fixtures.root.appendingPathComponent("gguf/tiny-mha.gguf").path)
        let files = try HFTokenizerExport.files(gguf: g, contextLength: 128)
        XCTAssertEqual(files.map(\.name), ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"])
        let dir = try tempDir()
        try write(files, to: dir)
        let original = try loadTokenizer(gguf: g)
        assertSameIDs(try loadTokenizer(folder: dir), original, "tokenizer.model from the GGUF")
        let cfg = try JSON.parse(contentsOf: dir.appendingPathComponent("tokenizer_config.json"))
        XCTAssertEqual(cfg["tokenizer_class"]?.string, "LlamaTokenizer")
        XCTAssertEqual(cfg["bos_token"]?.string, original.bosID.map { original.piece($0) })
        XCTAssertEqual(cfg["eos_token"]?.string, original.eosID.map { original.piece($0) })
        XCTAssertEqual(cfg["model_max_length"]?.int, 128)
    }

    /// tokenizer.json (SmolLM-style BPE fixture) -> GGUF metadata -> tokenizer.json again.
    func testBPETokenizerJSONRoundTripsThroughGGUF() throws {
        let src = try tempDir()
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(at: Fixtures.root.appendingPathComponent("bpe/\(f)"), to: src.appendingPathComponent(f))
        }
        // A chat template in tokenizer_config.json travels into tokenizer.chat_template and back.
        var cfg = try JSON.parse(contentsOf: src.appendingPathComponent("tokenizer_config.json"))
        let template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        if case .object(var pairs) = cfg { pairs.append(("chat_template", .string(template))); cfg = .object(pairs) }
        try cfg.serialized().write(to: src.appendingPathComponent("tokenizer_config.json"), atomically: true, encoding: .utf8)

        let original = try loadTokenizer(folder: src)
        var config = try LlamaConfig(contentsOf: Fixtures.model("tiny-mha").appendingPathComponent("config.json"))
        config.vocabSize = original.vocabSize + 4   // padded rows become [PAD{i}] tokens
        config.bosTokenID = nil; config.eosTokenIDs = []; config.padTokenID = nil
        var w = GGUFWriter()
        w.add("general.architecture", .string("llama"))
        for (k, v) in try GGUFVocab.bytePairs(folder: src, config: config) { w.add(k, v) }
        let ggufURL = src.appendingPathComponent("vocab.gguf")
        try w.write(to: ggufURL)
        let g = try GGUFFile(path: ggufURL.path)
        XCTAssertEqual(try g.string("tokenizer.ggml.model"), "gpt2")
        XCTAssertEqual(try g.string("tokenizer.ggml.pre"), "smollm")
        XCTAssertEqual(try g.strings("tokenizer.ggml.tokens")?.count, config.vocabSize)
        XCTAssertEqual(try g.string("tokenizer.chat_template"), template)
        let fromGGUF = try loadTokenizer(gguf: g)
        assertSameIDs(fromGGUF, original, "tokenizer.json -> GGUF")

        let back = try tempDir()
        let files = try HFTokenizerExport.files(gguf: g, contextLength: nil)
        XCTAssertEqual(files.map(\.name), ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
        try write(files, to: back)
        assertSameIDs(try loadTokenizer(folder: back), original, "tokenizer.json -> GGUF -> tokenizer.json")
        let backCfg = try JSON.parse(contentsOf: back.appendingPathComponent("tokenizer_config.json"))
        XCTAssertEqual(backCfg["chat_template"]?.string, template)
        XCTAssertEqual(try chatTemplateSource(folder: back), template, "what LoadedModel reads for --chat-template")
        XCTAssertEqual(backCfg["eos_token"]?.string, original.eosID.map { original.piece($0) })
        // Special tokens are marked special for transformers.
        let tj = try JSON.parse(contentsOf: back.appendingPathComponent("tokenizer.json"))
        XCTAssertEqual(tj["added_tokens"]?.array?.first?["content"]?.string, "<|endoftext|>")
        XCTAssertEqual(tj["added_tokens"]?.array?.first?["special"]?.bool, true)
    }
}

/// `--base-model ORG/NAME` in a fake huggingface_hub cache: refs/main -> snapshots/<hash>/,
/// files symlinked into blobs/ as the hub stores them.
final class HubCacheTests: XCTestCase {
    func testResolveAndRoots() throws {
        let tmp = try tempDir()
        let hub = tmp.appendingPathComponent("home/hub")
        try HubCacheFixture.make(hub, org: "Org", name: "tiny", from: Fixtures.model("tiny-mha"))
        XCTAssertEqual(HubCache.roots(environment: ["HF_HUB_CACHE": "/a", "HF_HOME": "/b", "HOME": "/h"]).map(\.path),
                       ["/a", "/b/hub", "/h/.cache/huggingface/hub"])
        XCTAssert(HubCache.isRepoID("HuggingFaceTB/SmolLM2-135M-Instruct"))
        XCTAssert(HubCache.isRepoID("org/repo/model.Q4_1.gguf"))
        for s in ["/abs/path", "./rel/x", "models/x.gguf/y", "a", "a/b/c", "../x", "~/x/y"] { XCTAssertFalse(HubCache.isRepoID(s), s) }

        let env = ["HF_HOME": tmp.appendingPathComponent("home").path, "HOME": "/nonexistent"]
        let dir = try HubCache.resolve("Org/tiny", environment: env)
        XCTAssertEqual(dir.lastPathComponent, HubCacheFixture.hash)
        let m = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: dir), quantization: .none, pool: .serial)
        XCTAssertEqual(m.config.vocabSize, 512)

        XCTAssertThrowsError(try HubCache.resolve("Org/missing", environment: env)) { e in
            let s = "\(e)"
            XCTAssert(s.contains(hub.appendingPathComponent("models--Org--missing").path), s)
            XCTAssert(s.contains("/nonexistent/.cache/huggingface/hub/models--Org--missing"), s)
            XCTAssert(s.contains("huggingface-cli download Org/missing"), s)
            XCTAssertFalse(s.contains("\n"), s)
        }
    }
}
