import XCTest
@testable import LLaMA
@testable import Tensor

/// NF4 (QLoRA's base) against bitsandbytes 0.50.2 and transformers + PEFT on the CPU
/// (scripts/make_reference.py --only nf4, Tests/Fixtures/reference/nf4/):
/// - the code book and dynamic map, bit for bit;
/// - bitsandbytes' arrays dequantized by NF4Format equal `dequantize_4bit`, bit for bit;
/// - NF4Format.make quantizes to bitsandbytes' arrays exactly (codes, absmax codes, nested
///   absmax, offset), on shapes with partial blocks, an odd count, an all-zero block and
///   1728 blocks (7 nested groups, torch's cascaded float sum for the offset);
/// - the tiny models loaded with `quantization: nf4` give the layer-0 q_proj of transformers'
///   4-bit load bit for bit, and the loss within the int8 path's tolerance (1e-5 relative);
/// - one LoRA step on the 4-bit tiny-gqa: loss and every lora_A / lora_B gradient within the
///   int8 path's tolerances (TrainingParityTests: 1e-5 relative loss, 1e-3 relative + 1e-6
///   absolute per gradient element).
final class NF4Tests: XCTestCase {
    static let dir = "nf4"
    static func tensors() throws -> SafeTensorsFile { try Fixtures.tensors("\(dir)/quant.safetensors") }
    static func meta() throws -> JSON { try Fixtures.json("\(dir)/nf4.json") }

    func u8(_ f: SafeTensorsFile, _ name: String) throws -> [UInt8] {
        try XCTUnwrap(f.ints(name), name).map { UInt8($0) }
    }

    func floats(_ f: SafeTensorsFile, _ name: String) throws -> [Float] {
        let t = try XCTUnwrap(try f.f32(name), name)
        return Array(UnsafeBufferPointer(start: t.data, count: t.count))
    }

    func assertBits(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, "\(what) count", file: file, line: line)
        let differ = (0..<min(a.count, b.count)).filter { a[$0].bitPattern != b[$0].bitPattern }
        if let i = differ.first {
            XCTFail("\(what): element \(i) is \(a[i]), bitsandbytes \(b[i]) (\(differ.count) differ)", file: file, line: line)
        }
    }

    func testTablesMatchBitsandbytes() throws {
        let f = try Self.tensors()
        assertBits(NF4Format.code, try floats(f, "code"), "NF4 code book")
        assertBits(NF4Format.dynamic, try floats(f, "dynamic"), "dynamic map")
    }

    func testDequantizeAndQuantizeMatchBitsandbytes() throws {
        let f = try Self.tensors(), cases = try Self.meta()["cases"]!
        for key in ["a", "b", "c", "d"] {
            let shape = cases[key]!["shape"]!.array!.map { $0.int! }
            let (rows, cols) = (shape[0], shape[1])
            let q = try u8(f, "\(key).q"), a8 = try u8(f, "\(key).absmax8")
            let nested = try floats(f, "\(key).nested"), offset = try floats(f, "\(key).offset")[0]
            let deq = try floats(f, "\(key).deq")
            // bitsandbytes' arrays, our dequantization (Swift reference and every kernel path below)
            let theirs = NF4Format.weight(rows: rows, cols: cols, q: q, absmax8: a8, nested: nested, offset: offset)
            let d = theirs.dense()
            assertBits(Array(UnsafeBufferPointer(start: d.data, count: d.count)), deq, "dequantize \(key) \(shape)")
            // our quantization of the same input
            let w = try XCTUnwrap(try f.f32("\(key).w"))
            let ours = Weight.make(WeightFormats.nf4, from: w, pool: testPool)
            let arr = NF4Format.arrays(ours)
            XCTAssertEqual(arr.q, q, "codes \(key) \(shape)")
            XCTAssertEqual(arr.absmax8, a8, "absmax codes \(key) \(shape)")
            assertBits(arr.nested, nested, "nested absmax \(key) \(shape)")
            XCTAssertEqual(arr.offset.bitPattern, offset.bitPattern, "offset \(key) \(shape): \(arr.offset) vs \(offset)")
        }
    }

    /// The same deterministic input as make_reference.py's nf4_det_input.
    static func detInput(rows: Int, cols: Int) -> Tensor {
        let t = Tensor([rows, cols])
        for i in 0..<(rows * cols) {
            var h = (Int64(i) &* 2_654_435_761 &+ 12345) % 4_294_967_296
            h = (h ^ (h >> 13)) % 20001 - 10000
            let rowScale = 1 + (Int64(i) / 576) % 5
            t[i] = Float(h * rowScale) / 262_144
        }
        return t
    }

    func testManyBlocksMatchBitsandbytes() throws {
        let f = try Self.tensors()
        let shape = try Self.meta()["cases"]!["big"]!["shape"]!.array!.map { $0.int! }
        let w = Self.detInput(rows: shape[0], cols: shape[1])
        let arr = NF4Format.arrays(Weight.make(WeightFormats.nf4, from: w, pool: testPool))
        XCTAssertEqual(arr.q, try u8(f, "big.q"), "codes")
        XCTAssertEqual(arr.absmax8, try u8(f, "big.absmax8"), "absmax codes")
        assertBits(arr.nested, try floats(f, "big.nested"), "nested absmax")
        XCTAssertEqual(arr.offset.bitPattern, try floats(f, "big.offset")[0].bitPattern, "offset (torch's float mean)")
    }

    func testTinyModelsIn4BitMatchTransformers() throws {
        let f = try Self.tensors(), losses = try Self.meta()["losses"]!
        for name in ["tiny-mha", "tiny-gqa"] {
            let ck = try SafeTensorsCheckpoint(folder: Fixtures.model(name))
            let model = try LlamaModel(checkpoint: ck, quantization: .nf4, pool: testPool)
            let q0 = model.blocks[0].q.weight
            XCTAssertEqual(q0.format.name, "nf4")
            XCTAssertEqual(model.blocks[0].down.weight.format.name, "nf4")
            let d = q0.dense()
            assertBits(Array(UnsafeBufferPointer(start: d.data, count: d.count)), try floats(f, "\(name).q_proj0.deq"),
                       "\(name) layer 0 q_proj")
            let ref = losses[name]!
            let batches = ref["micro_batches"]!.array!.map(Self.batch)
            let acts = Activations(model: model, maxB: batches.map(\.B).max()!, maxT: batches.map(\.T).max()!)
            var sum = 0.0, tokens = 0
            for b in batches {
                let r = model.loss(b, adapters: AdapterSet(), acts: acts, ctx: testCtx)
                sum += r.lossSum; tokens += r.tokens
            }
            XCTAssertEqual(tokens, ref["num_items"]!.int!)
            let loss = sum / Double(tokens), expected = ref["loss"]!.double!
            XCTAssertEqual(loss, expected, accuracy: expected * TrainingParityTests.lossRelTolerance, "\(name) 4-bit loss")
        }
    }

    static func batch(_ mb: JSON) -> Batch {
        let ids = mb["input_ids"]!.array!.map { $0.ints32 }
        let mask = mb["attention_mask"]!.array!.map { $0.ints32 }
        let labels = mb["labels"]!.array!.map { $0.ints32 }
        return Batch(B: ids.count, T: ids[0].count, inputIDs: ids.flatMap { $0 },
                     attentionMask: mask.flatMap { $0 }.map(Float.init), labels: labels.flatMap { $0 })
    }

    func testLoRAStepOn4BitBaseMatchesPEFT() throws {
        let ref = try Self.meta()["train"]!
        let grads = try Fixtures.tensors("\(Self.dir)/train-gqa-all-nf4.safetensors")
        let ck = try SafeTensorsCheckpoint(folder: Fixtures.model("tiny-gqa"))
        let model = try LlamaModel(checkpoint: ck, quantization: .nf4, pool: testPool)
        let adapter = try Adapter.load(Fixtures.reference("\(Self.dir)/train-gqa-all-nf4.adapter"), model: model.config)
        XCTAssertEqual(Double(adapter.config.scale), ref["settings"]!["scaling"]!.double!, accuracy: 1e-6)
        adapter.enableGradients()
        adapter.zeroGradients()
        let batches = ref["micro_batches"]!.array!.map(Self.batch)
        let numItems = ref["num_items"]!.int!
        let acts = Activations(model: model, trained: adapter, maxB: batches.map(\.B).max()!, maxT: batches.map(\.T).max()!)
        var rng = RNG(seed: 0)
        var sum = 0.0
        for b in batches {
            sum += model.forwardBackward(b, adapters: AdapterSet(adapter), acts: acts, ctx: testCtx, rng: &rng,
                                         gradScale: 1 / Float(numItems)).lossSum
        }
        let loss = sum / Double(numItems), loss0 = ref["loss0"]!.double!
        XCTAssertEqual(loss, loss0, accuracy: loss0 * TrainingParityTests.lossRelTolerance, "loss on the 4-bit base")
        var checked = 0
        for t in adapter.trainable {
            let g = t.grad!, r = try XCTUnwrap(try grads.f32("grad.\(t.name)"), t.name)
            XCTAssertEqual(r.shape, g.shape)
            assertClose(g.data, r.data, count: g.count, abs: TrainingParityTests.gradAbsFloor,
                        rel: TrainingParityTests.gradRelTolerance, "grad \(t.name)")
            checked += 1
        }
        XCTAssertEqual(checked, ref["lora_param_keys"]!.array!.count, "every LoRA parameter checked")
    }
}
