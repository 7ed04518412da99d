import CKernels
import XCTest
@testable import Tensor

/// LLM.int8() (Int8RowsFormat with a threshold, llmint8.c): the half rounding against Swift's
/// Float16, every kernel family's quantization and int8 products against the portable C bits
/// (the sums are exact, so families must agree bit for bit), and `CPUBackend.matmul` against
/// `Reference.Matmul` with outlier columns on ragged shapes. LLMInt8ParityTests holds the
/// arithmetic against bitsandbytes itself.
final class LLMInt8Tests: XCTestCase {
    func testHalfRoundingIsIEEE() {
        var rng = RNG(seed: 11)
        var values: [Float] = [0, -0, 1, 65504, 65519.99, 65520, -65520, 1e6, 5.9604645e-8, 2.9802322e-8,
                               2.9802326e-8, 6.1035156e-5, 6.1035152e-5, 5.998, 5.9985, 6, .infinity, -.infinity,
                               Float.leastNonzeroMagnitude, 3.0e-5, 1.0009766, 1.0004883, 1.0014648]
        for _ in 0..<200_000 { values.append(Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))) }
        for v in values where !v.isNaN {
            let got = lora_half_round(v), want = Float(Float16(v))
            XCTAssertEqual(got.bitPattern, want.bitPattern, "half(\(v)) = \(got), Float16 gives \(want)")
            if got.bitPattern != want.bitPattern { return }
        }
    }

    /// x [M, K] with a few values at or over the threshold in chosen columns, and a zero row.
    func input(M: Int, K: Int, threshold: Float, _ rng: inout RNG) -> Tensor {
        let x = randn([M, K], &rng, scale: 1.3)
        for i in 0..<x.count { x[i] = max(-threshold * 0.9, min(threshold * 0.9, x[i])) }
        if M > 2 { for k in 0..<K { x[2 * K + k] = 0 } }
        for (j, col) in [1, K / 2, K - 1].enumerated() where col < K {
            let m = (j * 7) % M
            x[m * K + col] = (j % 2 == 0 ? 1 : -1) * (threshold + Float(j))
        }
        return x
    }

    static let shapes: [(Int, Int, Int)] = [(1, 5, 7), (1, 40, 64), (2, 19, 33), (5, 17, 70), (6, 16, 16),
                                            (7, 33, 96), (13, 97, 257), (37, 50, 96), (64, 49, 161), (100, 20, 576)]

    func testFamiliesGiveThePortableBits() {
        var rng = RNG(seed: 12)
        let families = KernelFamily.available.compactMap(\.kernelID)
        for (M, N, K) in Self.shapes {
            let x = input(M: M, K: K, threshold: 6, &rng)
            let wf = randn([N, K], &rng, scale: 0.05)
            let w = Weight.make(WeightFormats.llmInt8, from: wf, pool: .serial)
            let wq = w.data.assumingMemoryBound(to: Int8.self)
            let ldq = K + (K & 1)
            var results: [[Float]] = []
            var quantized: [([Int16], [Float], [UInt8], Int)] = []
            for fam in families {
                var q = [Int16](repeating: 99, count: M * ldq), stats = [Float](repeating: -1, count: M)
                var mask = [UInt8](repeating: 7, count: K)
                let count = lora_llm_int8_quantize(fam, M, K, x.data, K, 6, &mask, &q, ldq, &stats)
                quantized.append((q, stats, mask, count))
                for accumulate in [Int32(0), 1] {
                    var y = (0..<(M * N)).map { Float($0 % 5) }
                    lora_llm_int8_gemm(fam, M, 0, N, K, q, ldq, stats, wq, K, w.scales!, &y, N, accumulate)
                    let cols = (0..<K).filter { mask[$0] != 0 }
                    var sub = [Float](repeating: 0, count: max(1, cols.count * (N - 1)))
                    lora_llm_int8_outliers(fam, M, 1, N, x.data, K, cols, cols.count, wq, K, w.scales!, &y, N, &sub)
                    results.append(y)
                }
            }
            for i in 1..<quantized.count {
                XCTAssertEqual(quantized[i].0, quantized[0].0, "q of family \(families[i]) M=\(M) K=\(K)")
                XCTAssertEqual(quantized[i].1, quantized[0].1, "row stats of family \(families[i]) M=\(M) K=\(K)")
                XCTAssertEqual(quantized[i].2, quantized[0].2, "outlier mask of family \(families[i]) M=\(M) K=\(K)")
            }
            XCTAssertEqual(quantized[0].3, Set([1, K / 2, K - 1].filter { $0 < K }).count, "outlier columns M=\(M) K=\(K)")
            for i in 2..<results.count {
                XCTAssertEqual(results[i].map(\.bitPattern), results[i % 2].map(\.bitPattern),
                               "int8 product and outlier sums of family \(families[i / 2]) M=\(M) N=\(N) K=\(K) acc=\(i % 2)")
            }
        }
    }

    /// Each family through the backend (threads splitting the columns, the outlier part, accumulate)
    /// against the Swift reference; the int8 part is exact, so the tolerance only covers the
    /// outlier columns' f32 sums.
    func testBackendMatchesReference() {
        var rng = RNG(seed: 13)
        for (M, N, K) in Self.shapes + [(40, 300, 544), (3, 300, 544)] {  // the last on the spinning workers (>= 64 KB)
            let x = input(M: M, K: K, threshold: 6, &rng)
            let w = Weight.make(WeightFormats.llmInt8, from: randn([N, K], &rng, scale: 0.05), pool: .serial)
            for accumulate in [false, true] {
                let y0 = randn([M * N], &rng)
                let ref = y0.clone()
                Reference.Matmul.forward(y: ref.data, x: x.data, w: w, M: M, accumulate: accumulate)
                for k in KernelFamily.available {
                    let y = y0.clone()
                    CPUBackend(family: k, pool: testPool).matmul(y: y.data, x: x.data, w: w, M: M, accumulate: accumulate,
                                                                 scratch: MatmulScratch(capacity: 1 << 12))
                    assertClose(y, ref, atol: 2e-6, rtol: 2e-6, "llm_int8 \(k) M=\(M) N=\(N) K=\(K) acc=\(accumulate)")
                }
            }
        }
    }

    /// The same bytes as int8, a different forward: LLM.int8() differs from the dequantized
    /// product by the activations' rounding (about 1/254 of a row's largest value per element),
    /// and not at all in the columns it keeps in f32.
    func testDiffersFromDequantizedByActivationRoundingOnly() {
        var rng = RNG(seed: 14)
        let M = 9, N = 31, K = 128
        let x = input(M: M, K: K, threshold: 6, &rng)
        let wf = randn([N, K], &rng, scale: 0.05)
        let a = Weight.make(WeightFormats.int8, from: wf, pool: .serial)
        let b = Weight.make(WeightFormats.llmInt8, from: wf, pool: .serial)
        XCTAssertEqual(memcmp(a.data, b.data, N * K), 0, "same int8 bytes")
        let ya = Tensor([M, N]), yb = Tensor([M, N])
        let be = CPUBackend(family: .best, pool: testPool)
        be.matmul(y: ya.data, x: x.data, w: a, M: M, accumulate: false, scratch: MatmulScratch())
        be.matmul(y: yb.data, x: x.data, w: b, M: M, accumulate: false, scratch: MatmulScratch())
        var maxDiff: Float = 0
        for m in 0..<M {
            // Outlier columns are exact; the others carry at most half a step (rowStat / 254)
            // each, plus the half rounding.
            var rowMax: Float = 0
            for k in 0..<K where abs(x[m * K + k]) < 6 { rowMax = max(rowMax, abs(x[m * K + k])) }
            for n in 0..<N {
                var bound: Float = 0
                for k in 0..<K where abs(x[m * K + k]) < 6 {
                    bound += (rowMax / 254 + abs(x[m * K + k]) / 1024) * abs(b.scales![n] * 127)
                }
                let d = abs(ya[m * N + n] - yb[m * N + n])
                maxDiff = max(maxDiff, d)
                XCTAssertLessThanOrEqual(d, bound + 1e-5, "row \(m) col \(n)")
            }
        }
        XCTAssertGreaterThan(maxDiff, 0, "the arithmetic must differ from the dequantized product")
    }
}
