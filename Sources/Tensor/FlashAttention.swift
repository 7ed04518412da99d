// Causal grouped-query attention that keeps no [T, T] tensor for backward (the online-softmax,
// "flash" form). Same inputs, semantics and padding rules as `Attention` (see Attention.swift),
// which keeps every probability and remains, with Reference/AttentionReference.swift, the
// oracle this file is tested against.
//
// Forward, per (b, h) and causal block of 64 query rows i0..<i1 (keys 0..<i1):
//   S = alpha Q_h[i0..<i1] K_g[0..<i1]^T        [64, i1]   scratch of the worker, not kept
//   m_i = max_j S_ij, inv_i = 1 / sum_j exp(S_ij - m_i)     kept: stats [B, nH, T, 2]
//   P = exp(S - m) * inv ;  O_h[i0..<i1] = P V_g[0..<i1]
// Backward recomputes S and P block by block from the kept (m, inv), then as `Attention`:
//   dP = dO_h V_g^T,  dS = P * (dP - rowsum(P * dP)),  dQ = alpha dS K,  dK += alpha dS^T Q,  dV += P^T dO.
// Two floats per row rather than the single log-sum-exp m + log(sum): P is then recomputed by
// the very operations forward used (the same products, exp(S - m), times inv), exactly the P
// forward multiplied V with; the extra float per row is noise beside T floats.
// Memory kept per layer: 8 B nH T bytes instead of 4 B nH T^2 (at T = 512, 9 heads, B = 4:
// 147 KB instead of 38 MB). The recomputation costs one more [64, i1] x hd product per block
// in backward (about a fifth more attention work than the kept-probabilities path).
//
// Products: with `kernels` (a C family id) they are lora_attn_block_* (attn_train.c), which
// stop at the diagonal in 6-row tiles and read the keys and values transposed once per
// (b, kv group) instead of packing per call; this is training's path. With nil they are
// OpenBLAS sgemm calls on the same blocks (the `blas` family), which give `Attention`'s bits.
import CKernels

public enum FlashAttention {
    /// Query rows per block; the causal blocks of `Attention`, so the products have the same shapes.
    public static let block = Attention.causalBlock

    /// Floats of `stats`: (row max, 1 / row sum) per (b, h, query).
    public static func statsCount(B: Int, T: Int, nH: Int) -> Int { max(B * nH * T * 2, 1) }

    /// Floats of scratch one call needs on `threads` workers: two [64, T] blocks each, and the
    /// keys and values of a group transposed ([hd, T] each); forward's transposed keys of
    /// every (b, kv group) are counted by `keysScratchCount`.
    public static func scratchCount(threads: Int, T: Int, hd: Int) -> Int { max(threads, 1) * 2 * (block + hd) * max(T, 1) }
    public static func keysScratchCount(B: Int, T: Int, nKV: Int, hd: Int) -> Int { max(B * nKV * hd * T, 1) }

    public static func forward(pool: WorkerPool, out: UnsafeMutablePointer<Float>,   // [B, T, nH, hd]
                               stats: UnsafeMutablePointer<Float>, // [B, nH, T, 2], kept for backward
                               q: UnsafePointer<Float>,            // [B, T, nH, hd]
                               k: UnsafePointer<Float>,            // [B, T, nKV, hd]
                               v: UnsafePointer<Float>,            // [B, T, nKV, hd]
                               keyMask: UnsafePointer<Float>?,     // [B, T], 1 = token, 0 = padding; nil = all tokens
                               B: Int, T: Int, nH: Int, nKV: Int, hd: Int, kernels: Int32? = nil) {
        precondition(nKV > 0 && nH % nKV == 0, "nH (\(nH)) must be a multiple of nKV (\(nKV))")
        guard B > 0 && T > 0 else { return }
        let rep = nH / nKV, ldq = nH * hd, ldk = nKV * hd
        let alpha = Attention.scale(hd: hd)
        let nBlocks = (T + block - 1) / block
        // One [64, T] block of scores, then probabilities, per worker.
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: pool.threads * block * T)
        defer { scratch.deallocate() }
        // The C products read every group's keys transposed, [hd, T], made once here.
        let kt = kernels == nil ? nil : UnsafeMutablePointer<Float>.allocate(capacity: keysScratchCount(B: B, T: T, nKV: nKV, hd: hd))
        defer { kt?.deallocate() }
        if let kt {
            pool.forEach(B * nKV) { bg in
                lora_transpose(k + (bg / nKV) * T * ldk + (bg % nKV) * hd, ldk, T, hd, kt + bg * hd * T, T)
            }
        }
        // Tasks are (b, h, block), head-major, so each worker's contiguous share mixes short
        // and long blocks.
        pool.slots(B * nH * nBlocks) { slot, tasks in
            let S = scratch + slot * block * T   // [64, T], row stride T as in `Attention`
            for task in tasks {
                let bh = task / nBlocks, i0 = (task % nBlocks) * block
                let b = bh / nH, h = bh % nH, g = h / rep
                let i1 = min(T, i0 + block)
                // S[0..<i1-i0, 0..<i1] = alpha * Q_h[i0..<i1] @ K_g[0..<i1]^T
                if let fam = kernels, let kt {
                    lora_attn_block_scores(fam, i1 - i0, i0, hd, alpha, q + (b * T + i0) * ldq + h * hd, ldq,
                                           kt + (b * nKV + g) * hd * T, T, S, T)
                } else {
                    sgemm(transB: true, M: i1 - i0, N: i1, K: hd, alpha: alpha,
                          A: q + (b * T + i0) * ldq + h * hd, lda: ldq,
                          B: k + b * T * ldk + g * hd, ldb: ldk, C: S, ldc: T)
                }
                let mask = keyMask.map { $0 + b * T }
                for r in 0..<(i1 - i0) {
                    softmaxRowKeepingStats(S + r * T, allowed: i0 + r + 1, width: i1, keyMask: mask,
                                           stats: stats + (bh * T + i0 + r) * 2)
                }
                // O_h[i0..<i1] = P[0..<i1-i0, 0..<i1] @ V_g[0..<i1]
                if let fam = kernels {
                    lora_attn_block_apply(fam, i1 - i0, i0, hd, 1, S, T, v + b * T * ldk + g * hd, ldk,
                                          out + (b * T + i0) * ldq + h * hd, ldq)
                } else {
                    sgemm(M: i1 - i0, N: hd, K: i1, A: S, lda: T,
                          B: v + b * T * ldk + g * hd, ldb: ldk,
                          C: out + (b * T + i0) * ldq + h * hd, ldc: ldq)
                }
            }
        }
        if let keyMask { Attention.paddingRowsForward(out: out, v: v, keyMask: keyMask, B: B, T: T, nH: nH, nKV: nKV, hd: hd) }
    }

    /// Gradients of q, k, v; all three are overwritten (dk and dv sum over the heads of a group).
    /// `stats` is what `forward` wrote for the same q, k, keyMask.
    public static func backward(pool: WorkerPool, dq: UnsafeMutablePointer<Float>, // [B, T, nH, hd]
                                dk: UnsafeMutablePointer<Float>, // [B, T, nKV, hd]
                                dv: UnsafeMutablePointer<Float>, // [B, T, nKV, hd]
                                dout: UnsafePointer<Float>,      // [B, T, nH, hd]
                                stats: UnsafePointer<Float>,     // [B, nH, T, 2]
                                q: UnsafePointer<Float>,         // [B, T, nH, hd]
                                k: UnsafePointer<Float>,         // [B, T, nKV, hd]
                                v: UnsafePointer<Float>,         // [B, T, nKV, hd]
                                keyMask: UnsafePointer<Float>? = nil, // [B, T], as given to forward
                                B: Int, T: Int, nH: Int, nKV: Int, hd: Int, kernels: Int32? = nil) {
        precondition(nKV > 0 && nH % nKV == 0, "nH (\(nH)) must be a multiple of nKV (\(nKV))")
        guard B > 0 && T > 0 else { return }
        let rep = nH / nKV, ldq = nH * hd, ldk = nKV * hd
        let alpha = Attention.scale(hd: hd)
        defer {
            if let keyMask {
                Attention.paddingRowsBackward(dq: dq, dk: dk, dv: dv, dout: dout, q: q, k: k, v: v, keyMask: keyMask,
                                              B: B, T: T, nH: nH, nKV: nKV, hd: hd)
            }
        }
        // One (b, kv group) per task, as in `Attention.backward`: the heads of a group add into
        // the same dk and dv. With one group (or one thread) the row passes use the pool instead.
        let groups = B * nKV, parallelGroups = pool.threads > 1 && groups > 1
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: scratchCount(threads: pool.threads, T: T, hd: hd))
        defer { scratch.deallocate() }
        let lastBlock = (T - 1) / block * block
        let body = { (slot: Int, bg: Int) in
            let b = bg / nKV, g0 = bg % nKV
            let P = scratch + slot * 2 * (block + hd) * T, dS = P + block * T   // [64, T] each, row stride T
            let kt = dS + block * T, vt = kt + hd * T                              // [hd, T] each, for the C products
            if kernels != nil {
                lora_transpose(k + b * T * ldk + g0 * hd, ldk, T, hd, kt, T)
                lora_transpose(v + b * T * ldk + g0 * hd, ldk, T, hd, vt, T)
            }
            let rowPass = { (n: Int, rows: (Range<Int>) -> Void) in
                if parallelGroups { rows(0..<n) } else { pool.chunks(n, grain: max(1, 8192 / max(T, 1)), rows) }
            }
            for h in (g0 * rep)..<((g0 + 1) * rep) {
                let g = h / rep, bh = b * nH + h
                let qh = q + b * T * ldq + h * hd, dqh = dq + b * T * ldq + h * hd
                let doh = dout + b * T * ldq + h * hd
                let kg = k + b * T * ldk + g * hd, vg = v + b * T * ldk + g * hd
                let dkg = dk + b * T * ldk + g * hd, dvg = dv + b * T * ldk + g * hd
                let mask = keyMask.map { $0 + b * T }
                // Last block first: it spans every key row, so the group's first head can
                // overwrite dk and dv there and all later products add.
                for i0 in stride(from: lastBlock, through: 0, by: -block) {
                    let i1 = min(T, i0 + block), rows = i1 - i0
                    // P = softmax(alpha * Q_h[i0..<i1] @ K_g[0..<i1]^T), recomputed from the stats;
                    // dP[0..<rows, 0..<i1] = dO_h[i0..<i1] @ V_g[0..<i1]^T
                    if let fam = kernels {
                        lora_attn_block_scores(fam, rows, i0, hd, alpha, qh + i0 * ldq, ldq, kt, T, P, T)
                        lora_attn_block_scores(fam, rows, i0, hd, 1, doh + i0 * ldq, ldq, vt, T, dS, T)
                    } else {
                        sgemm(transB: true, M: rows, N: i1, K: hd, alpha: alpha, A: qh + i0 * ldq, lda: ldq,
                              B: kg, ldb: ldk, C: P, ldc: T)
                        sgemm(transB: true, M: rows, N: i1, K: hd, A: doh + i0 * ldq, lda: ldq,
                              B: vg, ldb: ldk, C: dS, ldc: T)
                    }
                    // dS = P * (dP - rowsum(P * dP)) in place; 0 beyond the diagonal.
                    rowPass(rows) { rs in
                        for r in rs {
                            let p = P + r * T, d = dS + r * T, n = i0 + r + 1
                            recomputeRow(p, allowed: n, width: i1, keyMask: mask, stats: stats + (bh * T + i0 + r) * 2)
                            let s = VectorOps.dot(p, d, count: n)
                            for j in 0..<n { d[j] = p[j] * (d[j] - s) }
                            (d + n).update(repeating: 0, count: i1 - n)
                        }
                    }
                    let beta: Float = h % rep == 0 && i0 == lastBlock ? 0 : 1
                    if let fam = kernels {
                        lora_attn_block_apply(fam, rows, i0, hd, alpha, dS, T, kg, ldk, dqh + i0 * ldq, ldq)
                        lora_attn_block_apply_t(fam, rows, i0, hd, alpha, dS, T, qh + i0 * ldq, ldq, dkg, ldk, beta == 0 ? 0 : 1)
                        lora_attn_block_apply_t(fam, rows, i0, hd, 1, P, T, doh + i0 * ldq, ldq, dvg, ldk, beta == 0 ? 0 : 1)
                        continue
                    }
                    // dQ_h[i0..<i1] = alpha * dS[0..<rows, 0..<i1] @ K_g[0..<i1]
                    sgemm(M: rows, N: hd, K: i1, alpha: alpha, A: dS, lda: T,
                          B: kg, ldb: ldk, C: dqh + i0 * ldq, ldc: ldq)
                    // dK_g[0..<i1] (+)= alpha * dS[0..<rows, 0..<i1]^T @ Q_h[i0..<i1]
                    sgemm(transA: true, M: i1, N: hd, K: rows, alpha: alpha, A: dS, lda: T,
                          B: qh + i0 * ldq, ldb: ldq, beta: beta, C: dkg, ldc: ldk)
                    // dV_g[0..<i1] (+)= P[0..<rows, 0..<i1]^T @ dO_h[i0..<i1]
                    sgemm(transA: true, M: i1, N: hd, K: rows, A: P, lda: T,
                          B: doh + i0 * ldq, ldb: ldq, beta: beta, C: dvg, ldc: ldk)
                }
            }
        }
        if parallelGroups {
            pool.slots(groups) { slot, r in for bg in r { body(slot, bg) } }
        } else {
            for bg in 0..<groups { body(0, bg) }
        }
    }

    /// `Attention.maskedSoftmaxRow` that also writes the row's (max, 1 / sum) to `stats`; a row
    /// with no allowed key becomes zeros with stats (-inf, 0).
    @inline(__always)
    static func softmaxRowKeepingStats(_ row: UnsafeMutablePointer<Float>, // [width]
                                       allowed n: Int, width: Int,
                                       keyMask: UnsafePointer<Float>?,    // [>= n]
                                       stats: UnsafeMutablePointer<Float>) { // [2]
        if let mask = keyMask {
            for j in 0..<n where mask[j] == 0 { row[j] = -.infinity }
        }
        let m = VectorOps.max(row, count: n)
        if m == -.infinity {
            row.update(repeating: 0, count: width)
            stats[0] = -.infinity; stats[1] = 0
            return
        }
        let sum = VectorOps.expShifted(y: row, x: row, shift: m, count: n) // exp(-inf) = 0
        let inv = Float(1 / sum)
        for j in 0..<n { row[j] *= inv }
        (row + n).update(repeating: 0, count: width - n)
        stats[0] = m; stats[1] = inv
    }

    /// The probabilities of a row of scores from the kept stats, by forward's own operations.
    @inline(__always)
    static func recomputeRow(_ row: UnsafeMutablePointer<Float>, // [width]
                             allowed n: Int, width: Int,
                             keyMask: UnsafePointer<Float>?,    // [>= n]
                             stats: UnsafePointer<Float>) {     // [2]
        let m = stats[0], inv = stats[1]
        if m == -.infinity { row.update(repeating: 0, count: width); return }
        if let mask = keyMask {
            for j in 0..<n where mask[j] == 0 { row[j] = -.infinity }
        }
        _ = VectorOps.expShifted(y: row, x: row, shift: m, count: n)
        for j in 0..<n { row[j] *= inv }
        (row + n).update(repeating: 0, count: width - n)
    }
}
