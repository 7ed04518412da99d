import CKernels
import Foundation
import XCTest
@testable import Tensor

/// Decoding's packed LoRA products (`lora_factors_down` / `_up`, `PackedLoRAFactors`): every
/// family against the arithmetic CKernels.h defines (written here with Swift's fused
/// multiply-add), bit for bit, at ragged shapes, any M and any lane or column split; against a
/// double-precision product within a named tolerance; and through the backend's grouped and
/// fused paths, which must give the serial reference's bits.
final class PackedLoRAFactorsTests: XCTestCase {
    /// |float - double| <= rtol * sum of |terms| (two chains of up to 577 FMAs each).
    static let rtol = 1e-5

    /// The defined arithmetic: u[m][j] = s0 + s1 over even / odd k; y[m][n] = FMA chain over j from y.
    func definedDown(x: [Float], A: [Float], M: Int, K: Int, r: Int) -> [Float] {
        var u = [Float](repeating: 0, count: M * r)
        for m in 0..<M {
            for j in 0..<r {
                var s0: Float = 0, s1: Float = 0
                var k = 0
                while k + 1 < K {
                    s0 = s0.addingProduct(x[m * K + k], A[j * K + k])
                    s1 = s1.addingProduct(x[m * K + k + 1], A[j * K + k + 1])
                    k += 2
                }
                if k < K { s0 = s0.addingProduct(x[m * K + k], A[j * K + k]) }
                u[m * r + j] = s0 + s1
            }
        }
        return u
    }

    func definedUp(u: [Float], B: [Float], y0: [Float], M: Int, N: Int, r: Int) -> [Float] {
        var y = y0
        for m in 0..<M {
            for n in 0..<N {
                var acc = y[m * N + n]
                for j in 0..<r { acc = acc.addingProduct(u[m * r + j], B[n * r + j]) }
                y[m * N + n] = acc
            }
        }
        return y
    }

    /// Bit-for-bit equality, reported as a count and the first difference.
    func assertSameBits(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let diff = (0..<min(a.count, b.count)).filter { a[$0].bitPattern != b[$0].bitPattern }
        XCTAssertTrue(a.count == b.count && diff.isEmpty, "\(what): \(diff.count) of \(a.count) differ"
                      + (diff.first.map { ", first [\($0)] \(a[$0]) vs \(b[$0])" } ?? ""), file: file, line: line)
    }

    func packed(A: [Float], B: [Float], r: Int, K: Int, N: Int, half: Bool = false) -> PackedLoRAFactors {
        let p = PackedLoRAFactors(rank: r, inFeatures: K, outFeatures: N, half: half, arena: WeightArena(chunkBytes: 2 << 20))
        let fits = A.withUnsafeBufferPointer { a in B.withUnsafeBufferPointer { b in p.pack(A: a.baseAddress!, B: b.baseAddress!) } }
        XCTAssertTrue(fits)
        return p
    }

    /// Half copies: the same arithmetic on the values rounded to half (Swift's Float16, round
    /// to nearest even), so the defined loops on the rounded A and B give their bits.
    func testEveryFamilyGivesTheDefinedBitsAtRaggedShapes() {
        checkFamilies(half: false)
    }

    func testHalfCopiesGiveTheDefinedBitsOfTheRoundedFactors() {
        checkFamilies(half: true)
    }

    func checkFamilies(half: Bool) {
        var rng = RNG(seed: 5)
        var checked = 0
        let rounded = { (v: [Float]) -> [Float] in half ? v.map { Float(Float16($0)) } : v }
        for (M, K, r, N) in [(1, 576, 16, 576), (4, 64, 8, 33), (5, 7, 5, 15), (9, 577, 24, 200), (3, 1, 1, 1),
                             (2, 130, 40, 16), (8, 96, 64, 48), (1, 33, 9, 17), (8, 64, 16, 1536), (6, 32, 16, 80)] {
            let x = (0..<(M * K)).map { _ in rng.normal() }
            // Half: some factors below half's normal range (2^-14), where it keeps fewer bits.
            let A = (0..<(r * K)).map { i in (half && i % 7 == 0 ? 1e-5 : 0.1) * rng.normal() }
            let B = (0..<(N * r)).map { i in (half && i % 5 == 0 ? 3e-6 : 0.1) * rng.normal() }
            let y0 = (0..<(M * N)).map { _ in rng.normal() }
            let p = packed(A: A, B: B, r: r, K: K, N: N, half: half)
            XCTAssertEqual(p.half, half)
            let uDef = definedDown(x: x, A: rounded(A), M: M, K: K, r: r)
            let yDef = definedUp(u: uDef, B: rounded(B), y0: y0, M: M, N: N, r: r)
            let h: Int32 = half ? 1 : 0
            // Double reference of the whole term.
            for m in 0..<M {
                for j in 0..<r {
                    var s = 0.0, mag = 0.0
                    for k in 0..<K { let t = Double(x[m * K + k]) * Double(A[j * K + k]); s += t; mag += abs(t) }
                    // Half: each factor within 2^-11 of itself (or 2^-25 absolute below 2^-14).
                    let tol = half ? 4.9e-4 * mag + 3e-8 * Double(K) * 4 : Self.rtol * mag + 1e-30
                    XCTAssertLessThanOrEqual(abs(Double(uDef[m * r + j]) - s), tol, "u[\(m)][\(j)] M \(M) K \(K) r \(r) half \(half)")
                }
            }
            for family in KernelFamily.allCases where family.isAvailable && family.kernelID != nil {
                let fam = family.kernelID!
                let what = "\(family)\(half ? " half" : "") M \(M) K \(K) r \(r) N \(N)"
                // Down: whole, in lane pieces of 8, and row by row.
                var u = [Float](repeating: .nan, count: M * r)
                lora_factors_down(fam, M, K, r, 0, r, x, K, p.at, h, &u, r)
                assertSameBits(u, uDef, "\(what): u")
                var pieces = [Float](repeating: .nan, count: M * r)
                for j0 in stride(from: 0, to: r, by: 8) {
                    pieces.withUnsafeMutableBufferPointer { pu in
                        lora_factors_down(fam, M, K, r, j0, min(r, j0 + 8), x, K, p.at, h, pu.baseAddress!, r)
                    }
                }
                assertSameBits(pieces, uDef, "\(what): u in lane pieces")
                for m in 0..<M {
                    var row = [Float](repeating: .nan, count: r)
                    Array(x[(m * K)..<((m + 1) * K)]).withUnsafeBufferPointer { xm in
                        lora_factors_down(fam, 1, K, r, 0, r, xm.baseAddress!, K, p.at, h, &row, r)
                    }
                    assertSameBits(row, Array(uDef[(m * r)..<((m + 1) * r)]), "\(what): row \(m) alone")
                }
                // Up: whole, and split at a 16-aligned column.
                var y = y0
                lora_factors_up(fam, M, 0, N, r, uDef, r, p.bp, h, &y, N)
                assertSameBits(y, yDef, "\(what): y")
                var split = y0
                let cut = N / 2 / 16 * 16   // a 16-aligned split (none under 32 outputs)
                split.withUnsafeMutableBufferPointer { ys in
                    lora_factors_up(fam, M, cut, N, r, uDef, r, p.bp, h, ys.baseAddress!, N)
                    lora_factors_up(fam, M, 0, cut, r, uDef, r, p.bp, h, ys.baseAddress!, N)
                }
                assertSameBits(split, yDef, "\(what): y in two column ranges")
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 8, "at least the portable family on every shape")
    }

    /// The packing's rounding is Float16's (nearest even) for every finite float that fits,
    /// subnormal halves, the ties and the edge of the range included; values that do not fit
    /// make `pack` report it (the layer then keeps f32 copies).
    func testHalfRoundingMatchesFloat16AndOverflowIsReported() {
        var edges: [Float] = [0, -0.0, 1, -1, 65504, 65519.996, -65519.996, 0x1p-14, 0x1p-24, 0x1p-25, 0x1.8p-25,
                              0x1p-26, 3e-8, 6.1e-5, 1 + 0x1p-11, 1 + 0x1.8p-11, 1 + 0x1p-12, 2049, 2051, .leastNonzeroMagnitude]
        var rng = RNG(seed: 9)
        for _ in 0..<20_000 {
            // Magnitudes across half's whole range, subnormals included.
            let e = Float(rng.uniform()) * 42 - 26
            edges.append(Float(rng.normal()) * Float(pow(2.0, Double(e))))
        }
        for bits in stride(from: UInt32(0x3300_0000), to: 0x4780_0000, by: 4093) { edges.append(Float(bitPattern: bits)) }
        var bad = 0
        for v in edges where lora_float_to_half(v) != Float16(v).bitPattern {
            bad += 1
            if bad < 5 { XCTFail("\(v): \(lora_float_to_half(v)) vs Float16 \(Float16(v).bitPattern)") }
        }
        XCTAssertEqual(bad, 0, "of \(edges.count)")
        for huge: Float in [65520, -1e6, .infinity, .nan] {
            let K = 20, r = 3, N = 17
            var A = [Float](repeating: 0.5, count: r * K), B = [Float](repeating: 0.25, count: N * r)
            if huge.isNaN { B[N * r - 1] = huge } else { A[r * K - 1] = huge }
            let p = PackedLoRAFactors(rank: r, inFeatures: K, outFeatures: N, half: true, arena: WeightArena(chunkBytes: 2 << 20))
            XCTAssertFalse(p.pack(A: A, B: B), "\(huge) does not fit a half")
            B = [Float](repeating: 65504, count: N * r); A = [Float](repeating: -65504, count: r * K)
            XCTAssertTrue(p.pack(A: A, B: B), "65504 fits")
        }
    }

    /// Packed terms through the backend: `loraGrouped` on the spinning workers and
    /// `decodeProjection` give `loraGroupedSerial`'s bits (the portable loops), and stay within
    /// the grouped-products tolerance of the unpacked factors' `gemm` path.
    func testBackendPathsGiveTheSerialBits() {
        XCTAssertGreaterThan(testPool.threads, 1, "the grouped path needs the spinning workers")
        var rng = RNG(seed: 17)
        let K = 384, N = 400, rows = 7
        let factors = (0..<3).map { i -> (A: Tensor, B: Tensor, p: PackedLoRAFactors) in
            let r = [16, 8, 12][i]
            let a = Tensor([r, K]), b = Tensor([N, r])
            for j in 0..<a.count { a.data[j] = 0.1 * rng.normal() }
            for j in 0..<b.count { b.data[j] = 0.1 * rng.normal() }
            return (a, b, packed(A: a.array, B: b.array, r: r, K: K, N: N))
        }
        let x = (0..<(rows * K)).map { _ in rng.normal() }
        let y0 = (0..<(rows * N)).map { _ in rng.normal() }
        var alphas: [Float] = (0..<rows).map { Float($0 % 3) * 0.5 - 0.4 }
        let wf = Tensor([N, K])
        for i in 0..<wf.count { wf.data[i] = 0.05 * rng.normal() }
        alphas.withUnsafeMutableBufferPointer { ab in
            func terms(packed: Bool) -> [LoRATerm] {
                let f = factors
                return [LoRATerm(r0: 0, r1: rows, rank: 16, alpha: 2, A: f[0].A.data, B: f[0].B.data, packed: packed ? f[0].p : nil),
                        LoRATerm(r0: 2, r1: rows, rank: 8, alpha: 1, A: f[1].A.data, B: f[1].B.data, alphas: UnsafePointer(ab.baseAddress! + 2),
                                 packed: packed ? f[1].p : nil),
                        LoRATerm(r0: 0, r1: 1, rank: 12, alpha: -0.7, A: f[2].A.data, B: f[2].B.data, packed: packed ? f[2].p : nil)]
            }
            let reference = CPUBackend(family: .portable, pool: testPool)
            var serial = y0
            var u = [Float](repeating: .nan, count: LoRATerm.scratchCount(terms(packed: true)))
            reference.loraGroupedSerial(y: &serial, x: x, inFeatures: K, outFeatures: N, terms: terms(packed: true), u: &u)
            var unpacked = y0
            reference.loraGroupedSerial(y: &unpacked, x: x, inFeatures: K, outFeatures: N, terms: terms(packed: false), u: &u)
            for i in 0..<(rows * N) {
                XCTAssertEqual(serial[i], unpacked[i], accuracy: 1e-4 * max(1, abs(unpacked[i])), "packed vs gemm y[\(i)]")
            }
            for family in KernelFamily.available {
                let be = CPUBackend(family: family, pool: testPool)
                var grouped = y0
                u = [Float](repeating: .nan, count: u.count)
                be.loraGrouped(y: &grouped, x: x, inFeatures: K, outFeatures: N, terms: terms(packed: true), u: &u)
                assertSameBits(grouped, serial, "\(family): loraGrouped with packed terms")
                for format in [WeightFormats.q8_0, WeightFormats.q4_1] {
                    let w = GroupedBlockFormat.grouped(Weight.make(format, from: wf, pool: testPool))
                    var two = [Float](repeating: .nan, count: rows * N), one = two
                    be.matmulDecoding(y: &two, x: x, w: w, M: rows, scratch: MatmulScratch())
                    u = [Float](repeating: .nan, count: u.count)
                    be.loraGrouped(y: &two, x: x, inFeatures: K, outFeatures: N, terms: terms(packed: true), u: &u)
                    u = [Float](repeating: .nan, count: u.count)
                    be.decodeProjection(y: &one, x: x, w: w, M: rows, scratch: MatmulScratch(), terms: terms(packed: true), u: &u)
                    assertSameBits(one, two, "\(family) \(format.name): decodeProjection with packed terms")
                }
            }
        }
    }
}
