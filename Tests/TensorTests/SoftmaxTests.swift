import Foundation
import XCTest
@testable import Tensor

final class SoftmaxTests: XCTestCase {
    /// Softmax and log-softmax against the Double reference, including in place.
    func testMatchesReference() {
        var rng = RNG(seed: 10)
        for n in [1, 5, 64, 1001] {
            let x = randn([n], &rng, scale: 4)
            let y = Tensor([n]), ref = Tensor([n])
            Softmax.forward(y: y.data, x: x.data, count: n)
            Reference.Softmax.forward(y: ref.data, x: x.data, count: n)
            assertClose(y, ref, atol: 1e-7, rtol: 1e-5, "softmax n=\(n)")
            Softmax.logForward(y: y.data, x: x.data, count: n)
            Reference.Softmax.logForward(y: ref.data, x: x.data, count: n)
            assertClose(y, ref, atol: 1e-5, rtol: 1e-6, "logSoftmax n=\(n)")
            let z = x.clone()
            Softmax.forward(y: z.data, x: z.data, count: n)
            Reference.Softmax.forward(y: ref.data, x: x.data, count: n)
            assertClose(z, ref, atol: 1e-7, rtol: 1e-5, "softmax in place n=\(n)")
        }
    }

    /// Hand values: softmax of (0, ln 3) is (1/4, 3/4); huge logits do not overflow.
    func testHandValues() {
        let x = Tensor([2], [0, Float(Foundation.log(3.0))])
        let y = Tensor([2])
        Softmax.forward(y: y.data, x: x.data, count: 2)
        XCTAssertEqual(y[0], 0.25, accuracy: 1e-7)
        XCTAssertEqual(y[1], 0.75, accuracy: 1e-7)
        let big = Tensor([3], [1000, 1000, -1000])
        let y3 = Tensor([3])   // was `y` ([2]): a 3-element softmax wrote past it (found by ASan)
        Softmax.forward(y: y3.data, x: big.data, count: 3)
        XCTAssertEqual(y3.array, [0.5, 0.5, 0])
        Softmax.forward(y: big.data, x: big.data, count: 3)
        XCTAssertEqual(big.array, [0.5, 0.5, 0])
        let l = Tensor([3], [1000, 1000, 1000])
        Softmax.logForward(y: l.data, x: l.data, count: 3)
        for v in l.array { XCTAssertEqual(v, -Float(Foundation.log(3.0)), accuracy: 1e-4) }
    }

    /// Finite differences of sum(dy * softmax(x)) and sum(dy * logSoftmax(x)).
    func testBackwardFiniteDifference() {
        var rng = RNG(seed: 11)
        let n = 13
        let x = randn([n], &rng, scale: 2), dy = randn([n], &rng)
        let y = Tensor([n]), dx = Tensor([n])
        Softmax.forward(y: y.data, x: x.data, count: n)
        Softmax.backward(dx: dx.data, dy: dy.data, y: y.data, count: n)
        checkGradient("softmax dx", x: x, analytic: dx, atol: 1e-3) {
            Softmax.forward(y: y.data, x: x.data, count: n)
            return project(dy, y)
        }
        Softmax.logForward(y: y.data, x: x.data, count: n)
        Softmax.logBackward(dx: dx.data, dy: dy.data, y: y.data, count: n)
        checkGradient("logSoftmax dx", x: x, analytic: dx, atol: 1e-3) {
            Softmax.logForward(y: y.data, x: x.data, count: n)
            return project(dy, y)
        }
    }
}
