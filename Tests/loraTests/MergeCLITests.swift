import Foundation
import XCTest
import TestHelpers
import LLaMA

/// `lora merge` run as a user runs it: outputs that load, stacked adapters in `lora generate`,
/// and output safety (refusals, --force, no partial output after a failure).
final class MergeCLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static func model(_ name: String) -> String { fixtures.appendingPathComponent(name).path }
    static func adapter(_ model: String, _ k: String) -> String { fixtures.appendingPathComponent("merge/\(model)-\(k).adapter").path }
    static let prompt = "The sky is a bright and calm blue that"

    @discardableResult
    func lora(_ args: [String]) throws -> LoraProcess.Result { try LoraProcess.run(args) }

    /// Entries of `dir` whose names start with a dot (temporary siblings).
    func hidden(_ dir: URL) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".") }
    }

    func generate(_ base: String, _ adapters: [String]) throws -> String {
        let r = try lora(["generate", "--base-model", base, "--prompt", Self.prompt, "--prompt-template", "none",
                          "--num-beams", "1", "--max-new-tokens", "24"] + adapters.flatMap { ["--lora-weights", $0] })
        XCTAssertEqual(r.status, 0, r.stderr)
        return r.stdout
    }

    /// `lora generate` applies several --lora-weights DIR:WEIGHT together, unmerged; the f32
    /// merge of the same adapters and weights answers the same.
    func testGenerateWithStackedAdaptersEqualsMergedModel() throws {
        for model in ["tiny-mha", "tiny-gqa"] {
            let specs = ["\(Self.adapter(model, "a")):0.7", "\(Self.adapter(model, "b")):-1.3"]
            let stacked = try generate(Self.model(model), specs)
            let onlyA = try generate(Self.model(model), [specs[0]])
            XCTAssertNotEqual(stacked, onlyA, "\(model): the second adapter changes the answer")
            XCTAssertNotEqual(stacked, try generate(Self.model(model), []), "\(model): adapters change the answer")
            let out = try tempDir().appendingPathComponent("merged")
            let r = try lora(["merge", "--base-model", Self.model(model), "--output", out.path, "--dtype", "f32"]
                             + specs.flatMap { ["--lora-weights", $0] })
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssert(r.stderr.contains("wrote \(out.path)"), r.stderr)
            XCTAssertEqual(try generate(out.path, []), stacked, "\(model): merged model vs stacked adapters")
        }
    }

    func testGGUFAndAdapterOnlyOutputs() throws {
        let dir = try tempDir()
        let gguf = dir.appendingPathComponent("m.gguf")
        var r = try lora(["merge", "--base-model", Self.model("tiny-gqa"), "--lora-weights", Self.adapter("tiny-gqa", "a"),
                          "--lora-weights", Self.adapter("tiny-gqa", "b") + ":0.5", "--format", "gguf", "--dtype", "q8_0",
                          "--output", gguf.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let g = try GGUFCheckpoint(path: gguf.path)
        XCTAssertEqual(try g.file.int("general.file_type"), 7)
        XCTAssertEqual(g.file.tensorInfo("blk.0.attn_q.weight")?.type, .q8_0)
        XCTAssertEqual(g.file.tensorInfo("blk.0.attn_norm.weight")?.type, .f32)
        XCTAssertEqual(try g.file.string("tokenizer.ggml.model"), "llama")
        // The merged GGUF can itself be a base (it is dequantized first).
        r = try lora(["merge", "--base-model", gguf.path, "--lora-weights", Self.adapter("tiny-gqa", "a") + ":-1",
                      "--output", dir.appendingPathComponent("back").path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssert(r.stderr.contains("tokenizer.model, tokenizer_config.json, special_tokens_map.json"), r.stderr)

        let ad = dir.appendingPathComponent("a.gguf")
        r = try lora(["merge", "--adapter-only", "--format", "gguf", "--base-model", Self.model("tiny-gqa"),
                      "--lora-weights", Self.adapter("tiny-gqa", "a"), "--output", ad.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let a = try GGUFFile(path: ad.path)
        XCTAssertEqual(try a.string("general.type"), "adapter")
        XCTAssertEqual(a.tensorInfo("blk.2.attn_v.weight.lora_b")?.dims, [8, 32])
        XCTAssertEqual(try hidden(dir), [])
    }

    func testOutputSafety() throws {
        let dir = try tempDir()
        let out = dir.appendingPathComponent("out")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let marker = out.appendingPathComponent("keep.txt")
        try "old".write(to: marker, atomically: true, encoding: .utf8)
        let args = ["merge", "--base-model", Self.model("tiny-mha"), "--lora-weights", Self.adapter("tiny-mha", "a"), "--output", out.path]
        // An existing non-empty output is refused and left alone.
        var r = try lora(args)
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("--force") && r.stderr.contains(out.path), r.stderr)
        XCTAssertEqual(try String(contentsOf: marker, encoding: .utf8), "old")
        // --force replaces it as a whole.
        r = try lora(args + ["--force"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker.path))
        XCTAssert(FileManager.default.fileExists(atPath: out.appendingPathComponent("model.safetensors").path))
        // An empty folder is fine without --force.
        let empty = dir.appendingPathComponent("empty")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        r = try lora(["merge", "--base-model", Self.model("tiny-mha"), "--lora-weights", Self.adapter("tiny-mha", "a"), "--output", empty.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        // GGUF: an existing file needs --force; a folder is refused.
        let file = dir.appendingPathComponent("m.gguf")
        try "old".write(to: file, atomically: true, encoding: .utf8)
        let g = ["merge", "--base-model", Self.model("tiny-mha"), "--lora-weights", Self.adapter("tiny-mha", "a"), "--format", "gguf"]
        r = try lora(g + ["--output", file.path])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(try String(contentsOf: file, encoding: .utf8), "old")
        r = try lora(g + ["--output", file.path, "--force"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertNoThrow(try GGUFFile(path: file.path))
        r = try lora(g + ["--output", out.path, "--force"])
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("is a directory"), r.stderr)
        // An adapter made for another model is refused before anything is written.
        let wrong = dir.appendingPathComponent("wrong")
        r = try lora(["merge", "--base-model", Self.model("tiny-mha"), "--lora-weights", Self.adapter("tiny-gqa", "a"), "--output", wrong.path])
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("v_proj.lora_B.weight") && r.stderr.contains("shape"), r.stderr)
        // `--device auto` (the default) says which device runs on a line of its own.
        XCTAssertEqual(r.stderr.split(separator: "\n").filter { !$0.hasPrefix("device: ") }.count, 1, r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: wrong.path))
        XCTAssertEqual(try hidden(dir), [])
    }

    /// A failure in the middle of writing (a base tensor stored in a type that cannot be
    /// dequantized, met after other tensors were written) leaves no output and no temporary file.
    func testFailureMidWriteLeavesNothing() throws {
        let dir = try tempDir()
        let good = dir.appendingPathComponent("base.gguf")
        var r = try lora(["merge", "--base-model", Self.model("tiny-mha"), "--lora-weights", Self.adapter("tiny-mha", "a") + ":0",
                          "--format", "gguf", "--dtype", "f32", "--output", good.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let src = try GGUFFile(path: good.path)
        var w = GGUFWriter()
        for k in src.keys { w.add(k, src.metadata[k]!) }
        for t in src.tensors {
            let bad = t.name == "blk.1.ffn_up.weight"
            let type: GGMLType = bad ? .iq4_NL : t.type
            let raw = src.raw(t)
            w.tensors.append(.init(name: t.name, dims: t.dims, type: type) { dst in
                if !bad { dst.copyMemory(from: raw) }
            })
        }
        let hostile = dir.appendingPathComponent("hostile.gguf")
        try w.write(to: hostile)
        let outs = dir.appendingPathComponent("outs")
        try FileManager.default.createDirectory(at: outs, withIntermediateDirectories: true)
        for format in ["hf", "gguf"] {
            let out = outs.appendingPathComponent("out-\(format)")
            r = try lora(["merge", "--base-model", hostile.path, "--lora-weights", Self.adapter("tiny-mha", "a"),
                          "--format", format, "--max-shard-size", "50KB", "--output", out.path])
            XCTAssertEqual(r.status, 1, format)
            XCTAssert(r.stderr.contains("blk.1.ffn_up.weight") && r.stderr.contains("IQ4_NL"), r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), format)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: outs.path), [], format)
        }
    }

    func testUsageErrors() throws {
        let base = ["merge", "--base-model", Self.model("tiny-mha"), "--output", "/nonexistent/x"]
        let a = ["--lora-weights", Self.adapter("tiny-mha", "a")]
        for (args, needle) in [
            (base, "--lora-weights"),
            (base + a + ["--dtype", "q8_0"], "q8_0"),
            (base + a + ["--dtype", "f8"], "--dtype"),
            (base + a + ["--adapter-only"], "--format gguf"),
            (base + a + a + ["--adapter-only", "--format", "gguf"], "once"),
            (base + a + ["--max-shard-size", "big"], "--max-shard-size"),
            (base + ["--lora-weights", ""], "--lora-weights"),
        ] {
            let r = try lora(args)
            XCTAssertEqual(r.status, 64, "\(args): \(r.stderr)")
            XCTAssert(r.stderr.contains(needle), "\(args): \(r.stderr)")
        }
    }
}
