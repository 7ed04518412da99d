import XCTest
@testable import LLaMA
import Tensor

/// Gradient checkpointing recomputes each block in backward from its kept input, with the
/// generator state the block started from: every op runs again on the same bits with the same
/// thread split, so loss and gradients must be bit-for-bit those without checkpointing.
extension TrainingParityTests {
    func checkpointingMatches(_ name: String, dropout: Double, dora: Bool = false) throws {
        let c = try load(name)
        var cfg = c.adapterConfig
        cfg.loraDropout = dropout
        cfg.targetModules = Projection.allCases
        cfg.useDora = dora
        var rng = RNG(seed: 5)
        let adapter = LoRAAdapter(new: cfg, model: c.model, rng: &rng)
        // B starts at zero; give every factor values so every gradient is non-trivial. DoRA's
        // magnitudes (initialised to the weight rows' norms) move by a few percent, so c = m / n != 1.
        for t in adapter.trainable {
            let magnitude = t.name.hasSuffix("lora_magnitude_vector")
            for i in 0..<t.param.count { t.param[i] = magnitude ? t.param[i] * (1 + 0.05 * rng.normal()) : 0.05 * rng.normal() }
        }
        adapter.parametersChanged()
        XCTAssertEqual(adapter.isDoRA, dora)
        adapter.enableGradients()
        let maxB = c.batches.map(\.B).max()!, maxT = c.batches.map(\.T).max()!
        func run(checkpointing: Bool) -> (Double, [[Float]]) {
            adapter.zeroGradients()
            let acts = Activations(model: c.model, trained: adapter, maxB: maxB, maxT: maxT, checkpointing: checkpointing)
            var rng = RNG(seed: 11)
            var sum = 0.0
            for b in c.batches {
                sum += c.model.forwardBackward(b, adapters: AdapterSet(adapter), acts: acts, ctx: testCtx, rng: &rng,
                                               gradScale: 1 / Float(c.numItems)).lossSum
            }
            return (sum, adapter.trainable.map { $0.grad!.array })
        }
        let (loss0, grads0) = run(checkpointing: false)
        let (loss1, grads1) = run(checkpointing: true)
        XCTAssertEqual(loss1, loss0, "\(name) loss with checkpointing")
        XCTAssertEqual(grads1.count, grads0.count)
        for (i, (g1, g0)) in zip(grads1, grads0).enumerated() {
            XCTAssertEqual(g1, g0, "\(name) gradient \(adapter.trainable[i].name) with checkpointing")
        }
        XCTAssert(grads0.allSatisfy { $0.contains { $0 != 0 } }, "every gradient is non-zero")
    }

    func testCheckpointingGivesTheSameGradientsGQA() throws { try checkpointingMatches("gqa-qv", dropout: 0.1) }
    func testCheckpointingGivesTheSameGradientsGQAAllInt8() throws { try checkpointingMatches("gqa-all-int8", dropout: 0) }
    /// DoRA's norm n = ||W + s B A|| is computed once per optimizer step (refreshNorm), not per
    /// forward, so the recomputed block divides by the same n: exact equality here too, with
    /// dropout (PEFT's W z term) and on an int8 base.
    func testCheckpointingGivesTheSameGradientsDoRA() throws { try checkpointingMatches("gqa-qv", dropout: 0.1, dora: true) }
    func testCheckpointingGivesTheSameGradientsDoRAInt8() throws { try checkpointingMatches("gqa-all-int8", dropout: 0, dora: true) }

    /// Checkpointing keeps one set of per-layer buffers: at these sizes the activations shrink.
    func testCheckpointingKeepsLessActivationMemory() throws {
        let c = try load("gqa-qv")
        let full = Activations(model: c.model, trained: c.adapter, maxB: 4, maxT: 64)
        let ckpt = Activations(model: c.model, trained: c.adapter, maxB: 4, maxT: 64, checkpointing: true)
        XCTAssertLessThan(ckpt.byteCount, full.byteCount)
    }
}
