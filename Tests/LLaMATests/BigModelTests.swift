import Foundation
import XCTest
@testable import LLaMA
import Tensor

/// The random LLaMA-shaped checkpoints of scripts/make_big.py (7b, 1b or tiny; nothing is
/// committed, they are GB). Skipped unless LORA_BIG_DIR names a folder make_big.py completed
/// (OUT/SHAPE, with shape.json); scripts/big_ci.sh writes the tiny shape and runs this in CI.
final class BigModelTests: XCTestCase {
    /// Logits of the Q4_0 file kept as stored vs the same file dequantized to f32 at load: equal
    /// weights, only the kernels' summation order differs (the int8 tolerance, as GGUFKQuantTests).
    static let logitsTolerance = ForwardParityTests.int8HeadTolerance
    static let prompt = "Below is an instruction that describes a task."

    struct Big {
        let dir: URL
        let shape: String
        let parameters: Int
        let vocab: Int
        var q4: String { dir.appendingPathComponent("q4_0.gguf").path }
        var q8: String { dir.appendingPathComponent("q8_0.gguf").path }
        var bf16: String { dir.appendingPathComponent("bf16").path }
    }

    func big() throws -> Big {
        guard let d = ProcessInfo.processInfo.environment["LORA_BIG_DIR"], !d.isEmpty else {
            throw XCTSkip("LORA_BIG_DIR is not set: write a checkpoint with scripts/make_big.py --shape tiny|1b|7b and point LORA_BIG_DIR at OUT/SHAPE")
        }
        let dir = URL(fileURLWithPath: d)
        let meta = dir.appendingPathComponent("shape.json")
        guard FileManager.default.fileExists(atPath: meta.path) else {
            XCTFail("LORA_BIG_DIR=\(d): no shape.json (make_big.py writes it last, when the files are complete)")
            throw XCTSkip("incomplete LORA_BIG_DIR")
        }
        let j = try JSON.parse(contentsOf: meta)
        return Big(dir: dir, shape: j["shape"]?.string ?? "?", parameters: j["parameters"]?.int ?? 0, vocab: j["vocab"]?.int ?? 0)
    }

    /// Each file loads as the benchmarks use it (GGUFs stored, the bf16 folder as int8), its
    /// tokenizer fits, and prefill plus 4 greedy tokens give finite logits.
    func testEachFileLoadsAndGenerates() throws {
        let b = try big()
        for (path, q) in [(b.q4, Quantization.stored), (b.q8, .stored), (b.bf16, .int8)] {
            let t0 = Date()
            let loaded = try LoadedModel(path: path, quantization: q, pool: testPool)
            let m = loaded.model
            XCTAssertEqual(m.config.vocabSize, b.vocab, "\(path) vocab_size")
            let ids = loaded.tokenizer.encode(Self.prompt, addBOS: true)
            XCTAssertGreaterThan(ids.count, 3, "\(path): the prompt tokenizes")
            XCTAssert(ids.allSatisfy { $0 >= 0 && Int($0) < m.config.vocabSize }, "\(path): ids < vocab_size")
            let cache = KVCache(model: m, sequences: 1, capacity: ids.count + 4, maxChunk: ids.count)
            try m.step(tokens: ids, sequences: 1, cache: cache, adapters: .none, ctx: testCtx)
            var new: [Int32] = []
            for k in 0..<4 {
                let V = m.config.vocabSize, l = cache.logits.data
                var best = 0, finite = true, maxAbs: Float = 0
                for v in 0..<V {
                    finite = finite && l[v].isFinite
                    maxAbs = max(maxAbs, abs(l[v]))
                    if l[v] > l[best] { best = v }
                }
                XCTAssertTrue(finite, "\(path) [\(q.rawValue)]: logits of token \(k) are finite")
                XCTAssertGreaterThan(maxAbs, 0.1, "\(path): logits of token \(k) are not all ~0")
                new.append(Int32(best))
                if k < 3 { try m.step(tokens: [Int32(best)], sequences: 1, cache: cache, adapters: .none, ctx: testCtx) }
            }
            // The Generator's greedy path gives the same 4 ids.
            var o = GenerationOptions(); o.numBeams = 1; o.maxNewTokens = 4; o.minNewTokens = 4
            let got = try Generator(model: m, ctx: testCtx, eosIDs: loaded.eosIDs).generate(prompt: ids, options: o, onToken: { _ in })
            XCTAssertEqual(got, new, "\(path): Generator's greedy ids")
            print("BigModelTests[\(b.shape)]: \((path as NSString).lastPathComponent) as \(q.rawValue): weights \(m.weightBytes / 1_000_000) MB, new ids \(new), \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        }
    }

    /// The Q4_0 file kept quantized (GEMM, and GEMV while decoding) against the same file
    /// dequantized to f32. Needs the f32 model in memory (4 bytes per parameter): skipped where it
    /// does not fit in half the available memory (7B: 27 GB); the 1b shape is the largest run here.
    func testQ4_0MatchesDequantizedF32() throws {
        let b = try big()
        let f32Bytes = b.parameters * 4
        if let avail = AvailableMemory.read(), f32Bytes > avail / 2 {
            throw XCTSkip("the f32 copy of the \(b.shape) shape needs \(f32Bytes / 1_000_000) MB, over half of the \(avail / 1_000_000) MB available; run it on the 1b or tiny shape")
        }
        let stored = try LoadedModel(path: b.q4, quantization: .stored, pool: testPool)
        XCTAssertEqual(stored.model.blocks[0].q.weight.format.name, "q4_0", "projections kept as Q4_0")
        let ids = stored.tokenizer.encode(Self.prompt, addBOS: true)
        let batch = Batch(B: 1, T: ids.count, inputIDs: ids, attentionMask: .init(repeating: 1, count: ids.count), labels: ids)
        func logits(_ m: LlamaModel) -> Tensor {
            m.logits(batch, adapters: .none, acts: Activations(model: m, maxB: 1, maxT: ids.count), ctx: testCtx)
        }
        let ls = logits(stored.model)
        let V = stored.model.config.vocabSize
        let cache = KVCache(model: stored.model, sequences: 1, capacity: ids.count, maxChunk: 1)
        for t in ids { try stored.model.step(tokens: [t], sequences: 1, cache: cache, adapters: .none, ctx: testCtx) }
        let decoded = Array(UnsafeBufferPointer(start: cache.logits.data, count: V))
        let dense = try LoadedModel(path: b.q4, quantization: .none, pool: testPool).model
        let ld = logits(dense)
        var maxDiff: Float = 0, maxAbs: Float = 0
        for i in 0..<ld.count { maxDiff = max(maxDiff, abs(ls.data[i] - ld.data[i])); maxAbs = max(maxAbs, abs(ld.data[i])) }
        print("BigModelTests[\(b.shape)]: \(ids.count) tokens, logits max |stored Q4_0 - f32| = \(maxDiff) (max |logit| \(maxAbs))")
        XCTAssertGreaterThan(maxAbs, 0.5, "logits are not trivially small")
        assertClose(ls.data, ld.data, count: ld.count, abs: Self.logitsTolerance, "\(b.shape) Q4_0 stored logits vs f32")
        decoded.withUnsafeBufferPointer { d in
            assertClose(d.baseAddress!, ld.data + (ids.count - 1) * V, count: V, abs: Self.logitsTolerance,
                        "\(b.shape) token-by-token decoding (GEMV, Q8_0 head) vs the f32 forward")
        }
    }
}
