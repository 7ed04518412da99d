import Foundation
import XCTest
@testable import Tensor

final class ZZScratchBench2: XCTestCase {
    func testExpSpeed() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["LORA_BENCH"] == "1")
        var rng = RNG(seed: 1)
        let n = 1 << 20
        let x = randn([n], &rng), y = Tensor([n])
        func time(_ name: String, _ body: () -> Void) {
            body()
            var best = Double.infinity
            for _ in 0..<10 {
                let t0 = DispatchTime.now().uptimeNanoseconds
                body()
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            }
            print(name, String(format: "%.3f ms  (%.2f ns/elt)", best, best * 1e6 / Double(n)))
        }
        time("expShifted") { _ = VectorOps.expShifted(y: y.data, x: x.data, shift: 0.5, count: n) }
        time("expShiftedSum") { _ = VectorOps.expShiftedSum(x.data, shift: 0.5, count: n) }
        time("libm expf") { for i in 0..<n { y[i] = Foundation.exp(x[i]) } }
        time("max") { _ = VectorOps.max(x.data, count: n) }
        time("dot") { _ = VectorOps.dot(x.data, y.data, count: n) }
        time("scale loop") { for i in 0..<n { y.data[i] *= 1.01 } }
    }
}
