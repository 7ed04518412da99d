import Foundation
import XCTest
import LLaMA

/// `lora finetune` prints its memory plan and refuses, with the table, a run that cannot fit.
/// LORA_AVAILABLE_MEMORY stands for the machine's available memory.
final class MemoryPlanCLITests: XCTestCase {
    static let fixtures = CLITests.fixtures

    func tempDir(_ tag: String) -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("lora-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    }

    func testRefusesWithThePlanWhenItCannotFit() throws {
        let dir = tempDir("plan")
        defer { try? FileManager.default.removeItem(at: dir) }
        let args = ["finetune", "--base-model", Self.fixtures.appendingPathComponent("tiny-mha").path,
                    "--data-path", Self.fixtures.appendingPathComponent("records.json").path, "--output-dir", dir.path,
                    "--batch-size", "2", "--micro-batch-size", "2", "--val-set-size", "2", "--max-steps", "1",
                    "--cutoff-len", "64", "--load-8bit", "false"]
        let r = try LoraProcess.run(args, environment: ["LORA_AVAILABLE_MEMORY": "1M"])
        XCTAssertEqual(r.status, 1, r.stderr)
        for s in ["does not fit", "memory plan", "weights", "LoRA state", "activations, no checkpointing",
                  "activations, checkpointing", "available", "gradient_checkpointing"] {
            XCTAssert(r.stderr.contains(s), "refusal lacks '\(s)': \(r.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("adapter_model.safetensors").path))
        // A bad value is named.
        let bad = try LoraProcess.run(args, environment: ["LORA_AVAILABLE_MEMORY": "lots"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
        XCTAssert(bad.stderr.contains("LORA_AVAILABLE_MEMORY=lots"), bad.stderr)
        // With room, the same run prints the plan and trains.
        let ok = try LoraProcess.run(args + ["--gradient-checkpointing", "true"], environment: ["LORA_AVAILABLE_MEMORY": "8G"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssert(ok.stderr.contains("total with checkpointing") && ok.stderr.contains("<- this run"), ok.stderr)
    }

    /// The plan of a LLaMA-2-7B-shaped model (config.json only, no weights) at the default
    /// settings, against a 24 GB machine.
    func testPlanOnlyFor7BShapedConfig() throws {
        let dir = tempDir("7b")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = """
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
         "num_attention_heads": 32, "num_key_value_heads": 32, "num_hidden_layers": 32, "vocab_size": 32000,
         "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "tie_word_embeddings": false,
         "bos_token_id": 1, "eos_token_id": 2}
        """
        try config.write(to: dir.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        let r = try LoraProcess.run(["finetune", "--base-model", dir.path, "--plan-only"], environment: ["LORA_AVAILABLE_MEMORY": "24G"])
        XCTAssertEqual(r.status, 0, r.stderr)
        print(r.stdout)
        XCTAssert(r.stdout.contains("memory plan (micro-batch 4 x 256 tokens)"), r.stdout)
        // int8 projections of 6.5 G weights plus f32 embeddings and lm_head (2 x 0.52 GB).
        let weights = try XCTUnwrap(r.stdout.split(separator: "\n").first { $0.contains("weights") })
        let gb = try XCTUnwrap(Double(weights.split(separator: " ").dropFirst().first!))
        XCTAssertEqual(gb, 7.55, accuracy: 0.1, String(weights))
        XCTAssert(r.stdout.contains("fits"), r.stdout)
    }
}
