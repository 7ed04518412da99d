import CKernels
import Foundation
import XCTest
@testable import LLaMA
import Tensor

/// A LoRA layer's packed copies for decoding (`LoRALayer.decodingFactors`): they hold A and B
/// in the packed layouts, follow them after `parametersChanged()` (an optimizer step, a resume,
/// the best-adapter copy), and are repacked in place rather than carved again.
final class LoRADecodingFactorsTests: XCTestCase {
    func unpacked(_ p: PackedLoRAFactors) -> (A: [Float], B: [Float]) {
        let r = p.rank, K = p.inFeatures, N = p.outFeatures, rp = Int(lora_factors_rp(r))
        let value = { (base: UnsafeMutableRawPointer, i: Int) -> Float in
            p.half ? Float(Float16(bitPattern: base.assumingMemoryBound(to: UInt16.self)[i])) : base.assumingMemoryBound(to: Float.self)[i]
        }
        var A = [Float](repeating: 0, count: r * K), B = [Float](repeating: 0, count: N * r)
        for k in 0..<K { for j in 0..<r { A[j * K + k] = value(p.at, k * rp + j) } }
        for n in 0..<N { for j in 0..<r { B[n * r + j] = value(p.bp, (n / 16) * r * 16 + j * 16 + n % 16) } }
        return (A, B)
    }

    func testPackedCopiesFollowTheFactors() {
        var rng = RNG(seed: 3)
        let config = AdapterConfig(r: 5, loraAlpha: 10, loraDropout: 0, targetModules: [.q, .v, .down],
                                   useRslora: false, baseModelNameOrPath: nil)
        let model = LlamaConfig.tinyForPlan
        let adapter = LoRAAdapter(new: config, model: model, rng: &rng)
        for s in adapter.sites { let l = adapter.layers[s]!; for i in 0..<l.B.count { l.B.data[i] = 0.01 * rng.normal() } }   // site order: the same values every run
        adapter.parametersChanged()
        for s in adapter.sites {
            let l = adapter.layers[s]!
            let p = l.decodingFactors()
            let (A, B) = unpacked(p)
            XCTAssertEqual(A, l.A.array, "\(s.path): A")
            XCTAssertEqual(B, l.B.array, "\(s.path): B")
            // Padding lanes of AT (rank 5 -> 8) are zero: the kernels read them.
            let rp = Int(lora_factors_rp(l.r))
            let at = p.at.assumingMemoryBound(to: Float.self)
            XCTAssertTrue((0..<l.inFeatures).allSatisfy { k in (l.r..<rp).allSatisfy { at[k * rp + $0] == 0 } }, "\(s.path): padding")
            // Half copies: the values rounded as Float16 rounds them.
            let h = l.decodingFactors(half: true)
            XCTAssertTrue(h.half && !p.half)
            let (hA, hB) = unpacked(h)
            XCTAssertEqual(hA, l.A.array.map { Float(Float16($0)) }, "\(s.path): half A")
            XCTAssertEqual(hB, l.B.array.map { Float(Float16($0)) }, "\(s.path): half B")
        }
        // An update (as AdamW's), announced: the next use repacks, into the same memory.
        let l = adapter.layers[adapter.sites[0]]!
        let before = l.decodingFactors()
        l.A.data[3] += 0.25
        l.B.data[7] -= 0.5
        adapter.parametersChanged()
        let after = l.decodingFactors()
        XCTAssertTrue(before === after, "repacked in place")
        let (A, B) = unpacked(after)
        XCTAssertEqual(A, l.A.array, "A after the update")
        XCTAssertEqual(B, l.B.array, "B after the update")
        let halfAfter = l.decodingFactors(half: true)
        XCTAssertEqual(unpacked(halfAfter).B, l.B.array.map { Float(Float16($0)) }, "half B after the update")
        // A value past half's range: half requests get the f32 copies, until the next update.
        l.B.data[0] = 1e6
        adapter.parametersChanged()
        XCTAssertTrue(l.decodingFactors(half: true) === after, "f32 copies when a value does not fit a half")
        XCTAssertEqual(unpacked(after).B, l.B.array)
        l.B.data[0] = 0.5
        adapter.parametersChanged()
        XCTAssertTrue(l.decodingFactors(half: true) === halfAfter, "half again after an update that fits")
    }

    /// `layer(at:)` (decoding's lookup without hashing) finds exactly `layers[site]`, for
    /// every layer and projection of the model and past it, with a subset of layers and targets.
    func testSiteTableFindsEveryLayer() {
        var rng = RNG(seed: 4)
        let model = LlamaConfig.tinyForPlan
        let config = AdapterConfig(r: 4, loraAlpha: 8, loraDropout: 0, targetModules: [.k, .o, .up],
                                   useRslora: false, baseModelNameOrPath: nil, layersToTransform: [0, model.numHiddenLayers - 1])
        let adapter = LoRAAdapter(new: config, model: model, rng: &rng)
        XCTAssertEqual(adapter.layers.count, 6)
        for l in -1...(model.numHiddenLayers + 1) {
            for p in Projection.allCases {
                let site = LoRASite(l, p)
                XCTAssertTrue(adapter.layer(at: site) === adapter.layers[site], "\(l) \(p)")
            }
        }
        XCTAssertEqual(Projection.allCases.map(\.ordinal), Array(0..<Projection.allCases.count))
    }

    /// A serve step's LoRA terms (`SlotCache.terms`) are kept while the plan and the adapters'
    /// parameters stay the same, and rebuilt when either changes: a step after an announced
    /// update gives the bits of a step whose terms were built afresh, and those differ from the
    /// old factors' (so a stale table would show).
    func testStepTermsFollowThePlanAndTheParameters() throws {
        let m = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-gqa")), quantization: .q8_0, pool: testPool)
        let V = m.config.vocabSize
        let dir = Fixtures.root.appendingPathComponent("merge/tiny-gqa-a.adapter")
        let a = try Adapter.load(dir, model: m.config), b = try Adapter.load(dir, model: m.config)
        let set = AdapterSet(a), mix = AdapterSet([(a, 0.5), (b, 0.5)])
        let prompt: [Int32] = (0..<9).map { Int32(5 + $0 * 31) }
        let caches = (0..<3).map { _ in SlotCache(model: m, slots: 2, capacity: 32, maxRows: 32) }
        for c in caches {
            try m.step(items: [SlotItem(slot: 0, tokens: prompt, adapters: set, adapterKey: "a"),
                               SlotItem(slot: 1, tokens: prompt, adapters: mix, adapterKey: "mix")], cache: c, ctx: testCtx)
        }
        func decode(_ c: SlotCache, _ t: Int32) throws -> [Float] {
            try m.step(items: [SlotItem(slot: 0, tokens: [t], adapters: set, adapterKey: "a"),
                               SlotItem(slot: 1, tokens: [t + 1], adapters: mix, adapterKey: "mix")], cache: c, ctx: testCtx)
            return Array(UnsafeBufferPointer(start: c.logits.data, count: 2 * V))
        }
        for c in caches { _ = try decode(c, 40) }
        let kept = caches[0].lastTerms
        XCTAssertNotNil(kept)
        for c in caches { _ = try decode(c, 41) }
        XCTAssertTrue(caches[0].lastTerms === kept, "the same plan keeps its terms")
        let old = try decode(caches[2], 42)   // the old factors' answer at the next position
        // An update of a, announced: the next step's terms are built again.
        for l in a.layers.values { for i in 0..<l.B.count { l.B.data[i] *= 3 } }
        a.parametersChanged()
        let after = try decode(caches[0], 42)
        XCTAssertFalse(caches[0].lastTerms === kept, "new parameters, new terms")
        caches[1].lastTerms = nil
        let fresh = try decode(caches[1], 42)
        XCTAssertEqual(zip(after, fresh).filter { $0.bitPattern != $1.bitPattern }.count, 0, "kept terms after an update vs terms built afresh: values that differ")
        XCTAssertTrue(after != old, "the update shows in the logits")
        // Another plan (slot 1 alone) builds its own terms.
        let t1 = caches[0].lastTerms
        try m.step(items: [SlotItem(slot: 1, tokens: [7], adapters: mix, adapterKey: "mix")], cache: caches[0], ctx: testCtx)
        XCTAssertFalse(caches[0].lastTerms === t1, "another plan, other terms")
        XCTAssertEqual(caches[0].lastTerms?.key.count, 2, "the mix's two adapters")
    }

    /// Decoding reads half copies exactly where the base's products are quantized, and their
    /// rounding moves the logits far less than the quantization does. tiny-gqa and its adapter:
    /// the f32 base's logits with the adapter's factors rounded to half (which the f32 base's f32
    /// copies then hold exactly) against the factors as they are, beside a q8_0 base's logits
    /// (half copies) against the f32 base's. A q8_0 step with the rounded factors gives its
    /// step's bits: rounding is idempotent, so the half copies are the same.
    func testHalfCopiesOnlyOverAQuantizedBaseAndTheirRoundingIsSmall() throws {
        let ck = try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-gqa"))
        let f32 = try LlamaModel(checkpoint: ck, quantization: .none, pool: testPool)
        let bf16 = try LlamaModel(checkpoint: ck, quantization: .bf16, pool: testPool)
        let q8 = try LlamaModel(checkpoint: ck, quantization: .q8_0, pool: testPool)
        for l in 0..<f32.config.numHiddenLayers {
            for p in Projection.allCases {
                XCTAssertFalse(f32.halfLoRAFactors(at: LoRASite(l, p)), "f32 \(l) \(p)")
                XCTAssertFalse(bf16.halfLoRAFactors(at: LoRASite(l, p)), "bf16 \(l) \(p)")
                XCTAssertTrue(q8.halfLoRAFactors(at: LoRASite(l, p)), "q8_0 \(l) \(p)")
            }
        }
        let dir = Fixtures.root.appendingPathComponent("merge/tiny-gqa-a.adapter")
        let a = try Adapter.load(dir, model: f32.config), rounded = try Adapter.load(dir, model: f32.config)
        for l in rounded.layers.values {
            for t in [l.A, l.B] { for i in 0..<t.count { t.data[i] = Float(Float16(t.data[i])) } }
            l.parametersChanged()
        }
        let prompt: [Int32] = (0..<12).map { Int32(3 + $0 * 17) }
        func logits(_ m: LlamaModel, _ adapter: LoRAAdapter) throws -> [Float] {
            let cache = SlotCache(model: m, slots: 1, capacity: 32, maxRows: 32)
            var out: [Float] = []
            try m.step(items: [SlotItem(slot: 0, tokens: prompt, adapters: AdapterSet(adapter), adapterKey: "a")], cache: cache, ctx: testCtx)
            out += UnsafeBufferPointer(start: cache.logits.data, count: m.config.vocabSize)
            for t: Int32 in [9, 99, 200] {
                try m.step(items: [SlotItem(slot: 0, tokens: [t], adapters: AdapterSet(adapter), adapterKey: "a")], cache: cache, ctx: testCtx)
                out += UnsafeBufferPointer(start: cache.logits.data, count: m.config.vocabSize)
            }
            return out
        }
        let maxDiff = { (x: [Float], y: [Float]) -> Float in zip(x, y).map { abs($0 - $1) }.max()! }
        let exact = try logits(f32, a), halfRounded = try logits(f32, rounded)
        let quantized = try logits(q8, a)
        let byHalf = maxDiff(exact, halfRounded), byQ8 = maxDiff(exact, quantized)
        print("tiny-gqa logits, max |difference| from the f32 base with f32 factors: factors rounded to half \(byHalf), q8_0 base with half copies \(byQ8)")
        XCTAssertGreaterThan(byHalf, 0, "the fixture's factors are not all halves already")
        XCTAssertLessThan(byHalf, byQ8 / 20, "half rounding well below q8_0's own error (measured: 0.0041 against 0.33)")
        XCTAssertEqual(zip(quantized, try logits(q8, rounded)).filter { $0.bitPattern != $1.bitPattern }.count, 0,
                       "q8_0 with pre-rounded factors: the same half copies, the same bits")
    }
}
