import XCTest
@testable import LLaMA
import Tensor

/// `LogitsProcessing.argmax` (8 lanes, two passes) against the plain loop, on the cases where
/// a vector version could differ: ties (the lowest index wins), the winner in the last
/// partial vector, NaNs (never win; one at index 0 stays the answer), infinities, signed zeros,
/// and lengths below, at and past a vector.
final class ArgmaxTests: XCTestCase {
    func check(_ xs: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        xs.withUnsafeBufferPointer { p in
            let got = LogitsProcessing.argmax(p.baseAddress!, V: xs.count)
            let want = LogitsProcessing.argmaxReference(p.baseAddress!, V: xs.count)
            XCTAssertEqual(got, want, "\(what) (V = \(xs.count))", file: file, line: line)
        }
    }

    func testEdgeCases() {
        check([3], "one score")
        check([1, 5, 5, 2, 5, 0, 0, 0, 0], "ties: the first")
        check([Float](repeating: 0, count: 17), "all equal")
        check((0..<20).map { $0 == 19 ? 9 : Float($0 % 3) }, "winner in the tail")
        check((0..<24).map { $0 == 3 || $0 == 21 ? 7 : 1 }, "ties across vectors")
        check([.nan, 1, 2, 3, 4, 5, 6, 7, 8, 9], "NaN at 0 stays")
        check([1, .nan, 2, .nan, 9, .nan, 3, 4, 5, .nan, 0], "NaNs elsewhere never win")
        check([-.infinity, -.infinity, -.infinity, -.infinity, -.infinity, -.infinity, -.infinity, -.infinity, -.infinity], "all -inf")
        check([1, 2, .infinity, 3, 4, 5, 6, .infinity, 8], "+inf ties")
        check([-0.0, 0.0, -0.0, 0.0, -1, -2, -3, -4, -5], "signed zeros tie")
        check([0.0, -0.0, -1, -2, -3, -4, -5, -6, -0.0], "signed zeros tie, + first")
        check([-5, -4, -3, -2, -1, -6, -7, -8, -9, -10], "all negative")
    }

    func testRandomScoresWithTies() {
        var rng = RNG(seed: 7)
        for V in [7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 49152] {
            for trial in 0..<20 {
                // Few distinct values, so the largest often repeats.
                var xs = (0..<V).map { _ in Float(rng.int(below: trial % 2 == 0 ? 5 : 1000)) }
                if trial % 5 == 1 { xs[rng.int(below: V)] = .nan }
                if trial % 5 == 2 { xs[V - 1] = 2000 }
                check(xs, "random, trial \(trial)")
            }
        }
    }
}
