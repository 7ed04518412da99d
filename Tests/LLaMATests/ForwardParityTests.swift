import XCTest
@testable import LLaMA
import Tensor

/// Logits of the tiny checkpoints against transformers (f32, eager attention).
final class ForwardParityTests: XCTestCase {
    /// Named tolerance: f32 logits vs transformers, absolute.
    static let logitsTolerance: Float = 1e-4

    func checkLogits(model name: String, load8bit: Bool) throws {
        let ck = try SafeTensorsCheckpoint(folder: Fixtures.model(name))
        let model = try LlamaModel(checkpoint: ck, quantization: Quantization(load8bit: load8bit), pool: testPool)
        let ref = try Fixtures.json("\(name).forward.json")
        let tensors = try Fixtures.tensors("\(name).forward.safetensors")
        let prompts = try XCTUnwrap(ref["prompts"]?.array)
        XCTAssertGreaterThanOrEqual(prompts.count, 3)
        for p in prompts {
            let ids = p["input_ids"]!.ints32
            let key = p[load8bit ? "logits_int8_key" : "logits_key"]!.string!
            let expected = try XCTUnwrap(try tensors.f32(key))
            let batch = Batch(B: 1, T: ids.count, inputIDs: ids, attentionMask: .init(repeating: 1, count: ids.count),
                              labels: ids)
            let acts = Activations(model: model, maxB: 1, maxT: ids.count)
            let logits = model.logits(batch, adapters: .none, acts: acts, ctx: testCtx)
            XCTAssertEqual(expected.count, ids.count * model.config.vocabSize)
            assertClose(logits.data, expected.data, count: expected.count, abs: Self.logitsTolerance,
                        "\(name) \(load8bit ? "int8" : "f32") logits of prompt \(p["index"]!.int!)")
        }
    }

    func testMHALogitsF32() throws { try checkLogits(model: "tiny-mha", load8bit: false) }
    func testGQALogitsF32() throws { try checkLogits(model: "tiny-gqa", load8bit: false) }
    func testMHALogitsInt8() throws { try checkLogits(model: "tiny-mha", load8bit: true) }
    func testGQALogitsInt8() throws { try checkLogits(model: "tiny-gqa", load8bit: true) }

    /// The KV-cache decode path gives the same last-token logits as the full forward.
    func testCachedDecodeMatchesFullForward() throws {
        for name in ["tiny-mha", "tiny-gqa"] {
            let ck = try SafeTensorsCheckpoint(folder: Fixtures.model(name))
            let model = try LlamaModel(checkpoint: ck, quantization: .none, pool: testPool)
            let ref = try Fixtures.json("\(name).forward.json")
            let tensors = try Fixtures.tensors("\(name).forward.safetensors")
            let p = ref["prompts"]!.array!.max { $0["input_ids"]!.array!.count < $1["input_ids"]!.array!.count }!
            let ids = p["input_ids"]!.ints32
            let expected = try XCTUnwrap(try tensors.f32(p["logits_key"]!.string!))
            let V = model.config.vocabSize
            // Prefill half, then one token at a time.
            let cache = KVCache(model: model, sequences: 1, capacity: ids.count, maxChunk: 4)
            let half = ids.count / 2
            try model.step(tokens: Array(ids[..<half]), sequences: 1, cache: cache, adapters: .none, ctx: testCtx)
            assertClose(cache.logits.data, expected.data + (half - 1) * V, count: V, abs: Self.logitsTolerance, "\(name) prefill")
            for t in half..<ids.count {
                try model.step(tokens: [ids[t]], sequences: 1, cache: cache, adapters: .none, ctx: testCtx)
                assertClose(cache.logits.data, expected.data + t * V, count: V, abs: Self.logitsTolerance, "\(name) step \(t)")
            }
        }
    }

    func testInt8QuantizationMatchesReference() throws {
        for name in ["tiny-mha", "tiny-gqa"] {
            let ck = try SafeTensorsCheckpoint(folder: Fixtures.model(name))
            let model = try LlamaModel(checkpoint: ck, quantization: .int8, pool: testPool)
            let tensors = try Fixtures.tensors("\(name).forward.safetensors")
            let q = try XCTUnwrap(try tensors.f32("int8.q.layers.0.self_attn.q_proj"))
            let s = try XCTUnwrap(try tensors.f32("int8.scale.layers.0.self_attn.q_proj"))
            let w = model.blocks[0].q.weight
            guard w.format.name == "int8", let scales = w.scales else { return XCTFail("q_proj not int8") }
            let mq = w.data.assumingMemoryBound(to: Int8.self)
            for i in 0..<q.count { XCTAssertEqual(Float(mq[i]), q[i], "\(name) q[\(i)]"); if Float(mq[i]) != q[i] { break } }
            for i in 0..<s.count { XCTAssertEqual(scales[i], s[i], "\(name) scale[\(i)]") }
        }
    }

    /// A model loaded for decoding only (generate, serve) makes the decoding head from the
    /// checkpoint's lm_head at load and keeps no f32 copy: the same head bytes, so the same
    /// logits bit for bit, and the f32 head's bytes fewer (tiny-mha is untied). Its weights
    /// and head sit in the huge-page arena; a training load's do not.
    func testDecodingOnlyLoadKeepsNoF32HeadAndDecodesTheSame() throws {
        for q in [Quantization.int8, .llm_int8, .bf16, .none] {
            let ck = try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-mha"))
            let train = try LlamaModel(checkpoint: ck, quantization: q, pool: testPool)
            let dec = try LlamaModel(checkpoint: ck, quantization: q, pool: testPool, purpose: .decoding)
            let c = train.config
            for p in Projection.allCases {
                XCTAssertTrue(dec.blocks[1].linear(p).weight.inArena, "\(q) \(p)")
                XCTAssertFalse(train.blocks[1].linear(p).weight.inArena, "\(q) \(p)")
            }
            XCTAssertTrue(dec.decodeHead.inArena, "\(q) head")
            XCTAssertFalse(c.tieWordEmbeddings)
            XCTAssertEqual(dec.weightBytes, train.weightBytes - c.vocabSize * c.hiddenSize * 4 + dec.decodeHead.byteCount, "\(q): no f32 head")
            let ids: [Int32] = [1, 295, 268, 267, 270, 418, 262, 261, 312]
            func run(_ m: LlamaModel) throws -> [Float] {
                let cache = KVCache(model: m, sequences: 1, capacity: ids.count, maxChunk: ids.count)
                try m.step(tokens: ids, sequences: 1, cache: cache, adapters: .none, ctx: testCtx)
                return Array(UnsafeBufferPointer(start: cache.logits.data, count: c.vocabSize))
            }
            XCTAssertEqual(try run(dec), try run(train), "\(q): decoding-only logits")
        }
    }

    /// A model loaded for decoding keeps Q8_0 / Q4_0 / Q4_1 weights in the integer GEMV's
    /// grouped layout (`GroupedBlockFormat`): the same bytes regrouped, and the same logits bit
    /// for bit as the plain layout, for a prompt (past 16 rows: matmulDecoding's pieces) and
    /// for the decoded tokens after it.
    func testDecodingOnlyLoadGroupsBlockWeightsWithTheSameLogits() throws {
        for q in [Quantization.q4_0, .q4_1, .q8_0] {
            let ck = try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-gqa"))
            let train = try LlamaModel(checkpoint: ck, quantization: q, pool: testPool)
            let dec = try LlamaModel(checkpoint: ck, quantization: q, pool: testPool, purpose: .decoding)
            let c = train.config
            for p in Projection.allCases {
                XCTAssertEqual(dec.blocks[0].linear(p).weight.format.name, q.rawValue + "x8", "\(q) \(p)")
                XCTAssertEqual(train.blocks[0].linear(p).weight.format.name, q.rawValue, "\(q) \(p)")
            }
            XCTAssertEqual(dec.decodeHead.format.name, train.decodeHead.format.name + "x8", "\(q) head")
            XCTAssertEqual(dec.weightBytes, train.weightBytes - c.vocabSize * c.hiddenSize * 4 * (c.tieWordEmbeddings ? 0 : 1)
                           + (c.tieWordEmbeddings ? 0 : dec.decodeHead.byteCount), "\(q): the same bytes")
            let ids: [Int32] = (0..<21).map { Int32(3 + ($0 * 37) % 200) }
            func run(_ m: LlamaModel) throws -> [Float] {
                let cache = KVCache(model: m, sequences: 1, capacity: ids.count + 3, maxChunk: ids.count)
                try m.step(tokens: ids, sequences: 1, cache: cache, adapters: .none, ctx: testCtx)
                var out = Array(UnsafeBufferPointer(start: cache.logits.data, count: c.vocabSize))
                for t: Int32 in [5, 77, 123] {
                    try m.step(tokens: [t], sequences: 1, cache: cache, adapters: .none, ctx: testCtx)
                    out += Array(UnsafeBufferPointer(start: cache.logits.data, count: c.vocabSize))
                }
                return out
            }
            XCTAssertEqual(try run(dec).map(\.bitPattern), try run(train).map(\.bitPattern), "\(q): grouped vs plain logits")
        }
    }

    /// With load_8bit, generation uses an int8 copy of the lm_head (speed); its logits stay
    /// within a stated bound of the f32 head's, which training and `logits` use.
    static let int8HeadTolerance: Float = 0.05
    func testInt8DecodeHeadStaysCloseToF32Head() throws {
        let model = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-mha")), quantization: .int8, pool: testPool)
        XCTAssertEqual(model.decodeHead.format.name, "int8", "int8 model decodes with an int8 head")
        let ids: [Int32] = [1, 295, 268, 267, 270, 418, 262, 261, 312]
        let batch = Batch(B: 1, T: ids.count, inputIDs: ids, attentionMask: .init(repeating: 1, count: ids.count), labels: ids)
        let full = model.logits(batch, adapters: .none, acts: Activations(model: model, maxB: 1, maxT: ids.count), ctx: testCtx)
        let V = model.config.vocabSize
        let cache = KVCache(model: model, sequences: 1, capacity: ids.count, maxChunk: ids.count)
        try model.step(tokens: ids, sequences: 1, cache: cache, adapters: .none, ctx: testCtx)
        assertClose(cache.logits.data, full.data + (ids.count - 1) * V, count: V, abs: Self.int8HeadTolerance, "int8 head")
        let f32 = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-mha")), quantization: .none, pool: testPool)
        XCTAssertEqual(f32.decodeHead.format.name, "f32", "f32 model decodes with the f32 head")
    }
}
