import Foundation
import XCTest
import TestHelpers
@testable import LLaMA
import Tensor

/// The GGUF LoRA reader against files written by llama.cpp's gguf-py
/// (scripts/make_gguf_lora_reference.py, from the committed PEFT merge adapters), against our own
/// writer, and against damaged or mismatched files.
final class GGUFLoRATests: XCTestCase {
    static func peft(_ model: String, _ k: String) -> URL {
        Fixtures.root.appendingPathComponent("merge/\(model)-\(k).adapter")
    }
    static func gguf(_ name: String) -> URL { Fixtures.root.appendingPathComponent("gguf/\(name)") }
    static func config(_ model: String) throws -> LlamaConfig {
        try LlamaConfig(contentsOf: Fixtures.model(model).appendingPathComponent("config.json"))
    }

    /// `name` in a new temporary folder (TestHelpers' tempDir, removed when the test ends).
    func tempFile(_ name: String) throws -> URL { try tempDir().appendingPathComponent(name) }

    /// Same targets, layers, rank and factors; the scale to `scaleRel` (alpha is stored as f32
    /// scale * r); A and B within `rel` (0: bit-equal).
    func assertSame(_ g: AdapterFactors, _ p: AdapterFactors, rel: Float, _ what: String) {
        XCTAssertEqual(g.config.r, p.config.r, what)
        XCTAssertEqual(g.config.targetModules, p.config.targetModules, what)
        XCTAssertEqual(g.config.layersToTransform, p.config.layersToTransform, what)
        XCTAssertFalse(g.config.useDora)
        XCTAssertEqual(g.scale, p.scale, accuracy: 2e-7 * p.scale, "\(what): scale")
        XCTAssertEqual(Set(g.factors.keys), Set(p.factors.keys), what)
        for (name, f) in p.factors {
            guard let h = g.factors[name] else { continue }
            XCTAssertEqual(h.A.shape, f.A.shape, "\(what) \(name) A")
            XCTAssertEqual(h.B.shape, f.B.shape, "\(what) \(name) B")
            if rel == 0 {
                XCTAssertEqual(h.A.array, f.A.array, "\(what) \(name) A")
                XCTAssertEqual(h.B.array, f.B.array, "\(what) \(name) B (q/k rows back in Hugging Face order)")
            } else {
                assertClose(h.A.data, f.A.data, count: f.A.count, abs: 1e-7, rel: rel, "\(what) \(name) A")
                assertClose(h.B.data, f.B.data, count: f.B.count, abs: 1e-7, rel: rel, "\(what) \(name) B")
            }
        }
    }

    /// Files gguf-py wrote (q and k lora_b permuted as convert_hf_to_gguf.py does) read back to
    /// the PEFT factors exactly (f32), or within f16's rounding (half an ulp, 2^-11 relative).
    func testGGUFPyFilesEqualPEFTFolders() throws {
        for (model, k, file, rel) in [("tiny-mha", "a", "tiny-mha-a.lora.gguf", Float(0)), ("tiny-gqa", "b", "tiny-gqa-b.lora.gguf", 0),
                                      ("tiny-mha", "a", "tiny-mha-a.lora-f16.gguf", 1.0 / 2048)] {
            let c = try Self.config(model)
            XCTAssert(GGUFLoRA.isGGUF(Self.gguf(file)))
            XCTAssertFalse(GGUFLoRA.isGGUF(Self.peft(model, k)))
            let g = try AdapterFactors.load(Self.gguf(file), model: c)
            assertSame(g, try AdapterFactors.load(Self.peft(model, k), model: c), rel: rel, file)
            // The adapter built from it holds the same numbers as the one from the folder.
            let la = LoRAAdapter(factors: g, model: c), lp = try Adapter.load(Self.peft(model, k), model: c)
            XCTAssertEqual(la.sites, lp.sites)
            for s in lp.sites { XCTAssertEqual(la.layers[s]!.scale, lp.layers[s]!.scale, accuracy: 2e-7 * lp.layers[s]!.scale) }
        }
    }

    /// `lora merge --format gguf --adapter-only`'s file reads back to what it was written from,
    /// a user weight included (folded into alpha).
    func testOwnWriterRoundTrips() throws {
        for model in ["tiny-mha", "tiny-gqa"] {
            let c = try Self.config(model)
            for k in ["a", "b"] {
                let p = try AdapterFactors.load(Self.peft(model, k), weight: 0.5, model: c)
                let url = try tempFile("\(k).gguf")
                try GGUFExport.writeAdapter(p, model: c, name: k, to: url)
                let g = try GGUFLoRA.load(url, model: c)
                XCTAssertEqual(g.weight, 1)
                assertSame(g, p, rel: 0, "\(model) \(k) round trip")
            }
        }
    }

    /// Writes a GGUF LoRA with our writer: metadata, then (name, dims, values) tensors as f32.
    func write(_ url: URL, meta: [(String, GGUFValue)]? = nil, tensors: [(String, [Int], [Float])]) throws {
        var w = GGUFWriter()
        for (k, v) in meta ?? [("general.architecture", .string("llama")), ("general.type", .string("adapter")),
                               ("adapter.type", .string("lora")), ("adapter.lora.alpha", .float32(8))] { w.add(k, v) }
        for (n, dims, v) in tensors {
            w.tensors.append(.init(name: n, dims: dims, type: .f32) { dst in
                v.withUnsafeBytes { dst.copyMemory(from: $0) }
            })
        }
        try w.write(to: url)
    }

    func expectError(_ url: URL, _ c: LlamaConfig, _ parts: [String], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try AdapterFactors.load(url, model: c), what, file: file, line: line) { e in
            XCTAssert(e is CheckpointError, "\(what): \(type(of: e)) \(e)", file: file, line: line)
            let s = "\(e)"
            for p in parts { XCTAssert(s.contains(p), "\(what): '\(s)' should name '\(p)'", file: file, line: line) }
        }
    }

    /// Every way a GGUF LoRA can be wrong gets a `CheckpointError` naming the file and the key or
    /// tensor, never a crash.
    func testBadFilesNameTheProblem() throws {
        let c = try Self.config("tiny-mha")   // 2 layers, hidden 64, 4 heads of 16
        let r = 2, zeros = { (n: Int) in [Float](repeating: 0.01, count: n) }
        let qa = ("blk.0.attn_q.weight.lora_a", [64, r], zeros(64 * r)), qb = ("blk.0.attn_q.weight.lora_b", [r, 64], zeros(64 * r))
        // The right shapes load (and an alpha of 8 at rank 2 is a scale of 4).
        let ok = try tempFile("ok.gguf")
        try write(ok, tensors: [qa, qb])
        XCTAssertEqual(try GGUFLoRA.load(ok, model: c).scale, 4)
        // No alpha: llama.cpp applies the pair at scale 1.
        let noAlpha = try tempFile("noalpha.gguf")
        try write(noAlpha, meta: [("general.architecture", .string("llama")), ("general.type", .string("adapter")), ("adapter.type", .string("lora"))],
                  tensors: [qa, qb])
        XCTAssertEqual(try GGUFLoRA.load(noAlpha, model: c).scale, 1)

        // Another model's adapter: tiny-gqa has 3 layers.
        expectError(Self.gguf("tiny-gqa-b.lora.gguf"), c, ["tiny-gqa-b.lora.gguf", "blk.2.", "not an attention or MLP projection"], "3-layer adapter on a 2-layer model")
        // A model file is not an adapter.
        expectError(Self.gguf("tiny-mha.gguf"), c, ["tiny-mha.gguf", "general.type", "absent", "\"adapter\""], "model file")
        // Truncated.
        let cut = try tempFile("cut.gguf")
        try Data(try Data(contentsOf: Self.gguf("tiny-mha-a.lora.gguf")).prefix(300)).write(to: cut)
        expectError(cut, c, ["cut.gguf", "corrupt or truncated"], "truncated")
        // Not GGUF at all, named .gguf.
        let text = try tempFile("text.gguf")
        try Data("hello, world".utf8).write(to: text)
        expectError(text, c, ["text.gguf", "magic"], "not GGUF")
        // Missing file.
        expectError(text.deletingLastPathComponent().appendingPathComponent("none.gguf"), c, ["none.gguf", "not found"], "missing")
        // Half a pair.
        let half = try tempFile("half.gguf")
        try write(half, tensors: [qa])
        expectError(half, c, ["half.gguf", "blk.0.attn_q.weight.lora_b"], "lora_b missing")
        // Wrong input width.
        let wide = try tempFile("wide.gguf")
        try write(wide, tensors: [("blk.0.attn_q.weight.lora_a", [65, r], zeros(65 * r)), qb])
        expectError(wide, c, ["wide.gguf", "blk.0.attn_q.weight.lora_a", "[2, 65]", "[2, 64]"], "in features")
        // Ranks of A and B disagree.
        let ranks = try tempFile("ranks.gguf")
        try write(ranks, tensors: [qa, ("blk.0.attn_q.weight.lora_b", [3, 64], zeros(64 * 3))])
        expectError(ranks, c, ["ranks.gguf", "blk.0.attn_q.weight.lora_b", "[64, 3]", "[64, 2]"], "rank")
        // Two pairs of different ranks.
        let mixed = try tempFile("mixed.gguf")
        try write(mixed, tensors: [qa, qb, ("blk.0.attn_v.weight.lora_a", [64, 4], zeros(256)), ("blk.0.attn_v.weight.lora_b", [4, 64], zeros(256))])
        expectError(mixed, c, ["mixed.gguf", "rank 4", "rank 2"], "one rank")
        // NaN.
        let nan = try tempFile("nan.gguf")
        var bad = zeros(64 * r); bad[5] = .nan
        try write(nan, tensors: [qa, ("blk.0.attn_q.weight.lora_b", [r, 64], bad)])
        expectError(nan, c, ["nan.gguf", "blk.0.attn_q.weight.lora_b", "non-finite"], "NaN")
        // Not a LoRA tensor; an unknown adapter type; another architecture.
        let norm = try tempFile("norm.gguf")
        try write(norm, tensors: [qa, qb, ("blk.0.attn_norm.weight", [64], zeros(64))])
        expectError(norm, c, ["norm.gguf", "blk.0.attn_norm.weight"], "norm tensor")
        let cv = try tempFile("cv.gguf")
        try write(cv, meta: [("general.architecture", .string("llama")), ("general.type", .string("adapter")), ("adapter.type", .string("control_vector"))],
                  tensors: [qa, qb])
        expectError(cv, c, ["cv.gguf", "adapter.type", "control_vector"], "adapter type")
        let arch = try tempFile("arch.gguf")
        try write(arch, meta: [("general.architecture", .string("qwen2")), ("general.type", .string("adapter")), ("adapter.type", .string("lora"))],
                  tensors: [qa, qb])
        expectError(arch, c, ["arch.gguf", "general.architecture", "qwen2"], "architecture")
        let empty = try tempFile("empty.gguf")
        try write(empty, tensors: [])
        expectError(empty, c, ["empty.gguf", "no LoRA tensors"], "empty")
    }
}
