import Foundation
import XCTest
@testable import LLaMA
import Tensor

/// GGUF Q5_0, Q5_1, Q4_K, Q5_K and Q6_K projections kept as stored (`quantization: stored`)
/// against the same file dequantized to f32 at load (`quantization: none`, GGMLQuants, itself
/// bit-exact with gguf.quants: GGUFTests). The file is written here, at test time, with our
/// GGUFWriter: a 2-layer model of hidden 256 (the K-quants need rows in 256s), f32 embeddings
/// and norms, every projection random valid blocks of one of the five types, and the tiny
/// fixture's tokenizer metadata. Nothing is committed; it is ~0.8 MB in the temporary folder.
final class GGUFKQuantTests: XCTestCase {
    /// Logits of stored vs f32 weights, absolute: the weights are equal value for value, so only
    /// the kernels' float summation order differs (the int8-vs-f32 head bound of
    /// ForwardParityTests, an upper bound well above what is seen).
    static let logitsTolerance = ForwardParityTests.int8HeadTolerance
    /// Loss, relative, and LoRA gradients (relative, with an absolute floor): the training
    /// parity tolerances.
    static let lossRelTolerance = TrainingParityTests.lossRelTolerance

    static let types: [Projection: GGMLType] = [
        .q: .q4_K, .k: .q5_K, .v: .q6_K, .o: .q5_0, .gate: .q5_1, .up: .q4_K, .down: .q6_K,
    ]

    var files: [URL] = []
    override func tearDown() {
        for u in files { try? FileManager.default.removeItem(at: u) }
        super.tearDown()
    }

    /// Random but valid blocks: random quant and scale bytes, finite half scales / mins small
    /// enough that activations stay in a normal range.
    static func randomBlocks(_ type: GGMLType, count: Int, rng: inout RNG, into dst: UnsafeMutableRawBufferPointer) {
        let bb = type.typeSize
        for i in 0..<dst.count { dst[i] = UInt8(truncatingIfNeeded: rng.next()) }
        let halves: [(Int, Float)]
        switch type {
        case .q5_0: halves = [(0, 0.004)]
        case .q5_1: halves = [(0, 0.004), (2, 0.06)]
        case .q4_K, .q5_K: halves = [(0, 0.0004), (2, 0.0004)]
        default: halves = [(208, 0.0001)]  // Q6_K
        }
        for b in 0..<(dst.count / bb) {
            for (at, s) in halves {
                let h = Float16((rng.uniform() * 2 - 1) * s)
                dst[b * bb + at] = UInt8(h.bitPattern & 0xFF)
                dst[b * bb + at + 1] = UInt8(h.bitPattern >> 8)
            }
        }
    }

    func writeModel() throws -> String {
        let tiny = try GGUFCheckpoint(path: GGUFTests.gguf("tiny-mha.gguf"))
        let c = LlamaConfig(hiddenSize: 256, intermediateSize: 512, numAttentionHeads: 4, numKeyValueHeads: 2,
                            numHiddenLayers: 2, rmsNormEps: 1e-5, ropeTheta: 10000, headDim: 64,
                            vocabSize: tiny.config.vocabSize, tieWordEmbeddings: true, bosTokenID: tiny.config.bosTokenID,
                            eosTokenIDs: tiny.config.eosTokenIDs, maxPositionEmbeddings: 64)
        var w = GGUFWriter()
        w.add("general.architecture", .string("llama"))
        w.add("general.name", .string("kquant-test"))
        for (k, v) in GGUFExport.llamaMetadata(c) { w.add(k, v) }
        for (k, v) in try GGUFVocab.metadata(for: tiny) { w.add(k, v) }
        var rng = RNG(seed: 10)
        func f32(_ name: String, _ dims: [Int], _ f: @escaping (inout RNG) -> Float) {
            var r = RNG(seed: rng.next())
            w.tensors.append(.init(name: name, dims: dims, type: .f32) { dst in
                let p = dst.bindMemory(to: Float.self)
                for i in 0..<p.count { p[i] = f(&r) }
            })
        }
        f32("token_embd.weight", [c.hiddenSize, c.vocabSize]) { 0.1 * $0.normal() }
        f32("output_norm.weight", [c.hiddenSize]) { 1 + 0.1 * $0.normal() }
        for l in 0..<c.numHiddenLayers {
            f32("blk.\(l).attn_norm.weight", [c.hiddenSize]) { 1 + 0.1 * $0.normal() }
            f32("blk.\(l).ffn_norm.weight", [c.hiddenSize]) { 1 + 0.1 * $0.normal() }
            for p in Projection.allCases {
                let shape = p.shape(c), type = Self.types[p]!
                let g = GGUFCheckpoint.ggufName(p.path(layer: l) + ".weight")!
                var r = RNG(seed: rng.next())
                w.tensors.append(.init(name: g, dims: [shape[1], shape[0]], type: type) { dst in
                    Self.randomBlocks(type, count: shape[0] * shape[1], rng: &r, into: dst)
                })
            }
        }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("kquant-\(UUID().uuidString).gguf")
        files.append(url)
        try w.write(to: url)
        return url.path
    }

    func testStoredKQuantsMatchTheDequantizedPath() throws {
        let path = try writeModel()
        let ck = try GGUFCheckpoint(path: path)
        let stored = try LlamaModel(checkpoint: ck, quantization: .stored, pool: testPool)
        let dense = try LlamaModel(checkpoint: ck, quantization: .none, pool: testPool)
        for (i, b) in stored.blocks.enumerated() {
            for p in Projection.allCases {
                let w = b.linear(p).weight
                XCTAssertEqual(w.format.name.uppercased(), "\(Self.types[p]!)".uppercased(), "layer \(i) \(p) kept as stored")
                XCTAssertEqual(w.byteCount, Self.types[p]!.byteCount(elements: w.rows * w.cols), "\(p) bytes")
                XCTAssertEqual(w.dense().array, dense.blocks[i].linear(p).weight.dense().array,
                               "layer \(i) \(p): stored bytes dequantize to the f32 path's values (q/k un-permuted)")
            }
        }

        // Forward: logits of a prompt.
        let ids: [Int32] = [1, 295, 268, 267, 270, 418, 262, 261, 312, 300, 280, 5]
        func logits(_ m: LlamaModel) -> Tensor {
            let batch = Batch(B: 1, T: ids.count, inputIDs: ids, attentionMask: .init(repeating: 1, count: ids.count), labels: ids)
            return m.logits(batch, adapters: .none, acts: Activations(model: m, maxB: 1, maxT: ids.count), ctx: testCtx)
        }
        let ls = logits(stored), ld = logits(dense)
        var maxDiff: Float = 0, maxAbs: Float = 0
        for i in 0..<ld.count { maxDiff = max(maxDiff, abs(ls.data[i] - ld.data[i])); maxAbs = max(maxAbs, abs(ld.data[i])) }
        print("GGUFKQuantTests: logits max |stored - f32| = \(maxDiff) (max |logit| \(maxAbs))")
        XCTAssertGreaterThan(maxAbs, 0.5, "logits are not trivially small")
        assertClose(ls.data, ld.data, count: ld.count, abs: Self.logitsTolerance, "stored K-quant logits vs f32")

        // Decoding (GEMV path, one token at a time; lm_head as Q8_0 for decoding, hence the
        // int8-head bound) matches the full forward's last row. In f32 arithmetic: the head's
        // integer path (activations rounded to int8) has its own bound in Q8DecodeTests.
        let V = stored.config.vocabSize
        let cache1 = KVCache(model: stored, sequences: 1, capacity: ids.count, maxChunk: 1)
        let f32Decode = ExecutionContext(backend: CPUBackend(family: try KernelFamily.select(environment: ProcessInfo.processInfo.environment), pool: testPool, decoding: .f32))
        for t in ids { try stored.step(tokens: [t], sequences: 1, cache: cache1, adapters: .none, ctx: f32Decode) }
        assertClose(cache1.logits.data, ld.data + (ids.count - 1) * V, count: V, abs: Self.logitsTolerance,
                    "token-by-token decoding (GEMV) on stored K-quants vs the f32 forward")

        // Training: one LoRA step on every projection with B != 0, so dx flows back through
        // every frozen weight (dy W); loss and all gradients as on the f32 base.
        func step(_ m: LlamaModel) -> (Double, [String: Tensor]) {
            var rng = RNG(seed: 3)
            let cfg = AdapterConfig(r: 4, loraAlpha: 8, loraDropout: 0, targetModules: Projection.allCases,
                                    useRslora: false, baseModelNameOrPath: nil)
            let a = LoRAAdapter(new: cfg, model: m.config, rng: &rng)
            // In site order: a dictionary's order differs between two adapters (and between
            // runs), which gave the stored and f32 models different B about one run in 30.
            for site in a.sites { let l = a.layers[site]!; for i in 0..<l.B.count { l.B[i] = 0.05 * (rng.uniform() * 2 - 1) } }
            a.enableGradients()
            a.zeroGradients()
            let labels = ids.enumerated().map { $0.offset < 3 ? Int32(-100) : $0.element }
            let b = Batch(B: 1, T: ids.count, inputIDs: ids, attentionMask: .init(repeating: 1, count: ids.count), labels: labels)
            let acts = Activations(model: m, trained: a, maxB: 1, maxT: ids.count)
            var r = RNG(seed: 0)
            let res = m.forwardBackward(b, adapters: AdapterSet(a), acts: acts, ctx: testCtx, rng: &r, gradScale: 1 / Float(res0(labels)))
            var g: [String: Tensor] = [:]
            for t in a.trainable { g[t.name] = t.grad! }
            return (res.lossSum, g)
        }
        func res0(_ labels: [Int32]) -> Int { labels.filter { $0 != -100 }.count - 1 }
        let (lossS, gS) = step(stored), (lossD, gD) = step(dense)
        XCTAssertEqual(lossS, lossD, accuracy: abs(lossD) * Self.lossRelTolerance, "loss on the stored K-quant base")
        XCTAssertEqual(gS.count, 14 * 2)
        for (name, g) in gD {
            let s = try XCTUnwrap(gS[name], name)
            assertClose(s.data, g.data, count: g.count, abs: TrainingParityTests.gradAbsFloor,
                        rel: TrainingParityTests.gradRelTolerance, "grad \(name)")
        }
    }

    /// A K-quant tensor whose rows are not whole super-blocks (attn_q, Q4_K, re-described as
    /// rows of 128) is refused with the tensor's name and the rule.
    func testKQuantRowLengthMustBeAMultipleOf256() throws {
        XCTAssertEqual(GGUFBlockFormat.Kind.q4_K.blockSize, 256)
        XCTAssertEqual(GGUFBlockFormat.Kind.q5_0.blockSize, 32)
        let f = try GGUFFile(path: try writeModel())
        let path = try GGUFBytes.rewrite(f, tensors: { infos in
            let i = infos.firstIndex { $0.name == "blk.0.attn_q.weight" }!, t = infos[i]
            infos[i] = GGUFTensorInfo(name: t.name, dims: [128, 512], type: t.type, offset: t.offset, byteCount: t.byteCount)
        }).write()
        XCTAssertThrowsError(try GGUFCheckpoint(path: path)) {
            let m = "\($0)"
            XCTAssertTrue(m.contains("blk.0.attn_q.weight") && m.contains("128") && m.contains("Q4_K") && m.contains("256"), m)
        }
    }
}
