import CKernels
import XCTest

/// The int8-rows decoding GEMV with VNNI (lora_i8_fixed_*, and lora_gemv_abt's AVX-512 int8
/// path): each row of A in 32-bit fixed point, exact integer sums, scaled once in double.
///
/// Oracle: the exact product in Double of the f32 activations and the int8 weights (q * scale).
/// Bound, per element: the fixed-point grid is at most max|a| * 2^-31 from each activation, so
/// |C - ref| <= 2^-31 * max|a| * sum_k |w| + 2^-24 * |ref| (the final rounding to Float) + the
/// accumulated C's own rounding. That is far tighter than the f32 kernels' 1e-5 * sum |a||w|, and
/// holds where f32 would too for rows whose largest value is 10^4 times the rest.
final class Int8FixedTests: XCTestCase {
    let avx512 = Int32(LORA_FAMILY_AVX512)

    override func setUpWithError() throws {
        guard lora_i8_fixed_available(Int32(LORA_FAMILY_AVX512)) != 0 else {
            throw XCTSkip("no AVX-512 VNNI on this CPU: the int8 rows run the FMA kernels (KernelFamilyTests covers them)")
        }
    }

    struct Case {
        var M: Int, N: Int, K: Int, ldw: Int
        var A: [Float], q: [Int8], scales: [Float]

        init(M: Int, N: Int, K: Int, outliers: Bool, rng: inout KernelFamilyTests.Rand) {
            self.M = M; self.N = N; self.K = K; ldw = K + 3
            A = (0..<(M * K)).map { i in
                let x = rng.uniform()
                // Outlier-heavy rows: a few values 10^4 times the rest, as LLM activations have.
                return outliers && i % 97 == 5 ? x * 3000 : x * 0.3
            }
            q = (0..<(N * ldw)).map { _ in Int8(bitPattern: rng.byte()) }  // -128 ... 127
            scales = (0..<N).map { _ in 0.002 + 0.01 * (1 + rng.uniform()) }
        }

        func reference(_ m: Int, _ n: Int) -> (value: Double, wsum: Double, amax: Double) {
            var r = 0.0, ws = 0.0, am = 0.0
            for k in 0..<K {
                let w = Double(q[n * ldw + k]) * Double(scales[n])
                r += Double(A[m * K + k]) * w
                ws += abs(w)
                am = max(am, Double(abs(A[m * K + k])))
            }
            return (r, ws, am)
        }

        /// lora_gemv_abt (the dispatcher) over rows n0..<n1, onto C (accumulating if asked).
        func gemv(family: Int32, _ C: inout [Float], n0: Int, n1: Int, accumulate: Bool) {
            A.withUnsafeBufferPointer { a in
                q.withUnsafeBytes { w in
                    scales.withUnsafeBufferPointer { s in
                        lora_gemv_abt(family, Int32(LORA_FORMAT_I8_ROWS), M, n0, n1, K, a.baseAddress, K,
                                      w.baseAddress, ldw, s.baseAddress, &C, N, accumulate ? 1 : 0)
                    }
                }
            }
        }

        /// lora_i8_fixed_prepare once, then lora_i8_fixed_gemv over `ranges` (as workers split rows).
        func prepared(_ C: inout [Float], ranges: [(Int, Int)], accumulate: Bool = false) -> Bool {
            var units = [Double](repeating: 0, count: M)
            var planes = [UInt8](repeating: 0, count: lora_i8_fixed_bytes(M, K))
            let family = Int32(LORA_FAMILY_AVX512)
            guard lora_i8_fixed_prepare(family, M, K, A, K, &planes, &units) != 0 else { return false }
            q.withUnsafeBytes { w in
                for (n0, n1) in ranges {
                    lora_i8_fixed_gemv(family, M, n0, n1, K, planes, units, w.baseAddress!.assumingMemoryBound(to: Int8.self),
                                       ldw, scales, &C, N, accumulate ? 1 : 0)
                }
            }
            return true
        }
    }

    func testAgainstTheExactProduct() {
        var rng = KernelFamilyTests.Rand()
        var checked = 0
        for (M, N, K) in [(1, 1, 1), (1, 7, 5), (1, 50, 63), (2, 9, 64), (3, 10, 65), (1, 31, 576), (4, 13, 577),
                          (5, 8, 1000), (7, 4, 1536), (16, 6, 130), (1, 5, 4100), (3, 3, 9000)] {
            for outliers in [false, true] {
                for accumulate in [false, true] {
                    let c = Case(M: M, N: N, K: K, outliers: outliers, rng: &rng)
                    let before = (0..<(M * N)).map { Float($0 % 7) - 3 }
                    var C = accumulate ? before : [Float](repeating: .nan, count: M * N)
                    // The kernel itself at every depth (the dispatcher runs it below LORA_I8_FIXED_DEEP).
                    XCTAssertTrue(c.prepared(&C, ranges: [(0, N)], accumulate: accumulate))
                    if lora_i8_fixed_wanted(avx512, K) != 0 {
                        var D = accumulate ? before : [Float](repeating: .nan, count: M * N)
                        c.gemv(family: avx512, &D, n0: 0, n1: N, accumulate: accumulate)
                        XCTAssertEqual(D.map(\.bitPattern), C.map(\.bitPattern), "dispatcher, M \(M) N \(N) K \(K)")
                    }
                    for m in 0..<M {
                        for n in 0..<N {
                            let (r, ws, am) = c.reference(m, n)
                            let prior = accumulate ? Double(before[m * N + n]) : 0
                            let want = r + prior
                            let bound = 1.01 * (0x1p-31 * am * ws + 0x1p-24 * (abs(r) + abs(want))) + 1e-300
                            let got = Double(C[m * N + n])
                            XCTAssert(abs(got - want) <= bound,
                                      "M \(M) N \(N) K \(K) outliers \(outliers) acc \(accumulate): C[\(m), \(n)] = \(got), exact \(want), bound \(bound)")
                            checked += 1
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThan(checked, 1000)
    }

    /// A row's result is the same bits whatever rows of A come with it (M = 1 ... 16: a request
    /// served alone or batched), and whichever worker computes which range of W's rows.
    func testBitsDoNotDependOnMOrRanges() {
        var rng = KernelFamilyTests.Rand()
        for (N, K) in [(37, 576), (20, 1536), (11, 70)] {
            XCTAssertEqual(lora_i8_fixed_wanted(avx512, K), 1, "K \(K)")
            let all = Case(M: 16, N: N, K: K, outliers: true, rng: &rng)
            var batched = [Float](repeating: 0, count: 16 * N)
            all.gemv(family: avx512, &batched, n0: 0, n1: N, accumulate: false)
            var split = [Float](repeating: .nan, count: 16 * N)
            XCTAssertTrue(all.prepared(&split, ranges: [(0, 5), (5, 6), (6, N - 2), (N - 2, N)]))
            XCTAssertEqual(split.map(\.bitPattern), batched.map(\.bitPattern), "prepared + split ranges, N \(N) K \(K)")
            for M in [1, 2, 3, 5, 16] {
                for m0 in stride(from: 0, to: 16, by: M) where m0 + M <= 16 {
                    var part = all
                    part.M = M
                    part.A = Array(all.A[(m0 * K)..<((m0 + M) * K)])
                    var C = [Float](repeating: 0, count: M * N)
                    part.gemv(family: avx512, &C, n0: 0, n1: N, accumulate: false)
                    XCTAssertEqual(C.map(\.bitPattern), Array(batched[(m0 * N)..<((m0 + M) * N)]).map(\.bitPattern),
                                   "rows \(m0)..<\(m0 + M) of 16, N \(N) K \(K)")
                }
            }
        }
    }

    /// Inf and NaN take the f32 kernel, which propagates them as f32 arithmetic does; an all-zero
    /// row gives zeros; from LORA_I8_FIXED_DEEP the dispatcher runs the FMA kernel, and past
    /// LORA_I8_FIXED_KMAX (where the int32 sums could overflow) prepare refuses.
    func testNonFiniteZeroAndDeepRows() {
        var rng = KernelFamilyTests.Rand()
        var c = Case(M: 3, N: 5, K: 100, outliers: false, rng: &rng)
        c.A[1 * 100 + 17] = .nan
        var C = [Float](repeating: 0, count: 15)
        XCTAssertFalse(c.prepared(&C, ranges: [(0, 5)]), "prepare must refuse a NaN")
        c.gemv(family: avx512, &C, n0: 0, n1: 5, accumulate: false)
        for n in 0..<5 { XCTAssertTrue(C[5 + n].isNaN, "row 1 (NaN) column \(n): \(C[5 + n])") }
        for m in [0, 2] {
            for n in 0..<5 {
                let (r, ws, _) = c.reference(m, n)
                XCTAssertEqual(Double(C[m * 5 + n]), r, accuracy: 1e-5 * ws * 1, "finite row \(m) beside a NaN one")
            }
        }
        c.A[1 * 100 + 17] = .infinity
        c.gemv(family: avx512, &C, n0: 0, n1: 5, accumulate: false)
        for n in 0..<5 { XCTAssertTrue(C[5 + n].isInfinite || C[5 + n].isNaN, "row 1 (Inf) column \(n): \(C[5 + n])") }

        var z = Case(M: 1, N: 4, K: 64, outliers: false, rng: &rng)
        z.A = [Float](repeating: 0, count: 64)
        var Z = [Float](repeating: .nan, count: 4)
        z.gemv(family: avx512, &Z, n0: 0, n1: 4, accumulate: false)
        XCTAssertEqual(Z, [0, 0, 0, 0])

        // From LORA_I8_FIXED_DEEP the dispatcher keeps the FMA kernel, at every M.
        let k2 = Case(M: 5, N: 4, K: Int(LORA_I8_FIXED_DEEP), outliers: true, rng: &rng)
        XCTAssertEqual(lora_i8_fixed_wanted(avx512, k2.K), 0)
        var viaDispatch = [Float](repeating: 0, count: 20), viaFMA = [Float](repeating: 1, count: 20)
        k2.gemv(family: avx512, &viaDispatch, n0: 0, n1: 4, accumulate: false)
        k2.A.withUnsafeBufferPointer { a in
            k2.q.withUnsafeBufferPointer { w in
                lora_gemv_abt_i8(5, 0, 4, k2.K, a.baseAddress, k2.K, w.baseAddress, k2.ldw, k2.scales, &viaFMA, 4, 0)
            }
        }
        XCTAssertEqual(viaDispatch.map(\.bitPattern), viaFMA.map(\.bitPattern))

        let deep = Case(M: 1, N: 2, K: Int(LORA_I8_FIXED_KMAX) + 1, outliers: false, rng: &rng)
        var D = [Float](repeating: 0, count: 2)
        XCTAssertFalse(deep.prepared(&D, ranges: [(0, 2)]), "prepare must refuse K > LORA_I8_FIXED_KMAX")
        deep.gemv(family: avx512, &D, n0: 0, n1: 2, accumulate: false)
        for n in 0..<2 {
            let (r, ws, _) = deep.reference(0, n)
            XCTAssertEqual(Double(D[n]), r, accuracy: KernelFamilyTests.rtol * ws * 0.3 * 1.01)
        }
    }

    /// The AVX-512 FMA kernel, which CPUs without VNNI run, stays held to the f32 tolerance here
    /// too (the dispatcher would always pick the fixed-point one on this CPU).
    func testTheFMAKernelStillHoldsItsTolerance() {
        var rng = KernelFamilyTests.Rand()
        for (M, N, K) in [(1, 9, 576), (4, 13, 65), (7, 5, 1000)] {
            let c = Case(M: M, N: N, K: K, outliers: true, rng: &rng)
            var C = [Float](repeating: .nan, count: M * N)
            c.A.withUnsafeBufferPointer { a in
                c.q.withUnsafeBufferPointer { w in
                    lora_gemv_abt_i8(M, 0, N, K, a.baseAddress, K, w.baseAddress, c.ldw, c.scales, &C, N, 0)
                }
            }
            for m in 0..<M {
                for n in 0..<N {
                    var r = 0.0, g = 0.0
                    for k in 0..<K {
                        let t = Double(c.A[m * K + k]) * Double(c.q[n * c.ldw + k]) * Double(c.scales[n])
                        r += t; g += abs(t)
                    }
                    XCTAssertEqual(Double(C[m * N + n]), r, accuracy: KernelFamilyTests.rtol * g, "FMA kernel M \(M) N \(N) K \(K) [\(m), \(n)]")
                }
            }
        }
    }
}
