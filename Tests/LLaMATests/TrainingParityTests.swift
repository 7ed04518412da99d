import XCTest
@testable import LLaMA
import Tensor

/// Loss, every LoRA gradient and 10 AdamW steps against PEFT + torch (scripts/make_reference.py).
final class TrainingParityTests: XCTestCase {
    /// Named tolerances from the training issue.
    static let lossRelTolerance = 1e-5
    static let gradRelTolerance: Float = 1e-3
    static let gradAbsFloor: Float = 1e-6
    static let stepLossTolerance = 1e-4

    struct Case {
        let model: LlamaModel
        let batches: [Batch]
        let numItems: Int
        let ref: JSON
        let tensors: SafeTensorsFile
        let adapterConfig: AdapterConfig
        let adapter: LoRAAdapter
    }

    func load(_ name: String) throws -> Case {
        let ref = try Fixtures.json("train-\(name).json")
        let settings = ref["settings"]!
        let int8 = !(settings["int8"]?.isNull ?? true)
        let ck = try SafeTensorsCheckpoint(folder: Fixtures.model(ref["model"]!.string!))
        let model = try LlamaModel(checkpoint: ck, quantization: Quantization(load8bit: int8), pool: testPool)
        let adapter = try Adapter.load(Fixtures.reference("train-\(name).adapter"), model: model.config)
        let cfg = adapter.config
        XCTAssertEqual(Double(cfg.scale), settings["scaling"]!.double!, accuracy: 1e-6)
        adapter.enableGradients()
        let batches: [Batch] = ref["micro_batches"]!.array!.map { mb in
            let ids = mb["input_ids"]!.array!.map { $0.ints32 }
            let mask = mb["attention_mask"]!.array!.map { $0.ints32 }
            let labels = mb["labels"]!.array!.map { $0.ints32 }
            return Batch(B: ids.count, T: ids[0].count, inputIDs: ids.flatMap { $0 },
                         attentionMask: mask.flatMap { $0 }.map(Float.init), labels: labels.flatMap { $0 })
        }
        return Case(model: model, batches: batches, numItems: ref["num_items"]!.int!, ref: ref,
                    tensors: try Fixtures.tensors("train-\(name).safetensors"), adapterConfig: cfg, adapter: adapter)
    }

    /// Runs the accumulated batch; returns the loss (sum / num_items) with gradients in place.
    func accumulate(_ c: Case, acts: Activations) -> Double {
        c.adapter.zeroGradients()
        var rng = RNG(seed: 0)
        var sum = 0.0, tokens = 0
        for b in c.batches {
            let r = c.model.forwardBackward(b, adapters: AdapterSet(c.adapter), acts: acts, ctx: testCtx, rng: &rng,
                                            gradScale: 1 / Float(c.numItems))
            sum += r.lossSum; tokens += r.tokens
        }
        XCTAssertEqual(tokens, c.numItems, "trained-token count")
        return sum / Double(c.numItems)
    }

    func checkLossAndGradients(_ name: String) throws {
        let c = try load(name)
        let acts = Activations(model: c.model, trained: c.adapter, maxB: c.batches.map(\.B).max()!, maxT: c.batches.map(\.T).max()!)
        let loss = accumulate(c, acts: acts)
        let loss0 = c.ref["loss0"]!.double!
        XCTAssertEqual(loss, loss0, accuracy: loss0 * Self.lossRelTolerance, "\(name) loss")
        var checked = 0
        for t in c.adapter.trainable {
            do {
                let key = t.name, g = t.grad!
                let ref = try XCTUnwrap(try c.tensors.f32("grad.\(key)"), key)
                XCTAssertEqual(ref.shape, g.shape)
                assertClose(g.data, ref.data, count: g.count, abs: Self.gradAbsFloor, rel: Self.gradRelTolerance, "\(name) grad \(key)")
                checked += 1
            }
        }
        XCTAssertEqual(checked, c.ref["lora_param_keys"]!.array!.count, "every LoRA parameter checked")
    }

    func checkTenSteps(_ name: String) throws {
        let c = try load(name)
        let s = c.ref["settings"]!
        let acts = Activations(model: c.model, trained: c.adapter, maxB: c.batches.map(\.B).max()!, maxT: c.batches.map(\.T).max()!)
        let opt = AdamW(params: c.adapter.trainable.map(\.param), grads: c.adapter.trainable.map { $0.grad! })
        let sched = LinearSchedule(baseLR: s["optimizer"]!["lr"]!.double!, warmup: s["scheduler"]!["num_warmup_steps"]!.int!,
                                   total: s["scheduler"]!["num_training_steps"]!.int!)
        let losses = c.ref["losses"]!.array!.map { $0.double! }
        let norms = c.ref["grad_norms"]!.array!.map { $0.double! }
        let lrs = c.ref["lrs"]!.array!.map { $0.double! }
        for step in 0..<losses.count {
            let loss = accumulate(c, acts: acts)
            XCTAssertEqual(loss, losses[step], accuracy: Self.stepLossTolerance, "\(name) loss at step \(step)")
            let norm = opt.clipGradients(maxNorm: s["max_grad_norm"]!.double!)
            XCTAssertEqual(norm, norms[step], accuracy: norms[step] * 1e-3, "\(name) grad norm at step \(step)")
            XCTAssertEqual(sched.lr(at: step), lrs[step], accuracy: 1e-12, "\(name) lr at step \(step)")
            opt.update(lr: sched.lr(at: step))
        }
        for t in c.adapter.trainable {
            do {
                let key = t.name, p = t.param
                let ref = try XCTUnwrap(try c.tensors.f32("final.\(key)"), key)
                assertClose(p.data, ref.data, count: p.count, abs: 1e-4, rel: 1e-3, "\(name) final \(key)")
            }
        }
    }

    func testMHAQVGradients() throws { try checkLossAndGradients("mha-qv") }
    func testMHAAllGradients() throws { try checkLossAndGradients("mha-all") }
    func testGQAQVGradients() throws { try checkLossAndGradients("gqa-qv") }
    func testGQAAllInt8Gradients() throws { try checkLossAndGradients("gqa-all-int8") }
    func testMHAQVTenSteps() throws { try checkTenSteps("mha-qv") }
    func testMHAAllTenSteps() throws { try checkTenSteps("mha-all") }
    func testGQAQVTenSteps() throws { try checkTenSteps("gqa-qv") }
    func testGQAAllInt8TenSteps() throws { try checkTenSteps("gqa-all-int8") }
}
