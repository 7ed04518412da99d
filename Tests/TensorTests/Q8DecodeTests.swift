import CKernels
@testable import Tensor
import XCTest

/// The integer decoding GEMV (qdot.c: lora_q8_quantize, lora_q8_gemv) for Q4_0, Q4_1 and Q8_0.
///
/// Three oracles:
/// - quantization: each int8 is x / d rounded (|x - d q| <= d / 2, up to the float rounding of
///   x * (1 / d): 0.5001 d), d = absmax / 127 exactly, sum = the sum of the q;
/// - every family against a Double reference of the same integer arithmetic (exact block dots,
///   scaled by d_w d_a; Q4_1 plus m_w d_a sum): |err| <= 1e-5 * the sum of the terms' magnitudes
///   (the families add the same block products in different orders);
/// - the f32 product of the dequantized weights with the unquantized activations: the only
///   difference is the activation rounding, so |C - sum_k w_k x_k| <= sum_k |w_k| 0.5001 d_k
///   (d_k the scale of x_k's block) plus the float rounding above. A bound, not a statistic.
/// Shapes: rows not a multiple of the SIMD kernels' 8-row groups, sub-ranges starting mid-group,
/// M from 1 to past the kernels' 4-row A blocks, K from one block to 4096; C starts as NaN (must
/// not leak) or holds values to accumulate onto; C's padding and a canary must keep their bits.
final class Q8DecodeTests: XCTestCase {
    static let rtol = 1e-5
    /// |x - d q| <= this * d (0.5 plus float rounding of x * (1 / d) for |x / d| <= 127).
    static let roundingBound = 0.5001

    static let shapes: [(M: Int, N: Int, K: Int)] = [
        (1, 1, 32), (1, 8, 64), (1, 37, 320), (2, 19, 96), (3, 64, 4096), (4, 24, 128),
        (5, 41, 64), (9, 16, 160), (16, 40, 64), (1, 200, 1024),
    ]
    static let formats: [(Int32, String)] = [(Int32(LORA_FORMAT_Q4_0), "q4_0"), (Int32(LORA_FORMAT_Q4_1), "q4_1"),
                                             (Int32(LORA_FORMAT_Q8_0), "q8_0")]

    static func blockBytes(_ format: Int32) -> Int {
        format == Int32(LORA_FORMAT_Q4_0) ? 18 : format == Int32(LORA_FORMAT_Q4_1) ? 20 : 34
    }

    var families: [Int32] {
        [Int32(LORA_FAMILY_PORTABLE), Int32(LORA_FAMILY_AVX2), Int32(LORA_FAMILY_AVX512)]
            .filter { lora_family_available($0) != 0 }
    }

    /// Random rows: halves d in [2^-10, 2^-4) (and m in +-[2^-10, 2^-4) for Q4_1), random codes
    /// (every byte value, so Q8_0 gets -128 too).
    static func weights(_ format: Int32, N: Int, K: Int, _ rng: inout KernelFamilyTests.Rand) -> [UInt8] {
        let bb = blockBytes(format), nb = K / 32
        var w = [UInt8](repeating: 0, count: N * nb * bb)
        func half(_ sign: Bool) -> (UInt8, UInt8) {
            // exponent 5..10 (2^-10 .. 2^-5 times 1.m), random mantissa
            let bits = UInt16(sign ? 0x8000 : 0) | UInt16(5 + rng.next() % 6) << 10 | UInt16(rng.next() % 1024)
            return (UInt8(bits & 0xFF), UInt8(bits >> 8))
        }
        for blk in 0..<(N * nb) {
            let o = blk * bb
            (w[o], w[o + 1]) = half(false)
            if bb == 20 { (w[o + 2], w[o + 3]) = half(rng.next() & 1 == 1) }
            for j in (bb == 34 ? 2 : bb - 16)..<bb { w[o + j] = rng.byte() }
        }
        return w
    }

    static func halfValue(_ lo: UInt8, _ hi: UInt8) -> Double {
        Double(Float(Float16(bitPattern: UInt16(lo) | UInt16(hi) << 8)))
    }

    /// Activations with a few blocks of zeros and a few of tiny values, the rest uniform.
    static func activations(M: Int, K: Int, _ rng: inout KernelFamilyTests.Rand) -> [Float] {
        var a = (0..<(M * K)).map { _ in rng.uniform() }
        for b in 0..<(M * K / 32) where b % 7 == 3 {
            for j in 0..<32 { a[b * 32 + j] = b % 2 == 0 ? 0 : a[b * 32 + j] * 1e-30 }
        }
        return a
    }

    /// Every family's quantization (the portable scalar reference and the AVX2 version, which
    /// the AVX-512 family uses too) against the definition, and each against the reference bit
    /// for bit: ties, zeros, tiny and huge values, a NaN (ignored by the block's max, as fmaxf
    /// does; its code clamps to -127), 32-wide blocks at odd offsets.
    func testQuantize() {
        var rng = KernelFamilyTests.Rand()
        // K = 576: two 8-block groups of the vector path's divisions and two blocks after.
        for K in [256, 576] {
        let M = 3, nb = K / 32
        var a = Self.activations(M: M, K: K, &rng)
        a[5] = 1000; a[40] = -3e-38; a[70] = .leastNonzeroMagnitude
        for j in 96..<128 { a[j] = Float(j - 112) * 0.5 }   // x / d lands on .5: ties to even
        for j in 128..<160 { a[j] = 0 }                      // an all-zero block: d = 0, codes 0
        a[K + 300] = .infinity                               // d = inf: 1 / d = 0
        func quantize(_ family: Int32, _ a: [Float]) -> ([Int8], [Float], [Int32]) {
            var q = [Int8](repeating: 99, count: M * K), d = [Float](repeating: -1, count: M * nb)
            var s = [Int32](repeating: -1, count: M * nb)
            lora_q8_quantize(family, M, K, a, K, &q, &d, &s)
            return (q, d, s)
        }
        let (q, d, s) = quantize(Int32(LORA_FAMILY_PORTABLE), a)
        for b in 0..<(M * nb) {
            let x = a[(b * 32)..<(b * 32 + 32)]
            let amax = x.map(abs).max()!
            XCTAssertEqual(d[b], amax / 127, "block \(b): d")
            XCTAssertEqual(s[b], q[(b * 32)..<(b * 32 + 32)].reduce(Int32(0)) { $0 + Int32($1) }, "block \(b): sum")
            for j in 0..<32 {
                let qi = q[b * 32 + j], xi = Double(a[b * 32 + j])
                XCTAssertTrue(qi >= -127 && qi <= 127, "block \(b) q \(qi)")
                if amax == 0 { XCTAssertEqual(qi, 0); continue }
                if !amax.isFinite { continue }   // the block with inf: compared bit for bit below
                let err = abs(xi - Double(d[b]) * Double(qi))
                XCTAssertLessThanOrEqual(err, Self.roundingBound * Double(d[b]), "block \(b) j \(j): x \(xi) q \(qi) d \(d[b])")
            }
        }
        XCTAssertEqual(q[5], 127)
        var withNaN = a
        withNaN[200] = .nan
        let ref = quantize(Int32(LORA_FAMILY_PORTABLE), withNaN)
        XCTAssertEqual(ref.1[200 / 32], withNaN[192..<224].filter { !$0.isNaN }.map(abs).max()! / 127, "NaN ignored by the max")
        for family in families where family != Int32(LORA_FAMILY_PORTABLE) {
            for input in [a, withNaN] {
                let want = quantize(Int32(LORA_FAMILY_PORTABLE), input), got = quantize(family, input)
                let name = KernelFamilyTests.familyNames[Int(family)]
                XCTAssertEqual(got.0, want.0, "\(name): codes")
                XCTAssertEqual(got.1.map(\.bitPattern), want.1.map(\.bitPattern), "\(name): d")
                XCTAssertEqual(got.2, want.2, "\(name): sums")
            }
        }
        }
    }

    func testFamiliesAgainstReferences() {
        var rng = KernelFamilyTests.Rand()
        print("Q8DecodeTests: families " + families.map { KernelFamilyTests.familyNames[Int($0)] }.joined(separator: ", ")
              + (lora_q8_vnni_available() != 0 ? " (avx512 with VNNI)" : " (avx512 runs the AVX2 version: no VNNI)"))
        var failures = 0
        for (format, name) in Self.formats {
            let q40 = format == Int32(LORA_FORMAT_Q4_0), q80 = format == Int32(LORA_FORMAT_Q8_0)
            let bb = Self.blockBytes(format)
            for (M, N, K) in Self.shapes {
                let nb = K / 32, ldc = N + 3
                let W = Self.weights(format, N: N, K: K, &rng)
                let A = Self.activations(M: M, K: K, &rng)
                var q = [Int8](repeating: 0, count: M * K), d = [Float](repeating: 0, count: M * nb)
                var s = [Int32](repeating: 0, count: M * nb)
                lora_q8_quantize(Int32(LORA_FAMILY_PORTABLE), M, K, A, K, &q, &d, &s)
                // References: the integer scheme (ref, mag) and the f32 product (fref, bound).
                var ref = [Double](repeating: 0, count: M * N), mag = ref, fref = ref, fbound = ref
                for m in 0..<M {
                    for n in 0..<N {
                        var r = 0.0, g = 0.0, f = 0.0, fb = 0.0
                        for b in 0..<nb {
                            let o = (n * nb + b) * bb
                            let dw = Self.halfValue(W[o], W[o + 1])
                            let mw = q40 || q80 ? 0 : Self.halfValue(W[o + 2], W[o + 3])
                            let da = Double(d[m * nb + b])
                            var isum = 0
                            for j in 0..<32 {
                                let byte = W[o + bb - 16 + j % 16]
                                let code = q80 ? Int(Int8(bitPattern: W[o + 2 + j]))
                                    : Int(j < 16 ? byte & 15 : byte >> 4) - (q40 ? 8 : 0)
                                isum += code * Int(q[m * K + b * 32 + j])
                                // The format's value, computed in Float as the format defines it.
                                let wv = q40 || q80 ? Double(Float(dw) * Float(code)) : Double(Float(dw) * Float(code) + Float(mw))
                                f += wv * Double(A[m * K + b * 32 + j])
                                fb += abs(wv) * Self.roundingBound * da
                            }
                            let t0 = dw * da * Double(isum), t1 = mw * da * Double(s[m * nb + b])
                            r += t0 + t1
                            g += abs(t0) + abs(t1)
                        }
                        ref[m * N + n] = r; mag[m * N + n] = g; fref[m * N + n] = f; fbound[m * N + n] = fb
                    }
                }
                let before = (0..<(M * ldc + 4)).map { _ in rng.uniform() }
                for accumulate in [false, true] {
                    for family in families {
                        for (r0, r1) in [(0, N)] + (N > 12 ? [(5, N - 2)] : []) {
                            let what = "\(KernelFamilyTests.familyNames[Int(family)]) \(name) M=\(M) N=\(N) K=\(K) rows \(r0)..<\(r1) accumulate=\(accumulate)"
                            let c0 = accumulate ? before : [Float](repeating: .nan, count: before.count)
                            var C = c0
                            W.withUnsafeBytes { w in
                                lora_q8_gemv(family, format, M, r0, r1, K, q, d, s, w.baseAddress, K, &C, ldc, accumulate ? 1 : 0)
                            }
                            var bad = 0
                            for i in 0..<C.count where bad < 3 {
                                let m = i / ldc, n = i % ldc
                                if m >= M || n < r0 || n >= r1 {
                                    if C[i].bitPattern != c0[i].bitPattern { XCTFail("\(what): wrote outside at \(i)"); bad += 1 }
                                    continue
                                }
                                let base = accumulate ? Double(c0[i]) : 0, scale = accumulate ? abs(Double(c0[i])) : 0
                                let got = Double(C[i]) - base
                                let e1 = abs(got - ref[m * N + n])
                                if !(e1 <= Self.rtol * (mag[m * N + n] + scale)) {
                                    XCTFail("\(what): C[\(m), \(n)] = \(C[i]), integer reference \(ref[m * N + n] + base), |err| \(e1)")
                                    bad += 1
                                }
                                let e2 = abs(got - fref[m * N + n])
                                if !(e2 <= fbound[m * N + n] + Self.rtol * (mag[m * N + n] + scale)) {
                                    XCTFail("\(what): C[\(m), \(n)] = \(C[i]), f32 product \(fref[m * N + n] + base), |err| \(e2) > bound \(fbound[m * N + n])")
                                    bad += 1
                                }
                            }
                            failures += bad
                            if failures > 20 { return XCTFail("too many failures; stopping") }
                        }
                    }
                }
            }
        }
    }

    /// A row's result does not depend on the rows computed with it: each row of an M-row call
    /// has the bits of that row alone, on every family. (Rows past one pass, MB = 2 on AVX2 and 4
    /// with VNNI, share blocks decoded once in chunks of 16; K = 1056 is two chunks and a part.)
    /// Serve relies on it: a request gives the same tokens alone and batched.
    func testRowsIndependentOfM() {
        var rng = KernelFamilyTests.Rand()
        for (format, name) in Self.formats {
            for (M, N, K) in [(3, 16, 64), (5, 24, 1056), (8, 40, 1536), (9, 8, 544), (16, 16, 96)] {
                let nb = K / 32
                let W = Self.weights(format, N: N, K: K, &rng)
                let A = Self.activations(M: M, K: K, &rng)
                var q = [Int8](repeating: 0, count: M * K), d = [Float](repeating: 0, count: M * nb)
                var s = [Int32](repeating: 0, count: M * nb)
                lora_q8_quantize(Int32(LORA_FAMILY_PORTABLE), M, K, A, K, &q, &d, &s)
                for family in families {
                    var all = [Float](repeating: .nan, count: M * N)
                    W.withUnsafeBytes { w in lora_q8_gemv(family, format, M, 0, N, K, q, d, s, w.baseAddress, K, &all, N, 0) }
                    for m in 0..<M {
                        var one = [Float](repeating: .nan, count: N)
                        W.withUnsafeBytes { w in
                            lora_q8_gemv(family, format, 1, 0, N, K, Array(q[(m * K)..<((m + 1) * K)]), Array(d[(m * nb)..<((m + 1) * nb)]),
                                         Array(s[(m * nb)..<((m + 1) * nb)]), w.baseAddress, K, &one, N, 0)
                        }
                        let diff = (0..<N).filter { one[$0].bitPattern != all[m * N + $0].bitPattern }
                        XCTAssertTrue(diff.isEmpty, "\(KernelFamilyTests.familyNames[Int(family)]) \(name) M=\(M) N=\(N) K=\(K) row \(m): "
                                      + "columns \(diff.prefix(4)) differ from the row alone, e.g. \(diff.first.map { "\(all[m * N + $0]) vs \(one[$0])" } ?? "")")
                    }
                }
            }
        }
    }

    /// `matmulDecoding` (prompt chunks and server steps) gives each of 40 rows the bits it gets
    /// alone, for the integer formats (16-row pieces on the integer path) and for f32 weights
    /// (whose choice by M is kept, so only the pieces of one call are compared there).
    func testMatmulDecodingRowsIndependent() throws {
        var rng = RNG(seed: 9)
        let N = 40, K = 96, M = 40
        let wf = Tensor([N, K])
        for i in 0..<wf.count { wf.data[i] = 0.1 * rng.normal() }
        let x = Tensor([M, K])
        for i in 0..<x.count { x.data[i] = rng.normal() }
        for family in KernelFamily.available {
            let be = CPUBackend(family: family, pool: testPool)
            for format in [WeightFormats.q4_0, WeightFormats.q4_1, WeightFormats.q8_0] {
                let w = Weight.make(format, from: wf, pool: testPool)
                let all = Tensor([M, N]), one = Tensor([1, N])
                be.matmulDecoding(y: all.data, x: x.data, w: w, M: M, scratch: MatmulScratch())
                for m in 0..<M {
                    be.matmulDecoding(y: one.data, x: x.data + m * K, w: w, M: 1, scratch: MatmulScratch())
                    let diff = (0..<N).filter { one.data[$0].bitPattern != all.data[m * N + $0].bitPattern }
                    if family.kernelID != nil {
                        XCTAssertTrue(diff.isEmpty, "\(family) \(format.name) row \(m): \(diff.count) outputs differ from the row alone")
                    }
                }
                // And the product itself: close to the f32 one (activation rounding only).
                let ref = Tensor([M, N])
                CPUBackend(family: family, pool: testPool, decoding: .f32).matmul(y: ref.data, x: x.data, w: w, M: M, accumulate: false,
                                                                                   scratch: MatmulScratch())
                for i in 0..<(M * N) { XCTAssertEqual(all.data[i], ref.data[i], accuracy: 0.05 * (1 + abs(ref.data[i])), "\(family) \(format.name) [\(i)]") }
            }
        }
    }

    /// The CPU backend takes the integer path for Q4_0 / Q4_1 / Q8_0 products of up to 16 rows
    /// (one row too: a row's result must not depend on the rows beside it) unless told `.f32`
    /// (LORA_DECODE=f32), and then gives exactly what the C entry points give.
    func testBackendPath() throws {
        var rng = RNG(seed: 7)
        let N = 48, K = 96
        let wf = Tensor([N, K])
        for i in 0..<wf.count { wf.data[i] = 0.1 * rng.normal() }
        XCTAssertEqual(try KernelFamily.selectDecoding(environment: [:]), .q8)
        XCTAssertEqual(try KernelFamily.selectDecoding(environment: ["LORA_DECODE": "F32"]), .f32)
        XCTAssertThrowsError(try KernelFamily.selectDecoding(environment: ["LORA_DECODE": "int4"])) {
            XCTAssertTrue("\($0)".contains("LORA_DECODE=int4"), "\($0)")
        }
        for format in [WeightFormats.q4_0, WeightFormats.q4_1, WeightFormats.q8_0] {
            let w = Weight.make(format, from: wf, pool: testPool)
            let fam = KernelFamily.best.kernelID!, fmt = format.kernelID!
            for M in [1, 3, 16, 17] {
                let x = Tensor([M, K])
                for i in 0..<x.count { x.data[i] = rng.normal() }
                var outs: [DecodeArithmetic: [Float]] = [:]
                for dec in DecodeArithmetic.allCases {
                    let b = CPUBackend(family: .best, pool: testPool, decoding: dec)
                    let y = Tensor([M, N])
                    b.matmul(y: y.data, x: x.data, w: w, M: M, accumulate: false, scratch: MatmulScratch())
                    outs[dec] = (0..<(M * N)).map { y[$0] }
                }
                // The direct calls.
                var q = [Int8](repeating: 0, count: M * K), d = [Float](repeating: 0, count: M * K / 32)
                var s = [Int32](repeating: 0, count: M * K / 32)
                var cq = [Float](repeating: 0, count: M * N), cf = cq
                lora_q8_quantize(KernelFamily.best.kernelID!, M, K, x.data, K, &q, &d, &s)
                lora_q8_gemv(fam, fmt, M, 0, N, K, q, d, s, w.data, K, &cq, N, 0)
                lora_gemv_abt(fam, fmt, M, 0, N, K, x.data, K, w.data, K, nil, &cf, N, 0)
                if M <= 16 {
                    XCTAssertEqual(outs[.q8]!, cq, "\(format.name) M=\(M): q8 backend path")
                    XCTAssertEqual(outs[.f32]!, cf, "\(format.name) M=\(M): f32 backend path")
                    XCTAssertNotEqual(cq, cf, "\(format.name) M=\(M): the two arithmetics should differ somewhere")
                } else {
                    XCTAssertEqual(outs[.q8]!, outs[.f32]!, "\(format.name) M=\(M): past 16 rows both use the GEMM")
                }
            }
        }
    }

    /// The grouped layout (`GroupedBlockFormat`, CKernels.h's _X8): rows taken back out equal
    /// the plain rows byte for byte; every family's GEMV over it gives the plain layout's bits
    /// (all M up to 16, sub-ranges of whole groups, accumulating, K of one block to past a
    /// decode chunk); the format's row reference equals the plain one's values.
    func testGroupedLayoutGivesThePlainBits() {
        var rng = KernelFamilyTests.Rand()
        for (format, name) in Self.formats {
            let grouped = format + 9  // LORA_FORMAT_Q8_0_X8 = Q8_0 + 9, and so on
            XCTAssertEqual(lora_q8x8_base(grouped), format, name)
            XCTAssertNotEqual(lora_q8_gemv_format(grouped), 0, name)
            for (N, K) in [(8, 32), (24, 96), (40, 1056)] {
                let nb = K / 32, bb = Self.blockBytes(format)
                let W = Self.weights(format, N: N, K: K, &rng)
                var G = [UInt8](repeating: 0, count: W.count)
                W.withUnsafeBytes { w in G.withUnsafeMutableBytes { g in lora_q8x8_pack(format, N, K, w.baseAddress, g.baseAddress) } }
                XCTAssertNotEqual(G, W, "\(name) \(N)x\(K): the grouped bytes are another order")
                var block = [UInt8](repeating: 0, count: 34), bad = 0
                for n in 0..<N {
                    for b in 0..<nb {
                        G.withUnsafeBytes { g in lora_q8x8_block(grouped, g.baseAddress, K, n, b, &block) }
                        if Array(block[0..<bb]) != Array(W[((n * nb + b) * bb)..<((n * nb + b + 1) * bb)]) { bad += 1 }
                    }
                }
                XCTAssertEqual(bad, 0, "\(name) \(N)x\(K): blocks taken back out of their groups differ")
                // Past 16 rows (a server step with prompt rows): the passes over MAX_M rows.
                for M in [1, 2, 3, 5, 8, 16, 17, 33] {
                    let A = Self.activations(M: M, K: K, &rng)
                    var q = [Int8](repeating: 0, count: M * K), d = [Float](repeating: 0, count: M * nb)
                    var s = [Int32](repeating: 0, count: M * nb)
                    lora_q8_quantize(Int32(LORA_FAMILY_PORTABLE), M, K, A, K, &q, &d, &s)
                    for family in families {
                        for (n0, n1, acc) in [(0, N, Int32(0)), (8, N, Int32(1))] where n0 < n1 {
                            let start = (0..<(M * N)).map { Float($0 % 5) - 2 }
                            var plain = start, regrouped = start
                            W.withUnsafeBytes { w in lora_q8_gemv(family, format, M, n0, n1, K, q, d, s, w.baseAddress, K, &plain, N, acc) }
                            G.withUnsafeBytes { g in lora_q8_gemv(family, grouped, M, n0, n1, K, q, d, s, g.baseAddress, K, &regrouped, N, acc) }
                            let diff = (0..<(M * N)).filter { plain[$0].bitPattern != regrouped[$0].bitPattern }
                            XCTAssertTrue(diff.isEmpty, "\(KernelFamilyTests.familyNames[Int(family)]) \(name) M=\(M) \(N)x\(K) rows \(n0)..<\(n1): "
                                          + "\(diff.count) outputs differ from the plain layout's")
                        }
                    }
                }
            }
        }
        // The format: same values through its row reference; rows that are not whole groups stay plain.
        var r = RNG(seed: 11)
        let wf = Tensor([24, 64])
        for i in 0..<wf.count { wf.data[i] = 0.1 * r.normal() }
        for format in [WeightFormats.q4_0, WeightFormats.q4_1, WeightFormats.q8_0] {
            let w = Weight.make(format, from: wf, pool: testPool), g = GroupedBlockFormat.grouped(w)
            XCTAssertEqual(g.format.name, format.name + "x8")
            XCTAssertEqual(g.byteCount, w.byteCount)
            XCTAssertEqual(g.dense().array, w.dense().array, "\(g.format.name) rows")
            let rows5 = Weight.make(format, from: Tensor([5, 64]), pool: testPool)
            XCTAssertEqual(GroupedBlockFormat.grouped(rows5).format.name, format.name, "5 rows stay \(format.name)")
        }
        XCTAssertEqual(GroupedBlockFormat.grouped(Weight.make(WeightFormats.int8, from: wf, pool: testPool)).format.name, "int8")
    }

    /// A grouped weight in every product the backend has: with the integer decoding path, any
    /// M (matmul in 16-row pieces too: a decoding-only weight) gives the plain weight's
    /// matmulDecoding bits; f32 decoding, the OpenBLAS family and the input gradient, which
    /// take the OpenBLAS path over dequantized rows for this layout, agree with the plain
    /// weight's to float rounding.
    func testGroupedWeightInEveryBackendProduct() {
        var rng = RNG(seed: 12)
        let N = 40, K = 96
        let wf = Tensor([N, K])
        for i in 0..<wf.count { wf.data[i] = 0.1 * rng.normal() }
        for format in [WeightFormats.q4_0, WeightFormats.q4_1, WeightFormats.q8_0] {
            let w = Weight.make(format, from: wf, pool: testPool), g = GroupedBlockFormat.grouped(w)
            for family in KernelFamily.available {
                for dec in DecodeArithmetic.allCases {
                    let be = CPUBackend(family: family, pool: testPool, decoding: dec)
                    for M in [1, 7, 16, 33] {
                        let x = Tensor([M, K])
                        for i in 0..<x.count { x.data[i] = rng.normal() }
                        let a = Tensor([M, N]), b = Tensor([M, N])
                        be.matmulDecoding(y: a.data, x: x.data, w: w, M: M, scratch: MatmulScratch())
                        be.matmulDecoding(y: b.data, x: x.data, w: g, M: M, scratch: MatmulScratch())
                        let what = "\(family) \(dec) \(format.name) M=\(M)"
                        if dec == .q8 && family.kernelID != nil {
                            XCTAssertEqual(a.array.map(\.bitPattern), b.array.map(\.bitPattern), "\(what): decoding bits")
                        } else {
                            for i in 0..<(M * N) { XCTAssertEqual(a.data[i], b.data[i], accuracy: 1e-4 * (1 + abs(a.data[i])), "\(what) [\(i)]") }
                        }
                        be.matmul(y: b.data, x: x.data, w: g, M: M, accumulate: false, scratch: MatmulScratch())
                        if dec == .q8 && family.kernelID != nil {
                            // Any M: the integer GEMV in pieces, as matmulDecoding gives the plain weight.
                            be.matmulDecoding(y: a.data, x: x.data, w: w, M: M, scratch: MatmulScratch())
                            XCTAssertEqual(a.array.map(\.bitPattern), b.array.map(\.bitPattern), "\(what): matmul bits")
                        } else {
                            be.matmul(y: a.data, x: x.data, w: w, M: M, accumulate: false, scratch: MatmulScratch())
                            for i in 0..<(M * N) { XCTAssertEqual(a.data[i], b.data[i], accuracy: 1e-4 * (1 + abs(a.data[i])), "\(what) matmul [\(i)]") }
                        }
                        let dy = Tensor([M, N]), da = Tensor([M, K]), db = Tensor([M, K])
                        for i in 0..<dy.count { dy.data[i] = rng.normal() }
                        be.matmulBackwardInput(dx: da.data, dy: dy.data, w: w, M: M, accumulate: false, scratch: MatmulScratch())
                        be.matmulBackwardInput(dx: db.data, dy: dy.data, w: g, M: M, accumulate: false, scratch: MatmulScratch())
                        for i in 0..<(M * K) { XCTAssertEqual(da.data[i], db.data[i], accuracy: 1e-4 * (1 + abs(da.data[i])), "\(what) dx [\(i)]") }
                    }
                }
            }
        }
    }

    /// Grouped weights carved from a `WeightArena` (several to a chunk, one larger than a chunk):
    /// the same bytes as a weight's own storage, 64-byte aligned, and the chunks live exactly as
    /// long as the weights carved from them.
    func testArenaWeightsAreTheGroupedBytes() {
        var rng = RNG(seed: 13)
        weak var firstChunk: AnyObject?
        do {
            let arena = WeightArena(chunkBytes: 1)   // 2 MB chunks
            var carved: [(Weight, Weight)] = []
            for (N, K) in [(64, 96), (40, 1056), (2048, 1024), (16, 32)] {   // the third is over 2 MB in Q8_0
                let wf = Tensor([N, K])
                for i in 0..<wf.count { wf.data[i] = 0.1 * rng.normal() }
                let w = Weight.make(WeightFormats.q8_0, from: wf, pool: testPool)
                carved.append((GroupedBlockFormat.grouped(w), GroupedBlockFormat.grouped(w, arena: arena)))
            }
            for (own, inArena) in carved {
                XCTAssertEqual(inArena.format.name, "q8_0x8")
                XCTAssertEqual(Int(bitPattern: inArena.data) % 64, 0, "64-byte aligned")
                XCTAssertEqual(memcmp(own.data, inArena.data, own.byteCount), 0, "\(own.rows)x\(own.cols): the same bytes")
            }
            XCTAssertTrue(carved[0].1.owner === carved[1].1.owner, "small weights share a chunk")
            XCTAssertFalse(carved[0].1.owner === carved[2].1.owner, "a weight over a chunk gets its own")
            firstChunk = carved[0].1.owner
            XCTAssertNotNil(firstChunk)
        }
        XCTAssertNil(firstChunk, "the chunk is freed with its weights and the arena")
    }

    /// `WeightArena.place` copies f32, bf16 and int8-rows weights (bytes and per-row scales)
    /// into the arena: the same dequantized rows and the same products in every family; a
    /// format it cannot copy (NF4's blocks) comes back as it is.
    func testPlacedWeightsKeepTheirBytesAndProducts() throws {
        var rng = RNG(seed: 17)
        let arena = WeightArena(chunkBytes: 1)
        let (N, K, M) = (40, 96, 3)
        let wf = Tensor([N, K]), x = Tensor([M, K])
        for i in 0..<wf.count { wf.data[i] = 0.1 * rng.normal() }
        for i in 0..<x.count { x.data[i] = rng.normal() }
        for f in [WeightFormats.f32, WeightFormats.bf16, WeightFormats.int8, WeightFormats.llmInt8] {
            let w = Weight.make(f, from: wf, pool: testPool)
            let p = arena.place(w)
            XCTAssertTrue(p.inArena, f.name)
            XCTAssertFalse(w.inArena, f.name)
            XCTAssertEqual(p.format.name, f.name)
            XCTAssertEqual(Int(bitPattern: p.data) % 64, 0, "\(f.name): 64-byte aligned")
            let (dp, dw) = (p.dense(), w.dense())
            XCTAssertEqual((0..<dp.count).filter { dp.data[$0].bitPattern != dw.data[$0].bitPattern }.count, 0, "\(f.name): rows")
            if let sp = p.scales, let sw = w.scales {
                XCTAssertEqual((0..<N).filter { sp[$0] != sw[$0] }.count, 0, "\(f.name): scales")
                XCTAssertNotEqual(sp, sw, "\(f.name): scales copied")
            }
            XCTAssertEqual(p.scales == nil, w.scales == nil, f.name)
            for family in KernelFamily.available {
                let be = CPUBackend(family: family, pool: testPool)
                let ya = Tensor([M, N]), yb = Tensor([M, N])
                be.matmulDecoding(y: ya.data, x: x.data, w: w, M: M, scratch: MatmulScratch())
                be.matmulDecoding(y: yb.data, x: x.data, w: p, M: M, scratch: MatmulScratch())
                XCTAssertEqual((0..<ya.count).filter { ya.data[$0].bitPattern != yb.data[$0].bitPattern }.count, 0, "\(f.name) \(family)")
            }
        }
        let nf4 = Weight.make(WeightFormats.nf4, from: Tensor([64, 64]), pool: testPool)
        XCTAssertTrue(arena.place(nf4) === nf4, "nf4 is not copied")
    }
}
