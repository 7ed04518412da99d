import Foundation
import XCTest
import TestHelpers
import LLaMA
@testable import lora

/// Everyday use (issue 15): progress lines of every long command, --quiet, models by Hub name,
/// the adapter's model card, GGUF -> HF tokenizer files, --version.
final class UXTests: XCTestCase {
    static let fixtures = CLITests.fixtures
    static let tiny = fixtures.appendingPathComponent("tiny-mha").path
    static let records = fixtures.appendingPathComponent("records.json").path

    func lora(_ args: [String], environment: [String: String] = [:]) throws -> LoraProcess.Result {
        try LoraProcess.run(args, environment: environment)
    }

    /// The plain lines of `task` in stderr.
    func lines(_ stderr: String, _ task: String) -> [String] {
        stderr.split(separator: "\n").map(String.init).filter { $0.hasPrefix(task + " ") }
    }

    /// Counts rise to the total; every line before the last has an ETA, the last says "done in".
    func assertProgress(_ stderr: String, _ task: String, total: Int, unit: String, file: StaticString = #filePath, line: UInt = #line) {
        let ls = lines(stderr, task)
        XCTAssertGreaterThanOrEqual(ls.count, 2, "\(task) lines in:\n\(stderr)", file: file, line: line)
        XCTAssert(ls.last?.contains("\(total)/\(total) \(unit) 100%") == true, "\(task) reaches \(total):\n\(stderr)", file: file, line: line)
        XCTAssert(ls.last?.contains("done in ") == true, stderr, file: file, line: line)
        XCTAssert(ls.dropLast().allSatisfy { $0.contains("ETA ") }, "ETA on the running lines:\n\(stderr)", file: file, line: line)
        XCTAssertFalse(stderr.contains("\r") || stderr.contains("\u{1B}"), "no terminal codes in plain lines", file: file, line: line)
    }

    func testEvalProgressAndQuiet() throws {
        let n = try AlpacaData.load(URL(fileURLWithPath: Self.records)).count
        for metric in ["exact_match", "loss"] {
            let args = ["eval", "--base-model", Self.tiny, "--data-path", Self.records, "--metric", metric,
                        "--max-new-tokens", "4", "--micro-batch-size", "1", "--load-8bit", "false", "--threads", "1"]
            let r = try lora(args)
            XCTAssertEqual(r.status, 0, r.stderr)
            assertProgress(r.stderr, "loading", total: 17, unit: "tensors")   // embed, 7 projections x 2 layers, norm, lm_head
            assertProgress(r.stderr, "eval", total: n, unit: "records")
            XCTAssert(lines(r.stderr, "eval").last!.contains(metric == "loss" ? "loss " : "accuracy "), r.stderr)
            if metric == "loss" { assertProgress(r.stderr, "tokenize", total: n, unit: "records") }
            let q = try lora(args + ["--quiet"])
            XCTAssertEqual(q.status, 0, q.stderr)
            XCTAssertEqual(q.stderr, "", "--quiet prints only results")
            XCTAssertEqual(q.stdout, r.stdout)
            // --json: the result on stdout, progress as JSON lines on stderr.
            let j = try lora(args + ["--json"])
            XCTAssertEqual(j.status, 0, j.stderr)
            let events = try j.stderr.split(separator: "\n").map { try JSON.parse(String($0), source: "stderr") }
            let evals = events.filter { $0["task"]?.string == "eval" }
            XCTAssertEqual(evals.last?["done"]?.int, n)
            XCTAssertEqual(evals.last?["total"]?.int, n)
            XCTAssert(evals.dropLast().allSatisfy { $0["eta_s"]?.double != nil }, j.stderr)
        }
    }

    func testGenerateAndMergeProgressAndQuiet() throws {
        let g = ["generate", "--base-model", Self.tiny, "--prompt", "Once upon a time", "--max-new-tokens", "4", "--num-beams", "1"]
        let r = try lora(g)
        XCTAssertEqual(r.status, 0, r.stderr)
        assertProgress(r.stderr, "loading", total: 17, unit: "tensors")
        XCTAssert(lines(r.stderr, "prefill").last?.contains("tokens 100%") == true, r.stderr)
        let q = try lora(g + ["--quiet"])
        XCTAssertEqual(q.stderr, "")
        XCTAssertEqual(q.stdout, r.stdout)

        let dir = try tempDir()
        let adapter = Self.fixtures.appendingPathComponent("merge/tiny-mha-a.adapter").path
        for (format, label, out) in [("hf", "merging", "hf"), ("gguf", "writing GGUF", "m.gguf")] {
            let m = try lora(["merge", "--base-model", Self.tiny, "--lora-weights", adapter, "--format", format,
                              "--output", dir.appendingPathComponent(out).path])
            XCTAssertEqual(m.status, 0, m.stderr)
            assertProgress(m.stderr, label, total: 21, unit: "tensors")   // embed, 9 per layer (7 projections, 2 norms), norm, lm_head
            let mq = try lora(["merge", "--base-model", Self.tiny, "--lora-weights", adapter, "--format", format, "--quiet",
                               "--output", dir.appendingPathComponent("q-" + out).path])
            XCTAssertEqual(mq.status, 0, mq.stderr)
            XCTAssertEqual(mq.stderr.split(separator: "\n").count, 1, mq.stderr)
            XCTAssert(mq.stderr.hasPrefix("wrote "), mq.stderr)
        }
    }

    /// The renderer with a fake clock: rate, ETA, the tenth-of-total throttle, JSON events.
    func testRendererWithFakeClock() throws {
        var now = 100.0, out = ""
        let r = ProgressRenderer(style: .plain, clock: { now }, write: { out += $0 })
        r.begin(.eval)
        for i in 1...20 {
            now += 2
            r.handle(TaskProgress(task: .eval, done: i, total: 20, unit: "records", metricName: "accuracy", metricValue: 0.5))
        }
        let ls = out.split(separator: "\n").map(String.init)
        XCTAssertEqual(ls.count, 10, out)   // every tenth
        XCTAssertEqual(ls[0], "eval 2/20 records 10%  0.50 records/s  ETA 0m36s  accuracy 0.5000")
        XCTAssertEqual(ls[9], "eval 20/20 records 100%  0.50 records/s  done in 0m40s  accuracy 0.5000")

        out = ""
        let j = ProgressRenderer(style: .json, clock: { now }, write: { out += $0 })
        j.begin(.merge)
        now += 4
        j.handle(TaskProgress(task: .merge, done: 1, total: 2, unit: "tensors", bytes: 1000))
        let e = try JSON.parse(String(out.split(separator: "\n")[0]), source: "stderr")
        XCTAssertEqual(e["eta_s"]?.double, 4)
        XCTAssertEqual(e["bytes"]?.int, 1000)

        out = ""
        let live = ProgressRenderer(style: .live, clock: { now }, write: { out += $0 })
        live.handle(TaskProgress(task: .eval, done: 1, total: 3, unit: "records"))
        now += 1
        live.handle(TaskProgress(task: .eval, done: 2, total: 3, unit: "records"))
        XCTAssertEqual(out.components(separatedBy: "\r\u{1B}[K").count, 3, "each draw rewrites the line")
        XCTAssertEqual(ProgressRenderer.style(quiet: true, json: false, terminal: true), .quiet)
        XCTAssertEqual(ProgressRenderer.style(quiet: false, json: false, terminal: false), .plain)
        XCTAssertEqual(ProgressRenderer.style(quiet: false, json: true, terminal: false), .json)
        XCTAssertEqual(ProgressRenderer.style(quiet: false, json: true, terminal: true), .live)
    }

    /// `--base-model ORG/NAME` from a fake Hub cache; a missing name is one line naming the paths.
    func testModelsByHubName() throws {
        let home = try tempDir()
        try HubCacheFixture.make(home.appendingPathComponent("hub"), org: "Org", name: "tiny",
                                 from: Self.fixtures.appendingPathComponent("tiny-mha"))
        let env = ["HF_HOME": home.path, "HF_HUB_CACHE": ""]
        let byName = try lora(["tokenize", "--base-model", "Org/tiny", "--text", "Hello world"], environment: env)
        XCTAssertEqual(byName.status, 0, byName.stderr)
        XCTAssertEqual(byName.stdout, try lora(["tokenize", "--base-model", Self.tiny, "--text", "Hello world"]).stdout)
        let gen = try lora(["generate", "--base-model", "Org/tiny", "--prompt", "Hi", "--max-new-tokens", "3", "--quiet"], environment: env)
        XCTAssertEqual(gen.status, 0, gen.stderr)
        let missing = try lora(["generate", "--base-model", "Org/absent", "--prompt", "Hi"], environment: env)
        XCTAssertEqual(missing.status, 1)
        XCTAssertEqual(missing.stderr.split(separator: "\n").count, 1, missing.stderr)
        XCTAssert(missing.stderr.contains(home.appendingPathComponent("hub/models--Org--absent").path), missing.stderr)
        XCTAssert(missing.stderr.contains("huggingface-cli download Org/absent"), missing.stderr)
    }

    /// The adapter's README.md carries the run's settings.
    func testFinetuneModelCard() throws {
        let dir = try tempDir().appendingPathComponent("out")
        let args = ["finetune", "--base-model", Self.tiny, "--data-path", Self.records,
                    "--output-dir", dir.path, "--batch-size", "2", "--micro-batch-size", "1", "--val-set-size", "2",
                    "--max-steps", "4", "--warmup-steps", "1", "--logging-steps", "2", "--eval-steps", "2", "--save-steps", "10",
                    "--learning-rate", "0.01", "--cutoff-len", "64", "--load-8bit", "false", "--lora-r", "4", "--lora-alpha", "8",
                    "--lora-target-modules", "q_proj,k_proj,v_proj", "--quiet"]
        let r = try lora(args)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "--quiet: only the result line\n\(r.stderr)")
        let card = try String(contentsOf: dir.appendingPathComponent("README.md"), encoding: .utf8)
        XCTAssert(card.hasPrefix("---\nbase_model: \"\(Self.tiny)\"\nlibrary_name: peft\n"), card)
        XCTAssert(card.contains("- \"base_model:adapter:\(Self.tiny)\"\n- lora\n"), card)
        for row in ["| r | 4 |", "| lora_alpha | 8.0 |", "| target_modules | q_proj, k_proj, v_proj |", "| scale | 2.0 |", "| use_dora | false |",
                    "| data file | \(Self.records) |", "| records | 6 (4 train, 2 validation) |", "| steps | 4 |",
                    "| learning_rate | 0.01 |", "| cutoff_len | 64 |"] {
            XCTAssert(card.contains(row), "\(row) in\n\(card)")
        }
        let log = try String(contentsOf: dir.appendingPathComponent("trainer_log.jsonl"), encoding: .utf8)
        let evals = try log.split(separator: "\n").map { try JSON.parse(String($0), source: "stderr") }.compactMap { $0["eval_loss"]?.double }
        XCTAssertEqual(evals.count, 2)
        XCTAssert(card.contains(String(format: "| final eval loss | %.4f |", evals.last!)), card)
        XCTAssert(card.contains(String(format: "| best eval loss | %.4f (step ", evals.min()!)), card)
        XCTAssert(card.contains("lora finetune --base-model \(Self.tiny) "), card)
        XCTAssert(card.contains(" --lora-target-modules q_proj,k_proj,v_proj --quiet\n"), card)
    }

    /// merge from a GGUF base to an HF folder writes the tokenizer files; their ids equal the GGUF's.
    func testMergeFromGGUFWritesTokenizer() throws {
        let gguf = Self.fixtures.appendingPathComponent("gguf/tiny-mha.gguf").path
        let out = try tempDir().appendingPathComponent("hf")
        let m = try lora(["merge", "--base-model", gguf, "--lora-weights", Self.fixtures.appendingPathComponent("merge/tiny-mha-a.adapter").path,
                          "--output", out.path, "--quiet"])
        XCTAssertEqual(m.status, 0, m.stderr)
        for f in ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "config.json", "model.safetensors"] {
            XCTAssert(FileManager.default.fileExists(atPath: out.appendingPathComponent(f).path), "\(f): \(m.stderr)")
        }
        let text = "Grüße, 東京! 12 apples"
        XCTAssertEqual(try lora(["tokenize", "--base-model", out.path, "--text", text]).stdout,
                       try lora(["tokenize", "--base-model", gguf, "--text", text]).stdout)
    }

    func testVersion() throws {
        let r = try lora(["--version"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let ls = r.stdout.split(separator: "\n").map(String.init)
        XCTAssert(ls.first?.hasPrefix("lora \(Lora.version) (commit ") == true, r.stdout)
        for k in ["cpu: ", "kernels: ", "backend: cpu ", "blas: ", "gpu: "] {
            XCTAssert(ls.contains { $0.hasPrefix(k) }, "\(k) in\n\(r.stdout)")
        }
        let c = try lora(["--generate-completion-script", "bash"])
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssert(c.stdout.contains("finetune") && c.stdout.contains("--base-model"), c.stdout)
    }
}
