import Foundation
import XCTest
@testable import Tensor

/// The flash-style attention (no [T, T] kept) against the kept-probabilities `Attention` (the
/// same bits on the OpenBLAS products, by construction: see FlashAttention.swift) and the scalar
/// reference; with each C family's products (attn_train.c), against the reference.
final class FlashAttentionTests: XCTestCase {
    struct Shape { let B, T, nH, nKV, hd: Int }

    /// Forward and backward of all three forms on the same inputs.
    private func compare(_ s: Shape, mask: [Float]?, seed: UInt64, threads: Int = 2,
                         file: StaticString = #filePath, line: UInt = #line) {
        let pool = WorkerPool(threads: threads)
        var rng = RNG(seed: seed)
        let q = randn([s.B, s.T, s.nH, s.hd], &rng), k = randn([s.B, s.T, s.nKV, s.hd], &rng)
        let v = randn([s.B, s.T, s.nKV, s.hd], &rng), dout = randn([s.B, s.T, s.nH, s.hd], &rng)
        let m = mask.map { Tensor([s.B, s.T], $0) }
        // Flash; gradient buffers start as garbage (they must be overwritten).
        let out = randn(q.shape, &rng), stats = Tensor([FlashAttention.statsCount(B: s.B, T: s.T, nH: s.nH)])
        FlashAttention.forward(pool: pool, out: out.data, stats: stats.data, q: q.data, k: k.data, v: v.data,
                               keyMask: m?.data, B: s.B, T: s.T, nH: s.nH, nKV: s.nKV, hd: s.hd)
        let dq = randn(q.shape, &rng), dk = randn(k.shape, &rng), dv = randn(v.shape, &rng)
        FlashAttention.backward(pool: pool, dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, stats: stats.data,
                                q: q.data, k: k.data, v: v.data, keyMask: m?.data, B: s.B, T: s.T, nH: s.nH, nKV: s.nKV, hd: s.hd)
        // Kept probabilities.
        let outK = Tensor(q.shape), probs = Tensor([s.B, s.nH, s.T, s.T])
        Attention.forward(pool: pool, out: outK.data, probs: probs.data, q: q.data, k: k.data, v: v.data,
                          keyMask: m?.data, B: s.B, T: s.T, nH: s.nH, nKV: s.nKV, hd: s.hd)
        let dqK = Tensor(q.shape), dkK = Tensor(k.shape), dvK = Tensor(v.shape)
        Attention.backward(pool: pool, dq: dqK.data, dk: dkK.data, dv: dvK.data, dout: dout.data, probs: probs.data,
                           q: q.data, k: k.data, v: v.data, keyMask: m?.data, B: s.B, T: s.T, nH: s.nH, nKV: s.nKV, hd: s.hd)
        for (a, b, what) in [(out, outK, "out"), (dq, dqK, "dq"), (dk, dkK, "dk"), (dv, dvK, "dv")] {
            XCTAssertEqual(a.array, b.array, "flash \(what) has the kept-probabilities path's bits", file: file, line: line)
        }
        // Scalar reference (Double accumulation), the tolerances of AttentionTests.
        let outR = Tensor(q.shape), probsR = Tensor([s.B, s.nH, s.T, s.T])
        Reference.Attention.forward(out: outR.data, probs: probsR.data, q: q.data, k: k.data, v: v.data, keyMask: m?.data,
                                    B: s.B, T: s.T, nH: s.nH, nKV: s.nKV, hd: s.hd)
        let dqR = Tensor(q.shape), dkR = Tensor(k.shape), dvR = Tensor(v.shape)
        Reference.Attention.backward(dq: dqR.data, dk: dkR.data, dv: dvR.data, dout: dout.data, probs: probsR.data,
                                     q: q.data, k: k.data, v: v.data, B: s.B, T: s.T, nH: s.nH, nKV: s.nKV, hd: s.hd)
        assertClose(out, outR, atol: 1e-5, rtol: 1e-5, "flash out", file: file, line: line)
        assertClose(dq, dqR, atol: 1e-5, rtol: 1e-5, "flash dq", file: file, line: line)
        assertClose(dk, dkR, atol: 1e-5, rtol: 1e-5, "flash dk", file: file, line: line)
        assertClose(dv, dvR, atol: 1e-5, rtol: 1e-5, "flash dv", file: file, line: line)
        // Each C family's products (training's path): the reference's tolerances. Gradient
        // buffers start as garbage again; the outputs must not depend on it.
        for fam in KernelFamily.available {
            guard let id = fam.kernelID else { continue }
            let outC = randn(q.shape, &rng), statsC = Tensor([FlashAttention.statsCount(B: s.B, T: s.T, nH: s.nH)])
            FlashAttention.forward(pool: pool, out: outC.data, stats: statsC.data, q: q.data, k: k.data, v: v.data,
                                   keyMask: m?.data, B: s.B, T: s.T, nH: s.nH, nKV: s.nKV, hd: s.hd, kernels: id)
            let dqC = randn(q.shape, &rng), dkC = randn(k.shape, &rng), dvC = randn(v.shape, &rng)
            FlashAttention.backward(pool: pool, dq: dqC.data, dk: dkC.data, dv: dvC.data, dout: dout.data, stats: statsC.data,
                                    q: q.data, k: k.data, v: v.data, keyMask: m?.data, B: s.B, T: s.T, nH: s.nH, nKV: s.nKV,
                                    hd: s.hd, kernels: id)
            assertClose(outC, outR, atol: 1e-5, rtol: 1e-5, "flash out, \(fam)", file: file, line: line)
            assertClose(dqC, dqR, atol: 1e-5, rtol: 1e-5, "flash dq, \(fam)", file: file, line: line)
            assertClose(dkC, dkR, atol: 1e-5, rtol: 1e-5, "flash dk, \(fam)", file: file, line: line)
            assertClose(dvC, dvR, atol: 1e-5, rtol: 1e-5, "flash dv, \(fam)", file: file, line: line)
        }
    }

    /// GQA with left padding; several causal blocks with a partial last one and long padding;
    /// the real model's head layout; one kv group (the row passes on the pool); one thread.
    func testMatchesKeptProbabilitiesAndReference() {
        compare(Shape(B: 2, T: 7, nH: 4, nKV: 2, hd: 8), mask: [1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1], seed: 170)
        var long = [Float](repeating: 1, count: 2 * 150)
        for j in 0..<70 { long[150 + j] = 0 }
        compare(Shape(B: 2, T: 150, nH: 4, nKV: 2, hd: 8), mask: long, seed: 171)
        var mask = [Float](repeating: 1, count: 2 * 20)
        for j in 0..<6 { mask[20 + j] = 0 }
        compare(Shape(B: 2, T: 20, nH: 9, nKV: 3, hd: 64), mask: mask, seed: 172)
        compare(Shape(B: 1, T: 130, nH: 3, nKV: 1, hd: 16), mask: nil, seed: 173)
        compare(Shape(B: 3, T: 70, nH: 6, nKV: 2, hd: 8), mask: nil, seed: 174, threads: 1)
        // A padded key in the middle of a sequence (not only leading padding).
        compare(Shape(B: 2, T: 66, nH: 2, nKV: 1, hd: 4), mask: [1, 1, 0] + [Float](repeating: 1, count: 63)
                + [0, 0, 0, 1, 0] + [Float](repeating: 1, count: 61), seed: 175)
    }

    /// Head sizes the AVX2 tiles take (multiples of 16), with ragged edges everywhere: blocks of
    /// 64 rows that are not multiples of 6, key counts that are not multiples of 16 (masked
    /// tiles), a last block of 1 row, T under one tile.
    func testCTilesAtHeadSizesWithRaggedEdges() {
        compare(Shape(B: 1, T: 129, nH: 2, nKV: 1, hd: 64), mask: nil, seed: 178)
        compare(Shape(B: 2, T: 77, nH: 6, nKV: 2, hd: 32), mask: [Float](repeating: 1, count: 77)
                + [0, 0, 0, 0, 0] + [Float](repeating: 1, count: 72), seed: 179)
        compare(Shape(B: 1, T: 5, nH: 2, nKV: 2, hd: 128), mask: nil, seed: 180)
        compare(Shape(B: 2, T: 200, nH: 3, nKV: 1, hd: 48), mask: nil, seed: 181, threads: 1)
    }

    /// Finite differences of sum(dout * out) through the flash forward, across two causal blocks
    /// with GQA and a padded key mid-sequence (its dk, dv must be 0).
    func testBackwardFiniteDifference() {
        var rng = RNG(seed: 176)
        let B = 2, T = 67, nH = 4, nKV = 2, hd = 4
        let q = randn([B, T, nH, hd], &rng), k = randn([B, T, nKV, hd], &rng)
        let v = randn([B, T, nKV, hd], &rng), dout = randn([B, T, nH, hd], &rng)
        var maskValues = [Float](repeating: 1, count: B * T)
        maskValues[5] = 0; maskValues[T + 40] = 0
        let mask = Tensor([B, T], maskValues)
        let out = Tensor(q.shape), stats = Tensor([FlashAttention.statsCount(B: B, T: T, nH: nH)])
        let forward = {
            FlashAttention.forward(pool: testPool, out: out.data, stats: stats.data, q: q.data, k: k.data, v: v.data,
                                   keyMask: mask.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        }
        forward()
        let dq = Tensor(q.shape), dk = Tensor(k.shape), dv = Tensor(v.shape)
        FlashAttention.backward(pool: testPool, dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, stats: stats.data,
                                q: q.data, k: k.data, v: v.data, keyMask: mask.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        XCTAssertGreaterThan(maxAbs(dq), 0)
        let loss = { () -> Double in forward(); return project(dout, out) }
        let qIdx = Array(stride(from: 0, to: q.count, by: 11)), kIdx = Array(stride(from: 0, to: k.count, by: 5))
        checkGradient("flash dq", x: q, analytic: dq, indices: qIdx, loss: loss)
        checkGradient("flash dk", x: k, analytic: dk, indices: kIdx, loss: loss)
        checkGradient("flash dv", x: v, analytic: dv, indices: kIdx, loss: loss)
        for c in 0..<nKV * hd {
            XCTAssertEqual(dk[5 * nKV * hd + c], 0, "padded key gets no gradient")
            XCTAssertEqual(dv[(T + 40) * nKV * hd + c], 0, "padded value gets no gradient")
        }
    }

    /// Milliseconds per call of the flash and kept-probabilities forms at the real model's
    /// attention size, T = 256 and 512. Runs only with LORA_BENCH=1.
    func testBenchmarkAgainstKeptProbabilities() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["LORA_BENCH"] == "1", "set LORA_BENCH=1")
        for T in [256, 512] {
            var rng = RNG(seed: 177)
            let B = 4, nH = 9, nKV = 3, hd = 64
            let q = randn([B, T, nH, hd], &rng), k = randn([B, T, nKV, hd], &rng)
            let v = randn([B, T, nKV, hd], &rng), dout = randn([B, T, nH, hd], &rng)
            let out = Tensor(q.shape), probs = Tensor([B, nH, T, T]), stats = Tensor([FlashAttention.statsCount(B: B, T: T, nH: nH)])
            let dq = Tensor(q.shape), dk = Tensor(k.shape), dv = Tensor(v.shape)
            _ = BLASThreads.single   // as any context does before computing
            func time(_ body: () -> Void) -> Double {
                body()
                var best = Double.infinity
                for _ in 0..<10 {
                    let t0 = DispatchTime.now().uptimeNanoseconds
                    body()
                    best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
                }
                return best
            }
            let ff = time { FlashAttention.forward(pool: testPool, out: out.data, stats: stats.data, q: q.data, k: k.data, v: v.data,
                                                   keyMask: nil, B: B, T: T, nH: nH, nKV: nKV, hd: hd) }
            let fb = time { FlashAttention.backward(pool: testPool, dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, stats: stats.data,
                                                    q: q.data, k: k.data, v: v.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd) }
            let kf = time { Attention.forward(pool: testPool, out: out.data, probs: probs.data, q: q.data, k: k.data, v: v.data,
                                              keyMask: nil, B: B, T: T, nH: nH, nKV: nKV, hd: hd) }
            let kb = time { Attention.backward(pool: testPool, dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, probs: probs.data,
                                               q: q.data, k: k.data, v: v.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd) }
            let fam = KernelFamily.best.kernelID!
            let cf = time { FlashAttention.forward(pool: testPool, out: out.data, stats: stats.data, q: q.data, k: k.data, v: v.data,
                                                   keyMask: nil, B: B, T: T, nH: nH, nKV: nKV, hd: hd, kernels: fam) }
            let cb = time { FlashAttention.backward(pool: testPool, dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, stats: stats.data,
                                                    q: q.data, k: k.data, v: v.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd, kernels: fam) }
            print(String(format: "attention B=%d T=%d nH=%d nKV=%d hd=%d, %d threads: kept probs fwd %.2f bwd %.2f ms; flash (OpenBLAS) fwd %.2f bwd %.2f ms; flash (%@ tiles) fwd %.2f bwd %.2f ms; flash/kept %.2f, tiles/kept %.2f (best of 10)",
                         B, T, nH, nKV, hd, testPool.threads, kf, kb, ff, fb, KernelFamily.best.rawValue, cf, cb, (ff + fb) / (kf + kb), (cf + cb) / (kf + kb)))
        }
    }
}
