import Foundation
import XCTest
@testable import LLaMA
import Tensor

/// GGUF reading against fixtures written by scripts/make_reference.py (`--only gguf`): the `gguf`
/// package's dequantization and Q8_0 quantization, tiny llama.cpp files converted from the tiny
/// checkpoints, transformers' logits, and hostile files.
final class GGUFTests: XCTestCase {
    /// Named tolerances.
    /// Dequantization and quantization: bit-exact (0 ulp), because each value is computed with
    /// ggml's float operations in ggml's order.
    /// F32 GGUF logits vs transformers on the safetensors folder, absolute (as ForwardParityTests).
    static let logitsTolerance: Float = 1e-4
    /// Q8_0/F16/BF16 GGUF logits vs the f32 bf16-checkpoint reference, absolute: the quantization
    /// error itself (the script measured 0.48 max on logits of std ~2.3; 0.75 leaves room, not slack
    /// for a wrong un-permute, which moves logits by 5-12 units).
    static let q8VsF32Tolerance: Float = 0.75
    /// SmolLM2-135M (Q4_1) logits vs transformers' own GGUF loader, absolute.
    static let smolTolerance: Float = 1e-3

    override func tearDown() {
        for u in ggufTemporaryFiles { try? FileManager.default.removeItem(at: u) }
        ggufTemporaryFiles = []
        super.tearDown()
    }

    static let ggufDir = Fixtures.root.appendingPathComponent("gguf")
    static func gguf(_ name: String) -> String { ggufDir.appendingPathComponent(name).path }
    static let smolPath = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path

    static let hfNames: (LlamaConfig) -> [String] = { c in
        var n = ["model.embed_tokens.weight", "model.norm.weight"]
        if !c.tieWordEmbeddings { n.append("lm_head.weight") }
        for l in 0..<c.numHiddenLayers {
            n += ["input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                  "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"].map { "model.layers.\(l).\($0).weight" }
        }
        return n
    }

    // MARK: dequantization and quantization

    func testDequantizeEveryTypeMatchesGGUFPackageBitExact() throws {
        let f = try SafeTensorsFile(path: Self.gguf("quants.safetensors"))
        for name in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"] {
            let type = try XCTUnwrap(GGMLType.allCases.first { $0.description == name }, name)
            XCTAssertTrue(type.canDequantize)
            let raw = try XCTUnwrap(f.raw("\(name).raw"), name)
            let expected = try XCTUnwrap(try f.f32("\(name).f32"), name)
            XCTAssertEqual(type.byteCount(elements: expected.count), raw.count, "\(name) byte count")
            XCTAssertGreaterThan(expected.count / type.blockSize, 3, "\(name) has several blocks")
            for parallel in [false, true] {
                let out = Tensor([expected.count])
                if parallel {
                    GGMLQuants.dequantizeParallel(raw.baseAddress!, type: type, count: expected.count, into: out.data)
                } else {
                    GGMLQuants.dequantize(raw.baseAddress!, type: type, count: expected.count, into: out.data)
                }
                var bad = 0
                for i in 0..<expected.count where out.data[i].bitPattern != expected.data[i].bitPattern {
                    if bad < 3 { XCTFail("\(name) element \(i): \(out.data[i]), gguf.quants gives \(expected.data[i])") }
                    bad += 1
                }
                XCTAssertEqual(bad, 0, "\(name) (parallel: \(parallel)) mismatches")
            }
        }
    }

    /// The stored weight formats' scalar reference (`GGUFBlockFormat.dequantizeRows`, what every
    /// kernel is tested against) on the fixture's random blocks laid out as rows: bit for bit
    /// gguf.quants.dequantize, for rows of 1, 2 and 4 blocks and every row range.
    func testStoredBlockFormatsDequantizeRowsMatchGGUFPackageBitExact() throws {
        let f = try SafeTensorsFile(path: Self.gguf("quants.safetensors"))
        for kind in GGUFBlockFormat.Kind.allCases {
            let raw = try XCTUnwrap(f.raw("\(kind.ggmlName).raw"), kind.ggmlName)
            let expected = try XCTUnwrap(try f.f32("\(kind.ggmlName).f32"), kind.ggmlName)
            let format = GGUFBlockFormat(kind: kind)
            let blocks = raw.count / kind.blockBytes
            for perRow in [1, 2, 4] where blocks / perRow >= 2 {
                let rows = blocks / perRow, cols = perRow * kind.blockSize
                XCTAssertEqual(format.byteCount(rows: rows, cols: cols), rows * perRow * kind.blockBytes)
                let w = Weight(format: format, rows: rows, cols: cols, data: UnsafeRawPointer(raw.baseAddress!),
                               scales: nil, owner: f)
                for (r0, r1) in [(0, rows), (1, rows), (rows - 1, rows)] {
                    var out = [Float](repeating: .nan, count: (r1 - r0) * cols)
                    out.withUnsafeMutableBufferPointer { w.dequantizeRows(r0, r1, into: $0.baseAddress!) }
                    let bad = (0..<out.count).filter { out[$0].bitPattern != expected.data[r0 * cols + $0].bitPattern }
                    XCTAssertEqual(bad.count, 0, "\(kind.ggmlName) rows \(r0)..<\(r1) of \(cols): first bad \(bad.first.map(String.init) ?? "-")")
                }
            }
        }
    }

    func testQ8_0AndF16QuantizeMatchGGUFPackageByteForByte() throws {
        let f = try SafeTensorsFile(path: Self.gguf("quants.safetensors"))
        for (name, type) in [("Q8_0", GGMLType.q8_0), ("F16", .f16)] {
            let x = try XCTUnwrap(try f.f32("\(name).quantize.input"))
            let expected = Array(try XCTUnwrap(f.raw("\(name).quantize.bytes")))
            XCTAssertEqual(type.byteCount(elements: x.count), expected.count)
            var serial = [UInt8](repeating: 0, count: expected.count)
            var parallel = serial
            serial.withUnsafeMutableBytes {
                if type == .q8_0 { GGMLQuants.quantizeQ8_0(x.data, count: x.count, into: $0.baseAddress!) }
                else { GGMLQuants.quantizeF16(x.data, count: x.count, into: $0.baseAddress!) }
            }
            parallel.withUnsafeMutableBytes { GGMLQuants.quantizeParallel(x.data, type: type, count: x.count, into: $0.baseAddress!) }
            XCTAssertEqual(serial, expected, "\(name) quantize")
            XCTAssertEqual(parallel, expected, "\(name) parallel quantize")
            if let i = zip(serial, expected).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
                XCTFail("\(name): first differing byte \(i): \(serial[i]) vs \(expected[i])")
            }
        }
        // Round trip: Q8_0 dequantize(quantize(x)) is within half a step (d / 2) of x.
        let x = try XCTUnwrap(try f.f32("Q8_0.quantize.input"))
        let q = [UInt8](unsafeUninitializedCapacity: x.count / 32 * 34) { b, n in
            GGMLQuants.quantizeQ8_0(x.data, count: x.count, into: UnsafeMutableRawPointer(b.baseAddress!)); n = x.count / 32 * 34
        }
        let y = Tensor([x.count])
        q.withUnsafeBytes { GGMLQuants.dequantize($0.baseAddress!, type: .q8_0, count: x.count, into: y.data) }
        for b in 0..<(x.count / 32) {
            let d = halfToFloat(q.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 34 * b, as: UInt16.self) })
            // Skip the 1e30 outlier block and blocks whose d is a subnormal half (rounding d costs
            // more than half a step there).
            if b == 3 || d < 6.103515625e-05 { continue }
            for j in 0..<32 {
                XCTAssertLessThanOrEqual(abs(y.data[32 * b + j] - x.data[32 * b + j]), d * 0.5 + abs(x.data[32 * b + j]) * 2e-3,
                                         "Q8_0 round trip block \(b)")
            }
        }
    }

    // MARK: tiny llama.cpp files

    func testConfigFromMetadataEqualsConfigJSON() throws {
        for (gguf, folder) in [("tiny-mha.gguf", "tiny-mha"), ("tiny-gqa-q8.gguf", "tiny-gqa")] {
            var a = try GGUFCheckpoint(path: Self.gguf(gguf)).config
            let b = try SafeTensorsCheckpoint(folder: Fixtures.model(folder)).config
            XCTAssertNil(a.torchDtype)
            a.torchDtype = b.torchDtype   // informational only; GGUF has no torch dtype
            XCTAssertEqual(a, b, gguf)
        }
        let gqa = try GGUFCheckpoint(path: Self.gguf("tiny-gqa-q8.gguf"))
        XCTAssertTrue(gqa.config.tieWordEmbeddings)
        XCTAssertFalse(gqa.has("lm_head.weight"))
        XCTAssertTrue(gqa.has("model.embed_tokens.weight"))
        XCTAssertTrue(try GGUFCheckpoint(path: Self.gguf("tiny-mha.gguf")).has("lm_head.weight"))
        XCTAssertTrue(try openCheckpoint(Self.gguf("tiny-mha.gguf")) is GGUFCheckpoint)
    }

    /// F32 file: every tensor, q/k un-permuted, equals the safetensors weight bit for bit. This is
    /// the check of the un-permute against the Python permute of convert_hf_to_gguf.py.
    func testF32WeightsEqualSafetensorsExactly() throws {
        let g = try GGUFCheckpoint(path: Self.gguf("tiny-mha.gguf"))
        let s = try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-mha"))
        let c = s.config
        let st = try SafeTensorsFile(path: Fixtures.model("tiny-mha").appendingPathComponent("model.safetensors").path)
        for name in Self.hfNames(c) {
            let shape = try XCTUnwrap(st.entries[name]?.shape, name)
            let a = try g.tensor(name, shape: shape), b = try s.tensor(name, shape: shape)
            XCTAssertEqual(a.array, b.array, name)
        }
        // The BF16 and (subnormal-free) F16 tensors of the mixed file are exact too.
        let gq = try GGUFCheckpoint(path: Self.gguf("tiny-gqa-q8.gguf"))
        let sq = try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-gqa"))
        let C = sq.config.hiddenSize, I = sq.config.intermediateSize
        for l in 0..<sq.config.numHiddenLayers {
            let n = "model.layers.\(l).mlp.down_proj.weight"
            XCTAssertEqual(try gq.tensor(n, shape: [C, I]).array, try sq.tensor(n, shape: [C, I]).array, n)
        }
        XCTAssertEqual(gq.file.tensorInfo("blk.0.ffn_down.weight")?.type, .bf16)
        XCTAssertEqual(gq.file.tensorInfo("blk.0.attn_q.weight")?.type, .q8_0)
        XCTAssertEqual(gq.file.tensorInfo("token_embd.weight")?.type, .f16)
        XCTAssertThrowsError(try gq.tensor("model.norm.weight", shape: [C + 1])) {
            guard case CheckpointError.shapeMismatch = $0 else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try gq.tensor("lm_head.weight", shape: [512, C])) {
            guard case CheckpointError.missingTensor = $0 else { return XCTFail("\($0)") }
        }
    }

    func logits(_ model: LlamaModel, _ ids: [Int32]) -> Tensor {
        let batch = Batch(B: 1, T: ids.count, inputIDs: ids, attentionMask: .init(repeating: 1, count: ids.count), labels: ids)
        let acts = Activations(model: model, maxB: 1, maxT: ids.count)
        return model.logits(batch, adapters: .none, acts: acts, ctx: testCtx)
    }

    func testF32FileLogitsMatchTransformers() throws {
        let model = try LlamaModel(checkpoint: try GGUFCheckpoint(path: Self.gguf("tiny-mha.gguf")), quantization: .none, pool: testPool)
        let ref = try Fixtures.json("tiny-mha.forward.json")
        let tensors = try Fixtures.tensors("tiny-mha.forward.safetensors")
        let prompts = try XCTUnwrap(ref["prompts"]?.array)
        XCTAssertGreaterThanOrEqual(prompts.count, 3)
        for p in prompts {
            let ids = p["input_ids"]!.ints32
            let expected = try XCTUnwrap(try tensors.f32(p["logits_key"]!.string!))
            let got = logits(model, ids)
            XCTAssertEqual(expected.count, ids.count * model.config.vocabSize)
            assertClose(got.data, expected.data, count: expected.count, abs: Self.logitsTolerance,
                        "tiny-mha.gguf logits of prompt \(p["index"]!.int!)")
        }
    }

    func testQ8_0FileLogitsMatchDequantizedReferenceAndAreCloseToF32() throws {
        let model = try LlamaModel(checkpoint: try GGUFCheckpoint(path: Self.gguf("tiny-gqa-q8.gguf")), quantization: .none, pool: testPool)
        let info = try JSON.parse(contentsOf: Self.ggufDir.appendingPathComponent("reference.json"))
        let q8 = try SafeTensorsFile(path: Self.gguf("tiny-gqa-q8.forward.safetensors"))
        let f32 = try Fixtures.tensors("tiny-gqa.forward.safetensors")
        let f32Prompts = try XCTUnwrap(try Fixtures.json("tiny-gqa.forward.json")["prompts"]?.array)
        let prompts = try XCTUnwrap(info["tiny"]?["tiny-gqa"]?["prompts"]?.array)
        XCTAssertEqual(prompts.count, 2)
        for p in prompts {
            let i = p["index"]!.int!, ids = p["input_ids"]!.ints32
            let got = logits(model, ids)
            let expected = try XCTUnwrap(try q8.f32(p["logits_key"]!.string!))
            XCTAssertEqual(expected.count, ids.count * model.config.vocabSize)
            assertClose(got.data, expected.data, count: expected.count, abs: Self.logitsTolerance,
                        "tiny-gqa-q8.gguf logits of prompt \(i) vs dequantized-weight reference")
            let fp = f32Prompts[i]
            XCTAssertEqual(fp["input_ids"]!.ints32, ids)
            let reference = try XCTUnwrap(try f32.f32(fp["logits_key"]!.string!))
            assertClose(got.data, reference.data, count: reference.count, abs: Self.q8VsF32Tolerance,
                        "tiny-gqa-q8.gguf logits of prompt \(i) vs the f32 checkpoint")
        }
    }

    /// `quantization: stored` keeps the file's Q8_0 and BF16 projections as they are (no f32
    /// copy), and the logits equal the dequantized-weight reference's; `q8_0` keeps the Q8_0
    /// ones and quantizes the BF16 ffn_down.
    func testStoredFormatsKeepTheFilesBytesAndMatchTheReference() throws {
        let ck = try GGUFCheckpoint(path: Self.gguf("tiny-gqa-q8.gguf"))
        let model = try LlamaModel(checkpoint: ck, quantization: .stored, pool: testPool)
        for b in model.blocks {
            for p in Projection.allCases {
                XCTAssertEqual(b.linear(p).weight.format.name, p == .down ? "bf16" : "q8_0", "\(p)")
            }
        }
        let dense = try LlamaModel(checkpoint: ck, quantization: .none, pool: testPool)
        for (i, b) in model.blocks.enumerated() {
            for p in Projection.allCases {
                XCTAssertEqual(b.linear(p).weight.dense().array, dense.blocks[i].linear(p).weight.dense().array,
                               "layer \(i) \(p): stored bytes dequantize to the f32 path's values")
            }
        }
        let info = try JSON.parse(contentsOf: Self.ggufDir.appendingPathComponent("reference.json"))
        let q8 = try SafeTensorsFile(path: Self.gguf("tiny-gqa-q8.forward.safetensors"))
        for p in try XCTUnwrap(info["tiny"]?["tiny-gqa"]?["prompts"]?.array) {
            let ids = p["input_ids"]!.ints32
            let expected = try XCTUnwrap(try q8.f32(p["logits_key"]!.string!))
            let got = logits(model, ids)
            assertClose(got.data, expected.data, count: expected.count, abs: Self.logitsTolerance, "stored-format logits")
        }
        let q = try LlamaModel(checkpoint: ck, quantization: .q8_0, pool: testPool)
        XCTAssertEqual(q.blocks[0].down.weight.format.name, "q8_0")
        XCTAssertEqual(q.blocks[0].q.weight.dense().array, dense.blocks[0].q.weight.dense().array)
    }

    func testMetadataAccessors() throws {
        let f = try GGUFFile(path: Self.gguf("tiny-mha.gguf"))
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.alignment, 32)
        XCTAssertEqual(f.dataStart % 32, 0)
        XCTAssertEqual(f.tensors.count, 2 * 9 + 3)
        XCTAssertEqual(try f.string("general.architecture"), "llama")
        XCTAssertEqual(try f.string("tokenizer.ggml.model"), "llama")
        let tokens = try XCTUnwrap(try f.strings("tokenizer.ggml.tokens"))
        XCTAssertEqual(tokens.count, 512)
        XCTAssertEqual(Array(tokens[0..<3]), ["<unk>", "<s>", "</s>"])
        XCTAssertEqual(tokens[3], "<0x00>")
        XCTAssertEqual(try f.floats("tokenizer.ggml.scores")?.count, 512)
        let types = try XCTUnwrap(try f.ints("tokenizer.ggml.token_type"))
        XCTAssertEqual(Array(types[0..<3]), [2, 3, 3])               // UNKNOWN, CONTROL, CONTROL
        XCTAssertEqual(types.filter { $0 == 6 }.count, 256)           // BYTE
        XCTAssertEqual(try f.int("tokenizer.ggml.bos_token_id"), 1)
        XCTAssertEqual(try f.int("tokenizer.ggml.eos_token_id"), 2)
        XCTAssertEqual(try f.int("tokenizer.ggml.unknown_token_id"), 0)
        XCTAssertNil(try f.int("tokenizer.ggml.padding_token_id"))
        XCTAssertEqual(try f.bool("tokenizer.ggml.add_bos_token"), true)
        XCTAssertEqual(try f.bool("tokenizer.ggml.add_space_prefix"), true)
        XCTAssertEqual(try f.int("llama.block_count"), 2)
        XCTAssertEqual(try f.float("llama.rope.freq_base"), 10000)
        XCTAssertEqual(try f.float("llama.attention.layer_norm_rms_epsilon"), 1e-5)
        XCTAssertEqual(f.value("llama.block_count"), .uint32(2))
        XCTAssertNil(try f.string("no.such.key"))
        for (what, call) in [("string of int", { _ = try f.string("llama.block_count") }),
                             ("int of string", { _ = try f.int("general.architecture") }),
                             ("bool of int", { _ = try f.bool("llama.block_count") }),
                             ("float of string", { _ = try f.float("general.architecture") }),
                             ("strings of floats", { _ = try f.strings("tokenizer.ggml.scores") }),
                             ("ints of strings", { _ = try f.ints("tokenizer.ggml.tokens") }),
                             ("floats of strings", { _ = try f.floats("tokenizer.ggml.tokens") })] as [(String, () throws -> Void)] {
            XCTAssertThrowsError(try call(), what) {
                guard case CheckpointError.wrongType = $0 else { return XCTFail("\(what): \($0)") }
            }
        }
    }

    /// Every value type, nested arrays of strings, empty arrays and alignment read back as written.
    func testAllValueTypesRoundTrip() throws {
        let values: [(String, GGUFValue)] = [
            ("u8", .uint8(200)), ("i8", .int8(-100)), ("u16", .uint16(60000)), ("i16", .int16(-30000)),
            ("u32", .uint32(4_000_000_000)), ("i32", .int32(-2_000_000_000)), ("u64", .uint64(1 << 63)),
            ("i64", .int64(-(1 << 62))), ("f32", .float32(-1.5e-3)), ("f64", .float64(1e300)), ("b0", .bool(false)),
            ("b1", .bool(true)), ("s", .string("héllo ▁wörld")), ("empty", .string("")),
            ("a.i32", .array(.int32, [.int32(1), .int32(-2)])), ("a.f32", .array(.float32, [.float32(0.25)])),
            ("a.none", .array(.uint8, [])),
            ("a.nested", .array(.array, [.array(.string, [.string("a"), .string("bc")]), .array(.string, [])])),
            ("general.alignment", .uint32(64)),
        ]
        var b = GGUFBytes()
        b.header(tensors: 1, kvs: values.count)
        for (k, v) in values { b.kv(k, v) }
        b.tensorInfo("t", dims: [4], type: 0, offset: 0)
        b.pad(64)
        for x: Float in [1, 2, 3, 4] { b.u32(x.bitPattern) }
        let f = try GGUFFile(path: try b.write())
        XCTAssertEqual(f.keys, values.map(\.0))
        for (k, v) in values { XCTAssertEqual(f.value(k), v, k) }
        XCTAssertEqual(f.alignment, 64)
        XCTAssertEqual(f.dataStart % 64, 0)
        XCTAssertEqual(try f.f32("t")?.array, [1, 2, 3, 4])
        XCTAssertEqual(try f.ints("a.i32"), [1, -2])
        XCTAssertEqual(try f.floats("a.f32"), [0.25])
        XCTAssertEqual(try f.int("i64"), -(1 << 62))
        XCTAssertThrowsError(try f.int("u64"), "2^63 does not fit Int") {
            guard case CheckpointError.badValue = $0 else { return XCTFail("\($0)") }
        }
    }

    // MARK: hostile files

    /// Cutting the file anywhere before its end gives a CheckpointError, never a crash.
    func testTruncatedFilesThrow() throws {
        for name in ["tiny-mha.gguf", "tiny-gqa-q8.gguf"] {
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.gguf(name))))
            let dataStart = try GGUFFile(path: Self.gguf(name)).dataStart
            var cuts = Array(0..<80) + Array(stride(from: 80, to: dataStart + 64, by: 41))
            cuts += [dataStart - 1, dataStart, dataStart + 1, bytes.count / 2, bytes.count - 1]
            for cut in cuts {
                let path = try GGUFBytes(bytes: Array(bytes[0..<cut])).write()
                XCTAssertThrowsError(try GGUFCheckpoint(path: path), "\(name) cut at \(cut)") {
                    XCTAssertTrue($0 is CheckpointError, "\(name) cut at \(cut): \($0)")
                }
            }
        }
    }

    /// Random byte changes in the header: either a CheckpointError or a file whose every tensor loads.
    func testRandomHeaderCorruptionNeverCrashes() throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.gguf("tiny-gqa-q8.gguf"))))
        let dataStart = try GGUFFile(path: Self.gguf("tiny-gqa-q8.gguf")).dataStart
        var rng = RNG(seed: 55)
        var opened = 0
        for _ in 0..<300 {
            var b = bytes
            for _ in 0..<(1 + rng.int(below: 4)) {
                b[rng.int(below: dataStart)] = UInt8(truncatingIfNeeded: rng.next())
            }
            let path = try GGUFBytes(bytes: b).write()
            do {
                let ck = try GGUFCheckpoint(path: path)
                opened += 1
                _ = try LlamaModel(checkpoint: ck, quantization: .none, pool: testPool)
            } catch let e as CheckpointError {
                XCTAssertFalse(e.description.isEmpty)
            } catch {
                XCTFail("not a CheckpointError: \(error)")
            }
        }
        XCTAssertGreaterThan(opened, 0, "some changes (token strings, scores) leave a valid file")
    }

    func testHostileHeadersThrowTypedErrors() throws {
        func expect(_ b: GGUFBytes, _ fragment: String, checkpoint: Bool = false, line: UInt = #line) throws {
            let path = try b.write()
            do {
                if checkpoint { _ = try GGUFCheckpoint(path: path) } else { _ = try GGUFFile(path: path) }
                XCTFail("expected an error containing '\(fragment)'", line: line)
            } catch let e as CheckpointError {
                XCTAssertTrue(e.description.contains(fragment), "'\(e.description)' lacks '\(fragment)'", line: line)
            }
        }
        /// A file with one F32 tensor "t" of 8 elements, after `kvs` and with `info` written by the caller.
        func file(version: UInt32 = 3, tensors: UInt64 = 1, kvs: [(String, GGUFValue)] = [("general.architecture", .string("llama"))],
                  kvCount: UInt64? = nil, info: ((inout GGUFBytes) -> Void)? = nil, dataBytes: Int = 32) -> GGUFBytes {
            var b = GGUFBytes()
            b.bytes += Array("GGUF".utf8); b.u32(version); b.u64(tensors); b.u64(kvCount ?? UInt64(kvs.count))
            for (k, v) in kvs { b.kv(k, v) }
            if let info { info(&b) } else if tensors > 0 { b.tensorInfo("t", dims: [8], type: 0, offset: 0) }
            b.pad(32)
            b.bytes += [UInt8](repeating: 0, count: dataBytes)
            return b
        }
        XCTAssertNoThrow(try GGUFFile(path: try file().write()))
        try expect(GGUFBytes(bytes: []), "shorter than the 4-byte magic")
        try expect(GGUFBytes(bytes: Array("GGML\u{3}\0\0\0".utf8)), "bad magic")
        try expect(file(version: 1), "GGUF version 1")
        try expect(file(version: 0x0300_0000), "big-endian")
        try expect(file(version: 9), "GGUF version 9")
        try expect(file(tensors: 1 << 60), "tensor count")
        try expect(file(kvCount: 1 << 60), "metadata count")
        var b = GGUFBytes(); b.bytes += Array("GGUF".utf8); b.u32(3); b.u64(0); b.u64(1); b.u64(1 << 62)
        b.bytes += [UInt8](repeating: 0, count: 16)
        try expect(b, "string length")
        b = GGUFBytes(); b.bytes += Array("GGUF".utf8); b.u32(3); b.u64(0); b.u64(1); b.string("k"); b.u32(13); b.u32(0)
        try expect(b, "unknown value type 13")
        b = GGUFBytes(); b.bytes += Array("GGUF".utf8); b.u32(3); b.u64(0); b.u64(1); b.string("k"); b.u32(9); b.u32(4); b.u64(1 << 40)
        try expect(b, "cannot fit")
        b = GGUFBytes(); b.bytes += Array("GGUF".utf8); b.u32(3); b.u64(0); b.u64(1); b.string("k"); b.u32(9); b.u32(8); b.u64(1 << 59)
        try expect(b, "cannot fit")
        var nested = GGUFValue.array(.string, [.string("x")])
        for _ in 0..<10 { nested = .array(.array, [nested]) }
        try expect(file(kvs: [("deep", nested)]), "nested")
        b = GGUFBytes(); b.bytes += Array("GGUF".utf8); b.u32(3); b.u64(0); b.u64(1); b.string("k"); b.u32(7); b.u8(2)
        try expect(b, "bool stored as 2")
        b = GGUFBytes(); b.bytes += Array("GGUF".utf8); b.u32(3); b.u64(0); b.u64(1); b.u64(2); b.bytes += [0xC3, 0x28]; b.u32(4); b.u32(1)
        try expect(b, "not valid UTF-8")
        try expect(file(kvs: [("a", .uint8(1)), ("a", .uint8(2))]), "appears twice")
        try expect(file(kvs: [("general.alignment", .uint32(24))]), "power of two")
        try expect(file(kvs: [("general.alignment", .uint32(0))]), "power of two")
        try expect(file(info: { $0.tensorInfo("t", dims: [1, 1, 1, 1, 8], type: 0, offset: 0) }), "5 dimensions")
        try expect(file(info: { $0.tensorInfo("t", dims: [8], type: 99, offset: 0) }), "tensor 't' has ggml type 99")
        try expect(file(info: { $0.tensorInfo("t", dims: [33], type: 8, offset: 0) }), "not whole Q8_0 blocks")
        try expect(file(info: { $0.tensorInfo("t", dims: [8], type: 0, offset: 4) }), "not a multiple of the alignment")
        try expect(file(info: { $0.tensorInfo("t", dims: [8], type: 0, offset: 64) }), "needs bytes 64..<96")
        try expect(file(info: { $0.tensorInfo("t", dims: [1 << 40], type: 0, offset: 0) }), "needs bytes")
        try expect(file(info: { $0.tensorInfo("t", dims: [1 << 49, 1 << 49], type: 0, offset: 0) }), "too many elements")
        try expect(file(info: { $0.tensorInfo("t", dims: [1 << 62], type: 0, offset: 0) }), "has a dimension of")
        try expect(file(info: { $0.tensorInfo("t", dims: [8], type: 0, offset: 1 << 63) }), "offset")
        try expect(file(tensors: 2, info: { $0.tensorInfo("t", dims: [8], type: 0, offset: 0); $0.tensorInfo("t", dims: [8], type: 0, offset: 0) }),
                   "appears twice")
        // Known to ggml but not dequantized here: the file opens, the tensor names its type.
        let q2 = try GGUFFile(path: try file(info: { $0.tensorInfo("t", dims: [256], type: 10, offset: 0) }, dataBytes: 96).write())
        XCTAssertThrowsError(try q2.f32("t")) {
            XCTAssertTrue("\($0)".contains("tensor 't' is stored as Q2_K"), "\($0)")
        }
    }

    /// Model-level refusals, by rewriting the tiny file's metadata and tensor infos.
    func testCheckpointRefusesOtherModels() throws {
        let f = try GGUFFile(path: Self.gguf("tiny-mha.gguf"))
        func expect(_ fragment: String, line: UInt = #line, kv: (inout [(String, GGUFValue)]) -> Void = { _ in },
                    tensors: (inout [GGUFTensorInfo]) -> Void = { _ in }) throws {
            let path = try GGUFBytes.rewrite(f, kv: kv, tensors: tensors).write()
            XCTAssertThrowsError(try GGUFCheckpoint(path: path), line: line) { e in
                XCTAssertTrue(e is CheckpointError && "\(e)".contains(fragment), "'\(e)' lacks '\(fragment)'", line: line)
            }
        }
        func set(_ key: String, _ v: GGUFValue?) -> (inout [(String, GGUFValue)]) -> Void {
            { kvs in
                kvs.removeAll { $0.0 == key }
                if let v { kvs.append((key, v)) }
            }
        }
        // The unmodified rewrite opens and equals the original.
        let same = try GGUFCheckpoint(path: try GGUFBytes.rewrite(f).write())
        XCTAssertEqual(same.config, try GGUFCheckpoint(path: f.path).config)
        try expect("general.architecture 'qwen2'", kv: set("general.architecture", .string("qwen2")))
        try expect("missing key 'general.architecture'", kv: set("general.architecture", nil))
        try expect("rope.scaling.type 'linear'", kv: set("llama.rope.scaling.type", .string("linear")))
        try expect("expert_count 8", kv: set("llama.expert_count", .uint32(8)))
        try expect("missing key 'llama.block_count'", kv: set("llama.block_count", nil))
        try expect("llama.block_count", kv: set("llama.block_count", .uint32(3)))
        try expect("llama.block_count", kv: set("llama.block_count", .uint32(2_000_000_000)))
        try expect("positive integer", kv: set("llama.attention.head_count", .int32(-4)))
        try expect("a divisor of llama.attention.head_count", kv: set("llama.attention.head_count_kv", .uint32(3)))
        try expect("rope.dimension_count 8", kv: { set("llama.rope.dimension_count", .uint32(8))(&$0); $0.append(("llama.attention.key_length", .uint32(16))) })
        try expect("should be an integer", kv: set("llama.embedding_length", .string("64")))
        try expect("token_embd.weight (model.embed_tokens.weight)' has shape [512, 64], expected [512, 32]", kv: set("llama.embedding_length", .uint32(32)))
        try expect("blk.0.attn_k.weight", kv: set("llama.attention.head_count_kv", .uint32(2)))
        try expect("token_embd.weight", kv: set("llama.vocab_size", .uint32(513)))
        try expect("rope_freqs.weight", tensors: { $0.append(GGUFTensorInfo(name: "rope_freqs.weight", dims: [8], type: .f32, offset: 0, byteCount: 32)) })
        try expect("'blk.0.attn_q.bias'", tensors: { $0.append(GGUFTensorInfo(name: "blk.0.attn_q.bias", dims: [64], type: .f32, offset: 0, byteCount: 256)) })
        try expect("missing tensor 'blk.1.ffn_up.weight", tensors: { $0.removeAll { $0.name == "blk.1.ffn_up.weight" } })
    }

    // MARK: a real llama.cpp file (git-ignored; skipped when absent)

    func testSmolLM2Q4_1MatchesTransformersGGUFLoader() throws {
        guard FileManager.default.fileExists(atPath: Self.smolPath) else {
            throw XCTSkip("\(Self.smolPath) not present")
        }
        let ref = try XCTUnwrap(try JSON.parse(contentsOf: Self.ggufDir.appendingPathComponent("reference.json"))["smollm2"])
        let ck = try GGUFCheckpoint(path: Self.smolPath)
        let c = ck.config, rc = try XCTUnwrap(ref["config"])
        XCTAssertEqual(c.hiddenSize, rc["hidden_size"]?.int)
        XCTAssertEqual(c.intermediateSize, rc["intermediate_size"]?.int)
        XCTAssertEqual(c.numAttentionHeads, rc["num_attention_heads"]?.int)
        XCTAssertEqual(c.numKeyValueHeads, rc["num_key_value_heads"]?.int)
        XCTAssertEqual(c.numHiddenLayers, rc["num_hidden_layers"]?.int)
        XCTAssertEqual(c.vocabSize, rc["vocab_size"]?.int)
        XCTAssertEqual(c.maxPositionEmbeddings, rc["max_position_embeddings"]?.int)
        XCTAssertEqual(c.rmsNormEps, rc["rms_norm_eps"]?.double.map(Float.init))
        XCTAssertEqual(c.ropeTheta, rc["rope_theta"]?.double.map(Float.init))
        XCTAssertEqual(c.headDim, 64)
        XCTAssertEqual(c.tieWordEmbeddings, rc["tie_word_embeddings"]?.bool)
        XCTAssertEqual(c.bosTokenID, rc["bos_token_id"]?.int.map(Int32.init))
        XCTAssertEqual(c.eosTokenIDs, [Int32(rc["eos_token_id"]!.int!)])
        XCTAssertEqual(c.padTokenID, rc["pad_token_id"]?.int.map(Int32.init))
        XCTAssertEqual(ck.file.tensorInfo("blk.0.attn_q.weight")?.type, .q4_1)
        XCTAssertEqual(ck.file.tensorInfo("token_embd.weight")?.type, .q8_0)
        XCTAssertEqual(try ck.file.string("tokenizer.ggml.model"), "gpt2")
        XCTAssertEqual(try ck.file.strings("tokenizer.ggml.merges")?.count, 48900)

        let model = try LlamaModel(checkpoint: ck, quantization: .none, pool: testPool)
        let V = c.vocabSize
        for p in try XCTUnwrap(ref["prompts"]?.array) {
            let ids = p["input_ids"]!.ints32
            let all = logits(model, ids)
            let last = all.data + (ids.count - 1) * V
            for (key, values) in [("top20_ids", "top20_logits"), ("probe_ids", "probe_logits")] {
                let idx = p[key]!.array!.map { $0.int! }, want = p[values]!.array!.map { Float($0.double!) }
                XCTAssertEqual(idx.count, want.count)
                for (i, w) in zip(idx, want) {
                    XCTAssertEqual(last[i], w, accuracy: Self.smolTolerance, "SmolLM2 logit of id \(i) after \(ids)")
                }
            }
            var best = 0
            for v in 1..<V where last[v] > last[best] { best = v }
            XCTAssertEqual(best, p["top20_ids"]!.array![0].int, "argmax")
        }
    }
}

/// Little-endian GGUF bytes for hostile-file tests (also a tiny writer used to rewrite fixtures).
struct GGUFBytes {
    var bytes: [UInt8] = []

    init(bytes: [UInt8] = []) { self.bytes = bytes }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }
    mutating func pad(_ alignment: Int) { while bytes.count % alignment != 0 { bytes.append(0) } }

    mutating func header(tensors: Int, kvs: Int) {
        bytes += Array("GGUF".utf8); u32(3); u64(UInt64(tensors)); u64(UInt64(kvs))
    }

    mutating func kv(_ key: String, _ v: GGUFValue) { string(key); u32(v.type.rawValue); value(v) }

    mutating func value(_ v: GGUFValue) {
        switch v {
        case .uint8(let x): u8(x)
        case .int8(let x): u8(UInt8(bitPattern: x))
        case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { bytes += $0 }
        case .int16(let x): withUnsafeBytes(of: x.littleEndian) { bytes += $0 }
        case .uint32(let x): u32(x)
        case .int32(let x): u32(UInt32(bitPattern: x))
        case .uint64(let x): u64(x)
        case .int64(let x): u64(UInt64(bitPattern: x))
        case .float32(let x): u32(x.bitPattern)
        case .float64(let x): u64(x.bitPattern)
        case .bool(let x): u8(x ? 1 : 0)
        case .string(let s): string(s)
        case .array(let t, let a):
            u32(t.rawValue); u64(UInt64(a.count))
            for x in a { value(x) }
        }
    }

    mutating func tensorInfo(_ name: String, dims: [UInt64], type: UInt32, offset: UInt64) {
        string(name); u32(UInt32(dims.count)); for d in dims { u64(d) }; u32(type); u64(offset)
    }

    /// Writes to a fresh temporary file and returns its path.
    func write() throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-test-\(UUID().uuidString).gguf")
        try Data(bytes).write(to: url)
        addTeardownRemoval(url)
        return url.path
    }

    /// `f` with its metadata and tensor infos edited, and its data section copied unchanged.
    static func rewrite(_ f: GGUFFile, kv: (inout [(String, GGUFValue)]) -> Void = { _ in },
                        tensors: (inout [GGUFTensorInfo]) -> Void = { _ in }) -> GGUFBytes {
        var kvs = f.keys.map { ($0, f.metadata[$0]!) }
        kv(&kvs)
        var infos = f.tensors
        tensors(&infos)
        var b = GGUFBytes()
        b.header(tensors: infos.count, kvs: kvs.count)
        for (k, v) in kvs { b.kv(k, v) }
        for t in infos { b.tensorInfo(t.name, dims: t.dims.map(UInt64.init), type: t.type.rawValue, offset: UInt64(t.offset)) }
        b.pad(f.alignment)
        b.bytes += Array(f.file.bytes(f.dataStart..<f.file.size))
        return b
    }
}

/// Temporary files written by GGUFBytes.write, removed by GGUFTests.tearDown.
nonisolated(unsafe) var ggufTemporaryFiles: [URL] = []
/// Files written by `GGUFBytes.write()`: GGUFTests removes them after each test; those other
/// classes write (GGUFKQuantTests) go when the test process exits.
private let removeAtExit: Void = {
    atexit { for u in ggufTemporaryFiles { try? FileManager.default.removeItem(at: u) } }
}()
private func addTeardownRemoval(_ url: URL) { _ = removeAtExit; ggufTemporaryFiles.append(url) }
