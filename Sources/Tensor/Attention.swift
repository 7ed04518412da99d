// Causal grouped-query attention with an optional key padding mask (HF's eager/SDPA attention
// for LlamaForCausalLM in float32). Inputs come straight from the projections (after RoPE):
//   q [B, T, nH, hd], k and v [B, T, nKV, hd], query head h reads kv head h / (nH / nKV).
// For one (b, h), with g = h / (nH / nKV):
//   S = Q_h K_g^T / sqrt(hd)                            [T, T]
//   key j is allowed for query i iff j <= i and keyMask[b, j] != 0
//   P = softmax(S) over allowed keys, 0 elsewhere       [T, T]   (kept for backward)
//   O_h = P V_g                                         [T, hd]
// A query with no allowed key (a row of left padding) is treated as Hugging Face's eager
// attention treats it: masked scores get the dtype's minimum added, so such a row's softmax is
// uniform over all T keys and its output is the mean of V. Such rows matter: the last pad
// position predicts BOS, and with train_on_inputs that prediction carries loss in transformers.
// They are handled apart from the causal blocks (`paddingRowsForward/Backward`), and their
// rows of `probs` stay 0.
//
// Q_h is the [T, hd] matrix that starts at q + h * hd with row stride nH * hd, so each product
// is a strided sgemm per (b, h) and causal block of 64 query rows, and nothing is transposed in
// memory. The (b, h) products and the softmax rows run on the pool's workers, each sgemm on
// one thread (OpenBLAS is kept single-threaded, see GEMM.swift: its own threads would pile on
// top of ours). Reference/AttentionReference.swift is the scalar triple-loop oracle.
import CKernels

public enum Attention {
    /// Query rows per causal block: rows i0..<i0+64 only multiply keys 0..<i0+64, so most of
    /// the upper triangle is skipped (at T = 256 the products cost 62.5% of the full square).
    public static let causalBlock = 64

    /// 1 / sqrt(hd) rounded to Float, as HF's `head_dim ** -0.5` enters a float32 product.
    @inline(__always)
    public static func scale(hd: Int) -> Float { Float(1 / Double(hd).squareRoot()) }

    public static func forward(pool: WorkerPool, out: UnsafeMutablePointer<Float>,   // [B, T, nH, hd]
                               probs: UnsafeMutablePointer<Float>, // [B, nH, T, T], kept for backward
                               q: UnsafePointer<Float>,            // [B, T, nH, hd]
                               k: UnsafePointer<Float>,            // [B, T, nKV, hd]
                               v: UnsafePointer<Float>,            // [B, T, nKV, hd]
                               keyMask: UnsafePointer<Float>?,     // [B, T], 1 = token, 0 = padding; nil = all tokens
                               B: Int, T: Int, nH: Int, nKV: Int, hd: Int) {
        precondition(nKV > 0 && nH % nKV == 0, "nH (\(nH)) must be a multiple of nKV (\(nKV))")
        let rep = nH / nKV, ldq = nH * hd, ldk = nKV * hd
        let alpha = scale(hd: hd)
        // Scores for every (b, h): S = alpha * Q_h [T, hd] @ K_g^T [hd, T], by causal row
        // blocks: rows i0..<i1 only need keys 0..<i1.
        eachHead(pool: pool, B * nH) { bh in
            let b = bh / nH, h = bh % nH
            let g = h / rep
            for i0 in stride(from: 0, to: T, by: causalBlock) {
                let i1 = min(T, i0 + causalBlock)
                // S[i0..<i1, 0..<i1] = alpha * Q_h[i0..<i1] @ K_g[0..<i1]^T
                sgemm(transB: true, M: i1 - i0, N: i1, K: hd, alpha: alpha,
                      A: q + (b * T + i0) * ldq + h * hd, lda: ldq,
                      B: k + b * T * ldk + g * hd, ldb: ldk,
                      C: probs + ((b * nH + h) * T + i0) * T, ldc: T)
            }
        }
        // Masked softmax of every row, all (b, h, i) at once; zeros beyond the diagonal.
        pool.chunks(B * nH * T, grain: max(1, 4096 / max(T, 1))) { rows in
            for r in rows {
                let bh = r / T, i = r % T, b = bh / nH
                maskedSoftmaxRow(probs + r * T, allowed: i + 1, width: T,
                                 keyMask: keyMask.map { $0 + b * T })
            }
        }
        // O_h = P [T, T] @ V_g [T, hd], written into out's head-h columns, by row blocks.
        eachHead(pool: pool, B * nH) { bh in
            let b = bh / nH, h = bh % nH
            let g = h / rep
            for i0 in stride(from: 0, to: T, by: causalBlock) {
                let i1 = min(T, i0 + causalBlock)
                // O_h[i0..<i1] = P[i0..<i1, 0..<i1] @ V_g[0..<i1]
                sgemm(M: i1 - i0, N: hd, K: i1,
                      A: probs + ((b * nH + h) * T + i0) * T, lda: T,
                      B: v + b * T * ldk + g * hd, ldb: ldk,
                      C: out + (b * T + i0) * ldq + h * hd, ldc: ldq)
            }
        }
        if let keyMask { paddingRowsForward(out: out, v: v, keyMask: keyMask, B: B, T: T, nH: nH, nKV: nKV, hd: hd) }
    }

    /// Gradients of q, k, v; all three are overwritten (dk and dv sum over the heads of a group).
    ///   dP = dO_h V_g^T                       dS = P * (dP - rowsum(P * dP))
    ///   dQ_h = alpha dS K_g                   dK_g += alpha dS^T Q_h         dV_g += P^T dO_h
    public static func backward(pool: WorkerPool, dq: UnsafeMutablePointer<Float>, // [B, T, nH, hd]
                                dk: UnsafeMutablePointer<Float>, // [B, T, nKV, hd]
                                dv: UnsafeMutablePointer<Float>, // [B, T, nKV, hd]
                                dout: UnsafePointer<Float>,      // [B, T, nH, hd]
                                probs: UnsafePointer<Float>,     // [B, nH, T, T]
                                q: UnsafePointer<Float>,         // [B, T, nH, hd]
                                k: UnsafePointer<Float>,         // [B, T, nKV, hd]
                                v: UnsafePointer<Float>,         // [B, T, nKV, hd]
                                keyMask: UnsafePointer<Float>? = nil, // [B, T], as given to forward
                                scratch: UnsafeMutablePointer<Float>? = nil, // [backwardScratchCount]; nil = allocate
                                B: Int, T: Int, nH: Int, nKV: Int, hd: Int) {
        precondition(nKV > 0 && nH % nKV == 0, "nH (\(nH)) must be a multiple of nKV (\(nKV))")
        let rep = nH / nKV, ldq = nH * hd, ldk = nKV * hd
        let alpha = scale(hd: hd)
        defer {
            if let keyMask {
                paddingRowsBackward(dq: dq, dk: dk, dv: dv, dout: dout, q: q, k: k, v: v, keyMask: keyMask,
                                    B: B, T: T, nH: nH, nKV: nKV, hd: hd)
            }
        }
        // One [T, T] dS per (b, group) task, so groups can run on separate workers; the heads of a
        // group stay on one task because they add into the same dk and dv.
        let groups = B * nKV, parallelGroups = pool.threads > 1 && groups > 1
        let dSAll = scratch ?? .allocate(capacity: backwardScratchCount(B: B, T: T, nKV: nKV))
        defer { if scratch == nil { dSAll.deallocate() } }
        let lastBlock = (T - 1) / causalBlock * causalBlock
        let body = { (bg: Int) in
            let b = bg / nKV, g0 = bg % nKV
            let dS = dSAll + (parallelGroups ? bg * T * T : 0)
            for h in (g0 * rep)..<((g0 + 1) * rep) {
                let g = h / rep
                let P = probs + (b * nH + h) * T * T
                let qh = q + b * T * ldq + h * hd, dqh = dq + b * T * ldq + h * hd
                let doh = dout + b * T * ldq + h * hd
                let kg = k + b * T * ldk + g * hd, vg = v + b * T * ldk + g * hd
                let dkg = dk + b * T * ldk + g * hd, dvg = dv + b * T * ldk + g * hd
                for i0 in stride(from: 0, to: T, by: causalBlock) {
                    let i1 = min(T, i0 + causalBlock)
                    // dP[i0..<i1, 0..<i1] = dO_h[i0..<i1] @ V_g[0..<i1]^T
                    sgemm(transB: true, M: i1 - i0, N: i1, K: hd, A: doh + i0 * ldq, lda: ldq,
                          B: vg, ldb: ldk, C: dS + i0 * T, ldc: T)
                }
                // dS = P * (dP - rowsum(P * dP)) in place; 0 beyond the diagonal.
                let rowsOf = { (rows: Range<Int>) in
                    for i in rows {
                        let p = P + i * T, d = dS + i * T
                        let n = i + 1
                        let s = VectorOps.dot(p, d, count: n)
                        for j in 0..<n { d[j] = p[j] * (d[j] - s) }
                        (d + n).update(repeating: 0, count: T - n)
                    }
                }
                if parallelGroups { rowsOf(0..<T) } else { pool.chunks(T, grain: max(1, 8192 / max(T, 1)), rowsOf) }
                // Last block first: it spans every key row, so the group's first head can
                // overwrite dk and dv there and all later products add.
                for i0 in stride(from: lastBlock, through: 0, by: -causalBlock) {
                    let i1 = min(T, i0 + causalBlock)
                    let beta: Float = h % rep == 0 && i0 == lastBlock ? 0 : 1
                    // dQ_h[i0..<i1] = alpha * dS[i0..<i1, 0..<i1] @ K_g[0..<i1]
                    sgemm(M: i1 - i0, N: hd, K: i1, alpha: alpha, A: dS + i0 * T, lda: T,
                          B: kg, ldb: ldk, C: dqh + i0 * ldq, ldc: ldq)
                    // dK_g[0..<i1] (+)= alpha * dS[i0..<i1, 0..<i1]^T @ Q_h[i0..<i1]
                    sgemm(transA: true, M: i1, N: hd, K: i1 - i0, alpha: alpha, A: dS + i0 * T, lda: T,
                          B: qh + i0 * ldq, ldb: ldq, beta: beta, C: dkg, ldc: ldk)
                    // dV_g[0..<i1] (+)= P[i0..<i1, 0..<i1]^T @ dO_h[i0..<i1]
                    sgemm(transA: true, M: i1, N: hd, K: i1 - i0, A: P + i0 * T, lda: T,
                          B: doh + i0 * ldq, ldb: ldq, beta: beta, C: dvg, ldc: ldk)
                }
            }
        }
        if parallelGroups { pool.forEach(groups, body) } else { for bg in 0..<groups { body(bg) } }
    }

    /// Floats of scratch `backward` needs: one [T, T] dS per (b, kv group).
    public static func backwardScratchCount(B: Int, T: Int, nKV: Int) -> Int { max(B * nKV * T * T, 1) }

    /// Runs `body(b * nH + h)` for every head on the pool's workers.
    @inline(__always)
    static func eachHead(pool: WorkerPool, _ n: Int, _ body: (Int) -> Void) {
        if pool.threads > 1 { pool.forEach(n, body) } else { for i in 0..<n { body(i) } }
    }

    

    /// Number of leading padding tokens of row b: queries 0..<n have no allowed key.
    @inline(__always)
    static func leadingPadding(_ keyMask: UnsafePointer<Float>, b: Int, T: Int) -> Int {
        var n = 0
        while n < T && keyMask[b * T + n] == 0 { n += 1 }
        return n
    }

    /// out[b, i, h] = mean over all T keys of V_g, for the fully masked rows i (see the top).
    static func paddingRowsForward(out: UnsafeMutablePointer<Float>, // [B, T, nH, hd]
                                   v: UnsafePointer<Float>,          // [B, T, nKV, hd]
                                   keyMask: UnsafePointer<Float>,    // [B, T]
                                   B: Int, T: Int, nH: Int, nKV: Int, hd: Int) {
        let rep = nH / nKV, ldq = nH * hd, ldk = nKV * hd
        for b in 0..<B {
            let n = leadingPadding(keyMask, b: b, T: T)
            guard n > 0 else { continue }
            for g in 0..<nKV {
                var mean = [Float](repeating: 0, count: hd)
                for j in 0..<T { let vj = v + (b * T + j) * ldk + g * hd; for c in 0..<hd { mean[c] += vj[c] } }
                for c in 0..<hd { mean[c] /= Float(T) }
                for i in 0..<n { for h in (g * rep)..<((g + 1) * rep) {
                    (out + (b * T + i) * ldq + h * hd).update(from: mean, count: hd)
                } }
            }
        }
    }

    /// Gradients through the fully masked rows (uniform P = 1/T over all keys), added to the
    /// causal part's: dS_j = (dP_j - mean(dP)) / T, dq_i = alpha sum_j dS_j k_j,
    /// dk_j += alpha dS_j q_i, dv_j += dO_i / T. These dq/dk terms are what autograd computes
    /// through HF's `scores + min` (the float result no longer depends on the scores, so finite
    /// differences see 0 there); PEFT's gradients include them, and so do ours.
    static func paddingRowsBackward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                    dv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                                    q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                    keyMask: UnsafePointer<Float>, B: Int, T: Int, nH: Int, nKV: Int, hd: Int) {
        let rep = nH / nKV, ldq = nH * hd, ldk = nKV * hd
        let alpha = scale(hd: hd), invT = 1 / Float(T)
        var dS = [Float](repeating: 0, count: T)
        for b in 0..<B {
            let n = leadingPadding(keyMask, b: b, T: T)
            for i in 0..<n {
                for h in 0..<nH {
                    let g = h / rep
                    let doi = dout + (b * T + i) * ldq + h * hd, qi = q + (b * T + i) * ldq + h * hd
                    let dqi = dq + (b * T + i) * ldq + h * hd
                    var mean: Float = 0
                    for j in 0..<T {
                        dS[j] = VectorOps.dot(doi, v + (b * T + j) * ldk + g * hd, count: hd)
                        mean += dS[j]
                    }
                    mean *= invT
                    dqi.update(repeating: 0, count: hd)
                    for j in 0..<T {
                        let d = (dS[j] - mean) * invT
                        let kj = k + (b * T + j) * ldk + g * hd
                        let dkj = dk + (b * T + j) * ldk + g * hd, dvj = dv + (b * T + j) * ldk + g * hd
                        for c in 0..<hd {
                            dqi[c] += alpha * d * kj[c]
                            dkj[c] += alpha * d * qi[c]
                            dvj[c] += invT * doi[c]
                        }
                    }
                }
            }
        }
    }

    /// Attention of one sequence's new queries against a KV cache, for generation (`layout`:
    /// where the cache's rows sit; nil is [maxT, nKV, hd]). The queries
    /// sit at absolute positions start..<start+Tq and the cache already holds keys and values
    /// for positions 0..<start+Tq (the caller wrote the new ones first). Query i sees keys
    /// 0...start+i whose keyMask is not 0. Prefill is start = 0, Tq = prompt length; a decode
    /// step is Tq = 1. Equal to `forward` on the same rows up to float rounding (the decode step
    /// sums in a different order); each row the same bits whatever Tq and start are.
    /// `vectorKernels` is the C family (LORA_FAMILY_*) of the decode step's dot products and
    /// axpys (FMA where the CPU has it).
    public static func forwardCached(pool: WorkerPool, vectorKernels fam: Int32, out: UnsafeMutablePointer<Float>,    // [Tq, nH, hd]
                                     scores: UnsafeMutablePointer<Float>, // [nH, Tq, start + Tq], scratch
                                     q: UnsafePointer<Float>,             // [Tq, nH, hd]
                                     kCache: UnsafePointer<Float>,        // [maxT, nKV, hd] (or as `layout` says), rows 0..<start+Tq used
                                     vCache: UnsafePointer<Float>,        // as kCache
                                     keyMask: UnsafePointer<Float>?,      // [start + Tq]; nil = all tokens
                                     start: Int, Tq: Int, nH: Int, nKV: Int, hd: Int, layout: KVLayout? = nil,
                                     spread: ((Int, (Int) -> Void) -> Void)? = nil) {
        precondition(nKV > 0 && nH % nKV == 0, "nH (\(nH)) must be a multiple of nKV (\(nKV))")
        let ldq = nH * hd, L = start + Tq, kv = layout ?? .interleaved(nKV: nKV, hd: hd)
        if Tq == 1 {
            // One query per head: dot products and axpys. Parallel over heads only when the
            // context is long enough to pay for waking a worker (~10 us).
            let heads = { (r: Range<Int>) in
                decodeHeads(r, vectorKernels: fam, out: out, scores: scores, q: q, kCache: kCache, vCache: vCache,
                            keyMask: keyMask, L: L, nH: nH, nKV: nKV, hd: hd, layout: kv)
            }
            if nH * L * hd >= 1 << 16 { pool.chunks(nH, heads) } else { heads(0..<nH) }
            return
        }
        // Every query row as a decode step computes it: its own keys 0...start+i, dot products,
        // softmax, axpys. A row's bits then do not depend on the rows that came with it (a
        // prompt fed whole, in chunks, or after a start taken from the server's prompt cache,
        // and a prompt row against a decoded one); two GEMMs per head would be faster on long
        // prompts, but their bits change with the row count.
        // Rows in blocks of 4 per head: each key is loaded once for the block's scores (the
        // kernel gives every row lora_attn_scores' bits), then each row as decodeHead goes on.
        let rep = nH / nKV, ldk = kv.row, alpha = scale(hd: hd), blocks = (Tq + 3) / 4
        // `spread` (a backend's own workers) runs the tasks one by one where given.
        let run: (Range<Int>) -> Void = { tasks in
            for t in tasks {
                let h = t / blocks, i0 = (t % blocks) * 4, i1 = min(Tq, i0 + 4), g = h / rep
                lora_attn_scores_rows(fam, q + i0 * ldq + h * hd, ldq, i1 - i0, kCache + g * kv.head, ldk, start + i0 + 1, hd, alpha,
                                      scores + (h * Tq + i0) * L, L)
                for i in i0..<i1 {
                    let Li = start + i + 1, s = scores + (h * Tq + i) * L, o = out + i * ldq + h * hd
                    if let keyMask, !(0..<Li).contains(where: { keyMask[$0] != 0 }) {
                        // A padding query that sees no key: uniform over all L keys, as
                        // `forward` (and transformers' additive mask) gives it. No real token reads it.
                        for j in 0..<L { s[j] = 1 / Float(L) }
                        lora_attn_wsum(fam, s, vCache + g * kv.head, ldk, L, hd, o)
                        continue
                    }
                    maskedSoftmaxRow(s, allowed: Li, width: Li, keyMask: keyMask, emptyValue: 1 / Float(Li))
                    lora_attn_wsum(fam, s, vCache + g * kv.head, ldk, Li, hd, o)
                }
            }
        }
        if let spread {
            spread(nH * blocks) { t in run(t ..< t + 1) }
        } else {
            pool.chunks(nH * blocks, grain: max(1, 2048 / max(L * hd, 1)), run)
        }
    }

    /// Head h of a decode step (one query against L cached keys): `forwardCached` with Tq = 1
    /// runs this per head, on one thread or several; `scores` is this head's [L] scratch.
    @inline(__always)
    public static func decodeHead(_ h: Int, vectorKernels fam: Int32, out: UnsafeMutablePointer<Float>,
                                  scores s: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                                  kCache: UnsafePointer<Float>, vCache: UnsafePointer<Float>, keyMask: UnsafePointer<Float>?,
                                  L: Int, nH: Int, nKV: Int, hd: Int, layout: KVLayout? = nil) {
        let kv = layout ?? .interleaved(nKV: nKV, hd: hd)
        let g = h / (nH / nKV), ldk = kv.row, alpha = scale(hd: hd)
        let qh = q + h * hd, o = out + h * hd
        // Scores, then the weighted sum of values, each one C call over the L keys (a call
        // per key cost more than its 64 multiply-adds).
        lora_attn_scores(fam, qh, kCache + g * kv.head, ldk, L, hd, alpha, s)
        maskedSoftmaxRow(s, allowed: L, width: L, keyMask: keyMask, emptyValue: 1 / Float(L))
        lora_attn_wsum(fam, s, vCache + g * kv.head, ldk, L, hd, o)
    }

    /// Query heads `heads` of a decode step, with decodeHead's bits per head: the heads of each
    /// key-value head (GQA's group) in one call, so each cached key and value is read once for
    /// them. `scores` is the step's [nH, L] scratch.
    @inline(__always)
    public static func decodeHeads(_ heads: Range<Int>, vectorKernels fam: Int32, out: UnsafeMutablePointer<Float>,
                                   scores: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                                   kCache: UnsafePointer<Float>, vCache: UnsafePointer<Float>, keyMask: UnsafePointer<Float>?,
                                   L: Int, nH: Int, nKV: Int, hd: Int, layout: KVLayout? = nil) {
        let kv = layout ?? .interleaved(nKV: nKV, hd: hd)
        let rep = nH / nKV, ldk = kv.row
        var h0 = heads.lowerBound
        while h0 < heads.upperBound {
            let g = h0 / rep, h1 = min(heads.upperBound, (g + 1) * rep), s = scores + h0 * L
            lora_attn_scores_heads(fam, q + h0 * hd, h1 - h0, kCache + g * kv.head, ldk, L, hd, scale(hd: hd), s, L)
            for i in 0..<(h1 - h0) { maskedSoftmaxRow(s + i * L, allowed: L, width: L, keyMask: keyMask, emptyValue: 1 / Float(L)) }
            lora_attn_wsum_heads(fam, s, L, h1 - h0, vCache + g * kv.head, ldk, L, hd, out + h0 * hd)
            h0 = h1
        }
    }

    /// Softmax of row[0..<allowed] in place, skipping keys whose mask is 0, and zeros
    /// row[allowed..<width]. A row with no allowed key becomes all zeros.
    @inline(__always)
    static func maskedSoftmaxRow(_ row: UnsafeMutablePointer<Float>, // [width]
                                 allowed n: Int, width: Int,
                                 keyMask: UnsafePointer<Float>?,    // [>= n]
                                 emptyValue: Float = 0) {
        if let mask = keyMask {
            for j in 0..<n where mask[j] == 0 { row[j] = -.infinity }
        }
        let m = VectorOps.max(row, count: n)
        if m == -.infinity {
            // No allowed key: `emptyValue` everywhere (0, or 1/width for HF's uniform row).
            row.update(repeating: emptyValue, count: width)
            return
        }
        let sum = VectorOps.expShifted(y: row, x: row, shift: m, count: n) // exp(-inf) = 0
        let inv = Float(1 / sum)
        for j in 0..<n { row[j] *= inv }
        (row + n).update(repeating: 0, count: width - n)
    }
}

/// Where key (and value) row t of key-value head g sits in a cache: base + t * row + g * head.
public struct KVLayout: Sendable, Equatable {
    public let row: Int, head: Int
    public init(row: Int, head: Int) { self.row = row; self.head = head }
    /// [T, nKV, hd]: a position's heads side by side, as the projections write them.
    public static func interleaved(nKV: Int, hd: Int) -> KVLayout { KVLayout(row: nKV * hd, head: hd) }
    /// [nKV, capacity, hd]: each head's rows contiguous. A decode step then streams whole cache
    /// lines; interleaved, a head reads 256 of every 768 bytes (SmolLM2) and a step's attention
    /// from memory took 1.5x (100 keys) to 1.7x (400 keys) as long on one Zen 4 core.
    public static func headMajor(capacity: Int, hd: Int) -> KVLayout { KVLayout(row: hd, head: capacity * hd) }

    /// Writes n rows of [nKV * hd] (as the projections give them) at positions start..<start+n.
    public func store(_ src: UnsafePointer<Float>, rows n: Int, at start: Int, into base: UnsafeMutablePointer<Float>, nKV: Int, hd: Int) {
        if self == .interleaved(nKV: nKV, hd: hd) {
            (base + start * row).update(from: src, count: n * nKV * hd)
            return
        }
        for t in 0..<n {
            for g in 0..<nKV { (base + g * head + (start + t) * row).update(from: src + (t * nKV + g) * hd, count: hd) }
        }
    }

    /// Copies rows 0..<n of every head from one cache (this layout) to another (`to`).
    public func copyRows(_ n: Int, from src: UnsafePointer<Float>, to dst: UnsafeMutablePointer<Float>, layout to: KVLayout, nKV: Int, hd: Int) {
        if row == hd && to.row == hd {
            for g in 0..<nKV { (dst + g * to.head).update(from: src + g * head, count: n * hd) }
            return
        }
        for t in 0..<n {
            for g in 0..<nKV { (dst + g * to.head + t * to.row).update(from: src + g * head + t * row, count: hd) }
        }
    }
}
