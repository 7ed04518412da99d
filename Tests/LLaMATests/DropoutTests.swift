import XCTest
@testable import LLaMA
import Tensor

/// LoRA's dropout mask (`LoRALayer.drop`): the drop rate is p, the mask depends on the seed and
/// not on the thread count or the kernel family, and z = x * keep / (1 - p).
final class DropoutTests: XCTestCase {
    func mask(p: Float, n: Int, seed: UInt64, threads: Int, family: KernelFamily = .best) -> ([UInt8], [Float], RNG) {
        let layer = LoRALayer(r: 4, inFeatures: n / 8, outFeatures: 16, scale: 1, dropout: p)
        let x = (0..<n).map { Float($0 % 97) - 48 }
        var keep = [UInt8](repeating: 9, count: n), z = [Float](repeating: .nan, count: n)
        var rng = RNG(seed: seed)
        layer.drop(x: x, M: 8, keep: &keep, z: &z, rng: &rng, backend: CPUBackend(family: family, pool: WorkerPool(threads: threads)))
        return (keep, z, rng)
    }

    /// Every family's mask is the documented hash (SplitMix64's mixer of seed + (i / 2) * golden,
    /// the low 32 bits for even i, the high for odd), computed here in plain Swift, with lengths
    /// that leave partial vectors and an unpaired last element.
    func testFamiliesGiveTheDocumentedHash() {
        for n in [1_000_001, 103, 24, 7] {
            let p: Float = 0.3
            var rng = RNG(seed: 11)
            let seed = rng.next()
            let threshold = UInt64(Double(p) * 4_294_967_296), s = 1 / (1 - p)
            var want = [UInt8](repeating: 0, count: n)
            for i in 0..<n {
                var h = seed &+ UInt64(i / 2) &* 0x9E37_79B9_7F4A_7C15
                h = (h ^ (h >> 30)) &* 0xBF58_476D_1CE4_E5B9
                h = (h ^ (h >> 27)) &* 0x94D0_49BB_1331_11EB
                h ^= h >> 31
                want[i] = (i % 2 == 0 ? h & 0xFFFF_FFFF : h >> 32) < threshold ? 0 : 1
            }
            for fam in KernelFamily.available {
                let x = (0..<n).map { Float($0 % 97) - 48 }
                var k = [UInt8](repeating: 9, count: n), z = [Float](repeating: .nan, count: n)
                CPUBackend(family: fam, pool: WorkerPool(threads: 2))
                    .dropout(seed: seed, threshold: threshold, x: x, scale: s, keep: &k, z: &z, count: n)
                XCTAssertEqual(k, want, "\(fam), n = \(n)")
                for i in 0..<n {
                    let x = Float(i % 97) - 48
                    XCTAssertEqual(z[i].bitPattern, (want[i] != 0 ? x * s : 0).bitPattern, "\(fam), z[\(i)]")
                    if z[i].bitPattern != (want[i] != 0 ? x * s : 0).bitPattern { break }
                }
            }
        }
    }

    func testRateSeedsAndThreads() {
        let n = 8 * 125_001  // odd per row count, so the last hash's second half is unused
        for p: Float in [0.05, 0.1, 0.5] {
            let (k1, z1, r1) = mask(p: p, n: n, seed: 7, threads: 1)
            let (k2, z2, r2) = mask(p: p, n: n, seed: 7, threads: 2)
            XCTAssertEqual(k1, k2, "p=\(p): the mask must not depend on the thread count")
            XCTAssertEqual(z1.map(\.bitPattern), z2.map(\.bitPattern))
            XCTAssertEqual(r1, r2, "one draw from the stream per call")
            XCTAssertNotEqual(mask(p: p, n: n, seed: 8, threads: 2).0, k1, "another seed, another mask")
            let dropped = k1.filter { $0 == 0 }.count
            let expected = Double(p) * Double(n), sigma = (expected * (1 - Double(p))).squareRoot()
            XCTAssertLessThan(abs(Double(dropped) - expected), 5 * sigma, "p=\(p): dropped \(dropped) of \(n)")
            XCTAssert(k1.allSatisfy { $0 <= 1 })
            for i in stride(from: 0, to: n, by: 997) {
                let x = Float(i % 97) - 48
                XCTAssertEqual(z1[i], k1[i] != 0 ? x * (1 / (1 - p)) : 0)
            }
            // Neighbours come from one hash's two halves: they must not be correlated.
            var both = 0
            for i in stride(from: 0, to: n - 1, by: 2) where k1[i] == 0 && k1[i + 1] == 0 { both += 1 }
            let pairs = Double(n / 2), e2 = pairs * Double(p * p)
            XCTAssertLessThan(abs(Double(both) - e2), 5 * (e2 * (1 - Double(p * p))).squareRoot() + 5, "p=\(p): pairs dropped together")
        }
    }
}
