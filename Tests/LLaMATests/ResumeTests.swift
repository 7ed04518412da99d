import Foundation
import XCTest
@testable import LLaMA
import Tensor

/// An interrupted run resumed from its checkpoint ends with a byte-identical adapter to an
/// uninterrupted run (same seed, dropout on, an eval split, gradient accumulation).
final class ResumeTests: XCTestCase {
    /// `threads` workers: resuming on another core count must continue the same numbers.
    func makeTrainer(out: URL, threads: Int = 2) throws -> Trainer {
        var c = TrainConfig()
        c.baseModel = Fixtures.model("tiny-gqa").path
        c.outputDir = out.path
        c.batchSize = 2; c.microBatchSize = 1; c.maxSteps = 6; c.saveSteps = 3; c.evalSteps = 2
        c.warmupSteps = 1; c.learningRate = 1e-2; c.loraDropout = 0.1; c.seed = 7; c.cutoffLen = 64
        c.valSetSize = 2; c.loggingSteps = 1; c.quantization = .int8
        try c.validate()
        let ctx = try ExecutionContext.cpu(threads: threads, environment: ProcessInfo.processInfo.environment)
        let loaded = try LoadedModel(path: c.baseModel, quantization: c.quantization, pool: ctx.pool)
        let records = try AlpacaData.load(Fixtures.root.appendingPathComponent("records.json"))
        let builder = ExampleBuilder(tokenizer: loaded.tokenizer, prompter: try Prompter(named: "alpaca"), cutoffLen: c.cutoffLen,
                                     trainOnInputs: true, addEOSToken: false)
        let (tr, va) = Sampler.split(count: records.count, valSize: c.valSetSize, seed: c.seed)
        var rng = RNG(seed: c.seed)
        let adapter = LoRAAdapter(new: c.adapterConfig, model: loaded.model.config, rng: &rng)
        return try Trainer(config: c, model: loaded.model, adapter: adapter, ctx: ctx, train: tr.map { builder.example(records[$0]) },
                           validation: va.map { builder.example(records[$0]) }, padID: loaded.padID)
    }

    func testInterruptedRunResumesToIdenticalAdapter() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("lora-resume-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(at: root) }
        let a = root.appendingPathComponent("a"), b = root.appendingPathComponent("b")
        var lossesA: [Double] = []
        _ = try makeTrainer(out: a).run { if case let .step(p) = $0 { lossesA.append(p.loss) } }
        let adapterA = try Data(contentsOf: a.appendingPathComponent(Adapter.weightsFile))

        // Interrupt after step 4 (as Ctrl-C would): a checkpoint is written and the run throws.
        var lossesB: [Double] = []
        let t = try makeTrainer(out: b)
        XCTAssertThrowsError(try t.run { e in
            if case let .step(p) = e { lossesB.append(p.loss); if p.step == 4 { t.ctx.cancellation.cancel() } }
        }) { e in
            guard case .interrupted(let cp)? = e as? TrainingError else { return XCTFail("\(e)") }
            XCTAssertEqual(cp.map { URL(fileURLWithPath: $0).lastPathComponent }, "checkpoint-4")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: b.appendingPathComponent(Adapter.weightsFile).path),
                       "no final adapter from an interrupted run")
        // Resumed with one worker instead of two: the same bits (every reduction's order is
        // independent of how work is split over threads).
        let resumed = try makeTrainer(out: b, threads: 1)
        try resumed.resume(from: b.appendingPathComponent("checkpoint-4"))
        XCTAssertEqual(resumed.state.step, 4)
        _ = try resumed.run { if case let .step(p) = $0 { lossesB.append(p.loss) } }
        XCTAssertEqual(lossesB, lossesA, "the same losses, to the bit")
        let adapterB = try Data(contentsOf: b.appendingPathComponent(Adapter.weightsFile))
        XCTAssertEqual(adapterA, adapterB, "byte-identical adapter")
        // Checkpoints were rotated to save_total_limit (3 by default) and nothing temporary is left.
        let names = try FileManager.default.contentsOfDirectory(atPath: b.path)
        XCTAssertFalse(names.contains { $0.hasPrefix(".") }, "\(names)")
    }

    /// A bare adapter folder as resume_from_checkpoint starts from its weights (step 0).
    func testResumeFromBareAdapterLoadsWeights() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("lora-resume2-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(at: root) }
        let a = root.appendingPathComponent("a")
        let t = try makeTrainer(out: a)
        _ = try t.run { _ in }
        let t2 = try makeTrainer(out: root.appendingPathComponent("b"))
        try t2.resume(from: a)
        XCTAssertEqual(t2.state.step, 0)
        let st = try SafeTensorsFile(path: a.appendingPathComponent(Adapter.weightsFile).path)
        for site in t2.adapter.sites {
            let ref = try XCTUnwrap(try st.f32("base_model.model.\(site.path).lora_B.weight"))
            XCTAssertEqual(t2.adapter.layers[site]!.B.array, ref.array)
        }
    }

    /// A non-finite loss stops the run with a message naming the step.
    func testNonFiniteLossStopsWithStep() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("lora-nan-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(at: root) }
        let t = try makeTrainer(out: root)
        let first = t.adapter.layers[t.adapter.sites[0]]!
        first.A[0] = .nan
        first.B[0] = 1
        XCTAssertThrowsError(try t.run { _ in }) { e in
            guard case .nonFinite(let step, _)? = e as? TrainingError else { return XCTFail("\(e)") }
            XCTAssertEqual(step, 1)
            XCTAssert("\(e)".hasPrefix("step 1: "), "\(e)")
        }
    }
}
