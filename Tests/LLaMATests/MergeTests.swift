import Foundation
import XCTest
import TestHelpers
@testable import LLaMA
import Tensor

/// `lora merge`'s math and exports against scripts/make_merge_reference.py (PEFT
/// merge_and_unload, a float64 weighted sum, transformers logits) and against our own readers.
final class MergeTests: XCTestCase {
    /// Merged weights vs PEFT / float64, relative to the tensor's largest value:
    /// |a - b| <= 1e-6 * max|b| for every element. (Element-wise relative error is unbounded
    /// where W and scale * B A nearly cancel; there both sides round the same operands, ~1e-8.)
    static let weightRel: Float = 1e-6
    /// Logits, absolute (as ForwardParityTests).
    static let logitsTolerance: Float = 1e-4
    static let models = ["tiny-mha", "tiny-gqa"]

    static let dir = Fixtures.root.appendingPathComponent("merge")
    static func adapter(_ model: String, _ k: String) -> URL { dir.appendingPathComponent("\(model)-\(k).adapter") }
    static func reference(_ model: String) throws -> (JSON, SafeTensorsFile) {
        (try JSON.parse(contentsOf: dir.appendingPathComponent("\(model).json")),
         try SafeTensorsFile(path: dir.appendingPathComponent("\(model).safetensors").path))
    }

    func merger(_ model: String, _ specs: [(String, Float)]) throws -> Merger {
        let base = try SafeTensorsCheckpoint(folder: Fixtures.model(model))
        return try Merger(base: base, adapters: specs.map {
            try AdapterFactors.load(Self.adapter(model, $0.0), weight: $0.1, model: base.config)
        })
    }

    /// Asserts the tolerance above; returns max|a - b| / max|b| (printed by the tests).
    @discardableResult
    func assertWeightsClose(_ a: Tensor, _ b: Tensor, _ what: String, file: StaticString = #filePath, line: UInt = #line) -> Float {
        XCTAssertEqual(a.shape, b.shape, what, file: file, line: line)
        var maxAbs: Float = 0, maxDiff: Float = 0
        for i in 0..<b.count { maxAbs = max(maxAbs, abs(b[i])); maxDiff = max(maxDiff, abs(a[i] - b[i])) }
        assertClose(a.data, b.data, count: b.count, abs: Self.weightRel * maxAbs, what, file: file, line: line)
        return maxDiff / maxAbs
    }

    /// Logits [T, V] of every position, through the KV-cache decode path `lora generate` uses
    /// (one token at a time; every attached adapter applied).
    func logits(_ model: LlamaModel, _ ids: [Int32], _ adapters: AdapterSet = .none) throws -> [Float] {
        let cache = KVCache(model: model, sequences: 1, capacity: ids.count, maxChunk: 1, maxRank: adapters.maxRank)
        var out: [Float] = []
        for t in ids {
            try model.step(tokens: [t], sequences: 1, cache: cache, adapters: adapters, ctx: testCtx)
            out += Array(UnsafeBufferPointer(start: cache.logits.data, count: model.config.vocabSize))
        }
        return out
    }

    func assertLogitsClose(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        assertClose(a, b, count: min(a.count, b.count), abs: Self.logitsTolerance, what, file: file, line: line)
    }

    // MARK: the merge against PEFT

    /// One adapter at a time (rsLoRA r=8 on q,v; r=2 on k,o,up,down) equals PEFT's
    /// merge_and_unload(); every tensor the adapter does not target is the base's, bit for bit.
    func testSingleAdapterMatchesPEFTMergeAndUnload() throws {
        for model in Self.models {
            let (ref, st) = try Self.reference(model)
            let base = try SafeTensorsCheckpoint(folder: Fixtures.model(model))
            for k in ["a", "b"] {
                let m = try merger(model, [(k, 1)])
                let changed = Set(ref["adapters"]![k]!["changed"]!.array!.map { $0.string! })
                XCTAssertEqual(Set(m.adapters[0].factors.keys), changed, "\(model) \(k) targets")
                XCTAssertEqual(Double(m.adapters[0].config.scale), ref["adapters"]![k]!["scale"]!.double!, accuracy: 1e-6)
                var worst: Float = 0
                for (name, shape) in m.tensors {
                    let merged = try m.tensor(name)
                    if changed.contains(name) {
                        worst = max(worst, assertWeightsClose(merged, try XCTUnwrap(try st.f32("peft.\(k).\(name)")), "\(model) adapter \(k) \(name)"))
                    } else {
                        XCTAssertEqual(merged.array, try base.tensor(name, shape: shape).array, "\(model) \(name) untouched")
                    }
                }
                print("\(model) adapter \(k) vs PEFT merge_and_unload: max |diff| / max |W| = \(worst)")
            }
        }
    }

    /// W + 0.7 s_a B_a A_a - 1.3 s_b B_b A_b (different ranks and targets) equals the float64 sum.
    func testWeightedCombinationMatchesFloat64Reference() throws {
        for model in Self.models {
            let (ref, st) = try Self.reference(model)
            let w = ref["combo_weights"]!
            let m = try merger(model, [("a", Float(w["a"]!.double!)), ("b", Float(w["b"]!.double!))])
            var checked = 0, worst: Float = 0
            for (name, _) in m.tensors {
                guard let expected = try st.f32("combo.\(name)") else { continue }
                worst = max(worst, assertWeightsClose(try m.tensor(name), expected, "\(model) combo \(name)"))
                checked += 1
            }
            print("\(model) weighted a:0.7 b:-1.3 vs float64: max |diff| / max |W| = \(worst)")
            XCTAssertEqual(checked, Set(m.adapters.flatMap { $0.factors.keys }).count)
        }
    }

    /// Adapters applied unmerged (what `lora generate --lora-weights A --lora-weights B` does)
    /// give PEFT's logits, one adapter and two at once.
    func testUnmergedAdaptersMatchPEFTLogits() throws {
        for model in Self.models {
            let (ref, st) = try Self.reference(model)
            let ids = ref["ids"]!.ints32
            let m = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: Fixtures.model(model)), quantization: .none, pool: testPool)
            let a = try Adapter.load(Self.adapter(model, "a"), model: m.config)
            let b = try Adapter.load(Self.adapter(model, "b"), model: m.config)
            assertLogitsClose(try logits(m, ids, AdapterSet(a)), try XCTUnwrap(try st.f32("logits.a")).array, "\(model) PEFT logits, adapter a")
            assertLogitsClose(try logits(m, ids, AdapterSet([(a, 1), (b, 1)])), try XCTUnwrap(try st.f32("logits.ab")).array,
                              "\(model) PEFT logits, adapters a + b")
            // The model was not changed by either call: no adapter, base logits.
            XCTAssertEqual(try logits(m, ids), try logits(m, ids, .none))
        }
    }

    /// The merged model's logits equal the unmerged adapters' (weights 0.7 and -1.3), and
    /// transformers' on the float64-merged weights.
    func testMergedLogitsMatchUnmergedAdapters() throws {
        for model in Self.models {
            let (ref, st) = try Self.reference(model)
            let ids = ref["ids"]!.ints32
            let wa = Float(ref["combo_weights"]!["a"]!.double!), wb = Float(ref["combo_weights"]!["b"]!.double!)
            let merged = try LlamaModel(checkpoint: MergedCheckpoint(try merger(model, [("a", wa), ("b", wb)])), quantization: .none, pool: testPool)
            let unmerged = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: Fixtures.model(model)), quantization: .none, pool: testPool)
            let set = AdapterSet([(try Adapter.load(Self.adapter(model, "a"), model: unmerged.config), wa),
                                  (try Adapter.load(Self.adapter(model, "b"), model: unmerged.config), wb)])
            let lm = try logits(merged, ids)
            assertLogitsClose(lm, try logits(unmerged, ids, set), "\(model) merged vs unmerged logits")
            assertLogitsClose(lm, try XCTUnwrap(try st.f32("logits.combo")).array, "\(model) merged vs transformers logits")
        }
    }

    /// `lora generate --lora-weights` decodes with the adapters unmerged: greedy and beam search
    /// (4 beams, generate's default; its KV cache once lacked room for rank-8 terms and trapped)
    /// choose the same ids as on the merged model.
    func testGenerationWithUnmergedAdaptersMatchesMergedModel() throws {
        for model in Self.models {
            let (ref, _) = try Self.reference(model)
            let wa = Float(ref["combo_weights"]!["a"]!.double!), wb = Float(ref["combo_weights"]!["b"]!.double!)
            let merged = try LlamaModel(checkpoint: MergedCheckpoint(try merger(model, [("a", wa), ("b", wb)])), quantization: .none, pool: testPool)
            let unmerged = try LlamaModel(checkpoint: try SafeTensorsCheckpoint(folder: Fixtures.model(model)), quantization: .none, pool: testPool)
            let set = AdapterSet([(try Adapter.load(Self.adapter(model, "a"), model: unmerged.config), wa),
                                  (try Adapter.load(Self.adapter(model, "b"), model: unmerged.config), wb)])
            XCTAssertEqual(set.maxRank, 8)
            let prompt: [Int32] = [1, 40, 300, 12, 77, 5, 410]
            for beams in [1, 4] {
                var o = GenerationOptions(); o.numBeams = beams; o.maxNewTokens = 16
                let want = try Generator(model: merged, ctx: testCtx, eosIDs: []).generate(prompt: prompt, options: o)
                let got = try Generator(model: unmerged, adapters: set, ctx: testCtx, eosIDs: []).generate(prompt: prompt, options: o)
                XCTAssertEqual(want.count, 16)
                XCTAssertEqual(got, want, "\(model), \(beams) beams: unmerged adapters vs merged model")
                let base = try Generator(model: unmerged, ctx: testCtx, eosIDs: []).generate(prompt: prompt, options: o)
                XCTAssertNotEqual(base, want, "\(model), \(beams) beams: the adapters change the answer")
            }
        }
    }

    /// The adapters of the training references (r=4 on all seven projections, one trained on an
    /// int8 base) stacked on the same projections as adapter a (q, v), with weights 0.7 and
    /// -0.5: merged and unmerged give the same logits.
    func testStackedAdaptersOnTheSameProjectionsMergeLikeUnmerged() throws {
        for (model, adapter) in [("tiny-mha", "train-mha-all"), ("tiny-gqa", "train-gqa-all-int8")] {
            let dir = Fixtures.reference("\(adapter).adapter")
            let base = try SafeTensorsCheckpoint(folder: Fixtures.model(model))
            let m = try Merger(base: base, adapters: [
                try AdapterFactors.load(Self.adapter(model, "a"), weight: 0.7, model: base.config),
                try AdapterFactors.load(dir, weight: -0.5, model: base.config),
            ])
            XCTAssertEqual(m.adapters[1].factors.count, 7 * base.config.numHiddenLayers)
            let merged = try LlamaModel(checkpoint: MergedCheckpoint(m), quantization: .none, pool: testPool)
            let unmerged = try LlamaModel(checkpoint: base, quantization: .none, pool: testPool)
            let set = AdapterSet([(try Adapter.load(Self.adapter(model, "a"), model: unmerged.config), 0.7),
                                  (try Adapter.load(dir, model: unmerged.config), -0.5)])
            XCTAssertEqual(set.layers(at: LoRASite(0, .q)).count, 2)
            let ids: [Int32] = [1, 40, 300, 12, 77, 5, 410]
            assertLogitsClose(try logits(merged, ids), try logits(unmerged, ids, set), "\(adapter) + a merged vs unmerged")
        }
    }

    /// Merging with weight 1, exporting f32, then merging the export with the same adapter at
    /// weight -1 gives the base back within f32 rounding: |W'' - W| <= ulp(max(|W|, |W'|)).
    func testMergeThenSubtractRestoresBase() throws {
        for model in Self.models {
            let out = try tempDir().appendingPathComponent("merged")
            let plus = try merger(model, [("a", 1), ("b", 1)])
            try HFExport.write(plus, to: out, options: .init(dtype: .f32))
            let back = try Merger(base: try SafeTensorsCheckpoint(folder: out), adapters: [
                try AdapterFactors.load(Self.adapter(model, "a"), weight: -1, model: plus.config),
                try AdapterFactors.load(Self.adapter(model, "b"), weight: -1, model: plus.config),
            ])
            let base = try SafeTensorsCheckpoint(folder: Fixtures.model(model))
            var changed = 0
            for (name, shape) in plus.tensors {
                let w = try base.tensor(name, shape: shape), w1 = try plus.tensor(name), w2 = try back.tensor(name)
                if w1.array != w.array { changed += 1 }
                for i in 0..<w.count {
                    let bound = max(abs(w[i]), abs(w1[i])).ulp
                    if abs(w2[i] - w[i]) > bound {
                        XCTFail("\(model) \(name)[\(i)]: \(w2[i]) after +1/-1, base \(w[i]) (bound \(bound))")
                        break
                    }
                }
            }
            XCTAssertEqual(changed, Set(plus.adapters.flatMap { $0.factors.keys }).count)
        }
    }

    // MARK: adapters that are refused

    func copyAdapter(_ model: String, _ k: String, edit: (inout String) -> Void) throws -> URL {
        let dst = try tempDir().appendingPathComponent("adapter")
        try FileManager.default.copyItem(at: Self.adapter(model, k), to: dst)
        let cfg = dst.appendingPathComponent("adapter_config.json")
        var text = try String(contentsOf: cfg, encoding: .utf8)
        edit(&text)
        try text.write(to: cfg, atomically: true, encoding: .utf8)
        return dst
    }

    func assertRefused(_ dir: URL, model: String = "tiny-mha", naming: String, file: StaticString = #filePath, line: UInt = #line) {
        let c = try! SafeTensorsCheckpoint(folder: Fixtures.model(model)).config
        XCTAssertThrowsError(try AdapterFactors.load(dir, model: c), file: file, line: line) {
            XCTAssert("\($0)".contains(naming), "\($0) should name \(naming)", file: file, line: line)
        }
    }

    func testUnsupportedAdaptersAreRefusedNamingTheField() throws {
        func replacing(_ a: String, _ b: String) -> (inout String) -> Void { { $0 = $0.replacingOccurrences(of: a, with: b) } }
        // DoRA loads; a config that claims it without the magnitude tensors is refused naming one.
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"use_dora\": false", "\"use_dora\": true")), naming: "lora_magnitude_vector")
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"use_dora\": false", "\"use_dora\": 1")), naming: "use_dora")
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"bias\": \"none\"", "\"bias\": \"lora_only\"")), naming: "bias")
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"modules_to_save\": null", "\"modules_to_save\": [\"lm_head\"]")), naming: "modules_to_save")
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"q_proj\"", "\"lm_head\"")), naming: "target_modules")
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"layers_to_transform\": null", "\"layers_to_transform\": [0, 5]")), naming: "layers_to_transform")
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"r\": 8", "\"r\": 4")), naming: "key 'r'")
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"lora_bias\": false", "\"lora_bias\": true")), naming: "lora_bias")
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"exclude_modules\": null", "\"exclude_modules\": [\"q_proj\"]")), naming: "exclude_modules")
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"target_parameters\": null", "\"target_parameters\": [\"w\"]")), naming: "target_parameters")
        // A target the adapter lists but whose tensors are absent.
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"v_proj\"", "\"v_proj\", \"gate_proj\"")), naming: "gate_proj.lora_A")
        // Tensors the config does not account for (v_proj dropped from target_modules).
        assertRefused(try copyAdapter("tiny-mha", "a", edit: replacing("\"v_proj\",", "")), naming: "v_proj.lora_A")
    }

    /// An adapter made for another model is refused on its first mismatching tensor.
    func testShapeMismatchIsRefused() throws {
        assertRefused(Self.adapter("tiny-gqa", "a"), model: "tiny-mha", naming: "v_proj.lora_B.weight' has shape [32, 8], expected [64, 8]")
        assertRefused(Self.adapter("tiny-mha", "b"), model: "tiny-gqa", naming: "k_proj.lora_B.weight' has shape [64, 2], expected [32, 2]")
    }

    // MARK: Hugging Face export

    func testHFExportShardsAndReloads() throws {
        for model in Self.models {
            let m = try merger(model, [("a", 0.7), ("b", -1.3)])
            let out = try tempDir().appendingPathComponent("hf")
            let s = try HFExport.write(m, to: out, options: .init(dtype: .f16, maxShardSize: 40_000))
            XCTAssertGreaterThan(s.shards, 2)
            let fm = FileManager.default
            for f in ["config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.model",
                      "tokenizer_config.json", "special_tokens_map.json"] {
                XCTAssert(fm.fileExists(atPath: out.appendingPathComponent(f).path), "\(model): \(f)")
            }
            XCTAssertFalse(fm.fileExists(atPath: out.appendingPathComponent("model.safetensors").path))
            let index = try JSON.parse(contentsOf: out.appendingPathComponent("model.safetensors.index.json"))
            XCTAssertEqual(index["weight_map"]?.keys.sorted(), m.tensors.map(\.name).sorted())
            XCTAssertEqual(index["metadata"]?["total_size"]?.int, m.tensors.reduce(0) { $0 + $1.shape.reduce(1, *) * 2 })
            // A shard holds at most 40 kB of tensors, or one bigger tensor alone.
            var perFile: [String: [String]] = [:]
            for n in index["weight_map"]!.keys { perFile[index["weight_map"]![n]!.string!, default: []].append(n) }
            XCTAssertEqual(perFile.count, s.shards)
            for (f, names) in perFile {
                let bytes = names.reduce(0) { t, n in t + m.tensors.first { $0.name == n }!.shape.reduce(1, *) * 2 }
                XCTAssert(bytes <= 40_000 || names.count == 1, "\(f): \(bytes) bytes in \(names.count) tensors")
            }
            let back = try SafeTensorsCheckpoint(folder: out)
            var cfg = back.config
            XCTAssertEqual(cfg.torchDtype, "float16")
            cfg.torchDtype = m.config.torchDtype
            XCTAssertEqual(cfg, m.config)
            XCTAssertEqual(back.has("lm_head.weight"), !m.config.tieWordEmbeddings)
            for (name, shape) in m.tensors {
                let expected = try m.tensor(name)
                for i in 0..<expected.count { expected[i] = halfToFloat(floatToHalf(expected[i])) }
                XCTAssertEqual(try back.tensor(name, shape: shape).array, expected.array, "\(model) \(name) f16")
            }
            let left = try fm.contentsOfDirectory(atPath: out.deletingLastPathComponent().path).filter { $0.hasPrefix(".") }
            XCTAssertEqual(left, [], "temporary files left behind")
        }
    }

    func testShardPlanAndSizes() {
        let sizes = [("a", 30), ("b", 30), ("c", 50), ("d", 10), ("e", 200), ("f", 5)]
        XCTAssertEqual(HFExport.shards(sizes.map { (name: $0.0, bytes: $0.1) }, maxBytes: 60),
                       [["a", "b"], ["c", "d"], ["e"], ["f"]])
        XCTAssertEqual(HFExport.shards(sizes.map { (name: $0.0, bytes: $0.1) }, maxBytes: 1000), [["a", "b", "c", "d", "e", "f"]])
        XCTAssertEqual(HFExport.parseSize("2GB"), 2_000_000_000)
        XCTAssertEqual(HFExport.parseSize("500MB"), 500_000_000)
        XCTAssertEqual(HFExport.parseSize("1GiB"), 1 << 30)
        XCTAssertEqual(HFExport.parseSize("10kb"), 10_000)
        XCTAssertEqual(HFExport.parseSize("123"), 123)
        XCTAssertNil(HFExport.parseSize("two GB"))
        XCTAssertNil(HFExport.parseSize("0GB"))
        XCTAssertNil(HFExport.parseSize("-5MB"))
    }

    // MARK: GGUF export

    /// An f32 GGUF export reads back (through GGUFCheckpoint, which un-permutes q and k) to the
    /// merged weights exactly; q8_0 to within Q8_0's rounding, norms f32, rows of 176 as f16.
    func testGGUFExportReadsBackToMergedWeights() throws {
        for model in Self.models {
            let m = try merger(model, [("a", 0.7), ("b", -1.3)])
            let dir = try tempDir()
            for dtype in [ExportDType.f32, .f16, .q8_0, .bf16] {
                let url = dir.appendingPathComponent("\(model)-\(dtype.rawValue).gguf")
                try GGUFExport.writeModel(m, to: url, dtype: dtype)
                let g = try GGUFCheckpoint(path: url.path)
                var cfg = g.config
                cfg.torchDtype = m.config.torchDtype
                XCTAssertEqual(cfg, m.config, "\(model) config from GGUF metadata")
                XCTAssertEqual(try g.file.int("general.file_type"), Int(GGUFExport.fileType(dtype)))
                for (name, shape) in m.tensors {
                    let expected = try m.tensor(name), got = try g.tensor(name, shape: shape)
                    let info = try XCTUnwrap(g.file.tensorInfo(GGUFCheckpoint.ggufName(name)!))
                    XCTAssertEqual(info.dims, shape.reversed(), name)
                    if shape.count == 1 { XCTAssertEqual(info.type, .f32, name) }
                    switch (shape.count == 1 ? .f32 : info.type) {
                    case .f32:
                        XCTAssertEqual(got.array, expected.array, "\(model) \(dtype) \(name)")
                    case .f16:
                        XCTAssertEqual(got.array, expected.array.map { halfToFloat(floatToHalf($0)) }, "\(model) \(dtype) \(name)")
                        XCTAssert(dtype == .f16 || shape[1] % 32 != 0, "\(name) fell back to f16")
                    case .bf16:
                        XCTAssertEqual(got.array, expected.array.map { bf16ToFloat(floatToBF16($0)) }, "\(model) \(dtype) \(name)")
                    case .q8_0:
                        // Each value within half a step (amax / 127) of its block, plus the f16 scale's rounding.
                        for b in 0..<(expected.count / 32) {
                            var amax: Float = 0
                            for j in 0..<32 { amax = max(amax, abs(expected[32 * b + j])) }
                            for j in 0..<32 where abs(got[32 * b + j] - expected[32 * b + j]) > amax / 127 * 0.5 + amax * 1e-3 {
                                XCTFail("\(model) q8_0 \(name) block \(b): \(got[32 * b + j]) vs \(expected[32 * b + j])")
                            }
                        }
                    default: XCTFail("\(name): type \(info.type)")
                    }
                }
            }
        }
    }

    /// With the adapter at weight 0 the export is the base itself: every tensor byte and every
    /// tokenizer.* value equals the file scripts/make_reference.py writes with the gguf package
    /// the way convert_hf_to_gguf.py does.
    func testGGUFExportOfBaseEqualsConverterFile() throws {
        let ref = Fixtures.root.appendingPathComponent("gguf/tiny-mha.gguf")
        try XCTSkipUnless(FileManager.default.fileExists(atPath: ref.path), "no \(ref.path)")
        let url = try tempDir().appendingPathComponent("base.gguf")
        try GGUFExport.writeModel(try merger("tiny-mha", [("a", 0)]), to: url, dtype: .f32)
        let ours = try GGUFFile(path: url.path), theirs = try GGUFFile(path: ref.path)
        XCTAssertEqual(Set(ours.tensors.map(\.name)), Set(theirs.tensors.map(\.name)))
        for t in theirs.tensors {
            let o = try XCTUnwrap(ours.tensorInfo(t.name))
            XCTAssertEqual(o.dims, t.dims, t.name)
            XCTAssertEqual(o.type, t.type, t.name)
            XCTAssert(ours.raw(o).elementsEqual(theirs.raw(t)), "\(t.name) bytes")
        }
        for k in theirs.keys where k.hasPrefix("tokenizer.") || k.hasPrefix("llama.") || k == "general.architecture" {
            XCTAssertEqual(ours.metadata[k], theirs.metadata[k], k)
        }
    }

    /// A quantized GGUF base is dequantized, merged, and its tokenizer metadata copied through.
    func testGGUFBaseIsDequantizedThenMerged() throws {
        let path = Fixtures.root.appendingPathComponent("gguf/tiny-gqa-q8.gguf").path
        try XCTSkipUnless(FileManager.default.fileExists(atPath: path), "no \(path)")
        let base = try GGUFCheckpoint(path: path)
        let m = try Merger(base: base, adapters: [try AdapterFactors.load(Self.adapter("tiny-gqa", "a"), model: base.config)])
        let ref = try merger("tiny-gqa", [("a", 1)])
        for (name, shape) in m.tensors {
            let w = try base.tensor(name, shape: shape), got = try m.tensor(name)
            // Same delta as from the safetensors base: merged - base equal up to f32 rounding.
            let delta = try ref.tensor(name), b = try ref.base.tensor(name, shape: shape)
            for i in 0..<w.count {
                let d1 = got[i] - w[i], d2 = delta[i] - b[i]
                if abs(d1 - d2) > 2 * max(abs(got[i]), abs(delta[i])).ulp + 1e-7 {
                    XCTFail("\(name)[\(i)]: delta \(d1) from the GGUF base, \(d2) from safetensors")
                    break
                }
            }
        }
        let url = try tempDir().appendingPathComponent("out.gguf")
        try GGUFExport.writeModel(m, to: url, dtype: .q8_0)
        let out = try GGUFFile(path: url.path)
        for k in base.file.keys where k.hasPrefix("tokenizer.") { XCTAssertEqual(out.metadata[k], base.file.metadata[k], k) }
        XCTAssertNil(out.tensorInfo("output.weight"), "tied embedding: no output tensor")
        // An HF export from a GGUF base writes the GGUF's tokenizer as Hugging Face files.
        let hf = try HFExport.write(m, to: try tempDir().appendingPathComponent("hf"), options: .init(dtype: .f32))
        XCTAssertEqual(hf.notes, [])
        for f in ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"] { XCTAssert(hf.files.contains(f), "\(hf.files)") }
    }

    /// The SentencePiece vocabulary as tokenizer.ggml.*: pieces, types, scores (from the
    /// ModelProto), padding to vocab_size.
    func testSentencePieceVocabularyMetadata() throws {
        let folder = Fixtures.model("tiny-mha")
        let c = try SafeTensorsCheckpoint(folder: folder).config
        var bigger = c
        bigger.vocabSize = c.vocabSize + 3
        let meta = Dictionary(uniqueKeysWithValues: try GGUFVocab.sentencePiece(model: folder.appendingPathComponent("tokenizer.model"),
                                                                                 config: bigger, tokenizerConfig: nil))
        let tok = try SentencePieceTokenizer(path: folder.appendingPathComponent("tokenizer.model"))
        let tokens = try XCTUnwrap(meta["tokenizer.ggml.tokens"]?.array).map { $0.string! }
        let types = try XCTUnwrap(meta["tokenizer.ggml.token_type"]?.array).map { $0.int! }
        let scores = try XCTUnwrap(meta["tokenizer.ggml.scores"]?.array).map { $0.double! }
        XCTAssertEqual(tokens.count, bigger.vocabSize)
        for i in 0..<tok.vocabSize {
            XCTAssertEqual(tokens[i], tok.piece(Int32(i)))
            let expected = tok.isUnknown(Int32(i)) ? 2 : tok.isControl(Int32(i)) ? 3 : tok.isUnused(Int32(i)) ? 5 : tok.isByte(Int32(i)) ? 6 : 1
            XCTAssertEqual(types[i], expected, tokens[i])
        }
        XCTAssertEqual(Array(tokens.suffix(3)), ["[PAD512]", "[PAD513]", "[PAD514]"])
        XCTAssertEqual(Array(types.suffix(3)), [5, 5, 5])
        XCTAssertEqual(scores.last, -10000)
        XCTAssert(scores[300] < 0, "merge pieces carry their (negative) scores")
        XCTAssertEqual(meta["tokenizer.ggml.model"], .string("llama"))
        XCTAssertEqual(meta["tokenizer.ggml.bos_token_id"], .uint32(1))
        XCTAssertEqual(meta["tokenizer.ggml.eos_token_id"], .uint32(2))
        XCTAssertEqual(meta["tokenizer.ggml.unknown_token_id"], .uint32(0))
        XCTAssertNil(meta["tokenizer.ggml.padding_token_id"])
        XCTAssertThrowsError(try SentencePieceModelProto(bytes: [0x0A, 0x40, 0x01], file: "x")) {
            XCTAssert("\($0)".contains("x"), "\($0)")
        }
    }

    /// `--adapter-only`: llama.cpp's LoRA adapter layout; alpha carries the exact (rsLoRA) scale.
    func testAdapterOnlyGGUF() throws {
        for model in Self.models {
            let c = try SafeTensorsCheckpoint(folder: Fixtures.model(model)).config
            let a = try AdapterFactors.load(Self.adapter(model, "a"), weight: 0.5, model: c)
            let url = try tempDir().appendingPathComponent("a.gguf")
            try GGUFExport.writeAdapter(a, model: c, name: "a", to: url)
            let g = try GGUFFile(path: url.path)
            XCTAssertEqual(try g.string("general.architecture"), "llama")
            XCTAssertEqual(try g.string("general.type"), "adapter")
            XCTAssertEqual(try g.string("adapter.type"), "lora")
            let alpha = try XCTUnwrap(try g.float("adapter.lora.alpha"))
            XCTAssertEqual(alpha / 8, 0.5 * 16 / Float(8).squareRoot(), accuracy: 1e-5, "llama.cpp's alpha / r = weight * PEFT's scale")
            XCTAssertEqual(g.tensors.count, 2 * a.factors.count)
            for (hf, f) in a.factors {
                let name = GGUFCheckpoint.ggufName(hf)!
                let ia = try XCTUnwrap(g.tensorInfo(name + ".lora_a")), ib = try XCTUnwrap(g.tensorInfo(name + ".lora_b"))
                XCTAssertEqual(ia.dims, [f.A.shape[1], 8])
                XCTAssertEqual(ib.dims, [8, f.B.shape[0]])
                XCTAssertEqual(try g.f32(ia).array, f.A.array, name)
                let b = try g.f32(ib)
                if hf.contains("q_proj") {
                    XCTAssertNotEqual(b.array, f.B.array)
                    XCTAssertEqual(try GGUFCheckpoint.unpermuteRoPE(b, heads: c.numAttentionHeads).array, f.B.array, name)
                } else {
                    XCTAssertEqual(b.array, f.B.array, name)
                }
            }
            XCTAssertThrowsError(try GGUFExport.writeAdapter(a, model: c, name: "a", to: url, dtype: .q8_0))
        }
    }

    func testPermuteRoPEInvertsUnpermute() throws {
        let w = Tensor([2 * 8, 3], (0..<48).map(Float.init))
        let p = GGUFExport.permuteRoPE(w, heads: 2)
        // Head 0, head_dim 8: GGUF rows 0, 1, 2, ... are HF rows 0, 4, 1, 5, 2, 6, 3, 7.
        XCTAssertEqual(stride(from: 0, to: 24, by: 3).map { p[$0] / 3 }, [0, 4, 1, 5, 2, 6, 3, 7])
        XCTAssertEqual(try GGUFCheckpoint.unpermuteRoPE(p, heads: 2).array, w.array)
    }

    func testGGUFWriterRoundTripsEveryValueType() throws {
        var w = GGUFWriter()
        let values: [(String, GGUFValue)] = [
            ("u8", .uint8(200)), ("i8", .int8(-3)), ("u16", .uint16(60000)), ("i16", .int16(-300)),
            ("u32", .uint32(4_000_000_000)), ("i32", .int32(-5)), ("u64", .uint64(1 << 40)), ("i64", .int64(-(1 << 40))),
            ("f32", .float32(1.5)), ("f64", .float64(-2.25)), ("b", .bool(true)), ("s", .string("héllo")),
            ("arr", .array(.int32, [.int32(1), .int32(-2)])), ("empty", .array(.string, [])),
            ("nested", .array(.array, [.array(.uint8, [.uint8(1)])])),
        ]
        for (k, v) in values { w.add(k, v) }
        let t = Tensor([2, 32], (0..<64).map { Float($0) / 7 })
        w.tensors.append(.init(name: "m", dims: [32, 2], type: .f32) { GGUFExport.encode(t, as: .f32, into: $0) })
        w.tensors.append(.init(name: "v", dims: [3], type: .f32) { $0.copyBytes(from: [Float(1), 2, 3].withUnsafeBytes { Array($0) }) })
        let url = try tempDir().appendingPathComponent("w.gguf")
        try w.write(to: url)
        let g = try GGUFFile(path: url.path)
        XCTAssertEqual(g.version, 3)
        XCTAssertEqual(g.keys, values.map(\.0))
        for (k, v) in values { XCTAssertEqual(g.metadata[k], v, k) }
        XCTAssertEqual(try g.f32("m")?.array, t.array)
        XCTAssertEqual(try g.f32("v")?.array, [1, 2, 3])
        XCTAssertEqual(g.tensorInfo("v")?.offset, 256)
    }
}
