import Foundation
import XCTest
@testable import Tensor

final class RMSNormTests: XCTestCase {
    /// A constant row c gives rstd = 1 / sqrt(c^2 + eps) and y = weight * c * rstd.
    func testConstantRow() {
        let C = 6, eps: Float = 1e-5
        let x = Tensor([2, C], [Float](repeating: 3, count: C) + [Float](repeating: -0.5, count: C))
        let w = Tensor([C], [1, 2, 0.5, -1, 0, 4])
        let y = Tensor([2, C]), rstd = Tensor([2])
        RMSNorm.forward(pool: testPool, y: y.data, rstd: rstd.data, x: x.data, weight: w.data, N: 2, C: C, eps: eps)
        for (n, c) in [(0, 3.0), (1, -0.5)] {
            let r = 1 / (c * c + Double(eps)).squareRoot()
            XCTAssertEqual(Double(rstd[n]), r, accuracy: 1e-6 * r)
            for i in 0..<C {
                XCTAssertEqual(Double(y[n * C + i]), Double(w[i]) * c * r, accuracy: 1e-6)
            }
        }
    }

    /// The fast version (Float lanes, parallel rows) against the Double reference.
    func testMatchesReference() {
        var rng = RNG(seed: 20)
        let N = 37, C = 100
        let x = randn([N, C], &rng, scale: 2), w = randn([C], &rng), dy = randn([N, C], &rng)
        let y = Tensor([N, C]), rstd = Tensor([N]), yRef = Tensor([N, C]), rstdRef = Tensor([N])
        RMSNorm.forward(pool: testPool, y: y.data, rstd: rstd.data, x: x.data, weight: w.data, N: N, C: C, eps: 1e-6)
        Reference.RMSNorm.forward(y: yRef.data, rstd: rstdRef.data, x: x.data, weight: w.data,
                                  N: N, C: C, eps: 1e-6)
        assertClose(rstd, rstdRef, atol: 0, rtol: 1e-6, "rstd")
        assertClose(y, yRef, atol: 1e-6, rtol: 1e-5, "y")
        let dx = randn([N, C], &rng), dxRef = dx.clone()
        RMSNorm.backward(pool: testPool, dx: dx.data, dy: dy.data, x: x.data, weight: w.data, rstd: rstd.data, N: N, C: C)
        Reference.RMSNorm.backward(dx: dxRef.data, dy: dy.data, x: x.data, weight: w.data,
                                   rstd: rstd.data, N: N, C: C)
        assertClose(dx, dxRef, atol: 1e-5, rtol: 1e-5, "dx")
    }

    /// Finite differences of sum(dy * y) with respect to x; backward adds to what dx held.
    func testBackwardFiniteDifference() {
        var rng = RNG(seed: 21)
        let N = 3, C = 8
        let x = randn([N, C], &rng), w = randn([C], &rng), dy = randn([N, C], &rng)
        let y = Tensor([N, C]), rstd = Tensor([N])
        RMSNorm.forward(pool: testPool, y: y.data, rstd: rstd.data, x: x.data, weight: w.data, N: N, C: C, eps: 1e-5)
        let prior = randn([N, C], &rng)
        let dx = prior.clone()
        RMSNorm.backward(pool: testPool, dx: dx.data, dy: dy.data, x: x.data, weight: w.data, rstd: rstd.data, N: N, C: C)
        let grad = Tensor([N, C])
        for i in 0..<grad.count { grad[i] = dx[i] - prior[i] }
        checkGradient("rmsnorm dx", x: x, analytic: grad) {
            RMSNorm.forward(pool: testPool, y: y.data, rstd: rstd.data, x: x.data, weight: w.data, N: N, C: C, eps: 1e-5)
            return project(dy, y)
        }
        // Accumulation: a second call adds the same gradient again.
        RMSNorm.forward(pool: testPool, y: y.data, rstd: rstd.data, x: x.data, weight: w.data, N: N, C: C, eps: 1e-5)
        RMSNorm.backward(pool: testPool, dx: dx.data, dy: dy.data, x: x.data, weight: w.data, rstd: rstd.data, N: N, C: C)
        for i in 0..<grad.count { XCTAssertEqual(dx[i], prior[i] + 2 * grad[i], accuracy: 1e-5) }
    }
}
