import Foundation
import XCTest
import LLaMA
import Tensor

/// `lora finetune --use-dora true` end to end on the tiny model: it writes a PEFT DoRA adapter,
/// resumes from its checkpoint, and the other commands take it or refuse it clearly.
final class DoRACLITests: XCTestCase {
    static let fixtures = CLITests.fixtures

    @discardableResult
    func lora(_ args: [String]) throws -> LoraProcess.Result { try LoraProcess.run(args) }

    func testFinetuneResumeEvalAndMergeWithDoRA() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-dora-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = Self.fixtures.appendingPathComponent("tiny-mha"), data = Self.fixtures.appendingPathComponent("records.json")
        // int8 base and lora_dropout 0.05 (the default): the dropout form of DoRA's forward.
        let common = ["finetune", "--base-model", model.path, "--data-path", data.path, "--output-dir", dir.path,
                      "--batch-size", "2", "--micro-batch-size", "1", "--val-set-size", "2", "--max-steps", "4",
                      "--warmup-steps", "1", "--logging-steps", "2", "--eval-steps", "2", "--save-steps", "2",
                      "--learning-rate", "0.01", "--cutoff-len", "64", "--quantization", "int8", "--use-dora", "true"]
        var r = try lora(common)
        XCTAssertEqual(r.status, 0, r.stderr)
        let m = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: model), quantization: .int8, pool: .serial)
        let adapter = try Adapter.load(dir, model: m.config)
        XCTAssertTrue(adapter.isDoRA)
        let cfg = try JSON.parse(contentsOf: dir.appendingPathComponent("adapter_config.json"))
        XCTAssertEqual(cfg["use_dora"]?.bool, true)
        // The magnitudes trained away from their init, the dequantized row norms.
        var moved = false
        for (site, l) in adapter.layers {
            let n = Tensor([l.outFeatures])
            LoRALayer.rowNorms(m.blocks[site.layer].linear(site.projection).weight, A: l.A, B: Tensor(l.B.shape), scale: l.scale, into: n.data)
            moved = moved || (0..<n.count).contains { abs(n[$0] - l.magnitude![$0]) > 1e-4 }
        }
        XCTAssertTrue(moved, "training moved lora_magnitude_vector")

        // Resuming from checkpoint-2 ends at the same adapter (DoRA's m restored, its norm recomputed).
        let final = try Data(contentsOf: dir.appendingPathComponent("adapter_model.safetensors"))
        r = try lora(common + ["--resume-from-checkpoint", dir.appendingPathComponent("checkpoint-2").path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try Data(contentsOf: dir.appendingPathComponent("adapter_model.safetensors")), final, "resumed run ends at the same adapter")

        r = try lora(["eval", "--base-model", model.path, "--lora-weights", dir.path, "--data-path", data.path, "--cutoff-len", "64", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try lora(["eval", "--base-model", model.path, "--lora-weights", dir.path + ":0.5", "--data-path", data.path, "--cutoff-len", "64"])
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("DoRA adapter can only be applied alone at weight 1"), r.stderr)

        let gguf = dir.appendingPathComponent("adapter.gguf")
        r = try lora(["merge", "--adapter-only", "--format", "gguf", "--base-model", model.path, "--lora-weights", dir.path, "--output", gguf.path])
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("llama.cpp has no DoRA"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: gguf.path))
        let merged = dir.appendingPathComponent("merged")
        r = try lora(["merge", "--base-model", model.path, "--lora-weights", dir.path, "--output", merged.path, "--dtype", "f32"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssert(FileManager.default.fileExists(atPath: merged.appendingPathComponent("model.safetensors").path))
    }
}
