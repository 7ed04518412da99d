import XCTest
@testable import LLaMA
import Tensor

/// Greedy, repetition-penalty and beam-search ids against transformers' generate().
final class GenerationParityTests: XCTestCase {
    func check(_ name: String, section: String, prefillChunk: Int = 512, options: (JSON) -> GenerationOptions) throws {
        let ck = try SafeTensorsCheckpoint(folder: Fixtures.model(name))
        let model = try LlamaModel(checkpoint: ck, quantization: .none, pool: testPool)
        let ref = try Fixtures.json("\(name).forward.json")
        let prompts = ref["prompts"]!.array!
        let gen = Generator(model: model, ctx: testCtx, eosIDs: Set(ck.config.eosTokenIDs), prefillChunk: prefillChunk)
        let cases = try XCTUnwrap(ref["generation"]?[section]?.array)
        XCTAssertFalse(cases.isEmpty)
        for c in cases {
            let prompt = prompts[c["prompt_index"]!.int!]["input_ids"]!.ints32
            var expected = c["new_ids"]!.ints32
            if c["ended_with_eos"]?.bool == true { expected.removeLast() }   // we return ids without EOS
            var streamed: [Int32] = []
            let got = try gen.generate(prompt: prompt, options: options(c)) { streamed.append($0) }
            XCTAssertEqual(got, expected, "\(name) \(section) prompt \(c["prompt_index"]!.int!)")
            XCTAssertEqual(streamed, got, "streamed ids equal the result")
        }
    }

    func greedy(_ c: JSON) -> GenerationOptions {
        var o = GenerationOptions(); o.numBeams = 1; o.maxNewTokens = 24
        if let p = c["repetition_penalty"]?.double { o.repetitionPenalty = Float(p) }
        return o
    }

    func beam(_ c: JSON) -> GenerationOptions {
        var o = GenerationOptions(); o.numBeams = c["num_beams"]?.int ?? 4; o.maxNewTokens = 24
        return o
    }

    func testGreedyMHA() throws { try check("tiny-mha", section: "greedy", options: greedy) }
    func testGreedyGQA() throws { try check("tiny-gqa", section: "greedy", options: greedy) }
    func testRepetitionPenaltyMHA() throws { try check("tiny-mha", section: "greedy_repetition_penalty", options: greedy) }
    func testRepetitionPenaltyGQA() throws { try check("tiny-gqa", section: "greedy_repetition_penalty", options: greedy) }
    func testBeamSearchMHA() throws { try check("tiny-mha", section: "beam", options: beam) }
    func testBeamSearchGQA() throws { try check("tiny-gqa", section: "beam", options: beam) }

    /// Prompts longer than the prefill chunk (512 in use; 3 here), greedy and with beams: beam
    /// search feeds the shared prompt as one sequence into a cache sized for 4, and once did
    /// so in one step past the attention scratch (`lora generate` crashed past 512 tokens).
    func testPromptsLongerThanThePrefillChunk() throws {
        try check("tiny-gqa", section: "greedy", prefillChunk: 3, options: greedy)
        try check("tiny-gqa", section: "beam", prefillChunk: 3, options: beam)
        try check("tiny-mha", section: "beam", prefillChunk: 3, options: beam)
    }

    /// Sampling is reproducible from the seed and respects top-k = 1 (which is greedy).
    func testSamplingIsSeeded() throws {
        let model = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-mha")), quantization: .none, pool: testPool)
        let gen = Generator(model: model, ctx: testCtx, eosIDs: [])
        var o = GenerationOptions(); o.numBeams = 1; o.doSample = true; o.maxNewTokens = 12; o.temperature = 1; o.topP = 1; o.topK = 0
        o.seed = 5
        let a = try gen.generate(prompt: [1, 295], options: o)
        XCTAssertEqual(a, try gen.generate(prompt: [1, 295], options: o))
        o.seed = 6
        XCTAssertNotEqual(a, try gen.generate(prompt: [1, 295], options: o))
        o.topK = 1
        var g = GenerationOptions(); g.numBeams = 1; g.maxNewTokens = 12
        XCTAssertEqual(try gen.generate(prompt: [1, 295], options: o), try gen.generate(prompt: [1, 295], options: g))
    }

    /// max_new_tokens far past the model's context (which sizes the KV cache) ends generation
    /// when the context is full, greedy and with beams; a prompt that fills the context and a
    /// beam count past the bound are refused by name.
    func testContextBoundsGeneration() throws {
        let model = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-gqa")), quantization: .none, pool: testPool)
        let gen = Generator(model: model, ctx: testCtx, eosIDs: [])
        let context = model.config.maxPositionEmbeddings, prompt: [Int32] = [1, 40, 300, 12]
        XCTAssertLessThan(context, 4096, "a fixture with a short context")
        for beams in [1, 4] {
            var o = GenerationOptions(); o.numBeams = beams; o.maxNewTokens = 1_000_000_000
            let got = try gen.generate(prompt: prompt, options: o)
            XCTAssertEqual(got.count, context - prompt.count, "\(beams) beams: as many tokens as the context holds")
        }
        var o = GenerationOptions(); o.numBeams = 1
        XCTAssertThrowsError(try gen.generate(prompt: [Int32](repeating: 5, count: context), options: o)) { e in
            XCTAssertTrue("\(e)".contains("exceeds"), "\(e)")
        }
        o.numBeams = GenerationOptions.maxBeams + 1
        XCTAssertThrowsError(try gen.generate(prompt: prompt, options: o)) { e in
            XCTAssertEqual(e as? GenerationError, .badOption(name: "num_beams", value: "65", expected: "1 to 64"))
        }
    }

    func testLogitsProcessorsMatchHuggingFaceDefinitions() {
        var s: [Float] = [2, -2, 1, 0.5]
        LogitsProcessing.repetitionPenalty(&s, seen: [0, 1, 1], penalty: 2)
        XCTAssertEqual(s, [1, -4, 1, 0.5])
        var t: [Float] = [1, 3, 2, 3]
        LogitsProcessing.topK(&t, V: 4, 2)
        XCTAssertEqual(t, [-.infinity, 3, -.infinity, 3])
        // top_p 0.5 over probabilities [0.1, 0.6, 0.3]: only the 0.6 token survives.
        var p: [Float] = [log(0.1), log(0.6), log(0.3)]
        LogitsProcessing.topP(&p, V: 3, 0.5)
        XCTAssertEqual(p[0], -.infinity); XCTAssertEqual(p[2], -.infinity); XCTAssertEqual(p[1], log(0.6), accuracy: 1e-6)
    }
}
