import Foundation
import XCTest
@testable import Tensor

/// `Backend.loraGrouped` (serve's per-adapter-group LoRA products) on the CPU's spinning workers
/// against `loraGroupedSerial` (each term as two `gemm` calls, one after another): the same bits,
/// since a request must give the same tokens through serve as through `lora generate`; and
/// against a double-precision reference within a named tolerance.
final class LoRAGroupedTests: XCTestCase {
    static let rtol: Float = 1e-5

    func check(family: KernelFamily, inF: Int, out: Int, rows: Int, spec: [(r0: Int, r1: Int, rank: Int, alpha: Float)],
               seed: UInt64) {
        var rng = RNG(seed: seed)
        let x = (0..<(rows * inF)).map { _ in rng.normal() }
        let y0 = (0..<(rows * out)).map { _ in rng.normal() }
        // Factors as tensors: their storage stays put while the terms point into it.
        let factors = spec.map { t -> (A: Tensor, B: Tensor) in
            let a = Tensor([t.rank, inF]), b = Tensor([out, t.rank])
            for i in 0..<a.count { a.data[i] = 0.1 * rng.normal() }
            for i in 0..<b.count { b.data[i] = 0.1 * rng.normal() }
            return (a, b)
        }
        let terms = zip(spec, factors).map { t, f in
            LoRATerm(r0: t.r0, r1: t.r1, rank: t.rank, alpha: t.alpha, A: f.A.data, B: f.B.data)
        }
        let be = CPUBackend(family: family, pool: testPool)
        var ySerial = y0, yGrouped = y0
        var u = [Float](repeating: .nan, count: LoRATerm.scratchCount(terms))
        be.loraGroupedSerial(y: &ySerial, x: x, inFeatures: inF, outFeatures: out, terms: terms, u: &u)
        u = [Float](repeating: .nan, count: LoRATerm.scratchCount(terms))
        be.loraGrouped(y: &yGrouped, x: x, inFeatures: inF, outFeatures: out, terms: terms, u: &u)
        // Reference in Double: each term in order.
        var ref = y0.map(Double.init), mag = y0.map { abs(Double($0)) }
        for (t, f) in zip(spec, factors) {
            for m in t.r0..<t.r1 {
                let u = (0..<t.rank).map { k in (0..<inF).reduce(0.0) { $0 + Double(x[m * inF + $1]) * Double(f.A.data[k * inF + $1]) } }
                for n in 0..<out {
                    let v = (0..<t.rank).reduce(0.0) { $0 + u[$1] * Double(f.B.data[n * t.rank + $1]) } * Double(t.alpha)
                    ref[m * out + n] += v
                    mag[m * out + n] += abs(v)
                }
            }
        }
        let what = "\(family) in \(inF) out \(out) terms \(spec)"
        var bad = 0
        for i in 0..<(rows * out) where bad < 3 {
            if yGrouped[i].bitPattern != ySerial[i].bitPattern {
                XCTFail("\(what): y[\(i)] grouped \(yGrouped[i]) != serial \(ySerial[i])"); bad += 1
            }
            if !(abs(Double(yGrouped[i]) - ref[i]) <= Double(Self.rtol) * (mag[i] + 1e-6)) {
                XCTFail("\(what): y[\(i)] = \(yGrouped[i]), reference \(ref[i])"); bad += 1
            }
        }
    }

    /// Random x [rows, inF] and factors A [rank, inF], B [out, rank], drawn in that order.
    func inputs(_ rng: inout RNG, rows: Int, inF: Int, out: Int, rank: Int) -> (x: [Float], A: Tensor, B: Tensor) {
        let x = (0..<(rows * inF)).map { _ in rng.normal() }
        let A = Tensor([rank, inF]), B = Tensor([out, rank])
        for i in 0..<A.count { A.data[i] = 0.1 * rng.normal() }
        for i in 0..<B.count { B.data[i] = 0.1 * rng.normal() }
        return (x, A, B)
    }

    func testGroupedEqualsSerial() {
        XCTAssertGreaterThan(testPool.threads, 1, "the grouped path needs the spinning workers")
        for family in KernelFamily.allCases where family.isAvailable {
            // Two adapters on one group (a weighted mix), groups of 1-3 rows, ranks 4-16, an
            // output width that is not a multiple of 16.
            check(family: family, inF: 96, out: 72, rows: 6,
                  spec: [(0, 2, 8, 0.7 * 2), (0, 2, 16, 0.3 * 2), (2, 3, 4, 1), (3, 6, 8, 2)], seed: 1)
            // One term, one row (a single client).
            check(family: family, inF: 64, out: 200, rows: 1, spec: [(0, 1, 16, 2)], seed: 2)
            // A prefill-sized group (17 rows): two pieces (16 + 1 rows).
            check(family: family, inF: 32, out: 48, rows: 18, spec: [(0, 17, 8, 0.5), (17, 18, 8, 1)], seed: 3)
        }
    }

    /// Per-row alphas (an adapter's rows next to a mix's that weighs it otherwise): the same
    /// bits as one term per run of rows with one alpha, on the grouped and the serial path;
    /// and more than 16 rows give each row the bits of its 16-row piece alone.
    func testPerRowAlphasAndPieces() {
        for family in KernelFamily.allCases where family.isAvailable {
            let be = CPUBackend(family: family, pool: testPool)
            var rng = RNG(seed: 11)
            let inF = 64, out = 40, rank = 8, rows = 21
            let (x, A, B) = inputs(&rng, rows: rows, inF: inF, out: out, rank: rank)
            let alphas: [Float] = (0..<rows).map { $0 < 3 ? 1.4 : $0 < 12 ? 2 : 0.6 }
            let y0 = (0..<(rows * out)).map { _ in rng.normal() }
            var runs = y0
            for (r0, r1) in [(0, 3), (3, 12), (12, 21)] {
                for p0 in stride(from: r0, to: r1, by: 16) {
                    var u = [Float](repeating: .nan, count: rows * rank)
                    be.loraGrouped(y: &runs, x: x, inFeatures: inF, outFeatures: out,
                                   terms: [LoRATerm(r0: p0, r1: min(r1, p0 + 16), rank: rank, alpha: alphas[r0], A: A.data, B: B.data)], u: &u)
                }
            }
            for serial in [false, true] {
                var y = y0
                var u = [Float](repeating: .nan, count: rows * rank)
                alphas.withUnsafeBufferPointer { ap in
                    let t = LoRATerm(r0: 0, r1: rows, rank: rank, alpha: 1, A: A.data, B: B.data, alphas: ap.baseAddress)
                    if serial { be.loraGroupedSerial(y: &y, x: x, inFeatures: inF, outFeatures: out, terms: [t], u: &u) }
                    else { be.loraGrouped(y: &y, x: x, inFeatures: inF, outFeatures: out, terms: [t], u: &u) }
                }
                XCTAssertEqual(y.map(\.bitPattern), runs.map(\.bitPattern), "\(family) serial \(serial): per-row alphas vs runs")
            }
            // Row 20 alone: the bits it got in the 21-row term (pieces of 16 rows).
            var alone = Array(y0[(20 * out)...])
            var u = [Float](repeating: .nan, count: rank)
            be.loraGrouped(y: &alone, x: Array(x[(20 * inF)...]), inFeatures: inF, outFeatures: out,
                           terms: [LoRATerm(r0: 0, r1: 1, rank: rank, alpha: 0.6, A: A.data, B: B.data)], u: &u)
            XCTAssertEqual(alone.map(\.bitPattern), Array(runs[(20 * out)...]).map(\.bitPattern), "\(family): row 20 alone")
        }
    }

    /// A row gets the same bits whether its adapter group holds it alone or with others (a
    /// server's request alone or batched with 7 more): both LoRA products treat each row the
    /// same whatever M is. On the portable and AVX2 families; the AVX-512 GEMV still gives a
    /// lone row two accumulators (not checked on this machine, see ARCHITECTURE.md).
    func testEachRowGetsItsBitsAloneOrInAGroup() {
        for family in [KernelFamily.portable, .avx2] where family.isAvailable {
            let be = CPUBackend(family: family, pool: testPool)
            var rng = RNG(seed: 9)
            let inF = 576, out = 200, rank = 16, rows = 5
            let (x, A, B) = inputs(&rng, rows: rows, inF: inF, out: out, rank: rank)
            var y = [Float](repeating: 0.5, count: rows * out)
            var u = [Float](repeating: .nan, count: rows * rank)
            be.loraGrouped(y: &y, x: x, inFeatures: inF, outFeatures: out,
                           terms: [LoRATerm(r0: 0, r1: rows, rank: rank, alpha: 2, A: A.data, B: B.data)], u: &u)
            for m in 0..<rows {
                var alone = [Float](repeating: 0.5, count: out)
                var ua = [Float](repeating: .nan, count: rank)
                let xm = Array(x[(m * inF)..<((m + 1) * inF)])
                be.loraGrouped(y: &alone, x: xm, inFeatures: inF, outFeatures: out,
                               terms: [LoRATerm(r0: 0, r1: 1, rank: rank, alpha: 2, A: A.data, B: B.data)], u: &ua)
                XCTAssertEqual(alone.map(\.bitPattern), Array(y[(m * out)..<((m + 1) * out)]).map(\.bitPattern),
                               "\(family): row \(m) of \(rows) differs from the row alone")
            }
        }
    }


    /// `decodeProjection` (serve's and generate's projection with its LoRA terms, one job on the
    /// spinning workers) gives the bits of `matmulDecoding` then `loraGrouped`, for integer
    /// formats in both layouts, several term layouts (per-row alphas too) and M from 1 to 16;
    /// weights too small for the workers and M past 16 take the two calls themselves.
    func testDecodeProjectionEqualsTheTwoCalls() {
        var rng = RNG(seed: 21)
        for (N, K) in [(400, 384), (48, 64)] {   // 163 KB of Q8_0, 96 KB of Q4_1 (the workers' path); 3 KB (not)
            let wf = Tensor([N, K])
            for i in 0..<wf.count { wf.data[i] = 0.05 * rng.normal() }
            let factors = (0..<3).map { _ -> (A: Tensor, B: Tensor) in
                let a = Tensor([16, K]), b = Tensor([N, 16])
                for i in 0..<a.count { a.data[i] = 0.1 * rng.normal() }
                for i in 0..<b.count { b.data[i] = 0.1 * rng.normal() }
                return (a, b)
            }
            var alphas: [Float] = (0..<20).map { Float($0 % 3) * 0.5 - 0.4 }
            for family in KernelFamily.available {
                let be = CPUBackend(family: family, pool: testPool)
                for format in [WeightFormats.q8_0, WeightFormats.q4_1] {
                    for w in [Weight.make(format, from: wf, pool: testPool), GroupedBlockFormat.grouped(Weight.make(format, from: wf, pool: testPool))] {
                        for M in [1, 2, 7, 8, 16, 19] {
                            let x = (0..<(M * K)).map { _ in rng.normal() }
                            alphas.withUnsafeMutableBufferPointer { ab in
                                var terms = [LoRATerm(r0: 0, r1: M, rank: 16, alpha: 2, A: factors[0].A.data, B: factors[0].B.data)]
                                if M >= 2 {
                                    terms.append(LoRATerm(r0: M / 2, r1: M, rank: 16, alpha: 1, A: factors[1].A.data, B: factors[1].B.data,
                                                          alphas: UnsafePointer(ab.baseAddress!)))
                                    terms.append(LoRATerm(r0: 0, r1: 1, rank: 16, alpha: -0.7, A: factors[2].A.data, B: factors[2].B.data))
                                }
                                var y1 = [Float](repeating: .nan, count: M * N), y2 = y1
                                var u = [Float](repeating: .nan, count: LoRATerm.scratchCount(terms))
                                be.matmulDecoding(y: &y1, x: x, w: w, M: M, scratch: MatmulScratch())
                                be.loraGrouped(y: &y1, x: x, inFeatures: K, outFeatures: N, terms: terms, u: &u)
                                u = [Float](repeating: .nan, count: LoRATerm.scratchCount(terms))
                                be.decodeProjection(y: &y2, x: x, w: w, M: M, scratch: MatmulScratch(), terms: terms, u: &u)
                                let diff = (0..<(M * N)).filter { y1[$0].bitPattern != y2[$0].bitPattern }
                                XCTAssertTrue(diff.isEmpty, "\(family) \(w.format.name) \(N)x\(K) M=\(M): \(diff.count) outputs differ, e.g. "
                                              + "\(diff.first.map { "\(y1[$0]) vs \(y2[$0])" } ?? "")")
                                XCTAssertFalse(y2.contains { $0.isNaN }, "\(family) M=\(M): NaN left")
                            }
                        }
                    }
                }
            }
        }
    }

    /// Timing (LORA_BENCH=1 only): one SmolLM2 gate projection (1536 x 576 Q4_1, grouped) with
    /// r = 16 terms, `decodeProjection` against `matmulDecoding` then `loraGrouped`, alternating.
    func testDecodeProjectionTiming() throws {
        guard ProcessInfo.processInfo.environment["LORA_BENCH"] == "1" else { throw XCTSkip("set LORA_BENCH=1") }
        var rng = RNG(seed: 3)
        let N = 1536, K = 576
        let wf = Tensor([N, K])
        for i in 0..<wf.count { wf.data[i] = 0.05 * rng.normal() }
        let w = GroupedBlockFormat.grouped(Weight.make(WeightFormats.q4_1, from: wf, pool: testPool))
        let factors = (0..<3).map { _ -> (A: Tensor, B: Tensor) in
            let a = Tensor([16, K]), b = Tensor([N, 16])
            for i in 0..<a.count { a.data[i] = 0.1 * rng.normal() }
            for i in 0..<b.count { b.data[i] = 0.1 * rng.normal() }
            return (a, b)
        }
        let be = CPUBackend(family: .best, pool: .allCores)
        for M in [1, 8] {
            let terms = M == 1 ? [LoRATerm(r0: 0, r1: 1, rank: 16, alpha: 2, A: factors[0].A.data, B: factors[0].B.data)]
                : (0..<3).map { LoRATerm(r0: 2 * $0, r1: 2 * $0 + 2 + ($0 == 2 ? 2 : 0), rank: 16, alpha: 2, A: factors[$0].A.data, B: factors[$0].B.data) }
            let x = (0..<(M * K)).map { _ in rng.normal() }
            var y = [Float](repeating: 0, count: M * N), u = [Float](repeating: 0, count: LoRATerm.scratchCount(terms))
            let scratch = MatmulScratch()
            var fused: [Double] = [], apart: [Double] = []
            for _ in 0..<20 {
                var t0 = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<200 { be.decodeProjection(y: &y, x: x, w: w, M: M, scratch: scratch, terms: terms, u: &u) }
                fused.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 200e3)
                t0 = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<200 {
                    be.matmulDecoding(y: &y, x: x, w: w, M: M, scratch: scratch)
                    be.loraGrouped(y: &y, x: x, inFeatures: K, outFeatures: N, terms: terms, u: &u)
                }
                apart.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 200e3)
            }
            fused.sort(); apart.sort()
            print(String(format: "M=%d: decodeProjection median %.1f us (best %.1f), two calls median %.1f us (best %.1f)", M, fused[10], fused[0], apart[10], apart[0]))
        }
    }
}
