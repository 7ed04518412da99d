import Foundation
import XCTest
@testable import LLaMA
import Tensor

final class MemoryPlanTests: XCTestCase {
    func tinyModel() throws -> LlamaModel {
        try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-gqa")), quantization: .none, pool: testPool)
    }

    func adapter(_ model: LlamaModel, dropout: Double) -> (AdapterConfig, LoRAAdapter) {
        let cfg = AdapterConfig(r: 4, loraAlpha: 8, loraDropout: dropout, targetModules: [.q, .v, .down], useRslora: false,
                                baseModelNameOrPath: nil)
        var rng = RNG(seed: 1)
        return (cfg, LoRAAdapter(new: cfg, model: model.config, rng: &rng))
    }

    /// The plan's activation bytes are exactly what `Activations` allocates, in both modes.
    func testPlannedActivationsEqualAllocated() throws {
        let model = try tinyModel()
        for dropout in [0.0, 0.05] {
            let (cfg, a) = adapter(model, dropout: dropout)
            let plan = MemoryPlan(config: model.config, weightBytes: model.weightBytes, adapter: cfg, microBatch: 3, tokens: 40,
                                  threads: 2, availableBytes: nil)
            XCTAssertEqual(plan.activationBytes, Activations(model: model, trained: a, maxB: 3, maxT: 40).byteCount)
            XCTAssertEqual(plan.checkpointedActivationBytes,
                           Activations(model: model, trained: a, maxB: 3, maxT: 40, checkpointing: true).byteCount)
            XCTAssertEqual(plan.loraParameters, a.parameterCount)
            XCTAssertLessThan(plan.checkpointedActivationBytes, plan.activationBytes)
        }
        XCTAssertEqual(MemoryPlan.weightBytes(config: model.config, quantization: .none), model.weightBytes)
    }

    /// Resident memory measured around building the activations and one training step on the
    /// tiny model (a batch big enough for the buffers to dominate) is within 2x of the plan.
    /// malloc_trim first: in a long test process, pages freed by earlier tests stay resident in
    /// the allocator and would be reused without growing the resident set.
    func testPlanAgainstMeasuredResidentMemory() throws {
        let model = try tinyModel()
        let (cfg, a) = adapter(model, dropout: 0.05)
        a.enableGradients()
        func resident() -> Int {
            let s = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? "0 0"
            return (Int(s.split(separator: " ")[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
        }
        for checkpointing in [false, true] {
            let B = 8, T = 256
            let plan = MemoryPlan(config: model.config, weightBytes: model.weightBytes, adapter: cfg, microBatch: B, tokens: T,
                                  threads: testPool.threads, availableBytes: nil)
            let want = checkpointing ? plan.checkpointedActivationBytes : plan.activationBytes
            if let f = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") {   // glibc; not in Swift's Glibc module
                _ = unsafeBitCast(f, to: (@convention(c) (Int) -> Int32).self)(0)
            }
            let before = resident()
            let acts = Activations(model: model, trained: a, maxB: B, maxT: T, checkpointing: checkpointing)
            let ids = (0..<(B * T)).map { Int32($0 % 500 + 3) }
            let batch = Batch(B: B, T: T, inputIDs: ids, attentionMask: [Float](repeating: 1, count: B * T), labels: ids)
            var rng = RNG(seed: 2)
            _ = model.forwardBackward(batch, adapters: AdapterSet(a), acts: acts, ctx: testCtx, rng: &rng, gradScale: 1e-3)
            let grew = resident() - before
            print("activations checkpointing=\(checkpointing): planned \(want) bytes, resident grew \(grew) bytes")
            XCTAssertGreaterThan(Double(grew), Double(want) / 2, "checkpointing \(checkpointing)")
            XCTAssertLessThan(Double(grew), Double(want) * 2, "checkpointing \(checkpointing)")
            withExtendedLifetime(acts) {}
        }
    }

    func testFitsAndAuto() {
        var plan = MemoryPlan(config: LlamaConfig.tinyForPlan, weightBytes: 1000, adapter: AdapterConfig(
            r: 2, loraAlpha: 4, loraDropout: 0, targetModules: [.q], useRslora: false, baseModelNameOrPath: nil),
            microBatch: 2, tokens: 64, threads: 1, availableBytes: nil)
        XCTAssert(plan.fits(checkpointing: false), "unknown available memory never refuses")
        plan.availableBytes = (plan.totalBytes(checkpointing: true) + plan.totalBytes(checkpointing: false)) / 2
        XCTAssertFalse(plan.fits(checkpointing: false))
        XCTAssert(plan.fits(checkpointing: true))
        XCTAssertTrue(GradientCheckpointing.auto.resolved(fitsWithout: plan.fits(checkpointing: false)))
        XCTAssertFalse(GradientCheckpointing.auto.resolved(fitsWithout: true))
        XCTAssertFalse(GradientCheckpointing.off.resolved(fitsWithout: false))
        XCTAssertEqual(AvailableMemory.parse("24G"), 24 << 30)
        XCTAssertEqual(AvailableMemory.parse("512m"), 512 << 20)
        XCTAssertEqual(AvailableMemory.parse("1000"), 1000)
        XCTAssertNil(AvailableMemory.parse("lots"))
        XCTAssertNotNil(AvailableMemory.read(), "this Linux machine has /proc/meminfo")
    }

    /// gradient_checkpointing in YAML: true, false (booleans or strings), auto; others named.
    func testYAMLKey() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-gc-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let y = dir.appendingPathComponent("c.yml")
        for (text, want) in [("true", GradientCheckpointing.on), ("false", .off), ("auto", .auto), ("\"true\"", .on)] {
            try "gradient_checkpointing: \(text)\n".write(to: y, atomically: true, encoding: .utf8)
            XCTAssertEqual(try ConfigFile.load(y.path).gradientCheckpointing, want, text)
        }
        XCTAssertEqual(TrainConfig().gradientCheckpointing, .auto)
        try "gradient_checkpointing: sometimes\n".write(to: y, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ConfigFile.load(y.path)) { e in
            XCTAssert("\(e)".contains("gradient_checkpointing") && "\(e)".contains("auto, true, false"), "\(e)")
        }
    }
}

extension LlamaConfig {
    static var tinyForPlan: LlamaConfig {
        try! LlamaConfig(json: JSON.parse("""
        {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
         "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 256, "rms_norm_eps": 1e-6}
        """, source: "test"), file: "test")
    }
}
