import CKernels
// Small vector helpers over raw pointers, used by the other ops and by the optimizer.
//
// Element-wise loops are plain Swift (LLVM vectorizes them). Reductions keep 16 Float lanes,
// which is what PyTorch's vectorized CPU reductions do; long reductions that feed a loss or a
// gradient norm fold blocks of lanes into a Double. `exp` is a SIMD polynomial (Cephes'
// expf, within 2 ulp of the correctly rounded value), because expf one value at a time
// dominates softmax, SiLU and cross-entropy on a vocabulary-sized row.
public enum VectorOps {
    /// out = a + b. `out` may alias `a` or `b`.
    public static func add(pool: WorkerPool, out: UnsafeMutablePointer<Float>, // [count]
                           a: UnsafePointer<Float>,          // [count]
                           b: UnsafePointer<Float>,          // [count]
                           count: Int) {
        pool.chunks(count, grain: 1 << 15) { r in
            for i in r { out[i] = a[i] + b[i] }
        }
    }

    /// x *= alpha, in place.
    public static func scale(pool: WorkerPool, x: UnsafeMutablePointer<Float>, // [count]
                             alpha: Float, count: Int) {
        pool.chunks(count, grain: 1 << 15) { r in
            for i in r { x[i] *= alpha }
        }
    }

    /// y += alpha * x.
    public static func axpy(pool: WorkerPool, y: UnsafeMutablePointer<Float>, // [count]
                            alpha: Float,
                            x: UnsafePointer<Float>,        // [count]
                            count: Int) {
        pool.chunks(count, grain: 1 << 15) { r in
            for i in r { y[i] += alpha * x[i] }
        }
    }

    /// sum(a * b) in Float lanes (serial: it is called inside parallel loops).
    @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, // [count]
                           _ b: UnsafePointer<Float>, // [count]
                           count: Int) -> Float {
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= count {
            acc0 += load8(a + i) * load8(b + i)
            acc1 += load8(a + i + 8) * load8(b + i + 8)
            i += 16
        }
        var s = (acc0 + acc1).sum()
        while i < count { s += a[i] * b[i]; i += 1 }
        return s
    }

    /// sum(x * x) in Float lanes, for one row (RMSNorm).
    @inline(__always)
    public static func sumOfSquaresRow(_ x: UnsafePointer<Float>, // [count]
                                       count: Int) -> Float {
        dot(x, x, count: count)
    }

    /// sum(x * x) over a long buffer (gradient norms): blocks of 4096 in Float lanes, added in
    /// Double. Serial, so the result does not depend on the thread count.
    public static func sumOfSquares(_ x: UnsafePointer<Float>, // [count]
                                    count: Int) -> Double {
        var total = 0.0
        var i = 0
        while i < count {
            let n = min(4096, count - i)
            total += Double(dot(x + i, x + i, count: n))
            i += n
        }
        return total
    }

    /// max(x); -inf for an empty vector.
    @inline(__always)
    public static func max(_ x: UnsafePointer<Float>, // [count]
                           count: Int) -> Float {
        var m8 = SIMD8<Float>(repeating: -.infinity)
        var i = 0
        while i + 8 <= count { m8 = vmax(m8, load8(x + i)); i += 8 }
        var m = m8.max()
        while i < count { m = Swift.max(m, x[i]); i += 1 }
        return m
    }

    /// y[i] = exp(x[i] - shift); returns sum(y) (blocks of Float lanes added in Double).
    /// `y` may alias `x`. Arguments below -87.3 give 0 (no denormals); -inf gives 0.
    /// Runs `lora_exp_shifted` (C, 8 lanes with AVX2; softmax rows of attention spend their time
    /// here), which gives `expShiftedReference`'s bits on every family.
    @inline(__always)
    @discardableResult
    public static func expShifted(y: UnsafeMutablePointer<Float>, // [count]
                                  x: UnsafePointer<Float>,        // [count]
                                  shift: Float, count: Int) -> Double {
        lora_exp_shifted(bestFamily, y, x, shift, count)
    }

    /// The CPU's best C family for the element-wise kernels whose families all give the same bits.
    static let bestFamily: Int32 = lora_family_best()

    /// `expShifted` in Swift SIMD: the reference `lora_exp_shifted` is held to.
    @discardableResult
    public static func expShiftedReference(y: UnsafeMutablePointer<Float>, // [count]
                                           x: UnsafePointer<Float>,        // [count]
                                           shift: Float, count: Int) -> Double {
        var total = 0.0
        var i = 0
        while i < count {
            let end = Swift.min(count, i + 1024)
            var acc = SIMD8<Float>()
            while i + 8 <= end {
                let e = exp(load8(x + i) - SIMD8(repeating: shift))
                store8(e, y + i)
                acc += e
                i += 8
            }
            var s = acc.sum()
            while i < end {
                let e = exp(SIMD8(repeating: x[i] - shift))[0]
                y[i] = e
                s += e
                i += 1
            }
            total += Double(s)
        }
        return total
    }

    /// sum(exp(x[i] - shift)) without storing the terms.
    @inline(__always)
    public static func expShiftedSum(_ x: UnsafePointer<Float>, // [count]
                                     shift: Float, count: Int) -> Double {
        var total = 0.0
        var i = 0
        while i < count {
            let end = Swift.min(count, i + 1024)
            var acc = SIMD8<Float>()
            while i + 8 <= end {
                acc += exp(load8(x + i) - SIMD8(repeating: shift))
                i += 8
            }
            var s = acc.sum()
            while i < end { s += exp(SIMD8(repeating: x[i] - shift))[0]; i += 1 }
            total += Double(s)
        }
        return total
    }

    /// exp of eight floats: Cephes expf. x = n ln2 + r with |r| <= ln2 / 2, a degree-6
    /// polynomial for e^r, and 2^n built in the exponent bits. Below ln(FLT_MIN) = -87.3365
    /// the result is 0 (no denormals; -inf gives 0); above 88.3 it saturates near 2.1e38.
    @inline(__always)
    public static func exp(_ x0: SIMD8<Float>) -> SIMD8<Float> {
        let low = SIMD8<Float>(repeating: -87.336_54)
        var x = vmin(vmax(x0, low), SIMD8(repeating: 88.3))
        // n = round(x / ln2) with the 1.5 * 2^23 trick: the integer sits in the mantissa bits.
        let magic = SIMD8<Float>(repeating: 0x1.8p23)
        let t = x * SIMD8(repeating: 1.442_695_04) + magic
        let n = t - magic
        x = x - n * SIMD8(repeating: 0.693_359_375)
        x = x - n * SIMD8(repeating: -2.121_944_4e-4)
        let z = x * x
        var p = SIMD8<Float>(repeating: 1.987_569_15e-4)
        p = p * x + SIMD8(repeating: 1.398_199_950_7e-3)
        p = p * x + SIMD8(repeating: 8.333_451_907_3e-3)
        p = p * x + SIMD8(repeating: 4.166_579_589_4e-2)
        p = p * x + SIMD8(repeating: 1.666_666_545_9e-1)
        p = p * x + SIMD8(repeating: 5.000_000_120_1e-1)
        let y = p * z + x + SIMD8(repeating: 1)
        // 2^n: (n + 127) << 23. n = -127 gives the bit pattern of 0.
        let bits = unsafeBitCast(t, to: SIMD8<Int32>.self) &- SIMD8(repeating: 0x4B40_0000 - 127)
        let pow2n = unsafeBitCast(bits &<< SIMD8(repeating: 23), to: SIMD8<Float>.self)
        return (y * pow2n).replacing(with: 0, where: x0 .< low)
    }

    /// exp of one float with the same polynomial (for loop tails).
    @inline(__always)
    public static func exp(_ x: Float) -> Float { exp(SIMD8(repeating: x))[0] }

    // Lane-wise max/min as compare + select. (The standard library's pointwiseMax/Min follow
    // IEEE maxNum for NaN and compile to a scalar loop; these vectorize. A NaN in `a` is kept
    // by vmax only when b is not greater, so NaN handling is unspecified.)
    @inline(__always)
    static func vmax(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        a.replacing(with: b, where: a .< b)
    }

    @inline(__always)
    static func vmin(_ a: SIMD8<Float>, _ b: SIMD8<Float>) -> SIMD8<Float> {
        a.replacing(with: b, where: b .< a)
    }

    @inline(__always)
    static func load8(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always)
    static func load8(_ p: UnsafeMutablePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always)
    static func store8(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
    }
}
