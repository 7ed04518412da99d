import XCTest
@testable import Tensor

final class RNGTests: XCTestCase {
    func testSameSeedSameStream() {
        var a = RNG(seed: 42), b = RNG(seed: 42), c = RNG(seed: 43)
        let xa = (0..<8).map { _ in a.next() }
        XCTAssertEqual(xa, (0..<8).map { _ in b.next() })
        XCTAssertNotEqual(xa, (0..<8).map { _ in c.next() })
    }
    func testUniformRange() {
        var r = RNG(seed: 1)
        var mean = 0.0
        for _ in 0..<10000 { let u = r.uniform(); XCTAssert(u >= 0 && u < 1); mean += Double(u) }
        XCTAssertEqual(mean / 10000, 0.5, accuracy: 0.02)
    }
}
