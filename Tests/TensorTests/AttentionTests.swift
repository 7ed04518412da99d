import Foundation
import CKernels
import XCTest
@testable import Tensor

final class AttentionTests: XCTestCase {
    struct Shape { let B, T, nH, nKV, hd: Int }

    /// Runs fast and reference forward + backward on the same random inputs and compares
    /// out, probs, dq, dk, dv.
    private func compareWithReference(_ s: Shape, mask: [Float]?, seed: UInt64,
                                      file: StaticString = #filePath, line: UInt = #line) {
        var rng = RNG(seed: seed)
        let q = randn([s.B, s.T, s.nH, s.hd], &rng), k = randn([s.B, s.T, s.nKV, s.hd], &rng)
        let v = randn([s.B, s.T, s.nKV, s.hd], &rng), dout = randn([s.B, s.T, s.nH, s.hd], &rng)
        let out = Tensor(q.shape), probs = Tensor([s.B, s.nH, s.T, s.T])
        let outRef = Tensor(q.shape), probsRef = Tensor([s.B, s.nH, s.T, s.T])
        let m = mask.map { Tensor([s.B, s.T], $0) }
        Attention.forward(pool: testPool, out: out.data, probs: probs.data, q: q.data, k: k.data, v: v.data,
                          keyMask: m?.data, B: s.B, T: s.T, nH: s.nH, nKV: s.nKV, hd: s.hd)
        Reference.Attention.forward(out: outRef.data, probs: probsRef.data, q: q.data, k: k.data,
                                    v: v.data, keyMask: m?.data,
                                    B: s.B, T: s.T, nH: s.nH, nKV: s.nKV, hd: s.hd)
        // Fully masked (leading padding) rows keep probs 0 in the fast path; compare the rest.
        let cmp = probsRef.clone()
        if let m {
            for b in 0..<s.B {
                var n = 0
                while n < s.T && m[b * s.T + n] == 0 { n += 1 }
                for h in 0..<s.nH { for i in 0..<n { (cmp.data + ((b * s.nH + h) * s.T + i) * s.T).update(repeating: 0, count: s.T) } }
            }
        }
        assertClose(probs, cmp, atol: 1e-6, rtol: 1e-5, "probs", file: file, line: line)
        assertClose(out, outRef, atol: 1e-5, rtol: 1e-5, "out", file: file, line: line)
        // Garbage in the gradient buffers must be overwritten, not accumulated.
        let dq = randn(q.shape, &rng), dk = randn(k.shape, &rng), dv = randn(v.shape, &rng)
        let dqRef = Tensor(q.shape), dkRef = Tensor(k.shape), dvRef = Tensor(v.shape)
        Attention.backward(pool: testPool, dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, probs: probs.data,
                           q: q.data, k: k.data, v: v.data, keyMask: m?.data,
                           B: s.B, T: s.T, nH: s.nH, nKV: s.nKV, hd: s.hd)
        Reference.Attention.backward(dq: dqRef.data, dk: dkRef.data, dv: dvRef.data, dout: dout.data,
                                     probs: probsRef.data, q: q.data, k: k.data, v: v.data,
                                     B: s.B, T: s.T, nH: s.nH, nKV: s.nKV, hd: s.hd)
        assertClose(dq, dqRef, atol: 1e-5, rtol: 1e-5, "dq", file: file, line: line)
        assertClose(dk, dkRef, atol: 1e-5, rtol: 1e-5, "dk", file: file, line: line)
        assertClose(dv, dvRef, atol: 1e-5, rtol: 1e-5, "dv", file: file, line: line)
    }

    /// Heads and groups on two workers (the test pool): the same numbers as the reference.
    func testParallelHeadsPathMatchesReference() {
        XCTAssertGreaterThan(testPool.threads, 1)
        var mask = [Float](repeating: 1, count: 3 * 70)
        for j in 0..<9 { mask[70 + j] = 0 }
        compareWithReference(Shape(B: 3, T: 70, nH: 6, nKV: 2, hd: 8), mask: mask, seed: 90)
    }

    /// GQA (2 query heads per kv head) with left padding in the second sequence.
    func testMatchesReferenceGQAWithPadding() {
        let s = Shape(B: 2, T: 7, nH: 4, nKV: 2, hd: 8)
        let mask: [Float] = [1, 1, 1, 1, 1, 1, 1,
                             0, 0, 1, 1, 1, 1, 1]
        compareWithReference(s, mask: mask, seed: 70)
    }

    /// Multi-head (nKV = nH), no mask, T not a multiple of 8; several causal blocks with a
    /// partial last one (T = 150 > 2 * 64) and padding; and the real model's head layout
    /// (9 query heads on 3 kv heads, hd 64) at a short length.
    func testMatchesReferenceOtherShapes() {
        compareWithReference(Shape(B: 1, T: 33, nH: 3, nKV: 3, hd: 5), mask: nil, seed: 71)
        var long = [Float](repeating: 1, count: 2 * 150)
        for j in 0..<70 { long[150 + j] = 0 }
        compareWithReference(Shape(B: 2, T: 150, nH: 4, nKV: 2, hd: 8), mask: long, seed: 78)
        var mask = [Float](repeating: 1, count: 2 * 20)
        for j in 0..<6 { mask[20 + j] = 0 }
        compareWithReference(Shape(B: 2, T: 20, nH: 9, nKV: 3, hd: 64), mask: mask, seed: 72)
    }

    /// Finite differences of sum(dout * out) with respect to q, k and v, with GQA and a padded
    /// key in the middle of each sequence (its dk, dv must be 0).
    func testBackwardFiniteDifference() {
        var rng = RNG(seed: 73)
        let B = 2, T = 5, nH = 4, nKV = 2, hd = 4
        let q = randn([B, T, nH, hd], &rng), k = randn([B, T, nKV, hd], &rng)
        let v = randn([B, T, nKV, hd], &rng), dout = randn([B, T, nH, hd], &rng)
        // (Leading padding is checked in testFullyMaskedRowIsUniformOverAllKeys: its dq and dk
        // follow autograd, not finite differences.)
        let mask = Tensor([B, T], [1, 1, 0, 1, 1,
                                   1, 0, 1, 1, 1])
        let out = Tensor(q.shape), probs = Tensor([B, nH, T, T])
        let forward = {
            Attention.forward(pool: testPool, out: out.data, probs: probs.data, q: q.data, k: k.data, v: v.data,
                              keyMask: mask.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        }
        forward()
        let dq = Tensor(q.shape), dk = Tensor(k.shape), dv = Tensor(v.shape)
        Attention.backward(pool: testPool, dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, probs: probs.data,
                           q: q.data, k: k.data, v: v.data, keyMask: mask.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        let loss = { () -> Double in forward(); return project(dout, out) }
        checkGradient("attention dq", x: q, analytic: dq, loss: loss)
        checkGradient("attention dk", x: k, analytic: dk, loss: loss)
        checkGradient("attention dv", x: v, analytic: dv, loss: loss)
        for c in 0..<nKV * hd {
            XCTAssertEqual(dk[2 * nKV * hd + c], 0, "padded key gets no gradient")
            XCTAssertEqual(dv[2 * nKV * hd + c], 0, "padded value gets no gradient")
        }
    }

    /// Finite differences across causal blocks (T = 70: a full block of 64 and a partial one),
    /// on a sample of elements from both blocks.
    func testBackwardFiniteDifferenceAcrossBlocks() {
        var rng = RNG(seed: 79)
        let B = 1, T = 70, nH = 2, nKV = 1, hd = 4
        let q = randn([B, T, nH, hd], &rng), k = randn([B, T, nKV, hd], &rng)
        let v = randn([B, T, nKV, hd], &rng), dout = randn([B, T, nH, hd], &rng)
        let out = Tensor(q.shape), probs = Tensor([B, nH, T, T])
        let forward = {
            Attention.forward(pool: testPool, out: out.data, probs: probs.data, q: q.data, k: k.data, v: v.data,
                              keyMask: nil, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        }
        forward()
        let dq = Tensor(q.shape), dk = Tensor(k.shape), dv = Tensor(v.shape)
        Attention.backward(pool: testPool, dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, probs: probs.data,
                           q: q.data, k: k.data, v: v.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        let loss = { () -> Double in forward(); return project(dout, out) }
        let qIdx = Array(stride(from: 0, to: q.count, by: 13)), kIdx = Array(stride(from: 0, to: k.count, by: 7))
        checkGradient("attention dq", x: q, analytic: dq, indices: qIdx, loss: loss)
        checkGradient("attention dk", x: k, analytic: dk, indices: kIdx, loss: loss)
        checkGradient("attention dv", x: v, analytic: dv, indices: kIdx, loss: loss)
    }

    /// A query with no allowed key (left padding) attends uniformly to all T keys, as HF's eager
    /// attention does with its additive dtype-minimum mask: its output is the mean of V over the
    /// whole row, its probs row stays 0 here, and every value stays finite.
    func testFullyMaskedRowIsUniformOverAllKeys() {
        var rng = RNG(seed: 74)
        let B = 1, T = 4, nH = 2, nKV = 1, hd = 4
        let q = randn([B, T, nH, hd], &rng), k = randn([B, T, nKV, hd], &rng)
        let v = randn([B, T, nKV, hd], &rng), dout = randn([B, T, nH, hd], &rng)
        let mask = Tensor([B, T], [0, 0, 1, 1])
        let out = Tensor(q.shape), probs = Tensor([B, nH, T, T])
        Attention.forward(pool: testPool, out: out.data, probs: probs.data, q: q.data, k: k.data, v: v.data,
                          keyMask: mask.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        let dq = Tensor(q.shape), dk = Tensor(k.shape), dv = Tensor(v.shape)
        Attention.backward(pool: testPool, dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, probs: probs.data,
                           q: q.data, k: k.data, v: v.data, keyMask: mask.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        for t in [out, probs, dq, dk, dv] { XCTAssertTrue(t.array.allSatisfy { $0.isFinite }) }
        for i in 0..<2 { for h in 0..<nH { for c in 0..<hd {
            var mean: Float = 0
            for j in 0..<T { mean += v[j * hd + c] }
            XCTAssertEqual(out[(i * nH + h) * hd + c], mean / Float(T), accuracy: 1e-6, "pad row \(i) is the mean of V")
        } } }
        for h in 0..<nH {
            for i in 0..<2 { for j in 0..<T { XCTAssertEqual(probs[(h * T + i) * T + j], 0) } }
            // Row 2 sees only key 2, row 3 sees keys 2 and 3.
            XCTAssertEqual(probs[(h * T + 2) * T + 2], 1)
            XCTAssertEqual(probs[(h * T + 3) * T + 2] + probs[(h * T + 3) * T + 3], 1, accuracy: 1e-6)
        }
        // Row 2's output is exactly value 2.
        for h in 0..<nH { for c in 0..<hd { XCTAssertEqual(out[(2 * nH + h) * hd + c], v[2 * hd + c]) } }
        // dv by finite differences; dq and dk carry autograd's terms through the masked scores,
        // which finite differences cannot see: they are checked against the reference (which
        // differentiates the softmax the same way) and, end to end, against PEFT's gradients.
        let loss = { () -> Double in
            Attention.forward(pool: testPool, out: out.data, probs: probs.data, q: q.data, k: k.data, v: v.data,
                              keyMask: mask.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
            return project(dout, out)
        }
        checkGradient("pad rows dv", x: v, analytic: dv, loss: loss)
        let outRef = Tensor(q.shape), probsRef = Tensor(probs.shape)
        Reference.Attention.forward(out: outRef.data, probs: probsRef.data, q: q.data, k: k.data, v: v.data,
                                    keyMask: mask.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        let dqRef = Tensor(q.shape), dkRef = Tensor(k.shape), dvRef = Tensor(v.shape)
        Reference.Attention.backward(dq: dqRef.data, dk: dkRef.data, dv: dvRef.data, dout: dout.data, probs: probsRef.data,
                                     q: q.data, k: k.data, v: v.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        assertClose(dq, dqRef, atol: 1e-5, rtol: 1e-5, "pad rows dq")
        assertClose(dk, dkRef, atol: 1e-5, rtol: 1e-5, "pad rows dk")
        XCTAssert((0..<2 * nH * hd).contains { dq[$0] != 0 }, "autograd's dq through the uniform rows is not zero")
    }

    /// With q = 0 every allowed key gets the same weight, so out[i, h] is the mean of v[0...i]
    /// of kv head h / (nH / nKV): checks causality and the head-to-group mapping by hand.
    func testUniformAttentionAndHeadMapping() {
        var rng = RNG(seed: 75)
        let B = 1, T = 6, nH = 6, nKV = 2, hd = 3
        let q = Tensor([B, T, nH, hd]), k = randn([B, T, nKV, hd], &rng), v = randn([B, T, nKV, hd], &rng)
        let out = Tensor(q.shape), probs = Tensor([B, nH, T, T])
        Attention.forward(pool: testPool, out: out.data, probs: probs.data, q: q.data, k: k.data, v: v.data,
                          keyMask: nil, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        for i in 0..<T {
            for h in 0..<nH {
                let g = h / 3
                for c in 0..<hd {
                    var mean: Float = 0
                    for j in 0...i { mean += v[(j * nKV + g) * hd + c] }
                    mean /= Float(i + 1)
                    XCTAssertEqual(out[(i * nH + h) * hd + c], mean, accuracy: 1e-6, "i \(i) h \(h)")
                }
            }
        }
    }

    /// The KV-cache form agrees with the training forward: a whole-prompt prefill, a prefill
    /// followed by one-token decode steps, and a multi-token chunk at a non-zero start, with and
    /// without a key mask.
    func testCachedMatchesForward() {
        for fam in KernelFamily.available { cachedMatchesForward(fam.vectorID, "\(fam)") }
    }

    /// The fused decode-head kernels (`lora_attn_scores`, `lora_attn_wsum`: one C call over the
    /// keys) against the per-key `lora_dot` / `lora_axpy` loops they replaced (AVX-512's scores:
    /// the model of their block-of-16 arithmetic), bit for bit, on
    /// every family: head sizes with a register body (32, 64, 128) and without (20, 96, 8),
    /// some weights exactly zero (skipped, as before).
    func testFusedDecodeHeadKernelsEqualPerKeyCalls() {
        var rng = RNG(seed: 78)
        for fam in KernelFamily.available {
            let f = fam.vectorID
            for hd in [8, 20, 32, 64, 96, 128] {
                let L = 37, ld = 3 * hd
                let q = randn([hd], &rng), K = randn([L, ld], &rng), V = randn([L, ld], &rng)
                var want = [Float](repeating: 0, count: L), got = [Float](repeating: .nan, count: L)
                for j in 0..<L {
                    // AVX-512 at hd = 16 k <= 128 sums 16 keys in one tree (DecodeStepTests models it).
                    want[j] = f == Int32(LORA_FAMILY_AVX512) && hd % 16 == 0 && hd <= 128
                        ? DecodeStepTests.avx512Score(q.data, K.data + j * ld + hd, hd: hd, alpha: 0.125)
                        : 0.125 * lora_dot(f, q.data, K.data + j * ld + hd, hd)
                }
                lora_attn_scores(f, q.data, K.data + hd, ld, L, hd, 0.125, &got)
                XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern), "\(fam) hd \(hd): scores")
                var w = got
                for j in stride(from: 0, to: L, by: 5) { w[j] = 0 }
                var oWant = [Float](repeating: 0, count: hd), oGot = [Float](repeating: .nan, count: hd)
                for j in 0..<L where w[j] != 0 { lora_axpy(f, w[j], V.data + j * ld + hd, &oWant, hd) }
                lora_attn_wsum(f, w, V.data + hd, ld, L, hd, &oGot)
                XCTAssertEqual(oGot.map(\.bitPattern), oWant.map(\.bitPattern), "\(fam) hd \(hd): weighted sum")
            }
        }
    }

    /// The scores of a causal block of query rows (a prompt chunk): each row the bits of
    /// lora_attn_scores alone over its own keys, for blocks of 4 rows and their ragged ends.
    func testScoresOfARowBlockEqualEachRowAlone() {
        var rng = RNG(seed: 79)
        for fam in KernelFamily.available {
            let f = fam.vectorID
            for (hd, R, L0) in [(64, 9, 5), (64, 4, 1), (64, 3, 30), (32, 6, 2), (128, 5, 7)] {
                let ld = 2 * hd, ldq = 3 * hd, keys = L0 + R
                let q = randn([R, ldq], &rng), K = randn([keys, ld], &rng)
                var got = [Float](repeating: .nan, count: R * keys), want = got
                lora_attn_scores_rows(f, q.data, ldq, R, K.data, ld, L0, hd, 0.125, &got, keys)
                for r in 0..<R {
                    want.withUnsafeMutableBufferPointer { w in
                        lora_attn_scores(f, q.data + r * ldq, K.data, ld, L0 + r, hd, 0.125, w.baseAddress! + r * keys)
                    }
                }
                for r in 0..<R {
                    let n = L0 + r
                    XCTAssertEqual(got[(r * keys)..<(r * keys + n)].map(\.bitPattern), want[(r * keys)..<(r * keys + n)].map(\.bitPattern),
                                   "\(fam) hd \(hd) R \(R) L0 \(L0): row \(r)")
                }
            }
        }
    }

    /// A server step's attention (`attentionCachedBatch`: decode items as one job of item x
    /// head tasks on the CPU's spinning workers, prefill items one by one) gives each item the
    /// bits of its own `attentionCached` call; each item is also checked against the training
    /// forward on its rows.
    func testCachedBatchEqualsPerItem() {
        var rng = RNG(seed: 77)
        let nH = 6, nKV = 2, hd = 8, cap = 120, row = nH * hd
        // (cached length before the step, new tokens): decode items of several lengths and a
        // prefill chunk beside them.
        let items = [(30, 1), (0, 12), (99, 1), (7, 1), (64, 1), (40, 5)]
        let ks = items.map { _ in randn([cap, nKV, hd], &rng) }, vs = items.map { _ in randn([cap, nKV, hd], &rng) }
        let rows = items.reduce(0) { $0 + $1.1 }
        let q = randn([rows, nH, hd], &rng)
        for fam in KernelFamily.available {
            let be = CPUBackend(family: fam, pool: testPool)
            let want = Tensor([rows, nH, hd]), got = Tensor([rows, nH, hd])
            let scores = Tensor([nH * rows, cap]), scratch = Tensor([nH, cap * cap])
            var batch: [CachedAttention] = []
            var r0 = 0
            for (i, (start, n)) in items.enumerated() {
                be.attentionCached(out: want.data + r0 * row, scores: scratch.data, q: q.data + r0 * row, kCache: ks[i].data,
                                   vCache: vs[i].data, keyMask: nil, start: start, Tq: n, nH: nH, nKV: nKV, hd: hd)
                batch.append(CachedAttention(out: got.data + r0 * row, scores: scores.data + r0 * nH * cap, q: q.data + r0 * row,
                                             kCache: ks[i].data, vCache: vs[i].data, start: start, Tq: n))
                // The training forward over the item's first start + n keys (the new queries
                // are its last n rows): the oracle for what the cached forms compute.
                let T = start + n
                let qf = Tensor([1, T, nH, hd]), of = Tensor([1, T, nH, hd]), probs = Tensor([1, nH, T, T])
                (qf.data + start * row).update(from: q.data + r0 * row, count: n * row)
                Attention.forward(pool: testPool, out: of.data, probs: probs.data, q: qf.data, k: ks[i].data, v: vs[i].data,
                                  keyMask: nil, B: 1, T: T, nH: nH, nKV: nKV, hd: hd)
                for j in 0..<(n * row) {
                    XCTAssertEqual(want.data[r0 * row + j], of.data[start * row + j], accuracy: 1e-5, "\(fam) item \(i) vs forward")
                }
                r0 += n
            }
            be.attentionCachedBatch(batch, nH: nH, nKV: nKV, hd: hd)
            let diff = (0..<got.count).filter { got.data[$0].bitPattern != want.data[$0].bitPattern }
            XCTAssertTrue(diff.isEmpty, "\(fam): \(diff.count) outputs differ from per-item calls, first at \(diff.first ?? -1)")
        }
    }

    /// As above for one C family of the decode step's dot products (and a long context, where
    /// the heads run in parallel).
    func cachedMatchesForward(_ fam: Int32, _ what: String) {
        var rng = RNG(seed: 76)
        for (T, nH, nKV, hd) in [(75, 6, 2, 8), (300, 8, 2, 32)] {
        let q = randn([1, T, nH, hd], &rng), k = randn([1, T, nKV, hd], &rng)
        let v = randn([1, T, nKV, hd], &rng)
        let row = nH * hd
        for mask in [nil, Tensor([1, T], [0, 0] + [Float](repeating: 1, count: T - 2))] {
            let want = Tensor(q.shape), probs = Tensor([1, nH, T, T])
            Attention.forward(pool: testPool, out: want.data, probs: probs.data, q: q.data, k: k.data, v: v.data,
                              keyMask: mask?.data, B: 1, T: T, nH: nH, nKV: nKV, hd: hd)
            let got = Tensor(q.shape), scores = Tensor([nH, T * T])
            // Whole prompt at once.
            Attention.forwardCached(pool: testPool, vectorKernels: fam, out: got.data, scores: scores.data, q: q.data, kCache: k.data,
                                    vCache: v.data, keyMask: mask?.data, start: 0, Tq: T,
                                    nH: nH, nKV: nKV, hd: hd)
            assertClose(got, want, atol: 1e-6, rtol: 1e-5, "prefill \(what)")
            // Prefill 40, a chunk of 25 at start 40, then one token at a time.
            got.zero()
            Attention.forwardCached(pool: testPool, vectorKernels: fam, out: got.data, scores: scores.data, q: q.data, kCache: k.data,
                                    vCache: v.data, keyMask: mask?.data, start: 0, Tq: 40,
                                    nH: nH, nKV: nKV, hd: hd)
            Attention.forwardCached(pool: testPool, vectorKernels: fam, out: got.data + 40 * row, scores: scores.data, q: q.data + 40 * row,
                                    kCache: k.data, vCache: v.data, keyMask: mask?.data, start: 40, Tq: 25,
                                    nH: nH, nKV: nKV, hd: hd)
            for t in 65..<T {
                Attention.forwardCached(pool: testPool, vectorKernels: fam, out: got.data + t * row, scores: scores.data, q: q.data + t * row,
                                        kCache: k.data, vCache: v.data, keyMask: mask?.data, start: t,
                                        Tq: 1, nH: nH, nKV: nKV, hd: hd)
            }
            // Leading padding rows are uniform over the keys present when they are computed (40
            // here, T in `forward`), so only the rows with a real key are comparable.
            let pads = mask == nil ? 0 : 2
            (got.data).update(from: want.data, count: pads * row)
            assertClose(got, want, atol: 1e-6, rtol: 1e-5, "prefill + chunk + decode \(what)")
        }
        }
    }

    /// Timing at the real model's attention size (B 4, T 256, 9 heads on 3 kv heads, hd 64).
    /// Runs only with LORA_BENCH=1; prints milliseconds per call.
    func testBenchmarkRealSize() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["LORA_BENCH"] == "1", "set LORA_BENCH=1")
        var rng = RNG(seed: 77)
        let B = 4, T = 256, nH = 9, nKV = 3, hd = 64
        let q = randn([B, T, nH, hd], &rng), k = randn([B, T, nKV, hd], &rng)
        let v = randn([B, T, nKV, hd], &rng), dout = randn([B, T, nH, hd], &rng)
        let out = Tensor(q.shape), probs = Tensor([B, nH, T, T])
        let dq = Tensor(q.shape), dk = Tensor(k.shape), dv = Tensor(v.shape)
        func time(_ body: () -> Void) -> Double {
            body()
            var best = Double.infinity
            for _ in 0..<20 {
                let t0 = DispatchTime.now().uptimeNanoseconds
                body()
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            }
            return best
        }
        let fwd = time {
            Attention.forward(pool: testPool, out: out.data, probs: probs.data, q: q.data, k: k.data, v: v.data,
                              keyMask: nil, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        }
        let bwd = time {
            Attention.backward(pool: testPool, dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, probs: probs.data,
                               q: q.data, k: k.data, v: v.data, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        }
        print(String(format: "attention B=%d T=%d nH=%d nKV=%d hd=%d: forward %.2f ms, backward %.2f ms (best of 20, %d threads)",
                     B, T, nH, nKV, hd, fwd, bwd, testPool.threads))
    }
}
