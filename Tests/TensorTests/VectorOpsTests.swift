import Foundation
import XCTest
@testable import Tensor
import CKernels

final class VectorOpsTests: XCTestCase {
    /// add, scale, axpy against scalar loops, on a length that is not a multiple of 8.
    func testElementwiseHelpers() {
        var rng = RNG(seed: 1)
        let n = 1003
        let a = randn([n], &rng), b = randn([n], &rng)
        let out = Tensor([n])
        VectorOps.add(pool: testPool, out: out.data, a: a.data, b: b.data, count: n)
        for i in 0..<n { XCTAssertEqual(out[i], a[i] + b[i]) }
        let y = b.clone()
        VectorOps.axpy(pool: testPool, y: y.data, alpha: -0.5, x: a.data, count: n)
        for i in 0..<n { XCTAssertEqual(y[i], b[i] + -0.5 * a[i]) }
        VectorOps.scale(pool: testPool, x: y.data, alpha: 3, count: n)
        for i in 0..<n { XCTAssertEqual(y[i], (b[i] + -0.5 * a[i]) * 3) }
    }

    /// dot, sumOfSquares and max against Double sums.
    func testReductions() {
        var rng = RNG(seed: 2)
        for n in [0, 1, 7, 16, 17, 1000, 10_001] {
            let a = randn([n], &rng), b = randn([n], &rng)
            var dot = 0.0, ss = 0.0, mx = -Float.infinity
            for i in 0..<n {
                dot += Double(a[i]) * Double(b[i]); ss += Double(a[i]) * Double(a[i]); mx = max(mx, a[i])
            }
            XCTAssertEqual(Double(VectorOps.dot(a.data, b.data, count: n)), dot,
                           accuracy: 1e-5 * Double(max(n, 1)).squareRoot(), "dot n=\(n)")
            XCTAssertEqual(VectorOps.sumOfSquares(a.data, count: n), ss, accuracy: 1e-6 * max(ss, 1),
                           "sumOfSquares n=\(n)")
            XCTAssertEqual(VectorOps.max(a.data, count: n), mx, "max n=\(n)")
        }
    }

    /// The SIMD exp is within 2 ulp-ish (relative 2.5e-7) of libm over the whole useful range,
    /// exact at 0, and 0 (not NaN or a denormal) for very negative and -inf arguments.
    func testExpAccuracy() {
        var worst = 0.0
        var x: Float = -87.3
        while x < 88 {
            let e = Double(VectorOps.exp(x)), ref = Foundation.exp(Double(x))
            worst = max(worst, abs(e - ref) / ref)
            x += 0.001_37
        }
        XCTAssertLessThan(worst, 2.5e-7)
        XCTAssertEqual(VectorOps.exp(0), 1)
        XCTAssertEqual(VectorOps.exp(-100), 0)
        XCTAssertEqual(VectorOps.exp(-.infinity), 0)
        XCTAssertTrue(VectorOps.exp(100).isFinite)
        let v = VectorOps.exp(SIMD8<Float>(-1, -0.5, 0, 0.5, 1, 2, -20, 10))
        for (i, t) in [-1, -0.5, 0, 0.5, 1, 2, -20, 10].enumerated() {
            XCTAssertEqual(Double(v[i]), Foundation.exp(t), accuracy: 3e-7 * Foundation.exp(t))
        }
    }

    /// expShifted writes exp(x - shift) and returns its sum, also in place.
    func testExpShifted() {
        var rng = RNG(seed: 3)
        let n = 2051
        let x = randn([n], &rng, scale: 3)
        let y = Tensor([n])
        let s = VectorOps.expShifted(y: y.data, x: x.data, shift: 1.5, count: n)
        var ref = 0.0
        for i in 0..<n {
            let e = Foundation.exp(Double(x[i] - 1.5)) // the shift is applied in Float
            ref += e
            XCTAssertEqual(Double(y[i]), e, accuracy: 3e-7 * e)
        }
        XCTAssertEqual(s, ref, accuracy: 1e-6 * ref)
        XCTAssertEqual(VectorOps.expShiftedSum(x.data, shift: 1.5, count: n), s, accuracy: 1e-9 * s)
        VectorOps.expShifted(y: x.data, x: x.data, shift: 1.5, count: n)
        assertClose(x, y, atol: 0, "in place")
    }
}

/// lora_exp_shifted (C, each family) against VectorOps' Swift SIMD expShiftedReference: the same bits.
final class ExpShiftedKernelTests: XCTestCase {
    func testEveryFamilyGivesTheSwiftBits() {
        var rng = RNG(seed: 21)
        for n in [0, 1, 7, 8, 9, 1023, 1024, 1025, 3000] {
            // Moderate values, so that every term counts in the sums (their order shows).
            var x = (0..<n).map { _ in rng.normal() * 3 }
            if n > 3 { x[0] = -.infinity; x[1] = -100; x[2] = 120; x[3] = -87.4 }
            let shift: Float = n > 5 ? x[5] : 0.5
            var want = [Float](repeating: 0, count: n)
            let wantSum = x.withUnsafeBufferPointer { xp in
                want.withUnsafeMutableBufferPointer { VectorOps.expShiftedReference(y: $0.baseAddress!, x: xp.baseAddress!, shift: shift, count: n) }
            }
            for fam in KernelFamily.available.compactMap(\.kernelID) {
                var got = [Float](repeating: .nan, count: n)
                let sum = lora_exp_shifted(fam, &got, x, shift, n)
                XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern), "family \(fam) n=\(n)")
                XCTAssertEqual(sum.bitPattern, wantSum.bitPattern, "family \(fam) n=\(n) sum")
                let only = x.withUnsafeBufferPointer { VectorOps.expShiftedSum($0.baseAddress!, shift: shift, count: n) }
                XCTAssertEqual(sum.bitPattern, only.bitPattern, "family \(fam) n=\(n): expShiftedSum's sum")
            }
        }
    }

    /// lora_add (the backend's residual add) and lora_argmax (greedy decoding's pick) give the
    /// plain loops' answers on every family: tails, in place, and for argmax ties (the first
    /// wins), both zeros, infinities and NaNs (never chosen; a NaN at 0 is the answer).
    func testAddAndArgmaxInEveryFamily() {
        var rng = RNG(seed: 22)
        for n in [1, 7, 8, 9, 15, 16, 17, 31, 4608, 49152] {
            let a = randn([n], &rng), b = randn([n], &rng)
            for fam in KernelFamily.available.compactMap(\.kernelID) {
                var out = [Float](repeating: .nan, count: n)
                lora_add(fam, &out, a.data, b.data, n)
                XCTAssertEqual(out.map(\.bitPattern), (0..<n).map { (a[$0] + b[$0]).bitPattern }, "family \(fam) n=\(n)")
                let x = a.clone()
                lora_add(fam, x.data, x.data, b.data, n)
                XCTAssertEqual(x.array.map(\.bitPattern), out.map(\.bitPattern), "family \(fam) n=\(n) in place")
            }
            var cases: [[Float]] = [a.array]
            var tie = a.array; let top = tie.max()!; tie[n - 1] = top; tie[n / 2] = top; cases.append(tie)
            var nan = a.array; nan[n / 3] = .nan; nan[n - 1] = .nan; cases.append(nan)
            var nan0 = a.array; nan0[0] = .nan; cases.append(nan0)
            var inf = a.array; inf[n - 1] = .infinity; cases.append(inf)
            cases.append([Float](repeating: -.infinity, count: n))
            var zeros = [Float](repeating: -1, count: n); zeros[n / 2] = -0.0; zeros[n - 1] = 0; cases.append(zeros)
            cases.append([Float](repeating: .nan, count: n))
            for (k, x) in cases.enumerated() {
                let want = x.withUnsafeBufferPointer { p in
                    var best = 0
                    for i in 1..<max(1, n) where p[i] > p[best] { best = i }
                    return best
                }
                for fam in KernelFamily.available.compactMap(\.kernelID) {
                    XCTAssertEqual(Int(lora_argmax(fam, x, n)), want, "family \(fam) n=\(n) case \(k)")
                }
            }
        }
    }
}
