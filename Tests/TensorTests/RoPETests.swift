import Foundation
import XCTest
@testable import Tensor

final class RoPETests: XCTestCase {
    /// inv_freq as transformers computes it: 1 / theta ** (2i / d) in float32.
    func testInverseFrequencies() {
        let f = RoPE.inverseFrequencies(headDim: 64, theta: 10_000)
        XCTAssertEqual(f.count, 32)
        XCTAssertEqual(f[0], 1)
        for i in 0..<32 {
            let ref = 1 / Foundation.pow(10_000.0, Double(2 * i) / 64)
            XCTAssertEqual(Double(f[i]), ref, accuracy: 2e-7 * ref, "inv_freq[\(i)]")
        }
        // Table entries: pos 3, frequency 1 = 10000^(-1/32).
        let table = RoPETable(maxT: 8, headDim: 64, theta: 10_000)
        let angle = Double(Float(3) * f[1])
        XCTAssertEqual(table.cos[3 * 32 + 1], Float(Foundation.cos(angle)))
        XCTAssertEqual(table.sin[3 * 32 + 1], Float(Foundation.sin(angle)))
    }

    /// Position 0 is the identity; headDim 2 at position p rotates (1, 0) to (cos p, sin p).
    func testHandValues() {
        var rng = RNG(seed: 30)
        let table = RoPETable(maxT: 4, headDim: 8, theta: 10_000)
        let x = randn([1, 3, 8], &rng), y = x.clone()
        var pos: [Int32] = [0]
        RoPE.forward(pool: testPool, x: y.data, positions: &pos, rows: 1, nHeads: 3, headDim: 8, table: table)
        XCTAssertEqual(y.array, x.array)

        let t2 = RoPETable(maxT: 4, headDim: 2, theta: 10_000)
        let v = Tensor([1, 1, 2], [1, 0])
        pos = [3]
        RoPE.forward(pool: testPool, x: v.data, positions: &pos, rows: 1, nHeads: 1, headDim: 2, table: t2)
        XCTAssertEqual(v[0], Float(Foundation.cos(3.0)), accuracy: 1e-7)
        XCTAssertEqual(v[1], Float(Foundation.sin(3.0)), accuracy: 1e-7)
    }

    /// Against HF's formula written out (cat(freqs, freqs), rotate_half), several heads and
    /// positions; also checks that the rotation keeps each head's norm.
    func testMatchesRotateHalfReference() {
        var rng = RNG(seed: 31)
        let rows = 5, nH = 3, hd = 16
        let table = RoPETable(maxT: 600, headDim: hd, theta: 500_000)
        var pos: [Int32] = [0, 1, 7, 300, 599]
        let x = randn([rows, nH, hd], &rng)
        let fast = x.clone(), ref = x.clone()
        RoPE.forward(pool: testPool, x: fast.data, positions: &pos, rows: rows, nHeads: nH, headDim: hd, table: table)
        Reference.RoPE.forward(x: ref.data, positions: &pos, rows: rows, nHeads: nH, headDim: hd,
                               theta: 500_000)
        assertClose(fast, ref, atol: 1e-6, rtol: 1e-6, "rope")
        for h in 0..<rows * nH {
            var a = 0.0, b = 0.0
            for i in 0..<hd { a += Double(x[h * hd + i] * x[h * hd + i]); b += Double(fast[h * hd + i] * fast[h * hd + i]) }
            XCTAssertEqual(a, b, accuracy: 1e-5 * a)
        }
    }

    /// Finite differences of sum(dy * rope(x)); backward undoes forward (rotation by -angle).
    func testBackwardFiniteDifference() {
        var rng = RNG(seed: 32)
        let rows = 3, nH = 2, hd = 8
        let table = RoPETable(maxT: 16, headDim: hd, theta: 10_000)
        var pos: [Int32] = [5, 0, 11]
        let x = randn([rows, nH, hd], &rng), dy = randn([rows, nH, hd], &rng)
        let dx = dy.clone()
        RoPE.backward(pool: testPool, dx: dx.data, positions: &pos, rows: rows, nHeads: nH, headDim: hd, table: table)
        let y = Tensor([rows, nH, hd])
        checkGradient("rope dx", x: x, analytic: dx, atol: 1e-3) {
            y.copy(from: x)
            RoPE.forward(pool: testPool, x: y.data, positions: &pos, rows: rows, nHeads: nH, headDim: hd, table: table)
            return project(dy, y)
        }
        let z = x.clone()
        RoPE.forward(pool: testPool, x: z.data, positions: &pos, rows: rows, nHeads: nH, headDim: hd, table: table)
        RoPE.backward(pool: testPool, dx: z.data, positions: &pos, rows: rows, nHeads: nH, headDim: hd, table: table)
        assertClose(z, x, atol: 1e-6, "backward(forward(x))")
    }
}
