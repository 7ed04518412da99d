import Foundation
import XCTest
import LLaMA

/// Runs the built `lora` binary as a user would and checks its output and exit codes.
final class CLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let repo = fixtures.deletingLastPathComponent().deletingLastPathComponent()

    static var binary: URL { LoraProcess.binary }

    @discardableResult
    func lora(_ args: [String], cwd: URL? = nil) throws -> LoraProcess.Result { try LoraProcess.run(args, cwd: cwd) }

    func reference(_ model: String) throws -> JSON {
        try JSON.parse(contentsOf: Self.fixtures.appendingPathComponent("reference/\(model).forward.json"))
    }

    /// Greedy and beam answers to an instruction equal transformers' ids, decoded and stripped
    /// of surrounding whitespace as alpaca-lora's get_response does.
    func testGenerateInstructionMatchesReferenceIDs() throws {
        let model = Self.fixtures.appendingPathComponent("tiny-mha")
        let ref = try reference("tiny-mha")
        let tok = try loadTokenizer(folder: model)
        for (section, beams) in [("greedy", "1"), ("beam", "4")] {
            let c = try XCTUnwrap(ref["generation"]?[section]?.array?.first { $0["prompt_index"]?.int == 2 })
            var ids = (c["new_ids"]?.array ?? []).compactMap { $0.int.map(Int32.init) }
            if c["ended_with_eos"]?.bool == true { ids.removeLast() }
            let expected = tok.decode(ids).trimmingCharacters(in: .whitespacesAndNewlines) + "\n"
            let r = try lora(["generate", "--base-model", model.path, "--instruction", "Name three primary colors.",
                              "--num-beams", beams, "--max-new-tokens", "24"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stdout, expected, section)
        }
    }

    func testGenerateRawPromptAndTokenize() throws {
        let model = Self.fixtures.appendingPathComponent("tiny-gqa")
        let ref = try reference("tiny-gqa")
        let tok = try loadTokenizer(folder: model)
        let p1 = ref["prompts"]!.array![1]
        let c = ref["generation"]!["greedy"]!.array!.first { $0["prompt_index"]?.int == 1 }!
        var ids = c["new_ids"]!.array!.compactMap { $0.int.map(Int32.init) }
        if c["ended_with_eos"]?.bool == true { ids.removeLast() }
        let r = try lora(["generate", "--base-model", model.path, "--prompt", p1["text"]!.string!, "--num-beams", "1",
                          "--max-new-tokens", "24", "--prompt-template", "none"])
        XCTAssertEqual(r.status, 0, r.stderr)
        var decoder = StreamingDecoder(tokenizer: tok, context: p1["input_ids"]!.array!.compactMap { $0.int.map(Int32.init) })
        XCTAssertEqual(r.stdout, decoder.push(contentsOf: ids) + decoder.finish() + "\n")
        let t = try lora(["tokenize", "--base-model", model.path, "--text", p1["text"]!.string!])
        XCTAssertEqual(t.status, 0)
        let j = try JSON.parse(t.stdout, source: "stdout")
        XCTAssertEqual(j["ids"], p1["input_ids"])
    }

    /// --do-sample alone samples with one beam (the default of 4 beams would refuse it), seeded;
    /// an explicit --num-beams above 1 with it is still refused.
    func testDoSampleAloneSamples() throws {
        let model = Self.fixtures.appendingPathComponent("tiny-gqa").path
        let base = ["generate", "--base-model", model, "--prompt", "Once upon a time", "--prompt-template", "none", "--max-new-tokens", "6",
                    "--do-sample", "--temperature", "1", "--top-p", "1", "--quiet"]
        let a = try lora(base + ["--seed", "3"]), b = try lora(base + ["--seed", "3"])
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertEqual(a.stdout, b.stdout, "same seed, same text")
        XCTAssertFalse(a.stdout.isEmpty)
        let beams = try lora(base + ["--num-beams", "2"])
        XCTAssertEqual(beams.status, 1)
        XCTAssert(beams.stderr.contains("num_beams = 2"), beams.stderr)
    }

    func testErrorsAreOneLineWithExitCode1() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-cli-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // A config.json missing a key.
        let bad = dir.appendingPathComponent("bad-model")
        try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("tiny-mha"), to: bad)
        let cfg = try String(contentsOf: bad.appendingPathComponent("config.json"), encoding: .utf8)
        try cfg.replacingOccurrences(of: "\"hidden_size\"", with: "\"hidden_sizes\"").write(to: bad.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        var r = try lora(["generate", "--base-model", bad.path, "--prompt", "x", "--num-beams", "1"])
        XCTAssertEqual(r.status, 1)
        // `--device auto` (the default) says which device runs on a line of its own.
        XCTAssertEqual(r.stderr.split(separator: "\n").filter { !$0.hasPrefix("device: ") }.count, 1, r.stderr)
        XCTAssert(r.stderr.contains("config.json") && r.stderr.contains("hidden_size"), r.stderr)
        // A truncated safetensors file.
        let trunc = dir.appendingPathComponent("trunc-model")
        try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("tiny-mha"), to: trunc)
        let st = trunc.appendingPathComponent("model.safetensors")
        let data = try Data(contentsOf: st)
        try data.prefix(data.count / 2).write(to: st)
        r = try lora(["generate", "--base-model", trunc.path, "--prompt", "x", "--num-beams", "1"])
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("model.safetensors"), r.stderr)
        // A pickle checkpoint is refused with advice.
        let pk = dir.appendingPathComponent("pickle-model")
        try FileManager.default.createDirectory(at: pk, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("tiny-mha/config.json"), to: pk.appendingPathComponent("config.json"))
        try Data([0x80, 0x02]).write(to: pk.appendingPathComponent("pytorch_model.bin"))
        r = try lora(["generate", "--base-model", pk.path, "--prompt", "x"])
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("safetensors"), r.stderr)
    }

    func testFinetuneConfigErrorsNameTheKey() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-cfg-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let y = dir.appendingPathComponent("c.yml")
        try "lora_rank: 8\n".write(to: y, atomically: true, encoding: .utf8)
        var r = try lora(["finetune", "--config", y.path])
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("unknown key 'lora_rank'") && r.stderr.contains("lora_r"), r.stderr)
        try "lora_r: eight\n".write(to: y, atomically: true, encoding: .utf8)
        r = try lora(["finetune", "--config", y.path])
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("lora_r") && r.stderr.contains("integer"), r.stderr)
        try "lora_target_modules: [q_proj, w_proj]\n".write(to: y, atomically: true, encoding: .utf8)
        r = try lora(["finetune", "--config", y.path])
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("lora_target_modules"), r.stderr)
        // Nonsense values are refused before any work; the flag overrides the file.
        try "micro_batch_size: 8\nbatch_size: 4\n".write(to: y, atomically: true, encoding: .utf8)
        r = try lora(["finetune", "--config", y.path])
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("micro_batch_size"), r.stderr)
        r = try lora(["finetune", "--config", y.path, "--lora-r", "0", "--micro-batch-size", "2"])
        XCTAssertEqual(r.status, 1)
        XCTAssert(r.stderr.contains("lora_r = 0"), r.stderr)
        r = try lora(["finetune", "--config", y.path, "--cutoff-len", "0", "--micro-batch-size", "2"])
        XCTAssert(r.stderr.contains("cutoff_len = 0"), r.stderr)
    }

    /// configs/finetune.yml lists every key, with exactly the library's defaults.
    func testFinetuneYAMLListsEveryDefault() throws {
        let text = try String(contentsOf: Self.repo.appendingPathComponent("configs/finetune.yml"), encoding: .utf8)
        for k in TrainConfig.CodingKeys.allCases {
            XCTAssert(text.contains("\n\(k.rawValue):"), "configs/finetune.yml lacks \(k.rawValue)")
        }
        let r = try lora(["finetune", "--config", Self.repo.appendingPathComponent("configs/finetune.yml").path, "--print-config"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, TrainConfig().yaml)
        // ... and `lora finetune --help` has a flag for every key, with the same default.
        let help = try lora(["finetune", "--help"]).stdout.replacingOccurrences(of: "\n", with: " ")
            .replacingOccurrences(of: "  +", with: " ", options: .regularExpression)
        for line in TrainConfig().yaml.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            let key = String(parts[0]), value = parts[1].trimmingCharacters(in: .whitespaces)
            XCTAssert(help.contains("--\(key.replacingOccurrences(of: "_", with: "-"))"), "no flag for \(key)")
            XCTAssert(help.contains("(\(key), default: \(value))"), "help of \(key) lacks its default \(value)")
        }
    }

    /// A short real run on the tiny model: adapter files that load back, logs and a plot.
    func testFinetuneWritesPEFTAdapterAndLogs() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-ft-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = Self.fixtures.appendingPathComponent("tiny-mha")
        let r = try lora(["finetune", "--base-model", model.path, "--data-path", Self.fixtures.appendingPathComponent("records.json").path,
                          "--output-dir", dir.path, "--batch-size", "2", "--micro-batch-size", "1", "--val-set-size", "2",
                          "--max-steps", "4", "--warmup-steps", "1", "--logging-steps", "2", "--eval-steps", "2", "--save-steps", "2",
                          "--learning-rate", "0.01", "--cutoff-len", "64", "--load-8bit", "false"])
        XCTAssertEqual(r.status, 0, r.stderr)
        for f in ["adapter_config.json", "adapter_model.safetensors", "trainer_log.jsonl", "loss.svg", "checkpoint-2/trainer_state.json"] {
            XCTAssert(FileManager.default.fileExists(atPath: dir.appendingPathComponent(f).path), "missing \(f)")
        }
        let m = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: model), quantization: .none, pool: .serial)
        let adapter = try Adapter.load(dir, model: m.config)
        XCTAssertEqual(adapter.config.targetModules, [Projection.q, .v])
        XCTAssert(adapter.layers.values.contains { l in (0..<l.B.count).contains { l.B[$0] != 0 } }, "training moved lora_B off zero")
        let log = try String(contentsOf: dir.appendingPathComponent("trainer_log.jsonl"), encoding: .utf8)
        XCTAssertEqual(log.split(separator: "\n").filter { $0.contains("\"loss\"") }.count, 2)
        XCTAssertEqual(log.split(separator: "\n").filter { $0.contains("eval_loss") }.count, 2)
        XCTAssert(r.stderr.contains("tokens/s") && r.stderr.contains("peak memory"), r.stderr)
        // No temporary files are left behind.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".") }
        XCTAssertEqual(leftovers, [])
    }

    /// Chat-format records train too: the model (which has no chat template) gets one from
    /// --chat-template, and the loss is on assistant turns only.
    func testFinetuneOnChatRecords() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-ft-chat-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try lora(["finetune", "--base-model", Self.fixtures.appendingPathComponent("tiny-mha").path,
                          "--data-path", Self.fixtures.appendingPathComponent("chat/conversations.json").path,
                          "--chat-template", "llama2", "--output-dir", dir.path, "--batch-size", "2", "--micro-batch-size", "1",
                          "--val-set-size", "2", "--max-steps", "2", "--warmup-steps", "1", "--logging-steps", "1",
                          "--eval-steps", "2", "--save-steps", "2", "--cutoff-len", "64", "--load-8bit", "false"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssert(r.stderr.contains("chat-format data: 8 conversations, chat template llama2"), r.stderr)
        XCTAssert(FileManager.default.fileExists(atPath: dir.appendingPathComponent("adapter_model.safetensors").path))
        let log = try String(contentsOf: dir.appendingPathComponent("trainer_log.jsonl"), encoding: .utf8)
        XCTAssertEqual(log.split(separator: "\n").filter { $0.contains("\"loss\"") }.count, 2)
    }

    /// `generate --chat` wraps the message with a chat template: greedy decoding prints one line,
    /// the same with or without streaming's stop-string hold-back (beams do not stream).
    func testGenerateChat() throws {
        let model = Self.fixtures.appendingPathComponent("tiny-mha").path
        let base = ["generate", "--base-model", model, "--chat", "Name a colour.", "--chat-template", "llama2",
                    "--system", "Be brief.", "--max-new-tokens", "6", "--load-8bit", "false"]
        let greedy = try lora(base + ["--num-beams", "1"])
        XCTAssertEqual(greedy.status, 0, greedy.stderr)
        XCTAssertEqual(greedy.stdout.filter { $0 == "\n" }.count, 1, greedy.stdout)
        let beams = try lora(base + ["--num-beams", "2"])
        XCTAssertEqual(beams.status, 0, beams.stderr)
        let bad = try lora(["generate", "--base-model", model, "--prompt", "hi", "--chat-template", "chatml"])
        XCTAssertEqual(bad.status, 64, bad.stderr)
        XCTAssert(bad.stderr.contains("--chat-template and --system go with --chat"), bad.stderr)
        let none = try lora(["generate", "--base-model", model, "--chat", "hi", "--load-8bit", "false"])
        XCTAssertEqual(none.status, 1)
        XCTAssert(none.stderr.contains("no chat template"), none.stderr)
    }

    /// `eval` takes chat records for the loss (assistant turns only), not for exact match.
    func testEvalLossOnChatRecords() throws {
        let args = ["eval", "--base-model", Self.fixtures.appendingPathComponent("tiny-mha").path, "--data-path",
                    Self.fixtures.appendingPathComponent("chat/conversations.json").path, "--load-8bit", "false"]
        let r = try lora(args + ["--chat-template", "llama2", "--json", "--limit", "3"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try JSON.parse(r.stdout, source: "stdout")
        XCTAssertEqual(j["records"]?.int, 3)
        XCTAssert((j["loss"]?.double ?? 0) > 0, r.stdout)
        let em = try lora(args + ["--chat-template", "chatml", "--metric", "exact_match"])
        XCTAssertEqual(em.status, 64, em.stderr)
        XCTAssert(em.stderr.contains("exact_match needs Alpaca records"), em.stderr)
    }
}
