import Foundation
import XCTest
@testable import Tensor

final class CrossEntropyTests: XCTestCase {
    /// Uniform logits give loss log V per row and gradient (1/V - onehot) * scale.
    func testUniformLogits() {
        let N = 3, V = 50
        let logits = Tensor([N, V], [Float](repeating: 2.5, count: N * V))
        var targets: [Int32] = [0, 17, 49]
        let d = Tensor([N, V])
        let (loss, count) = CrossEntropy.forwardBackward(pool: testPool, dlogits: d.data, logits: logits.data,
                                                         targets: &targets, N: N, V: V, gradScale: 0.5)
        XCTAssertEqual(count, 3)
        XCTAssertEqual(loss, 3 * Foundation.log(50.0), accuracy: 1e-5)
        for n in 0..<N {
            for j in 0..<V {
                let want: Float = (1.0 / 50 - (j == Int(targets[n]) ? 1 : 0)) * 0.5
                XCTAssertEqual(d[n * V + j], want, accuracy: 1e-7)
            }
        }
    }

    /// Rows with target -100 add no loss, are not counted and get an all-zero gradient.
    func testIgnoreIndex() {
        var rng = RNG(seed: 50)
        let N = 4, V = 33
        let logits = randn([N, V], &rng, scale: 3)
        var targets: [Int32] = [-100, 5, -100, 32]
        let d = Tensor([N, V], [Float](repeating: 9, count: N * V))
        let (loss, count) = CrossEntropy.forwardBackward(pool: testPool, dlogits: d.data, logits: logits.data,
                                                         targets: &targets, N: N, V: V, gradScale: 1)
        XCTAssertEqual(count, 2)
        for j in 0..<V { XCTAssertEqual(d[j], 0); XCTAssertEqual(d[2 * V + j], 0) }
        var only: [Int32] = [5, 32]
        let rows = Tensor([2, V])
        (rows.data).update(from: logits.data + V, count: V)
        (rows.data + V).update(from: logits.data + 3 * V, count: V)
        let (loss2, count2) = CrossEntropy.forwardBackward(pool: testPool, dlogits: nil, logits: rows.data,
                                                           targets: &only, N: 2, V: V, gradScale: 1)
        XCTAssertEqual(count2, 2)
        XCTAssertEqual(loss, loss2, accuracy: 1e-12)
        var sumGrad: Float = 0
        for j in 0..<V { sumGrad += d[V + j] }
        XCTAssertEqual(sumGrad, 0, accuracy: 1e-6, "softmax - onehot sums to 0")
    }

    /// Against the all-Double reference; loss-only and in-place (dlogits == logits) agree.
    func testMatchesReferenceAndAliasing() {
        var rng = RNG(seed: 51)
        let N = 9, V = 1037
        let logits = randn([N, V], &rng, scale: 5)
        var targets: [Int32] = (0..<N).map { Int32(($0 * 97) % V) }
        targets[4] = -100
        let d = Tensor([N, V]), dRef = Tensor([N, V])
        let fast = CrossEntropy.forwardBackward(pool: testPool, dlogits: d.data, logits: logits.data, targets: &targets,
                                                N: N, V: V, gradScale: 0.125)
        let ref = Reference.CrossEntropy.forwardBackward(dlogits: dRef.data, logits: logits.data,
                                                         targets: &targets, N: N, V: V, gradScale: 0.125)
        XCTAssertEqual(fast.count, ref.count)
        XCTAssertEqual(fast.lossSum, ref.lossSum, accuracy: 1e-5 * abs(ref.lossSum))
        assertClose(d, dRef, atol: 1e-8, rtol: 1e-5, "dlogits")
        let lossOnly = CrossEntropy.forwardBackward(pool: testPool, dlogits: nil, logits: logits.data, targets: &targets,
                                                    N: N, V: V, gradScale: 0.125)
        XCTAssertEqual(lossOnly.lossSum, fast.lossSum)
        let inPlace = logits.clone()
        let aliased = CrossEntropy.forwardBackward(pool: testPool, dlogits: inPlace.data, logits: inPlace.data,
                                                   targets: &targets, N: N, V: V, gradScale: 0.125)
        XCTAssertEqual(aliased.lossSum, fast.lossSum)
        assertClose(inPlace, d, atol: 0, "in place")
    }

    /// Huge logits stay finite: loss of (1000, 0) with target 1 is 1000.
    func testLargeLogits() {
        let logits = Tensor([1, 2], [1000, 0])
        var t: [Int32] = [1]
        let d = Tensor([1, 2])
        let (loss, _) = CrossEntropy.forwardBackward(pool: testPool, dlogits: d.data, logits: logits.data, targets: &t,
                                                     N: 1, V: 2, gradScale: 1)
        XCTAssertEqual(loss, 1000, accuracy: 1e-3)
        XCTAssertEqual(d.array, [1, -1])
    }

    /// Finite differences of gradScale * lossSum with respect to the logits.
    func testBackwardFiniteDifference() {
        var rng = RNG(seed: 52)
        let N = 4, V = 7
        let logits = randn([N, V], &rng, scale: 2)
        var targets: [Int32] = [3, -100, 0, 6]
        let d = Tensor([N, V])
        let scale: Float = 0.7
        CrossEntropy.forwardBackward(pool: testPool, dlogits: d.data, logits: logits.data, targets: &targets,
                                     N: N, V: V, gradScale: scale)
        checkGradient("cross-entropy dlogits", x: logits, analytic: d, atol: 1e-3) {
            let r = CrossEntropy.forwardBackward(pool: testPool, dlogits: nil, logits: logits.data, targets: &targets,
                                                 N: N, V: V, gradScale: scale)
            return r.lossSum * Double(scale)
        }
    }
}
