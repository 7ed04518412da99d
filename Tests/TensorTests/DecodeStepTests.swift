import CKernels
@testable import Tensor
import XCTest

/// The decode step's shared calls: several projections of one x and their LoRA terms as one
/// backend job (`decodeProjections`), and the attention of a key-value head's query heads in one
/// kernel call (`lora_attn_scores_heads`, `lora_attn_wsum_heads`, `Attention.decodeHeads`).
/// Oracle: the separate calls they replace, bit for bit (so a request's tokens do not change),
/// and for the AVX-512 scores kernel, a Swift model of its arithmetic (bit for bit) and the
/// Double dot product (a bound).
final class DecodeStepTests: XCTestCase {
    /// Every format with a decoding kernel, and M from one token to a server's 16 rows: each
    /// output of the shared call has the bits of its own `decodeProjection` call, on every
    /// family, with no LoRA terms, with terms on some outputs (q and v, as the default targets),
    /// with two terms over row ranges, and with per-row alphas (a server's weighted mix).
    /// Shapes: a layer's q, k, v (one tall, two short), and gate and up; one set under the
    /// spinning pool's 64 KB (taken separately), which must give the same bits too.
    func testSharedDecodingProductsEqualSeparateCalls() {
        var rng = RNG(seed: 91)
        let formats: [any WeightFormat] = [WeightFormats.f32, WeightFormats.int8, WeightFormats.q4_1, WeightFormats.q8_0,
                                           WeightFormats.llmInt8, WeightFormats.bf16]
        let rank = 8
        let alphas = UnsafeMutablePointer<Float>.allocate(capacity: 16)
        defer { alphas.deallocate() }
        for i in 0..<16 { alphas[i] = 0.25 + 0.1 * Float(i) }
        let u = Tensor([4096]), uWant = Tensor([4096])
        for fam in KernelFamily.available {
            let be = CPUBackend(family: fam, pool: testPool)
            let scratch = MatmulScratch()
            for format in formats {
                for (K, Ns) in [(320, [400, 136, 136]), (256, [520, 520]), (64, [40, 8])] {
                    let ws = Ns.map { N in Weight.make(format, from: randn([N, K], &rng, scale: 0.2), pool: .serial) }
                    let factors = Ns.map { N in (randn([rank, K], &rng, scale: 0.1), randn([N, rank], &rng, scale: 0.1)) }
                    for M in [1, 3, 16] {
                        let x = randn([M, K], &rng)
                        // A column past LLM.int8()'s threshold (6): its outlier path runs too.
                        for m in 0..<M { x.data[m * K + 5] = 8 }
                        // Terms per output, per case: none; on the first and last; two terms
                        // over row ranges on the first; per-row alphas on the last.
                        func terms(_ i: Int, _ kind: Int) -> [LoRATerm] {
                            let (A, B) = factors[i], h = max(1, M / 2)
                            switch kind {
                            case 1 where i == 0 || i == Ns.count - 1:
                                return [LoRATerm(r0: 0, r1: M, rank: rank, alpha: 2, A: A.data, B: B.data)]
                            case 2 where i == 0:
                                return [LoRATerm(r0: 0, r1: h, rank: rank, alpha: 2, A: A.data, B: B.data),
                                        LoRATerm(r0: 0, r1: M, rank: rank, alpha: 0.5, A: factors[1].0.data, B: B.data)]
                            case 3 where i == Ns.count - 1:
                                return [LoRATerm(r0: 0, r1: M, rank: rank, alpha: 1, A: A.data, B: B.data, alphas: UnsafePointer(alphas))]
                            default:
                                return []
                            }
                        }
                        for kind in 0..<4 {
                            let want = Ns.map { Tensor([M, $0]) }, got = Ns.map { N in Tensor([M, N], [Float](repeating: .nan, count: M * N)) }
                            for (i, w) in ws.enumerated() {
                                be.decodeProjection(y: want[i].data, x: x.data, w: w, M: M, scratch: scratch, terms: terms(i, kind), u: uWant.data)
                            }
                            let outs = (0..<Ns.count).map { DecodeOutput(y: got[$0].data, w: ws[$0], terms: terms($0, kind)) }
                            be.decodeProjections(outs, x: x.data, M: M, scratch: scratch, u: u.data)
                            for i in Ns.indices {
                                let diff = (0..<want[i].count).filter { got[i].data[$0].bitPattern != want[i].data[$0].bitPattern }
                                XCTAssertTrue(diff.isEmpty, "\(fam) \(format.name) K \(K) M \(M) terms \(kind) output \(i): \(diff.count) differ")
                            }
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 scores kernel's arithmetic, modelled in Swift: per key, 16 lanes each start
    /// with one product and take one FMA per further 16 floats, then the block's tree adds lane
    /// l + 8 to l, l + 4 to l, then (0 + 2) + (1 + 3); times alpha.
    static func avx512Score(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, hd: Int, alpha: Float) -> Float {
        var a = [Float](repeating: 0, count: 16)
        for i in 0..<16 {
            var x = q[i] * k[i]
            for v in 1..<(hd / 16) { x = x.addingProduct(q[16 * v + i], k[16 * v + i]) }
            a[i] = x
        }
        var c = [Float](repeating: 0, count: 4)
        for l in 0..<4 {
            let lo: Float = a[l] + a[l + 8], hi: Float = a[l + 4] + a[l + 12]
            c[l] = lo + hi
        }
        let even: Float = c[0] + c[2], odd: Float = c[1] + c[3]
        return alpha * (even + odd)
    }

    /// lora_attn_scores on each family: the per-key dot products its contract names (lora_dot
    /// for AVX2 and portable, the model above for AVX-512 at hd = 16 k <= 128), bit for bit, and
    /// within 1e-6 of the Double dot product's magnitude; a key's score does not depend on L
    /// (its place in a block of 16).
    func testScoresMatchTheirModelAndDoNotDependOnL() {
        var rng = RNG(seed: 92)
        for fam in KernelFamily.available {
            let f = fam.vectorID
            for hd in [8, 16, 20, 48, 64, 96, 128, 144] {
                let ld = 3 * hd, Lmax = 70
                let q = randn([hd], &rng), K = randn([Lmax, ld], &rng)
                let modelled = f == Int32(LORA_FAMILY_AVX512) && hd % 16 == 0 && hd <= 128
                var full = [Float](repeating: .nan, count: Lmax)
                lora_attn_scores(f, q.data, K.data + hd, ld, Lmax, hd, 0.125, &full)
                for j in 0..<Lmax {
                    let k = K.data + j * ld + hd
                    let want = modelled ? Self.avx512Score(q.data, k, hd: hd, alpha: 0.125) : 0.125 * lora_dot(f, q.data, k, hd)
                    XCTAssertEqual(full[j].bitPattern, want.bitPattern, "\(fam) hd \(hd) key \(j)")
                    var exact = 0.0, mag = 0.0
                    for i in 0..<hd { exact += Double(q.data[i]) * Double(k[i]); mag += abs(Double(q.data[i]) * Double(k[i])) }
                    XCTAssertEqual(Double(full[j]), 0.125 * exact, accuracy: 1e-6 * mag, "\(fam) hd \(hd) key \(j) vs Double")
                }
                for L in [1, 15, 16, 17, 33, 69] {
                    var part = [Float](repeating: .nan, count: L)
                    lora_attn_scores(f, q.data, K.data + hd, ld, L, hd, 0.125, &part)
                    XCTAssertEqual(part.map(\.bitPattern), full[0..<L].map(\.bitPattern), "\(fam) hd \(hd) L \(L)")
                }
            }
        }
    }

    /// The group kernels give each head the bits of its own lora_attn_scores / lora_attn_wsum
    /// call, for 1 to 5 heads (past the AVX-512 wsum's 4 per pass), ragged L, head sizes with and
    /// without a register body, and weights exactly 0 (skipped keys).
    func testGroupKernelsEqualPerHeadCalls() {
        var rng = RNG(seed: 93)
        for fam in KernelFamily.available {
            let f = fam.vectorID
            for hd in [8, 20, 32, 64, 96, 128] {
                for G in 1...5 {
                    for L in [1, 16, 23, 40] {
                        let ld = 2 * hd
                        let q = randn([G, hd], &rng), K = randn([L, ld], &rng), V = randn([L, ld], &rng)
                        var got = [Float](repeating: .nan, count: G * L), want = got
                        lora_attn_scores_heads(f, q.data, G, K.data + hd, ld, L, hd, 0.125, &got, L)
                        want.withUnsafeMutableBufferPointer { w in
                            for g in 0..<G { lora_attn_scores(f, q.data + g * hd, K.data + hd, ld, L, hd, 0.125, w.baseAddress! + g * L) }
                        }
                        XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern), "\(fam) hd \(hd) G \(G) L \(L): scores")
                        var s = got
                        for i in stride(from: 1, to: s.count, by: 4) { s[i] = 0 }
                        var oGot = [Float](repeating: .nan, count: G * hd), oWant = oGot
                        lora_attn_wsum_heads(f, s, L, G, V.data + hd, ld, L, hd, &oGot)
                        s.withUnsafeBufferPointer { sp in
                            oWant.withUnsafeMutableBufferPointer { o in
                                for g in 0..<G { lora_attn_wsum(f, sp.baseAddress! + g * L, V.data + hd, ld, L, hd, o.baseAddress! + g * hd) }
                            }
                        }
                        XCTAssertEqual(oGot.map(\.bitPattern), oWant.map(\.bitPattern), "\(fam) hd \(hd) G \(G) L \(L): weighted sums")
                    }
                }
            }
        }
    }

    /// A decode step's attention through the backend (on the spinning workers, heads split in
    /// ranges that cut a group) and through `forwardCached` on one thread: the bits of
    /// `decodeHead` per head, with and without a key mask, for contexts on both sides of the
    /// backend's parallel threshold.
    func testDecodeStepAttentionEqualsPerHead() {
        var rng = RNG(seed: 94)
        for fam in KernelFamily.available {
            let be = CPUBackend(family: fam, pool: testPool)
            for (nH, nKV, hd) in [(9, 3, 64), (6, 2, 32), (4, 4, 16), (8, 1, 20)] {
                for L in [5, 40, 300] {
                    let q = randn([nH, hd], &rng), k = randn([L, nKV, hd], &rng), v = randn([L, nKV, hd], &rng)
                    for mask in [nil, Tensor([L], (0..<L).map { $0 % 7 == 3 ? 0 : 1 })] {
                        let want = Tensor([nH, hd]), scores = Tensor([nH, L])
                        for h in 0..<nH {
                            Attention.decodeHead(h, vectorKernels: fam.vectorID, out: want.data, scores: scores.data + h * L, q: q.data,
                                                 kCache: k.data, vCache: v.data, keyMask: mask?.data, L: L, nH: nH, nKV: nKV, hd: hd)
                        }
                        for (name, run) in [("backend", { (o: Tensor) in
                            be.attentionCached(out: o.data, scores: scores.data, q: q.data, kCache: k.data, vCache: v.data,
                                               keyMask: mask?.data, start: L - 1, Tq: 1, nH: nH, nKV: nKV, hd: hd)
                        }), ("serial", { (o: Tensor) in
                            Attention.forwardCached(pool: .serial, vectorKernels: fam.vectorID, out: o.data, scores: scores.data, q: q.data,
                                                    kCache: k.data, vCache: v.data, keyMask: mask?.data, start: L - 1, Tq: 1,
                                                    nH: nH, nKV: nKV, hd: hd)
                        })] {
                            let got = Tensor([nH, hd], [Float](repeating: .nan, count: nH * hd))
                            run(got)
                            XCTAssertEqual(got.array.map(\.bitPattern), want.array.map(\.bitPattern),
                                           "\(fam) \(name) nH \(nH) nKV \(nKV) hd \(hd) L \(L) mask \(mask != nil)")
                        }
                    }
                }
            }
        }
    }

    /// A head-major cache ([nKV, capacity, hd], what generate and serve keep) gives the bits of
    /// the same rows interleaved ([T, nKV, hd]): decode steps (spinning and serial), a prompt
    /// chunk (Tq > 1) and the batched call; `store` and `copyRows` move rows between layouts.
    func testHeadMajorCacheEqualsInterleaved() {
        var rng = RNG(seed: 95)
        for fam in KernelFamily.available {
            let be = CPUBackend(family: fam, pool: testPool)
            for (nH, nKV, hd) in [(9, 3, 64), (4, 2, 16), (8, 1, 20)] {
                for (start, Tq) in [(0, 1), (39, 1), (299, 1), (0, 7), (20, 5)] {
                    let L = start + Tq, cap = L + 3
                    let q = randn([Tq, nH, hd], &rng), k = randn([L, nKV, hd], &rng), v = randn([L, nKV, hd], &rng)
                    let head = KVLayout.headMajor(capacity: cap, hd: hd), flat = KVLayout.interleaved(nKV: nKV, hd: hd)
                    let kh = Tensor([nKV, cap, hd]), vh = Tensor([nKV, cap, hd])
                    head.store(k.data, rows: L, at: 0, into: kh.data, nKV: nKV, hd: hd)
                    head.store(v.data, rows: L, at: 0, into: vh.data, nKV: nKV, hd: hd)
                    // Back to interleaved: the rows themselves.
                    let back = Tensor([L, nKV, hd])
                    head.copyRows(L, from: kh.data, to: back.data, layout: flat, nKV: nKV, hd: hd)
                    XCTAssertEqual(back.array, k.array, "copyRows head-major -> interleaved")
                    let scores = Tensor([nH, Tq, L])
                    func run(_ kc: Tensor, _ vc: Tensor, _ layout: KVLayout?) -> [UInt32] {
                        let o = Tensor([Tq, nH, hd], [Float](repeating: .nan, count: Tq * nH * hd))
                        be.attentionCached(out: o.data, scores: scores.data, q: q.data, kCache: kc.data, vCache: vc.data,
                                           keyMask: nil, start: start, Tq: Tq, nH: nH, nKV: nKV, hd: hd, layout: layout)
                        return o.array.map(\.bitPattern)
                    }
                    let want = run(k, v, nil)
                    XCTAssertEqual(run(kh, vh, head), want, "\(fam) nH \(nH) nKV \(nKV) hd \(hd) start \(start) Tq \(Tq)")
                    if Tq == 1 {
                        // Two sequences in one batched call, each in its own layout.
                        let o1 = Tensor([nH, hd]), o2 = Tensor([nH, hd]), s1 = Tensor([nH, L]), s2 = Tensor([nH, L])
                        be.attentionCachedBatch([
                            CachedAttention(out: o1.data, scores: s1.data, q: q.data, kCache: k.data, vCache: v.data, start: start, Tq: 1),
                            CachedAttention(out: o2.data, scores: s2.data, q: q.data, kCache: kh.data, vCache: vh.data, start: start, Tq: 1,
                                            layout: head),
                        ], nH: nH, nKV: nKV, hd: hd)
                        XCTAssertEqual(o1.array.map(\.bitPattern), want, "\(fam) batched, interleaved")
                        XCTAssertEqual(o2.array.map(\.bitPattern), want, "\(fam) batched, head-major")
                    }
                }
            }
        }
    }

    /// The spinning workers' tasks of a small-M product: contiguous 16-row-aligned ranges that
    /// cover every row once, at least one per worker (where there are enough rows), at most 8
    /// per worker, and otherwise about one per 128 KB of weight (larger tasks for small weights).
    func testSpinTasksCoverTheRowsInAlignedRanges() {
        for (N, K, format) in [(16, 64, WeightFormats.f32), (192, 576, WeightFormats.int8), (576, 576, WeightFormats.q4_1),
                               (1536, 576, WeightFormats.int8), (576, 1536, WeightFormats.f32), (4096, 512, WeightFormats.int8),
                               (1000, 96, WeightFormats.int8)] {
            let w = Weight.make(format, from: Tensor([N, K]), pool: testPool)
            for threads in [1, 2, 4] {
                let t = CPUBackend.spinTasks(w, threads: threads)
                let units = (N + 15) / 16
                XCTAssertGreaterThanOrEqual(t.count, min(units, threads), "\(N)x\(K) \(format.name) x\(threads)")
                XCTAssertLessThanOrEqual(t.count, min(units, 8 * threads), "\(N)x\(K) \(format.name) x\(threads)")
                if w.byteCount / CPUBackend.spinTaskBytes < threads { XCTAssertEqual(t.count, min(units, threads), "small: one per worker") }
                var next = 0
                for i in 0..<t.count {
                    let (n0, n1) = t.range(i)
                    if n0 >= n1 { XCTAssertEqual(n0, N); continue }
                    XCTAssertEqual(n0, next, "contiguous")
                    XCTAssertEqual(n0 % 16, 0, "16-row aligned")
                    next = n1
                }
                XCTAssertEqual(next, N, "\(N)x\(K) \(format.name) x\(threads): every row")
            }
        }
    }

    /// A batched decoding step's RMSNorm, SwiGLU, RoPE and a prompt chunk's attention on the
    /// spinning workers (sizes in `CPUBackend.spinElementwise`) give the serial functions' bits, row counts odd and even,
    /// lengths not multiples of the kernels' lanes; and a step's products with x quantized by
    /// the job's own tasks (2 to 16 rows) give the bits of x quantized first (M = 1 does that).
    func testSpinningStepOpsGiveTheSerialBits() {
        var rng = RNG(seed: 17)
        for fam in KernelFamily.available {
            let be = CPUBackend(family: fam, pool: testPool)
            for (N, C) in [(2, 2048), (3, 1500), (8, 576), (13, 1000)] {
                let x = randn([N, C], &rng), w = randn([C], &rng)
                let want = Tensor([N, C]), got = Tensor([N, C]), r0 = Tensor([N]), r1 = Tensor([N])
                RMSNorm.forward(pool: .serial, y: want.data, rstd: r0.data, x: x.data, weight: w.data, N: N, C: C, eps: 1e-5)
                be.rmsnormForward(y: got.data, rstd: r1.data, x: x.data, weight: w.data, N: N, C: C, eps: 1e-5)
                XCTAssertEqual(got.array.map(\.bitPattern), want.array.map(\.bitPattern), "\(fam) rmsnorm \(N)x\(C)")
                XCTAssertEqual(r1.array.map(\.bitPattern), r0.array.map(\.bitPattern), "\(fam) rstd \(N)x\(C)")
                let up = randn([N, C], &rng), h0 = Tensor([N, C]), h1 = Tensor([N, C])
                lora_swiglu_forward(fam.vectorID, h0.data, x.data, up.data, N * C)
                be.swigluForward(h: h1.data, gate: x.data, up: up.data, count: N * C)
                XCTAssertEqual(h1.array.map(\.bitPattern), h0.array.map(\.bitPattern), "\(fam) swiglu \(N * C)")
            }
            // RoPE of a step's rows, and a prompt chunk's attention (Tq > 1), on the workers.
            let table = RoPETable(maxT: 64, headDim: 64, theta: 10000)
            for rows in [2, 7, 21] {
                let x = randn([rows, 9, 64], &rng), want = Tensor([rows, 9, 64])
                want.copy(from: x)
                let pos = (0..<rows).map { Int32(3 * $0 + 1) }
                RoPE.forward(pool: .serial, x: want.data, positions: pos, rows: rows, nHeads: 9, headDim: 64, table: table)
                be.ropeForward(x: x.data, positions: pos, rows: rows, nHeads: 9, headDim: 64, table: table)
                XCTAssertEqual(x.array.map(\.bitPattern), want.array.map(\.bitPattern), "\(fam) rope \(rows) rows")
            }
            for (start, Tq) in [(0, 5), (7, 14)] {
                let L = start + Tq, layout = KVLayout.headMajor(capacity: 32, hd: 64)
                let q = randn([Tq, 9, 64], &rng), k = randn([3, 32, 64], &rng), v = randn([3, 32, 64], &rng)
                let want = Tensor([Tq, 9, 64]), got = Tensor([Tq, 9, 64]), s0 = Tensor([9, Tq, L]), s1 = Tensor([9, Tq, L])
                Attention.forwardCached(pool: .serial, vectorKernels: fam.vectorID, out: want.data, scores: s0.data, q: q.data,
                                        kCache: k.data, vCache: v.data, keyMask: nil, start: start, Tq: Tq, nH: 9, nKV: 3, hd: 64,
                                        layout: layout)
                be.attentionCached(out: got.data, scores: s1.data, q: q.data, kCache: k.data, vCache: v.data, keyMask: nil,
                                   start: start, Tq: Tq, nH: 9, nKV: 3, hd: 64, layout: layout)
                XCTAssertEqual(got.array.map(\.bitPattern), want.array.map(\.bitPattern), "\(fam) attention \(start)+\(Tq)")
            }
            // Products: every row of a step's product (up to 40 rows: pieces of q8Width, in
            // the decoding layout too) against the same row alone (the C families' promise;
            // OpenBLAS's sums depend on the shape).
            guard fam.kernelID != nil else { continue }
            let scratch = MatmulScratch()
            for format in [WeightFormats.q4_1, WeightFormats.q8_0] {
                let K = 576, N = 1536
                let plain = Weight.make(format, from: randn([N, K], &rng, scale: 0.1), pool: .serial)
                let x = randn([40, K], &rng)
                for (M, w) in [(2, plain), (5, plain), (16, plain), (21, plain), (21, GroupedBlockFormat.grouped(plain)),
                               (40, GroupedBlockFormat.grouped(plain))] {
                    let y = Tensor([M, N])
                    be.matmulDecoding(y: y.data, x: x.data, w: w, M: M, scratch: scratch)
                    for m in [0, M / 2, M - 1] {
                        let one = Tensor([1, N])
                        be.matmulDecoding(y: one.data, x: x.data + m * K, w: w, M: 1, scratch: scratch)
                        XCTAssertTrue((0..<N).allSatisfy { y.data[m * N + $0].bitPattern == one.data[$0].bitPattern },
                                      "\(fam) \(format.name) M \(M) row \(m)")
                    }
                }
            }
        }
    }
}
