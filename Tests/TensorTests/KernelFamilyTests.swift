import CKernels
import Dispatch
import Tensor
import XCTest

/// The C kernel families x weight formats API (CKernels.h, "Kernel families x weight formats"):
/// every available family (portable always; AVX2 and AVX-512 where the CPU has them), every
/// format (f32, int8 rows, bf16, GGUF Q8_0 / Q4_0 / Q4_1 blocks) and every product (lora_gemm_abt, lora_gemm_ab,
/// lora_gemv_abt) against a Double reference, on shapes that are not multiples of any
/// family's blocking, for the full column range and a sub-range starting at one panel width,
/// with accumulate off (C starts as NaN, which must not leak) and on. Block formats run the same
/// shapes with K rounded up to a multiple of 32 (plus K = 32, 64, 4096) and also a sub-range
/// starting mid-block; their reference dequantizes the random block bytes in Swift with the
/// layout's formula, in Float as the kernels must.
///
/// Tolerance: |C - C_ref| <= 1e-5 * (sum_k |a| |w| + |C before|), element by element; the
/// Double reference is exact to well below that, so this bounds each kernel's Float rounding.
/// Columns outside the range, the padding between rows and a canary past C must keep their
/// bits. Every family must also agree with the portable one (within twice the tolerance).
final class KernelFamilyTests: XCTestCase {
    static let rtol = 1e-5

    /// (M, N, K): ragged against the AVX-512 (8 x 48, KC <= 768, GEMV 4 x 4 rows, int8 K in
    /// 64s) and AVX2 (6 x 16, KC <= 640, GEMV 4 x 2 rows, K in 8s and cache lines) blockings;
    /// K = 4200 and 1000-deep backward products take several depth blocks; empty dimensions.
    static let shapes: [(Int, Int, Int)] = [
        (1, 1, 1), (1, 5, 7), (1, 37, 600), (2, 19, 33), (3, 300, 600), (5, 1000, 300),
        (7, 48, 16), (9, 50, 100), (13, 97, 257), (16, 33, 70), (2, 9, 4200),
        (3, 5, 0), (16, 0, 8), (0, 4, 4),
        (17, 770, 40), (20, 1000, 500),
        // LoRA's B product (K = rank, f32: the short-depth GEMV): ragged N, every row count.
        (8, 29, 16), (3, 21, 64), (1, 13, 32), (5, 8, 8), (37, 800, 300), (64, 193, 300), (100, 49, 513),
    ]

    static let familyNames = ["portable", "avx2", "avx512"]
    static let formatNames = ["f32", "i8_rows", "bf16", "q8_0", "q4_0", "q4_1"]
    static let formats: [Int32] = [LORA_FORMAT_F32, LORA_FORMAT_I8_ROWS, LORA_FORMAT_BF16,
                                   LORA_FORMAT_Q8_0, LORA_FORMAT_Q4_0, LORA_FORMAT_Q4_1].map { Int32($0) }

    static func isBlock(_ format: Int32) -> Bool { format >= Int32(LORA_FORMAT_Q8_0) }

    /// The shapes for a format: block formats need K (the depth of abt / gemv) in 32s.
    static func shapes(for format: Int32) -> [(Int, Int, Int)] {
        guard isBlock(format) else { return shapes }
        return shapes.map { ($0.0, $0.1, ($0.2 + 31) / 32 * 32) } + [(1, 7, 32), (6, 50, 64), (4, 20, 4096)]
    }

    enum Product: CaseIterable { case abt, ab, gemv }

    /// The families this CPU can run, by their LORA_FAMILY_* value.
    static var families: [Int32] {
        [Int32(LORA_FAMILY_PORTABLE), Int32(LORA_FAMILY_AVX2), Int32(LORA_FAMILY_AVX512)]
            .filter { lora_family_available($0) != 0 }
    }

    /// xorshift64: deterministic data without depending on the Tensor module's RNG.
    struct Rand {
        var s: UInt64 = 0x9E37_79B9_7F4A_7C15
        mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
        /// Uniform in [-1, 1).
        mutating func uniform() -> Float { Float(Double(next() >> 11) / Double(1 << 52) - 1) }
        mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next() >> 32) }
    }

    /// Bytes of one GGUF block (Q8_0 34, Q4_0 18, Q4_1 20) for 32 weights.
    static func blockBytes(_ format: Int32) -> Int {
        switch format {
        case Int32(LORA_FORMAT_Q8_0): return 34
        case Int32(LORA_FORMAT_Q4_0): return 18
        default: return 20
        }
    }

    /// The 32 weights of the block at `b`, as the layout defines them (computed in Float).
    static func dequantize(_ format: Int32, _ b: ArraySlice<UInt8>) -> [Float] {
        let i = b.startIndex
        func half(_ at: Int) -> Float { Float(Float16(bitPattern: UInt16(b[at]) | UInt16(b[at + 1]) << 8)) }
        let d = half(i)
        switch format {
        case Int32(LORA_FORMAT_Q8_0):
            return (0..<32).map { d * Float(Int8(bitPattern: b[i + 2 + $0])) }
        case Int32(LORA_FORMAT_Q4_0):
            return (0..<32).map { j in d * Float(Int(j < 16 ? b[i + 2 + j] & 15 : b[i + 2 + j - 16] >> 4) - 8) }
        default:
            let m = half(i + 2)
            return (0..<32).map { j in d * Float(j < 16 ? b[i + 4 + j] & 15 : b[i + 4 + j - 16] >> 4) + m }
        }
    }

    /// A weight W [N, K] with row stride ldw in one format: its bytes, scales and values.
    struct Weight {
        var bytes: [UInt8]
        var scales: [Float]
        var value: [Double]  // W[n, k] exactly as the format defines it, dense [N][K]

        init(bytes: [UInt8], scales: [Float], value: [Double]) { self.bytes = bytes; self.scales = scales; self.value = value }

        init(format: Int32, N: Int, K: Int, ldw: Int, rng: inout Rand) {
            scales = (0..<max(N, 1)).map { _ in 0.001 + 0.005 * (1 + rng.uniform()) }
            value = [Double](repeating: 0, count: N * K)
            if KernelFamilyTests.isBlock(format) {
                // Random qs; d (and m) halves from random floats at a per-row scale 2^-22...2^3,
                // so whole rows have subnormal, small and large halves.
                precondition(ldw % 32 == 0 && K <= ldw)
                let bb = KernelFamilyTests.blockBytes(format), nblk = ldw / 32
                var q = (0..<(N * nblk * bb + 1)).map { _ in rng.byte() }
                for n in 0..<N {
                    let scale = Float(sign: .plus, exponent: Int(rng.next() % 26) - 22, significand: 1)
                    for blk in 0..<nblk {
                        let o = (n * nblk + blk) * bb
                        let d = Float16(rng.uniform() * scale), m = Float16(rng.uniform() * 8 * scale)
                        q[o] = UInt8(d.bitPattern & 0xFF); q[o + 1] = UInt8(d.bitPattern >> 8)
                        if format == Int32(LORA_FORMAT_Q4_1) {
                            q[o + 2] = UInt8(m.bitPattern & 0xFF); q[o + 3] = UInt8(m.bitPattern >> 8)
                        }
                        let w = KernelFamilyTests.dequantize(format, q[o..<(o + bb)])
                        for j in 0..<32 where blk * 32 + j < K { value[n * K + blk * 32 + j] = Double(w[j]) }
                    }
                }
                bytes = q
                return
            }
            switch format {
            case Int32(LORA_FORMAT_I8_ROWS):
                var q = [Int8](repeating: 0, count: N * ldw + 1)
                for n in 0..<N {
                    for k in 0..<K {
                        let v = Int8(clamping: Int((rng.uniform() * 127).rounded()))
                        q[n * ldw + k] = v
                        value[n * K + k] = Double(v) * Double(scales[n])
                    }
                }
                bytes = q.withUnsafeBytes { Array($0) }
            case Int32(LORA_FORMAT_BF16):
                var h = [UInt16](repeating: 0, count: N * ldw + 1)
                for n in 0..<N {
                    for k in 0..<K {
                        let bits = UInt16(rng.uniform().bitPattern >> 16)
                        h[n * ldw + k] = bits
                        value[n * K + k] = Double(Float(bitPattern: UInt32(bits) << 16))
                    }
                }
                bytes = h.withUnsafeBytes { Array($0) }
            default:
                var w = [Float](repeating: 0, count: N * ldw + 1)
                for n in 0..<N {
                    for k in 0..<K {
                        let v = rng.uniform()
                        w[n * ldw + k] = v
                        value[n * K + k] = Double(v)
                    }
                }
                bytes = w.withUnsafeBytes { Array($0) }
            }
        }
    }

    /// Calls `product` of `family` on C (row stride ldc) for columns r0..<r1.
    static func call(_ product: Product, family: Int32, format: Int32, M: Int, N: Int, K: Int,
                     r0: Int, r1: Int, A: [Float], lda: Int, W: Weight, ldw: Int,
                     C: inout [Float], ldc: Int, accumulate: Bool) {
        let acc: Int32 = accumulate ? 1 : 0
        A.withUnsafeBufferPointer { a in
            W.bytes.withUnsafeBytes { w in
                W.scales.withUnsafeBufferPointer { s in
                    C.withUnsafeMutableBufferPointer { c in
                        switch product {
                        case .abt:
                            lora_gemm_abt(family, format, M, r0, r1, K, a.baseAddress, lda,
                                          w.baseAddress, ldw, s.baseAddress, c.baseAddress, ldc, acc)
                        case .ab:
                            lora_gemm_ab(family, format, M, r0, r1, N, a.baseAddress, lda,
                                         w.baseAddress, ldw, s.baseAddress, c.baseAddress, ldc, acc)
                        case .gemv:
                            lora_gemv_abt(family, format, M, r0, r1, K, a.baseAddress, lda,
                                          w.baseAddress, ldw, s.baseAddress, c.baseAddress, ldc, acc)
                        }
                    }
                }
            }
        }
    }

    func testFamiliesFormatsProducts() {
        let families = Self.families
        print("KernelFamilyTests: families run: "
              + families.map { Self.familyNames[Int($0)] }.joined(separator: ", ")
              + "; best: \(Self.familyNames[Int(lora_family_best())])")
        XCTAssertTrue(families.contains(Int32(LORA_FAMILY_PORTABLE)))
        XCTAssertTrue(families.contains(lora_family_best()))
        XCTAssertEqual(lora_family_best(), families.max())
        var rng = Rand()
        var failures = 0
        for format in Self.formats {
            for (M, N, K) in Self.shapes(for: format) {
                let ldw = Self.isBlock(format) ? K + 32 : K + 5
                let W = Weight(format: format, N: N, K: K, ldw: ldw, rng: &rng)
                for product in Product.allCases {
                    let (depth, cols) = product == .ab ? (N, K) : (K, N)
                    let lda = depth + 3, ldc = cols + 2
                    let A = (0..<(M * lda + 1)).map { _ in rng.uniform() }
                    // Reference sums and magnitudes, dense [M][cols].
                    var ref = [Double](repeating: 0, count: M * cols)
                    var mag = [Double](repeating: 0, count: M * cols)
                    for m in 0..<M {
                        for j in 0..<cols {
                            var s = 0.0, g = 0.0
                            for d in 0..<depth {
                                let t = Double(A[m * lda + d])
                                    * (product == .ab ? W.value[d * K + j] : W.value[j * K + d])
                                s += t
                                g += abs(t)
                            }
                            ref[m * cols + j] = s
                            mag[m * cols + j] = g
                        }
                    }
                    let before = (0..<(M * ldc + 8)).map { _ in rng.uniform() }
                    for accumulate in [false, true] {
                        var portable: [Float]? = nil
                        for family in families {
                            let pw = Int(lora_family_panel_width(family))
                            XCTAssertGreaterThan(pw, 0)
                            var ranges = [(0, cols)]
                            if cols > pw + 1 { ranges.append((pw, cols - 1)) }
                            if Self.isBlock(format) && cols > 12 { ranges.append((5, cols - 7)) }
                            for (r0, r1) in ranges {
                                let what = "\(Self.familyNames[Int(family)]) \(Self.formatNames[Int(format)]) "
                                    + "\(product) M=\(M) N=\(N) K=\(K) cols \(r0)..<\(r1) accumulate=\(accumulate)"
                                let c0 = accumulate ? before : [Float](repeating: .nan, count: before.count)
                                var C = c0
                                Self.call(product, family: family, format: format, M: M, N: N, K: K,
                                          r0: r0, r1: r1, A: A, lda: lda, W: W, ldw: ldw,
                                          C: &C, ldc: ldc, accumulate: accumulate)
                                var bad = 0
                                for i in 0..<C.count where bad == 0 {
                                    let m = i / ldc, j = i % ldc
                                    if m >= M || j < r0 || j >= r1 {
                                        if C[i].bitPattern != c0[i].bitPattern {
                                            XCTFail("\(what): wrote outside C[M, range] at \(i)")
                                            bad += 1
                                        }
                                        continue
                                    }
                                    var r = ref[m * cols + j], g = mag[m * cols + j]
                                    if accumulate { r += Double(c0[i]); g += abs(Double(c0[i])) }
                                    let err = abs(Double(C[i]) - r)
                                    if !(err <= Self.rtol * g) {
                                        XCTFail("\(what): C[\(m), \(j)] = \(C[i]), reference \(r), |err| \(err) > \(Self.rtol) * \(g)")
                                        bad += 1
                                    }
                                    if r0 == 0 && r1 == cols, let p = portable,
                                       !(abs(Double(C[i]) - Double(p[i])) <= 2 * Self.rtol * g) {
                                        XCTFail("\(what): C[\(m), \(j)] = \(C[i]) but portable gives \(p[i])")
                                        bad += 1
                                    }
                                }
                                failures += bad
                                if family == Int32(LORA_FAMILY_PORTABLE) && r0 == 0 && r1 == cols { portable = C }
                            }
                        }
                    }
                    if failures > 20 { return XCTFail("too many failures; stopping") }
                }
            }
        }
    }

    /// Threads calling with disjoint column ranges (multiples of the panel width) at once, as
    /// the Swift side does: per-thread packing buffers must not collide.
    func testConcurrentColumnRanges() {
        var rng = Rand()
        for format in Self.formats {
            let (M, N, K) = (37, 800, Self.isBlock(format) ? 320 : 300)
            let W = Weight(format: format, N: N, K: K, ldw: K, rng: &rng)
            for product in Product.allCases {
                let (depth, cols) = product == .ab ? (N, K) : (K, N)
                let rows = product == .gemv ? 3 : M
                let A = (0..<(rows * depth)).map { _ in rng.uniform() }
                for family in Self.families {
                    let what = "\(Self.familyNames[Int(family)]) \(Self.formatNames[Int(format)]) \(product) threaded"
                    let pw = Int(lora_family_panel_width(family))
                    let panels = (cols + pw - 1) / pw, parts = 5
                    var C = [Float](repeating: .nan, count: rows * cols)
                    C.withUnsafeMutableBufferPointer { c in
                        let cp = c.baseAddress!
                        DispatchQueue.concurrentPerform(iterations: parts) { t in
                            let r0 = min(cols, panels * t / parts * pw), r1 = min(cols, panels * (t + 1) / parts * pw)
                            guard r0 < r1 else { return }
                            A.withUnsafeBufferPointer { a in
                                W.bytes.withUnsafeBytes { w in
                                    W.scales.withUnsafeBufferPointer { s in
                                        switch product {
                                        case .abt: lora_gemm_abt(family, format, rows, r0, r1, K, a.baseAddress, K,
                                                                 w.baseAddress, K, s.baseAddress, cp, cols, 0)
                                        case .ab: lora_gemm_ab(family, format, rows, r0, r1, N, a.baseAddress, N,
                                                               w.baseAddress, K, s.baseAddress, cp, cols, 0)
                                        case .gemv: lora_gemv_abt(family, format, rows, r0, r1, K, a.baseAddress, K,
                                                                  w.baseAddress, K, s.baseAddress, cp, cols, 0)
                                        }
                                    }
                                }
                            }
                        }
                    }
                    var bad = 0
                    for m in 0..<rows {
                        for j in 0..<cols where bad == 0 {
                            var r = 0.0, g = 0.0
                            for d in 0..<depth {
                                let t = Double(A[m * depth + d]) * (product == .ab ? W.value[d * K + j] : W.value[j * K + d])
                                r += t
                                g += abs(t)
                            }
                            if !(abs(Double(C[m * cols + j]) - r) <= Self.rtol * g) {
                                XCTFail("\(what): C[\(m), \(j)] = \(C[m * cols + j]), reference \(r)")
                                bad += 1
                            }
                        }
                    }
                }
            }
        }
    }

    func testDotAndAxpy() {
        var rng = Rand()
        for family in Self.families {
            let name = Self.familyNames[Int(family)]
            for n in Array(0..<70) + [127, 128, 129, 1000, 4099] {
                let a = (0..<n).map { _ in rng.uniform() }, b = (0..<n).map { _ in rng.uniform() }
                var ref = 0.0, mag = 0.0
                for i in 0..<n { ref += Double(a[i]) * Double(b[i]); mag += abs(Double(a[i]) * Double(b[i])) }
                let dot = Double(lora_dot(family, a, b, n))
                XCTAssertLessThanOrEqual(abs(dot - ref), Self.rtol * mag, "\(name) dot n=\(n)")

                let alpha: Float = -0.625
                var y = (0...n).map { _ in rng.uniform() }
                let y0 = y
                lora_axpy(family, alpha, a, &y, n)
                for i in 0..<n {
                    let r = Double(y0[i]) + Double(alpha) * Double(a[i])
                    XCTAssertLessThanOrEqual(abs(Double(y[i]) - r), 1e-6 * (abs(Double(y0[i])) + abs(Double(alpha * a[i]))),
                                             "\(name) axpy n=\(n) i=\(i)")
                }
                XCTAssertEqual(y[n].bitPattern, y0[n].bitPattern, "\(name) axpy wrote past n=\(n)")
            }
        }
    }

    // MARK: NF4 (LORA_FORMAT_NF4: a lora_nf4 descriptor, blocks over the flattened weight)

    /// Compares C [M, ldc] from one call of `product` on columns r0..<r1 with the Double
    /// reference of A times the weights `value` ([N, K], row-major), within rtol of the sum of
    /// magnitudes (plus C's old value when accumulating); everything outside C[0..<M, r0..<r1]
    /// must still be c0's bits. Returns the failures (at most 1: it stops at the first).
    static func checkProduct(_ what: String, _ product: Product, C: [Float], c0: [Float], ldc: Int, M: Int,
                             K: Int, depth: Int, r0: Int, r1: Int, A: [Float], lda: Int, value: [Double],
                             accumulate: Bool) -> Int {
        for i in 0..<C.count {
            let m = i / ldc, j = i % ldc
            if m >= M || j < r0 || j >= r1 {
                if C[i].bitPattern != c0[i].bitPattern { XCTFail("\(what): wrote outside at \(i)"); return 1 }
                continue
            }
            var r = 0.0, g = 0.0
            for d in 0..<depth {
                let t = Double(A[m * lda + d]) * (product == .ab ? value[d * K + j] : value[j * K + d])
                r += t; g += abs(t)
            }
            if accumulate { r += Double(c0[i]); g += abs(Double(c0[i])) }
            if !(abs(Double(C[i]) - r) <= rtol * g) {
                XCTFail("\(what): C[\(m), \(j)] = \(C[i]), reference \(r)"); return 1
            }
        }
        return 0
    }

    /// Random NF4 arrays for [N, K] (ldw = K) and the weights they define, computed in Float as
    /// CKernels.h states (absmax = dynamic[a8] * nested + offset, two roundings; w = code * absmax).
    struct NF4Weight {
        var q: [UInt8], a8: [UInt8], nested: [Float], offset: Float
        var value: [Double]

        init(N: Int, K: Int, rng: inout Rand) {
            let n = N * K, blocks = (n + 63) / 64
            q = (0..<max((n + 1) / 2, 1)).map { _ in rng.byte() }
            a8 = (0..<max(blocks, 1)).map { _ in rng.byte() }
            nested = (0..<max((blocks + 255) / 256, 1)).map { _ in 0.01 + 0.05 * abs(rng.uniform()) }
            offset = 0.03 * rng.uniform()
            let code = withUnsafeBytes(of: lora_nf4_code) { Array($0.bindMemory(to: Float.self)) }
            let dyn = withUnsafeBytes(of: lora_nf4_dynamic) { Array($0.bindMemory(to: Float.self)) }
            value = (0..<n).map { [q, a8, nested, offset] i in
                let b = i / 64
                let s = dyn[Int(a8[b])] * nested[b / 256]
                let absmax = s + offset
                let byte = q[i / 2]
                return Double(code[Int(i % 2 == 0 ? byte >> 4 : byte & 15)] * absmax)
            }
        }
    }

    /// Every family, every product, against the Double reference, full and partial column
    /// ranges (a partial range starting mid-block), accumulate off and on; K and N not
    /// multiples of 64, so blocks straddle rows.
    func testNF4FamiliesProducts() {
        var rng = Rand()
        var failures = 0
        let shapes = Self.shapes.filter { $0.2 > 0 } + [(1, 64, 64), (6, 50, 176), (4, 20, 4096), (3, 576, 576)]
        for (M, N, K) in shapes {
            let W = NF4Weight(N: N, K: K, rng: &rng)
            for product in Product.allCases {
                let (depth, cols) = product == .ab ? (N, K) : (K, N)
                let lda = depth + 3, ldc = cols + 2
                let A = (0..<(M * lda + 1)).map { _ in rng.uniform() }
                let before = (0..<(M * ldc + 8)).map { _ in rng.uniform() }
                for accumulate in [false, true] {
                    for family in Self.families {
                        var ranges = [(0, cols)]
                        if cols > 12 { ranges.append((5, cols - 7)) }
                        for (r0, r1) in ranges {
                            let c0 = accumulate ? before : [Float](repeating: .nan, count: before.count)
                            var C = c0
                            W.q.withUnsafeBufferPointer { q in
                                W.a8.withUnsafeBufferPointer { a8 in
                                    W.nested.withUnsafeBufferPointer { ns in
                                        var d = lora_nf4(q: q.baseAddress, absmax8: a8.baseAddress, nested: ns.baseAddress, offset: W.offset)
                                        A.withUnsafeBufferPointer { a in
                                            C.withUnsafeMutableBufferPointer { c in
                                                let acc: Int32 = accumulate ? 1 : 0, fmt = Int32(LORA_FORMAT_NF4)
                                                switch product {
                                                case .abt: lora_gemm_abt(family, fmt, M, r0, r1, K, a.baseAddress, lda, &d, K, nil, c.baseAddress, ldc, acc)
                                                case .ab: lora_gemm_ab(family, fmt, M, r0, r1, N, a.baseAddress, lda, &d, K, nil, c.baseAddress, ldc, acc)
                                                case .gemv: lora_gemv_abt(family, fmt, M, r0, r1, K, a.baseAddress, lda, &d, K, nil, c.baseAddress, ldc, acc)
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                            let what = "\(Self.familyNames[Int(family)]) nf4 \(product) M=\(M) N=\(N) K=\(K) cols \(r0)..<\(r1) accumulate=\(accumulate)"
                            failures += Self.checkProduct(what, product, C: C, c0: c0, ldc: ldc, M: M, K: K, depth: depth,
                                                          r0: r0, r1: r1, A: A, lda: lda, value: W.value, accumulate: accumulate)
                        }
                    }
                }
                if failures > 20 { return XCTFail("too many failures; stopping") }
            }
        }
    }

    // MARK: Q5_0, Q5_1, Q4_K, Q5_K, Q6_K (dequantized per tile into each family's f32 kernels)

    static let tileKinds: [(GGUFBlockFormat.Kind, Int32)] = [
        (.q5_0, Int32(LORA_FORMAT_Q5_0)), (.q5_1, Int32(LORA_FORMAT_Q5_1)), (.q4_K, Int32(LORA_FORMAT_Q4_K)),
        (.q5_K, Int32(LORA_FORMAT_Q5_K)), (.q6_K, Int32(LORA_FORMAT_Q6_K)),
    ]

    /// Random valid blocks for [N, K] with row stride ldw (elements): random quants and scale
    /// bytes, finite half d (and m / dmin) at a per-row scale 2^-22...2^3. `value` is the Swift
    /// scalar reference (GGUFBlockFormat.dequantizeBlock, bit-exact with gguf.quants: GGUFTests).
    static func tileWeight(_ kind: GGUFBlockFormat.Kind, N: Int, K: Int, ldw: Int, rng: inout Rand) -> Weight {
        let bs = kind.blockSize, bb = kind.blockBytes, nblk = ldw / bs
        var q = (0..<(N * nblk * bb + 1)).map { _ in rng.byte() }
        var value = [Double](repeating: 0, count: N * K)
        let halves: [Int] = kind == .q6_K ? [208] : kind == .q5_0 ? [0] : [0, 2]
        var out = [Float](repeating: 0, count: bs)
        for n in 0..<N {
            let scale = Float(sign: .plus, exponent: Int(rng.next() % 26) - 22, significand: 1)
            for blk in 0..<nblk {
                let o = (n * nblk + blk) * bb
                for at in halves {
                    let h = Float16(rng.uniform() * scale * (kind.isKQuant ? 1.0 / 32 : 1))
                    q[o + at] = UInt8(h.bitPattern & 0xFF); q[o + at + 1] = UInt8(h.bitPattern >> 8)
                }
                q.withUnsafeBytes { p in out.withUnsafeMutableBufferPointer { GGUFBlockFormat.dequantizeBlock(kind, p.baseAddress! + o, $0.baseAddress!) } }
                for j in 0..<bs where blk * bs + j < K { value[n * K + blk * bs + j] = Double(out[j]) }
            }
        }
        return Weight(bytes: q, scales: [], value: value)
    }

    /// Every family decodes the tile formats to the scalar reference's values bit for bit (the
    /// AVX2 / AVX-512 families with the AVX2 decoder, portable with the scalar one): whole rows,
    /// and ranges that start or end mid-block, as the ab product's column ranges do.
    func testTileFormatsDecodeBitExact() {
        var rng = Rand()
        for (kind, format) in Self.tileKinds {
            let bs = kind.blockSize, N = 9, K = 3 * bs, ldw = K + bs
            let W = Self.tileWeight(kind, N: N, K: K, ldw: ldw, rng: &rng)
            for family in Self.families {
                for n in 0..<N {
                    for (k0, cnt) in [(0, K), (3, K - 5), (bs, bs), (bs + 1, bs - 1), (K - 1, 1), (7, 0)] {
                        var out = [Float](repeating: .nan, count: cnt + 1)
                        W.bytes.withUnsafeBytes { w in
                            out.withUnsafeMutableBufferPointer {
                                lora_tile_dequantize(family, format, w.baseAddress, ldw, n, k0, cnt, $0.baseAddress)
                            }
                        }
                        XCTAssert(out[cnt].isNaN, "\(kind.ggmlName) wrote past the range")
                        for j in 0..<cnt where out[j].bitPattern != Float(W.value[n * K + k0 + j]).bitPattern {
                            return XCTFail("\(Self.familyNames[Int(family)]) \(kind.ggmlName) row \(n) weight \(k0 + j): "
                                           + "\(out[j]), scalar reference \(W.value[n * K + k0 + j])")
                        }
                    }
                }
            }
        }
    }

    /// Every family, every product, against the Double reference of the scalar reference's
    /// values, for full and partial column ranges (the abt / gemv panels, and ab ranges starting
    /// mid-block), accumulate off and on; writes outside the range must not happen.
    func testTileFormatsFamiliesProducts() {
        var rng = Rand()
        var failures = 0
        for (kind, format) in Self.tileKinds {
            let bs = kind.blockSize
            let shapes: [(Int, Int, Int)] = bs == 32
                ? Self.shapes(for: Int32(LORA_FORMAT_Q8_0))
                : [(1, 5, 256), (3, 37, 512), (13, 97, 256), (2, 9, 4352), (17, 70, 768), (37, 50, 1024),
                   (64, 33, 256), (5, 300, 512), (3, 5, 0), (16, 0, 256), (0, 4, 256), (1, 130, 1280)]
            for (M, N, K) in shapes {
                let ldw = K + bs
                let W = Self.tileWeight(kind, N: N, K: K, ldw: ldw, rng: &rng)
                for product in Product.allCases {
                    let (depth, cols) = product == .ab ? (N, K) : (K, N)
                    let lda = depth + 3, ldc = cols + 2
                    let A = (0..<(M * lda + 1)).map { _ in rng.uniform() }
                    let before = (0..<(M * ldc + 8)).map { _ in rng.uniform() }
                    for accumulate in [false, true] {
                        for family in Self.families {
                            let pw = Int(lora_family_panel_width(family))
                            var ranges = [(0, cols)]
                            if cols > pw + 1 { ranges.append((pw, cols - 1)) }
                            if cols > 12 { ranges.append((5, cols - 7)) }
                            for (r0, r1) in ranges {
                                let what = "\(Self.familyNames[Int(family)]) \(kind.ggmlName) \(product) M=\(M) N=\(N) K=\(K) cols \(r0)..<\(r1) accumulate=\(accumulate)"
                                let c0 = accumulate ? before : [Float](repeating: .nan, count: before.count)
                                var C = c0
                                Self.call(product, family: family, format: format, M: M, N: N, K: K, r0: r0, r1: r1,
                                          A: A, lda: lda, W: W, ldw: ldw, C: &C, ldc: ldc, accumulate: accumulate)
                                failures += Self.checkProduct(what, product, C: C, c0: c0, ldc: ldc, M: M, K: K, depth: depth,
                                                              r0: r0, r1: r1, A: A, lda: lda, value: W.value, accumulate: accumulate)
                            }
                        }
                    }
                    if failures > 20 { return XCTFail("too many failures; stopping") }
                }
            }
        }
    }

    /// More threads than the CPUs this process may use is refused by name (the spinning
    /// decode workers would take turns a scheduler slice at a time); the count is the
    /// affinity mask's, never above the host's online CPUs.
    func testThreadsBeyondTheCPUsAreRefused() throws {
        let cpus = ProcessInfoCores.count
        XCTAssertGreaterThanOrEqual(cpus, 1)
        XCTAssertLessThanOrEqual(cpus, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        XCTAssertNoThrow(try ExecutionContext.cpu(threads: cpus))
        XCTAssertThrowsError(try ExecutionContext.cpu(threads: cpus + 1)) { e in
            XCTAssertEqual(e as? ExecutionContextError, .tooManyThreads(requested: cpus + 1, cpus: cpus))
            XCTAssertTrue("\(e)".contains("threads = \(cpus + 1)"), "\(e)")
        }
    }

}
