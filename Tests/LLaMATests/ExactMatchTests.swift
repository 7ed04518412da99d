import XCTest
@testable import LLaMA
import Tensor

/// `lora eval --metric exact_match`: the comparison, the seeded sample, answers equal to what
/// the Generator gives step by step, and the committed task files in data/.
final class ExactMatchTests: XCTestCase {
    static let dataDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("data")

    func testComparisonTrimsOnlySurroundingWhitespace() {
        XCTAssertTrue(ExactMatch.isMatch(expected: "42", got: " 42\n"))
        XCTAssertTrue(ExactMatch.isMatch(expected: "apple, pear\n", got: "\tapple, pear"))
        XCTAssertTrue(ExactMatch.isMatch(expected: "", got: " \n"))
        XCTAssertFalse(ExactMatch.isMatch(expected: "42", got: "42."))
        XCTAssertFalse(ExactMatch.isMatch(expected: "Paris", got: "paris"))
        XCTAssertFalse(ExactMatch.isMatch(expected: "apple, pear", got: "apple,  pear"))
        XCTAssertFalse(ExactMatch.isMatch(expected: "7", got: ""))
        XCTAssertEqual(ExactMatch.normalize("\n  09:00 \r\n"), "09:00")
    }

    func testDecodingIsGreedyWithTheGivenBudget() throws {
        let o = ExactMatch.options(maxNewTokens: 7)
        XCTAssertTrue(o.isGreedy)
        XCTAssertEqual(o.numBeams, 1)
        XCTAssertEqual(o.maxNewTokens, 7)
        XCTAssertEqual(o.repetitionPenalty, 1)
        XCTAssertEqual(ExactMatch.defaultMaxNewTokens, 32)
        XCTAssertThrowsError(try ExactMatch.options(maxNewTokens: 0).validate())
    }

    func testSampleIsSeededDistinctAndInFileOrder() {
        let a = EvalSample.indices(count: 100, limit: 10, seed: 3)
        XCTAssertEqual(a.count, 10)
        XCTAssertEqual(Set(a).count, 10, "no record twice")
        XCTAssertEqual(a, a.sorted(), "file order")
        XCTAssertTrue(a.allSatisfy { (0..<100).contains($0) })
        XCTAssertEqual(a, EvalSample.indices(count: 100, limit: 10, seed: 3), "same seed, same sample")
        XCTAssertNotEqual(a, EvalSample.indices(count: 100, limit: 10, seed: 4), "another seed, another sample")
        XCTAssertNotEqual(a, Array(0..<10), "a random sample, not the first records")
        // Over many seeds every record gets picked (no index is unreachable).
        var seen = Set<Int>()
        for s in 0..<200 { seen.formUnion(EvalSample.indices(count: 30, limit: 3, seed: UInt64(s))) }
        XCTAssertEqual(seen.count, 30)
        // No limit, or one at least the record count, keeps every record in order.
        XCTAssertEqual(EvalSample.indices(count: 5, limit: nil, seed: 3), [0, 1, 2, 3, 4])
        XCTAssertEqual(EvalSample.indices(count: 5, limit: 5, seed: 3), [0, 1, 2, 3, 4])
        XCTAssertEqual(EvalSample.indices(count: 5, limit: 9, seed: 3), [0, 1, 2, 3, 4])
    }

    /// The scored answers are the ones the Generator gives for the template's prompt (BOS in
    /// front, greedy, `maxNewTokens`), cut with Prompter.response as `lora generate` does.
    /// Generator itself is checked against transformers in GenerationParityTests.
    func testScoresTheGreedyAnswersTheGeneratorGives() throws {
        let loaded = try LoadedModel(path: Fixtures.model("tiny-mha").path, quantization: .none, pool: testPool)
        let prompter = try Prompter(named: "alpaca")
        let gen = Generator(model: loaded.model, ctx: testCtx, eosIDs: loaded.eosIDs)
        let questions = [("Name a color.", ""), ("Add the numbers.", "2, 3"), ("Reverse the word.", "apple"),
                         ("Say hello.", ""), ("What is the capital of France?", "")]
        func direct(_ q: (String, String), budget: Int) throws -> String {
            let ids = loaded.tokenizer.encode(prompter.generatePrompt(instruction: q.0, input: q.1), addBOS: true)
            XCTAssertEqual(ids.first, loaded.tokenizer.bosID)
            var o = GenerationOptions()
            o.numBeams = 1; o.maxNewTokens = budget
            let new = try gen.generate(prompt: ids, options: o)
            return prompter.response(from: loaded.tokenizer.decode(ids + new))
        }
        let answers = try questions.map { try direct($0, budget: 12) }
        XCTAssertTrue(answers.contains { !$0.isEmpty }, "the tiny model answers something: \(answers)")

        // Even records carry the model's answer (padded with whitespace), odd ones a wrong one.
        let records = questions.enumerated().map { i, q in
            AlpacaRecord(instruction: q.0, input: q.1, output: i % 2 == 0 ? "  \(answers[i])\n" : answers[i] + "!")
        }
        var progress: [[Int]] = []
        let r = try ExactMatch.evaluate(records: records, prompter: prompter, tokenizer: loaded.tokenizer,
                                        generator: gen, maxNewTokens: 12) { p in
            progress.append([p.done, p.total, Int((p.metricValue! * Double(p.done)).rounded())])
        }
        XCTAssertEqual(r.correct, 3)
        XCTAssertEqual(r.total, 5)
        XCTAssertEqual(r.accuracy, 0.6, accuracy: 1e-12)
        XCTAssertEqual(r.failures.map(\.index), [1, 3])
        XCTAssertEqual(r.failures.map(\.got), [answers[1], answers[3]])
        XCTAssertEqual(r.failures.map(\.expected), [answers[1] + "!", answers[3] + "!"])
        XCTAssertEqual(r.failures.map(\.instruction), [questions[1].0, questions[3].0])
        XCTAssertEqual(r.failures.map(\.input), [questions[1].1, questions[3].1])
        XCTAssertEqual(progress, [[1, 5, 1], [2, 5, 1], [3, 5, 2], [4, 5, 2], [5, 5, 3]])

        // A subset is visited in the order given, failures keep their file index.
        let s = try ExactMatch.evaluate(records: records, indices: [3, 2], prompter: prompter,
                                        tokenizer: loaded.tokenizer, generator: gen, maxNewTokens: 12)
        XCTAssertEqual(s.total, 2)
        XCTAssertEqual(s.correct, 1)
        XCTAssertEqual(s.failures.map(\.index), [3])

        // The budget reaches the generator: with 2 new tokens the answers are the 2-token ones.
        let short = try questions.map { try direct($0, budget: 2) }
        let t = try ExactMatch.evaluate(records: questions.enumerated().map { i, q in
            AlpacaRecord(instruction: q.0, input: q.1, output: short[i])
        }, prompter: prompter, tokenizer: loaded.tokenizer, generator: gen, maxNewTokens: 2)
        XCTAssertEqual(t.correct, questions.count, "\(t.failures)")
        XCTAssertNotEqual(short, answers, "2 and 12 tokens give different answers, so the budget is tested")
    }

    /// The committed task files (scripts/make_tasks.py) load, and no (instruction, input)
    /// prompt of the eval file occurs in the training file.
    func testTaskFilesLoadAndShareNoPrompt() throws {
        struct Prompt: Hashable { let instruction: String; let input: String }
        let train = try AlpacaData.load(Self.dataDir.appendingPathComponent("tasks_train.json"))
        let eval = try AlpacaData.load(Self.dataDir.appendingPathComponent("tasks_eval.json"))
        XCTAssertGreaterThanOrEqual(train.count, 2500)
        XCTAssertGreaterThanOrEqual(eval.count, 150)
        let trainPrompts = Set(train.map { Prompt(instruction: $0.instruction, input: $0.input) })
        let evalPrompts = Set(eval.map { Prompt(instruction: $0.instruction, input: $0.input) })
        XCTAssertEqual(trainPrompts.count, train.count, "training prompts are distinct")
        XCTAssertEqual(evalPrompts.count, eval.count, "eval prompts are distinct")
        XCTAssertTrue(trainPrompts.isDisjoint(with: evalPrompts),
                      "shared: \(trainPrompts.intersection(evalPrompts).prefix(3))")
        for r in train + eval {
            XCTAssertFalse(r.output.isEmpty, "\(r)")
            XCTAssertEqual(r.output, ExactMatch.normalize(r.output), "outputs carry no surrounding whitespace: \(r)")
            XCTAssertLessThanOrEqual(r.output.count, 40, "answers are short: \(r)")
        }
        let sample = try AlpacaData.load(Self.dataDir.appendingPathComponent("alpaca_sample.json"))
        XCTAssertEqual(sample.count, 50)
    }
}
