import Foundation
import XCTest
@testable import LLaMA
import Tensor

/// DoRA (PEFT `use_dora=True`) against scripts/make_reference.py's `reference/dora/` fixtures:
/// loss, every lora_A / lora_B / magnitude gradient and 10 AdamW steps (weight decay 0.1) on an
/// f32 and an int8 base, eval logits through the training forward and the KV-cache decoder,
/// PEFT's merge_and_unload, the file format both ways; and a finite-difference check of the
/// backward with the weight norm held fixed.
final class DoRATests: XCTestCase {
    /// As TrainingParityTests (the same data, steps and schedule).
    static let lossRelTolerance = TrainingParityTests.lossRelTolerance
    static let gradRelTolerance = TrainingParityTests.gradRelTolerance
    static let gradAbsFloor = TrainingParityTests.gradAbsFloor
    static let stepLossTolerance = TrainingParityTests.stepLossTolerance
    /// Final parameters after 10 steps, as TrainingParityTests.
    static let finalAbs: Float = 1e-4, finalRel: Float = 1e-3
    /// Logits, absolute (as ForwardParityTests and MergeTests).
    static let logitsTolerance: Float = 1e-4
    /// Merged weights relative to the tensor's largest value (as MergeTests.weightRel).
    static let weightRel: Float = 1e-6

    static func fixture(_ name: String) -> URL { Fixtures.reference("dora").appendingPathComponent(name) }

    struct Case {
        let model: LlamaModel
        let batches: [Batch]
        let numItems: Int
        let ref: JSON
        let tensors: SafeTensorsFile
        let adapter: LoRAAdapter
    }

    func load(_ name: String) throws -> Case {
        let ref = try JSON.parse(contentsOf: Self.fixture("\(name).json"))
        let int8 = !(ref["settings"]!["int8"]?.isNull ?? true)
        let ck = try SafeTensorsCheckpoint(folder: Fixtures.model(ref["model"]!.string!))
        let model = try LlamaModel(checkpoint: ck, quantization: int8 ? .int8 : .none, pool: testPool)
        let adapter = try Adapter.load(Self.fixture("\(name).adapter"), model: model.config)
        XCTAssertTrue(adapter.isDoRA)
        adapter.enableGradients()
        let batches: [Batch] = ref["micro_batches"]!.array!.map { mb in
            let ids = mb["input_ids"]!.array!.map { $0.ints32 }
            let mask = mb["attention_mask"]!.array!.map { $0.ints32 }
            let labels = mb["labels"]!.array!.map { $0.ints32 }
            return Batch(B: ids.count, T: ids[0].count, inputIDs: ids.flatMap { $0 },
                         attentionMask: mask.flatMap { $0 }.map(Float.init), labels: labels.flatMap { $0 })
        }
        return Case(model: model, batches: batches, numItems: ref["num_items"]!.int!, ref: ref,
                    tensors: try SafeTensorsFile(path: Self.fixture("\(name).safetensors").path), adapter: adapter)
    }

    func activations(_ c: Case) -> Activations {
        Activations(model: c.model, trained: c.adapter, maxB: c.batches.map(\.B).max()!, maxT: c.batches.map(\.T).max()!)
    }

    /// The accumulated batch: loss (sum / num_items) with the gradients in place.
    func accumulate(_ c: Case, acts: Activations, seed: UInt64 = 0) -> Double {
        c.adapter.zeroGradients()
        var rng = RNG(seed: seed)
        var sum = 0.0
        for b in c.batches {
            sum += c.model.forwardBackward(b, adapters: AdapterSet(c.adapter), acts: acts, ctx: testCtx, rng: &rng,
                                           gradScale: 1 / Float(c.numItems)).lossSum
        }
        return sum / Double(c.numItems)
    }

    // MARK: against PEFT

    func checkLossAndGradients(_ name: String) throws {
        let c = try load(name)
        let loss = accumulate(c, acts: activations(c))
        let loss0 = c.ref["loss0"]!.double!
        XCTAssertEqual(loss, loss0, accuracy: loss0 * Self.lossRelTolerance, "\(name) loss")
        var checked = 0, magnitudes = 0
        for t in c.adapter.trainable {
            let ref = try XCTUnwrap(try c.tensors.f32("grad.\(t.name)"), t.name)
            XCTAssertEqual(ref.shape, t.grad!.shape, t.name)
            assertClose(t.grad!.data, ref.data, count: ref.count, abs: Self.gradAbsFloor, rel: Self.gradRelTolerance, "\(name) grad \(t.name)")
            checked += 1
            if t.name.hasSuffix("lora_magnitude_vector") { magnitudes += 1 }
        }
        XCTAssertEqual(checked, c.ref["param_keys"]!.array!.count, "every A, B and magnitude checked")
        XCTAssertEqual(magnitudes * 3, checked, "one magnitude per A and B")
    }

    func checkTenSteps(_ name: String) throws {
        let c = try load(name)
        let s = c.ref["settings"]!, o = s["optimizer"]!
        // transformers' Trainer decays every trainable tensor here (no bias or norm among them):
        // one weight decay for all, as our AdamW applies it.
        XCTAssertEqual(o["no_decay_keys"]!.array!.count, 0, "the reference exempts tensors from weight decay")
        let acts = activations(c)
        let opt = AdamW(params: c.adapter.trainable.map(\.param), grads: c.adapter.trainable.map { $0.grad! })
        opt.weightDecay = o["weight_decay"]!.double!
        let sched = LinearSchedule(baseLR: o["lr"]!.double!, warmup: s["scheduler"]!["num_warmup_steps"]!.int!,
                                   total: s["scheduler"]!["num_training_steps"]!.int!)
        let losses = c.ref["losses"]!.array!.map { $0.double! }
        let norms = c.ref["grad_norms"]!.array!.map { $0.double! }
        for step in 0..<losses.count {
            let loss = accumulate(c, acts: acts)
            XCTAssertEqual(loss, losses[step], accuracy: Self.stepLossTolerance, "\(name) loss at step \(step)")
            let norm = opt.clipGradients(maxNorm: s["max_grad_norm"]!.double!)
            XCTAssertEqual(norm, norms[step], accuracy: norms[step] * 1e-3, "\(name) grad norm at step \(step)")
            opt.update(lr: sched.lr(at: step))
            c.adapter.parametersChanged()
        }
        // PEFT's parameters after the 10 steps are its saved final adapter.
        let final = try Adapter.load(Self.fixture("\(name).final.adapter"), model: c.model.config)
        for (t, ref) in zip(c.adapter.trainable, final.trainable) {
            XCTAssertEqual(t.name, ref.name)
            assertClose(t.param.data, ref.param.data, count: ref.param.count, abs: Self.finalAbs, rel: Self.finalRel, "\(name) final \(t.name)")
        }
    }

    func testMHAQVGradients() throws { try checkLossAndGradients("mha-qv") }
    func testGQAAllInt8Gradients() throws { try checkLossAndGradients("gqa-all-int8") }
    func testMHAQVTenSteps() throws { try checkTenSteps("mha-qv") }
    func testGQAAllInt8TenSteps() throws { try checkTenSteps("gqa-all-int8") }

    /// The trained adapter's eval logits, through `logits` (training forward, eval mode) and
    /// through the KV-cache decoder `generate` uses, one token at a time.
    func testEvalAndDecodeLogits() throws {
        for name in ["mha-qv", "gqa-all-int8"] {
            let c = try load(name)
            let final = try Adapter.load(Self.fixture("\(name).final.adapter"), model: c.model.config)
            let ids = c.ref["logits_input_ids"]!.ints32
            let ref = try XCTUnwrap(try c.tensors.f32("logits"))
            let V = c.model.config.vocabSize
            XCTAssertEqual(ref.shape, [ids.count, V])
            let batch = Batch(B: 1, T: ids.count, inputIDs: ids, attentionMask: [Float](repeating: 1, count: ids.count),
                              labels: [Int32](repeating: -100, count: ids.count))
            let acts = Activations(model: c.model, maxRank: final.maxRank, maxB: 1, maxT: ids.count)
            let full = c.model.logits(batch, adapters: AdapterSet(final), acts: acts, ctx: testCtx)
            assertClose(full.data, ref.data, count: ref.count, abs: Self.logitsTolerance, "\(name) eval logits")
            // Decoding an int8 model uses an int8 copy of the lm_head (LlamaModel.decodeHead), which
            // the reference does not have; its DoRA projections are the ones just checked.
            if name.contains("int8") { continue }
            let cache = KVCache(model: c.model, sequences: 1, capacity: ids.count, maxChunk: 1, maxRank: final.maxRank)
            var decoded: [Float] = []
            for t in ids {
                try c.model.step(tokens: [t], sequences: 1, cache: cache, adapters: AdapterSet(final), ctx: testCtx)
                decoded += Array(UnsafeBufferPointer(start: cache.logits.data, count: V))
            }
            assertClose(decoded, Array(UnsafeBufferPointer(start: ref.data, count: ref.count)), count: ref.count,
                        abs: Self.logitsTolerance, "\(name) decoded logits")
        }
    }

    /// `lora merge` of the trained f32-base adapter equals PEFT's merge_and_unload(), and the
    /// merged model's logits equal the unmerged adapter's.
    func testMergeMatchesPEFT() throws {
        let c = try load("mha-qv")
        let base = try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-mha"))
        let merger = try Merger(base: base, adapters: [try AdapterFactors.load(Self.fixture("mha-qv.final.adapter"), model: base.config)])
        let names = c.ref["merged_names"]!.array!.map { $0.string! }
        XCTAssertEqual(names.count, 2 * 2, "q and v of both layers")
        for n in names {
            let ref = try XCTUnwrap(try c.tensors.f32("merged.\(n)"), n)
            let w = try merger.tensor(n)
            var maxAbs: Float = 0
            for i in 0..<ref.count { maxAbs = max(maxAbs, abs(ref[i])) }
            assertClose(w.data, ref.data, count: ref.count, abs: Self.weightRel * maxAbs, "merged \(n)")
        }
        let merged = try LlamaModel(checkpoint: MergedCheckpoint(merger), quantization: .none, pool: testPool)
        let ids = c.ref["logits_input_ids"]!.ints32
        let ref = try XCTUnwrap(try c.tensors.f32("logits"))
        let batch = Batch(B: 1, T: ids.count, inputIDs: ids, attentionMask: [Float](repeating: 1, count: ids.count),
                          labels: [Int32](repeating: -100, count: ids.count))
        let logits = merged.logits(batch, adapters: .none, acts: Activations(model: merged, maxB: 1, maxT: ids.count), ctx: testCtx)
        assertClose(logits.data, ref.data, count: ref.count, abs: Self.logitsTolerance, "merged model logits")
    }

    // MARK: file format and refusals

    /// PEFT's keys and shapes, read and written: our save of PEFT's adapter has the same names,
    /// shapes and values, and `use_dora: true`.
    func testAdapterRoundTrip() throws {
        let c = try load("mha-qv")
        let shapes = c.ref["saved_shapes"]!
        guard case .object(let items) = shapes else { return XCTFail("saved_shapes") }
        XCTAssertTrue(items.contains { $0.0 == "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector" })
        XCTAssertEqual(Set(items.map(\.0)), Set(c.adapter.trainable.map(\.name)), "our names are PEFT's")
        for t in c.adapter.trainable {
            XCTAssertEqual(t.param.shape, shapes[t.name]!.array!.map { $0.int! }, t.name)
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-dora-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(at: dir) }
        try Adapter.save(c.adapter, to: dir)
        let cfg = try JSON.parse(contentsOf: dir.appendingPathComponent(Adapter.configFile))
        XCTAssertEqual(cfg["use_dora"]?.bool, true)
        let back = try Adapter.load(dir, model: c.model.config)
        XCTAssertTrue(back.isDoRA)
        for (a, b) in zip(c.adapter.trainable, back.trainable) {
            XCTAssertEqual(a.name, b.name)
            assertClose(b.param.data, a.param.data, count: a.param.count, abs: 0, "round trip \(a.name)")
        }
    }

    func testStacksWithDoRAAreRefused() throws {
        let c = try load("mha-qv")
        XCTAssertNoThrow(try AdapterSet(c.adapter).validate())
        XCTAssertThrowsError(try AdapterSet([(c.adapter, 0.5)]).validate()) { e in
            XCTAssertEqual(e as? AdapterSetError, .doraInStack(count: 1, weight: 0.5))
        }
        let lora = try Adapter.load(Fixtures.reference("train-mha-qv.adapter"), model: c.model.config)
        XCTAssertThrowsError(try AdapterSet([(lora, 1), (c.adapter, 1)]).validate())
        let base = try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-mha"))
        let f = try AdapterFactors.load(Self.fixture("mha-qv.adapter"), weight: 0.7, model: base.config)
        XCTAssertThrowsError(try Merger(base: base, adapters: [f])) { e in
            XCTAssertTrue("\(e)".contains("DoRA"), "\(e)")
        }
    }

    func testGGUFAdapterExportIsRefused() throws {
        let base = try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-mha"))
        let f = try AdapterFactors.load(Self.fixture("mha-qv.adapter"), model: base.config)
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("lora-dora-\(getpid()).gguf")
        XCTAssertThrowsError(try GGUFExport.writeAdapter(f, model: base.config, name: "x", to: out)) { e in
            XCTAssertTrue("\(e)".contains("llama.cpp has no DoRA"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), "nothing written")
    }

    /// A fresh DoRA adapter starts equal to the base (m = ||W|| per row, B = 0), on the int8
    /// base too (the norm of the dequantized rows, as PEFT).
    func testFreshAdapterStartsAtTheBase() throws {
        for q in [Quantization.none, .int8] {
            let model = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-gqa")), quantization: q, pool: testPool)
            var cfg = TrainConfig().adapterConfig
            cfg.useDora = true
            cfg.targetModules = Projection.allCases
            var rng = RNG(seed: 3)
            let adapter = LoRAAdapter(new: cfg, model: model, rng: &rng)
            let ids: [Int32] = [1, 17, 33, 5, 90, 2]
            let batch = Batch(B: 1, T: ids.count, inputIDs: ids, attentionMask: [Float](repeating: 1, count: ids.count),
                              labels: [Int32](repeating: -100, count: ids.count))
            let acts = Activations(model: model, maxRank: adapter.maxRank, maxB: 1, maxT: ids.count)
            let plain = model.logits(batch, adapters: .none, acts: acts, ctx: testCtx)
            let dora = model.logits(batch, adapters: AdapterSet(adapter), acts: acts, ctx: testCtx)
            assertClose(dora.data, plain.data, count: plain.count, abs: Self.logitsTolerance, "fresh DoRA \(q) = base")
        }
    }

    // MARK: finite differences

    /// Central differences of the loss against the analytic gradients, with lora_dropout 0.1
    /// (the masks are redrawn identically from the same seed on every evaluation).
    ///
    /// The backward treats n = ||W + s B A|| as a constant (PEFT detaches it; the paper's 4.3), so
    /// its "gradient" of A and B is NOT the derivative of the loss as a function of A and B: that
    /// would have a second term through n. The check therefore evaluates L(theta +- h) with n held
    /// at its value at theta (the layers' cached norm is left stale on purpose), which is the
    /// function the backward differentiates. To show the check can tell the two apart, the same
    /// differences with n recomputed at each point must disagree for B (m does not enter n).
    func testFiniteDifferencesWithDetachedNorm() throws { try finiteDifferences(dropout: 0.1) }
    /// Without dropout: DoRA's other forward form (y = c (W x + s B A x)).
    func testFiniteDifferencesWithoutDropout() throws { try finiteDifferences(dropout: 0) }
    /// The same check on plain LoRA: the harness itself is sound.
    func testFiniteDifferencesPlainLoRA() throws { try finiteDifferences(dropout: 0, dora: false) }

    func finiteDifferences(dropout: Float, dora: Bool = true) throws {
        let c = try load("mha-qv")
        var layers: [LoRASite: LoRALayer] = [:]
        for (site, l) in c.adapter.layers {
            let d = LoRALayer(r: l.r, inFeatures: l.inFeatures, outFeatures: l.outFeatures, scale: l.scale, dropout: dropout, dora: dora)
            d.A.copy(from: l.A); d.B.copy(from: l.B); d.magnitude?.copy(from: l.magnitude!)
            layers[site] = d
        }
        var cfg = c.adapter.config
        cfg.useDora = dora
        let adapter = LoRAAdapter(config: cfg, layers: layers)
        adapter.enableGradients()
        // The first record alone, unpadded. (On the left-padded micro-batch even plain LoRA's q
        // gradients differ from central differences by ~2%, ours and PEFT's alike: the padded
        // rows' fully masked attention is not what this check is about.)
        let b0 = c.batches[0], T0 = b0.T
        let real = (0..<T0).filter { b0.attentionMask[$0] != 0 }
        let batch = Batch(B: 1, T: real.count, inputIDs: real.map { b0.inputIDs[$0] },
                          attentionMask: [Float](repeating: 1, count: real.count), labels: real.map { b0.labels[$0] })
        let acts = Activations(model: c.model, trained: adapter, maxB: batch.B, maxT: batch.T)
        func loss() -> Double {
            adapter.zeroGradients()
            var rng = RNG(seed: 11)
            let r = c.model.forwardBackward(batch, adapters: AdapterSet(adapter), acts: acts, ctx: testCtx, rng: &rng, gradScale: 1)
            return r.lossSum
        }
        _ = loss()
        let grads = adapter.trainable.map { ($0.name, $0.param, $0.grad!.clone()) }
        // Central differences at h and h/2 combined (Richardson): error O(h^4), so the curvature of
        // attention in q's magnitude does not show; rounding of the f32 loss sum is ~1e-4 / h.
        func derivative(_ p: Tensor, _ i: Int, refresh: Bool) -> Double {
            let v = p[i]
            func central(_ h: Float) -> Double {
                p[i] = v + h; if refresh { adapter.parametersChanged() }; let lp = loss()
                p[i] = v - h; if refresh { adapter.parametersChanged() }; let lm = loss()
                p[i] = v
                return (lp - lm) / Double(2 * h)
            }
            let d = (4 * central(Self.fdStep / 2) - central(Self.fdStep)) / 3
            if refresh { adapter.parametersChanged(); _ = loss() }   // back to n at theta
            return d
        }
        var checked = 0, distinguished = 0, worst = 0.0
        for (name, p, g) in grads where name.contains("layers.1") || name.contains("lora_magnitude_vector") {
            // The two elements with the largest gradients: the differences are largest there.
            for i in (0..<g.count).sorted(by: { abs(g[$0]) > abs(g[$1]) }).prefix(2) {
                let tol = Self.fdAbs + Self.fdRel * abs(Double(g[i]))
                let fd = derivative(p, i, refresh: false)
                XCTAssertEqual(fd, Double(g[i]), accuracy: tol, "FD \(name)[\(i)] with n held fixed, dropout \(dropout)")
                worst = max(worst, abs(fd - Double(g[i])) / abs(Double(g[i])))
                checked += 1
                if name.hasSuffix("lora_B.weight") {
                    // n recomputed at each point: the full derivative, which the detached backward does not give.
                    if abs(derivative(p, i, refresh: true) - Double(g[i])) > tol { distinguished += 1 }
                }
            }
        }
        XCTAssertEqual(checked, dora ? 16 : 8, "A, B (and m) of layer 1, and every magnitude")
        if dora { XCTAssertGreaterThan(distinguished, 0, "with n recomputed the differences should miss the detached gradient") }
        print("DoRA FD (dropout \(dropout)): \(checked) elements, worst relative difference \(String(format: "%.2e", worst)); with n recomputed \(distinguished) of 4 B elements fall outside the tolerance")
    }
    static let fdStep: Float = 1e-2
    static let fdAbs = 1e-2
    static let fdRel = 1e-2
}
