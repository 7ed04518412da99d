import XCTest
@testable import LLaMA
import Tensor

/// Tokenization, masking and batching of Alpaca records against alpaca-lora's exact rules
/// (ids and labels computed by scripts/make_reference.py).
final class AlpacaDataTests: XCTestCase {
    func testTokenizationAndMaskingMatchAlpacaLora() throws {
        let ref = try Fixtures.json("alpaca_tokenize.json")
        let records = try AlpacaData.load(Fixtures.root.appendingPathComponent("records.json"))
        let tok = try loadTokenizer(folder: Fixtures.model("tiny-mha"))
        let prompter = try Prompter(named: "alpaca")
        let runs = try XCTUnwrap(ref["runs"]?.array)
        XCTAssertGreaterThanOrEqual(runs.count, 8)
        for run in runs {
            let builder = ExampleBuilder(tokenizer: tok, prompter: prompter, cutoffLen: run["cutoff_len"]!.int!,
                                         trainOnInputs: run["train_on_inputs"]!.bool!, addEOSToken: run["add_eos_token"]!.bool!)
            for (i, r) in run["records"]!.array!.enumerated() {
                let e = builder.example(records[i])
                let what = "record \(i) cutoff \(builder.cutoffLen) train_on_inputs \(builder.trainOnInputs) add_eos \(builder.addEOSToken)"
                XCTAssertEqual(e.inputIDs, r["input_ids"]!.ints32, "ids of \(what)")
                XCTAssertEqual(e.labels, r["labels"]!.ints32, "labels of \(what)")
            }
        }
    }

    func testCollatorPadsLeftToMultipleOf8LikeReference() throws {
        let ref = try Fixtures.json("train-mha-qv.json")
        let per = ref["per_record"]!.array!.map { Example(inputIDs: $0["input_ids"]!.ints32, labels: $0["labels"]!.ints32) }
        for (k, mb) in ref["micro_batches"]!.array!.enumerated() {
            let b = Collator.batch(Array(per[(2 * k)..<(2 * k + 2)]), padID: 0)
            XCTAssertEqual(b.inputIDs, mb["input_ids"]!.array!.flatMap { $0.ints32 })
            XCTAssertEqual(b.labels, mb["labels"]!.array!.flatMap { $0.ints32 })
            XCTAssertEqual(b.attentionMask, mb["attention_mask"]!.array!.flatMap { $0.ints32 }.map(Float.init))
            XCTAssertEqual(b.T % 8, 0)
        }
    }

    func testBadRecordsNameFileRecordAndField() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-data-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func check(_ text: String, _ expected: String) throws {
            let f = dir.appendingPathComponent("d.json")
            try text.write(to: f, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try AlpacaData.load(f)) { e in
                let msg = "\(e)"
                XCTAssert(msg.contains(f.path) && msg.contains(expected), "message '\(msg)' should name the file and '\(expected)'")
            }
        }
        try check(#"[{"instruction": "a", "output": "b"}, {"instruction": "c"}]"#, "record 1: field 'output' is missing")
        try check(#"[{"instruction": 3, "output": "b"}]"#, "record 0: field 'instruction' is an integer, expected a string")
        try check(#"[{"instruction": "a", "output": "b""#, "invalid JSON")
        try check(#"{"a": 1}"# + "\n" + "[", "invalid JSON")
        try check(#"{"instruction": "a", "output": "b", "input": null}"# + "\n" + #"{"instruction": "a"}"#, "record 1: field 'output' is missing")
        // JSON lines with an absent or null input are fine.
        let ok = dir.appendingPathComponent("ok.jsonl")
        try (#"{"instruction": "a", "output": "b"}"# + "\n" + #"{"instruction": "c", "input": null, "output": "d"}"# + "\n").write(to: ok, atomically: true, encoding: .utf8)
        XCTAssertEqual(try AlpacaData.load(ok), [AlpacaRecord(instruction: "a", output: "b"), AlpacaRecord(instruction: "c", output: "d")])
    }

    func testSamplerIsSeededAndGroupsByLength() {
        let lengths = (0..<500).map { ($0 * 37) % 101 }
        let a = Sampler.order(count: 500, lengths: lengths, epoch: 0, seed: 7, groupByLength: false, microBatchSize: 4)
        XCTAssertEqual(a, Sampler.order(count: 500, lengths: lengths, epoch: 0, seed: 7, groupByLength: false, microBatchSize: 4))
        XCTAssertNotEqual(a, Sampler.order(count: 500, lengths: lengths, epoch: 1, seed: 7, groupByLength: false, microBatchSize: 4))
        XCTAssertEqual(a.sorted(), Array(0..<500))
        let g = Sampler.order(count: 500, lengths: lengths, epoch: 0, seed: 7, groupByLength: true, microBatchSize: 4)
        XCTAssertEqual(g.sorted(), Array(0..<500))
        XCTAssertEqual(lengths[g[0]], lengths.max())
        // Within a mega-batch (after the first element) lengths do not increase.
        for i in 2..<200 { XCTAssertGreaterThanOrEqual(lengths[g[i - 1]], lengths[g[i]]) }
        let (tr, va) = Sampler.split(count: 100, valSize: 10, seed: 42)
        XCTAssertEqual(va.count, 10); XCTAssertEqual(Set(tr).union(va).count, 100)
    }
}
