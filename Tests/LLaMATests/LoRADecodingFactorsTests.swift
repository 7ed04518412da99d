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
        var A = [Float](repeating: 0, count: r * K), B = [Float](repeating: 0, count: N * r)
        for k in 0..<K { for j in 0..<r { A[j * K + k] = p.at[k * rp + j] } }
        for n in 0..<N { for j in 0..<r { B[n * r + j] = p.bp[(n / 16) * r * 16 + j * 16 + n % 16] } }
        return (A, B)
    }

    func testPackedCopiesFollowTheFactors() {
        var rng = RNG(seed: 3)
        let config = AdapterConfig(r: 5, loraAlpha: 10, loraDropout: 0, targetModules: [.q, .v, .down],
                                   useRslora: false, baseModelNameOrPath: nil)
        let model = LlamaConfig.tinyForPlan
        let adapter = LoRAAdapter(new: config, model: model, rng: &rng)
        for l in adapter.layers.values { for i in 0..<l.B.count { l.B.data[i] = 0.01 * rng.normal() } }
        adapter.parametersChanged()
        for s in adapter.sites {
            let l = adapter.layers[s]!
            let p = l.decodingFactors()
            let (A, B) = unpacked(p)
            XCTAssertEqual(A, l.A.array, "\(s.path): A")
            XCTAssertEqual(B, l.B.array, "\(s.path): B")
            // Padding lanes of AT (rank 5 -> 8) are zero: the kernels read them.
            let rp = Int(lora_factors_rp(l.r))
            XCTAssertTrue((0..<l.inFeatures).allSatisfy { k in (l.r..<rp).allSatisfy { p.at[k * rp + $0] == 0 } }, "\(s.path): padding")
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
}
