import Foundation
import LLaMA
import Tensor

// Every CUDA kernel against the CPU op it mirrors (through CPUBackend, the reference), on
// seeded random data with awkward sizes (head dims not a multiple of 32, left padding, GQA,
// ignored targets, a vocabulary split into uneven chunks). Run on a GPU machine by
// `lora cuda-check --selftest` (scripts/gpu_check.sh); it cannot run here.

struct CUDASelfTest {
    let dev: CUDADevice
    let cpu: CPUBackend
    var rng = RNG(seed: 1234)
    var failures = 0

    /// Named tolerances: |gpu - cpu| <= abs + rel * |cpu|, element by element.
    enum Tol {
        static let elementwise = (abs: Float(1e-6), rel: Float(1e-5))   // one op, same formula
        static let reduction = (abs: Float(1e-5), rel: Float(1e-4))     // sums in another order
        static let attention = (abs: Float(1e-5), rel: Float(1e-4))     // online vs two-pass softmax
        static let gemmF32 = (abs: Float(1e-4), rel: Float(1e-4))       // cuBLAS, TF32 off
        static let gemmBF16 = (abs: Float(2e-3), rel: Float(2e-3))      // bf16 operands, f32 accumulation
    }

    mutating func random(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in rng.normal() * scale } }

    mutating func compare(_ name: String, _ gpu: [Float], _ ref: [Float], _ tol: (abs: Float, rel: Float)) {
        precondition(gpu.count == ref.count)
        var worst: Float = 0, worstIndex = 0, bad = 0
        for i in 0..<ref.count {
            let d = abs(gpu[i] - ref[i])
            if !(d <= tol.abs + tol.rel * abs(ref[i])) { bad += 1 }
            if !(d <= worst) { worst = d; worstIndex = i }
        }
        if bad > 0 { failures += 1 }
        print(String(format: "%@ %-34@ max|diff| %.3e at %d (cpu %.6g, gpu %.6g), tol %.0e+%.0e*|x|, %d of %d outside",
                     bad == 0 ? "PASS" : "FAIL", name, worst, worstIndex, ref.isEmpty ? 0 : ref[worstIndex],
                     gpu.isEmpty ? 0 : gpu[worstIndex], tol.abs, tol.rel, bad, ref.count))
    }

    func buf(_ a: [Float]) throws -> CUDABuffer { try CUDABuffer.from(a) }
    func buf(_ a: [Int32]) throws -> CUDABuffer { try CUDABuffer.from(a) }
    func read(_ b: CUDABuffer, _ n: Int) throws -> [Float] { try dev.synchronize(); return try b.read(Float.self, count: n) }

    mutating func run() throws -> Bool {
        try rmsnorm(); try rope(); try swiglu(); try embedding(); try conversions()
        try crossEntropy(); try attention(); try attentionCached(); try gemm(); try adamw()
        print(failures == 0 ? "selftest: all CUDA kernels match the CPU ops" : "selftest: \(failures) check(s) FAILED")
        return failures == 0
    }

    mutating func rmsnorm() throws {
        let N = 37, C = 300
        let x = random(N * C), w = random(C), dy = random(N * C), dx0 = random(N * C)
        var y = [Float](repeating: 0, count: N * C), rstd = [Float](repeating: 0, count: N), dx = dx0
        cpu.rmsnormForward(y: &y, rstd: &rstd, x: x, weight: w, N: N, C: C, eps: 1e-5)
        cpu.rmsnormBackward(dx: &dx, dy: dy, x: x, weight: w, rstd: rstd, N: N, C: C)
        let gx = try buf(x), gw = try buf(w), gy = try CUDABuffer(bytes: N * C * 4), gr = try CUDABuffer(bytes: N * 4)
        try dev.launch("rmsnorm_forward", grid: N, block: 256, [.buffer(gy), .buffer(gr), .buffer(gx), .buffer(gw), .int(N), .int(C), .f32(1e-5)])
        compare("rmsnorm_forward y", try read(gy, N * C), y, Tol.reduction)
        compare("rmsnorm_forward rstd", try read(gr, N), rstd, Tol.reduction)
        let gdx = try buf(dx0), gdy = try buf(dy)
        try dev.launch("rmsnorm_backward", grid: N, block: 256, [.buffer(gdx), .buffer(gdy), .buffer(gx), .buffer(gw), .buffer(gr), .int(N), .int(C)])
        compare("rmsnorm_backward dx (+=)", try read(gdx, N * C), dx, Tol.reduction)
    }

    mutating func rope() throws {
        let rows = 29, nH = 3, hd = 40, maxT = 64
        let table = RoPETable(maxT: maxT, headDim: hd, theta: 10000)
        let pos = (0..<rows).map { _ in Int32(rng.int(below: maxT)) }
        let x = random(rows * nH * hd)
        var f = x, b = x
        cpu.ropeForward(x: &f, positions: pos, rows: rows, nHeads: nH, headDim: hd, table: table)
        cpu.ropeBackward(dx: &b, positions: pos, rows: rows, nHeads: nH, headDim: hd, table: table)
        let half = maxT * hd / 2
        let gcos = try buf(Array(UnsafeBufferPointer(start: table.cos, count: half)))
        let gsin = try buf(Array(UnsafeBufferPointer(start: table.sin, count: half)))
        let gp = try buf(pos)
        for (kernel, ref) in [("rope_forward", f), ("rope_backward", b)] {
            let gx = try buf(x)
            try dev.launch(kernel, grid: dev.gridFor(rows * nH * hd / 2), block: 256,
                           [.buffer(gx), .buffer(gp), .buffer(gcos), .buffer(gsin), .int(rows), .int(nH), .int(hd)])
            compare(kernel, try read(gx, x.count), ref, Tol.elementwise)
        }
    }

    mutating func swiglu() throws {
        let n = 5000
        let g = random(n, scale: 3), u = random(n), dh = random(n)
        var h = [Float](repeating: 0, count: n), dg = h, du = h
        cpu.swigluForward(h: &h, gate: g, up: u, count: n)
        cpu.swigluBackward(dgate: &dg, dup: &du, dh: dh, gate: g, up: u, count: n)
        let gg = try buf(g), gu = try buf(u), gdh = try buf(dh)
        let gh = try CUDABuffer(bytes: n * 4), gdg = try CUDABuffer(bytes: n * 4), gdu = try CUDABuffer(bytes: n * 4)
        try dev.launch("swiglu_forward", grid: dev.gridFor(n), block: 256, [.buffer(gh), .buffer(gg), .buffer(gu), .i64(Int64(n))])
        try dev.launch("swiglu_backward", grid: dev.gridFor(n), block: 256, [.buffer(gdg), .buffer(gdu), .buffer(gdh), .buffer(gg), .buffer(gu), .i64(Int64(n))])
        compare("swiglu_forward", try read(gh, n), h, Tol.elementwise)
        compare("swiglu_backward dgate", try read(gdg, n), dg, Tol.elementwise)
        compare("swiglu_backward dup", try read(gdu, n), du, Tol.elementwise)
    }

    mutating func embedding() throws {
        let V = 50, C = 70, N = 40
        let table = random(V * C), dout = random(N * C)
        let ids = (0..<N).map { _ in Int32(rng.int(below: 10)) }     // repeated ids
        var out = [Float](repeating: 0, count: N * C)
        cpu.embedding(out: &out, ids: ids, table: table, N: N, C: C)
        var dtable = random(V * C)
        let gdt = try buf(dtable)
        Embedding.backward(pool: .serial, dtable: &dtable, dout: dout, ids: ids, N: N, C: C)
        let gt = try buf(table), gi = try buf(ids), go = try CUDABuffer(bytes: N * C * 4), gd = try buf(dout)
        try dev.launch("embedding_forward", grid: N, block: 128, [.buffer(go), .buffer(gi), .buffer(gt), .int(N), .int(C)])
        try dev.launch("embedding_backward", grid: (C + 127) / 128, block: 128, [.buffer(gdt), .buffer(gd), .buffer(gi), .int(N), .int(C)])
        compare("embedding_forward", try read(go, N * C), out, Tol.elementwise)
        compare("embedding_backward (+=)", try read(gdt, V * C), dtable, Tol.elementwise)
    }

    mutating func conversions() throws {
        let rows = 13, cols = 77
        let w = random(rows * cols, scale: 2)
        let int8 = w.withUnsafeBufferPointer { WeightFormats.int8.make(from: $0.baseAddress!, rows: rows, cols: cols, pool: .serial) }
        let bf = w.withUnsafeBufferPointer { WeightFormats.bf16.make(from: $0.baseAddress!, rows: rows, cols: cols, pool: .serial) }
        let int8Ref = int8.dense().array, bfRef = bf.dense().array
        let q = try CUDABuffer(bytes: rows * cols)
        try q.upload(int8.data, bytes: rows * cols)
        let s = try buf(Array(UnsafeBufferPointer(start: int8.scales!, count: rows)))
        let out = try CUDABuffer(bytes: rows * cols * 4), out16 = try CUDABuffer(bytes: rows * cols * 2)
        try dev.launch("dequant_int8_rows_f32", grid: dev.gridFor(rows * cols), block: 256, [.buffer(out), .buffer(q), .buffer(s), .int(rows), .int(cols)])
        compare("dequant_int8_rows_f32", try read(out, rows * cols), int8Ref, Tol.elementwise)
        let gw = try buf(w)
        try dev.launch("f32_to_bf16", grid: dev.gridFor(w.count), block: 256, [.buffer(out16), .buffer(gw), .i64(Int64(w.count))])
        try dev.launch("bf16_to_f32", grid: dev.gridFor(w.count), block: 256, [.buffer(out), .buffer(out16), .i64(Int64(w.count))])
        compare("f32_to_bf16 -> bf16_to_f32 (exact)", try read(out, w.count), bfRef, (0, 0))
        try dev.launch("dequant_int8_rows_bf16", grid: dev.gridFor(rows * cols), block: 256, [.buffer(out16), .buffer(q), .buffer(s), .int(rows), .int(cols)])
        try dev.launch("bf16_to_f32", grid: dev.gridFor(w.count), block: 256, [.buffer(out), .buffer(out16), .i64(Int64(w.count))])
        let int8bf = int8Ref.map { BF16Format.value(BF16Format.bits($0)) }
        compare("dequant_int8_rows_bf16 (exact)", try read(out, w.count), int8bf, (0, 0))
    }

    mutating func crossEntropy() throws {
        let N = 9, V = 1003
        let logits = random(N * V, scale: 4)
        var targets = (0..<N).map { _ in Int32(rng.int(below: V)) }
        targets[2] = -100; targets[7] = -100
        let scale: Float = 1 / 7
        var dl = [Float](repeating: 0, count: N * V)
        let (lossRef, count) = cpu.crossEntropy(dlogits: &dl, logits: logits, targets: targets, N: N, V: V, gradScale: scale)
        // Three uneven vocabulary chunks, as a chunked lm_head would give them.
        let chunks = [(0, 400), (400, 1000), (1000, V)]
        let gl = try buf(logits), gt = try buf(targets)
        let gm = try buf([Float](repeating: -.infinity, count: N)), gs = try CUDABuffer(bytes: N * 8), gx = try CUDABuffer(bytes: N * 4)
        try gs.zero()
        let gloss = try CUDABuffer(bytes: N * 8)
        for (v0, v1) in chunks {
            let sub = CUDABufferView(base: gl, offsetBytes: v0 * 4)
            try dev.launch("ce_chunk_forward", grid: N, block: 256, [.buffer(gm), .buffer(gs), .buffer(gx), sub.arg, .buffer(gt), .int(N), .int(v1 - v0), .int(v0), .int(V)])
        }
        try dev.launch("ce_finish", grid: 1, block: 256, [.buffer(gloss), .buffer(gm), .buffer(gs), .buffer(gx), .buffer(gt), .int(N)])
        for (v0, v1) in chunks {   // in place: dlogits replaces logits, as the CPU allows
            let sub = CUDABufferView(base: gl, offsetBytes: v0 * 4)
            try dev.launch("ce_chunk_backward", grid: N, block: 256, [sub.arg, sub.arg, .buffer(gm), .buffer(gs), .buffer(gt), .int(N), .int(v1 - v0), .int(v0), .int(V), .f32(scale)])
        }
        try dev.synchronize()
        let rowLoss = try gloss.read(Double.self, count: N)
        let loss = zip(rowLoss, targets).filter { $0.1 != -100 }.reduce(0.0) { $0 + $1.0 }
        compare("ce loss sum (\(count) rows)", [Float(loss)], [Float(lossRef)], (abs: 1e-5, rel: 1e-6))
        compare("ce dlogits (chunked, in place)", try read(gl, N * V), dl, Tol.reduction)
    }

    mutating func attention() throws {
        let B = 2, T = 33, nH = 4, nKV = 2, hd = 40
        let q = random(B * T * nH * hd), k = random(B * T * nKV * hd), v = random(B * T * nKV * hd), dout = random(B * T * nH * hd)
        var mask = [Float](repeating: 1, count: B * T)
        for j in 0..<5 { mask[T + j] = 0 }        // sequence 1: 5 left-padding tokens
        mask[T + 12] = 0                           // and a hole
        var out = [Float](repeating: 0, count: q.count), stats = [Float](repeating: 0, count: B * nH * T * 2)
        var dq = out, dk = k.map { _ in Float(0) }, dv = dk
        cpu.attentionForward(out: &out, stats: &stats, q: q, k: k, v: v, keyMask: mask, B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        cpu.attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: dout, stats: stats, q: q, k: k, v: v, keyMask: mask,
                              B: B, T: T, nH: nH, nKV: nKV, hd: hd)
        let gq = try buf(q), gk = try buf(k), gv = try buf(v), gm = try buf(mask), gdo = try buf(dout)
        let go = try CUDABuffer(bytes: q.count * 4), glse = try CUDABuffer(bytes: B * nH * T * 4), gD = try CUDABuffer(bytes: B * nH * T * 4)
        let gdq = try CUDABuffer(bytes: q.count * 4), gdk = try CUDABuffer(bytes: k.count * 4), gdv = try CUDABuffer(bytes: k.count * 4)
        let alpha = Attention.scale(hd: hd), rows = B * nH * T, warps = 4
        try dev.launch("attention_forward", grid: (rows + warps - 1) / warps, block: 32 * warps,
                       [.buffer(go), .buffer(glse), .buffer(gq), .buffer(gk), .buffer(gv), .buffer(gm), .int(B), .int(T), .int(T), .int(0), .int(nH), .int(nKV), .int(hd), .f32(alpha)])
        compare("attention_forward (GQA, padding)", try read(go, q.count), out, Tol.attention)
        try dev.launch("attention_backward_prep", grid: (rows + warps - 1) / warps, block: 32 * warps,
                       [.buffer(gD), .buffer(gdo), .buffer(go), .int(B), .int(T), .int(nH), .int(hd)])
        try dev.launch("attention_backward_dq", grid: (rows + warps - 1) / warps, block: 32 * warps,
                       [.buffer(gdq), .buffer(gdo), .buffer(glse), .buffer(gD), .buffer(gq), .buffer(gk), .buffer(gv), .buffer(gm), .int(B), .int(T), .int(nH), .int(nKV), .int(hd), .f32(alpha)])
        let krows = B * nKV * T
        try dev.launch("attention_backward_dkdv", grid: (krows + warps - 1) / warps, block: 32 * warps,
                       [.buffer(gdk), .buffer(gdv), .buffer(gdo), .buffer(glse), .buffer(gD), .buffer(gq), .buffer(gk), .buffer(gv), .buffer(gm), .int(B), .int(T), .int(nH), .int(nKV), .int(hd), .f32(alpha)])
        compare("attention_backward dq", try read(gdq, q.count), dq, Tol.attention)
        compare("attention_backward dk", try read(gdk, k.count), dk, Tol.attention)
        compare("attention_backward dv", try read(gdv, k.count), dv, Tol.attention)
    }

    /// Decoding: Tq new queries at start against a cache of start + Tq rows (in a larger one).
    mutating func attentionCached() throws {
        let maxT = 48, start = 17, Tq = 3, nH = 4, nKV = 1, hd = 64, L = start + Tq
        let q = random(Tq * nH * hd), kc = random(maxT * nKV * hd), vc = random(maxT * nKV * hd)
        var mask = [Float](repeating: 1, count: L)
        for j in 0..<4 { mask[j] = 0 }
        var out = [Float](repeating: 0, count: q.count), scores = [Float](repeating: 0, count: nH * Tq * L)
        cpu.attentionCached(out: &out, scores: &scores, q: q, kCache: kc, vCache: vc, keyMask: mask, start: start, Tq: Tq, nH: nH, nKV: nKV, hd: hd)
        let gq = try buf(q), gk = try buf(kc), gv = try buf(vc), gm = try buf(mask)
        let go = try CUDABuffer(bytes: q.count * 4), glse = try CUDABuffer(bytes: nH * Tq * 4)
        try dev.launch("attention_forward", grid: nH * Tq, block: 32,
                       [.buffer(go), .buffer(glse), .buffer(gq), .buffer(gk), .buffer(gv), .buffer(gm), .int(1), .int(Tq), .int(L), .int(start), .int(nH), .int(nKV), .int(hd), .f32(Attention.scale(hd: hd))])
        compare("attention_forward (KV cache)", try read(go, q.count), out, Tol.attention)
    }

    mutating func gemm() throws {
        let M = 37, N = 53, K = 71
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let A = random(M * K), B = random(K * N), C0 = random(M * N)
            let lda = ta ? M : K, ldb = tb ? K : N
            var C = C0
            cpu.gemm(transA: ta, transB: tb, M: M, N: N, K: K, alpha: 0.5, A: A, lda: lda, B: B, ldb: ldb, beta: 1, C: &C, ldc: N)
            let gA = try buf(A), gB = try buf(B), gC = try buf(C0)
            try dev.gemm(transA: ta, transB: tb, M: M, N: N, K: K, alpha: 0.5, A: gA, lda: lda, B: gB, ldb: ldb, beta: 1, C: gC, ldc: N)
            compare("cuBLAS f32 gemm \(ta ? "T" : "N")\(tb ? "T" : "N")", try read(gC, M * N), C, Tol.gemmF32)
        }
        // bf16 operands (a frozen weight W [N, K] and activations x [M, K]), f32 out: y = x W^T.
        let x = random(M * K), w = random(N * K)
        let xr = x.map { BF16Format.value(BF16Format.bits($0)) }, wr = w.map { BF16Format.value(BF16Format.bits($0)) }
        var y = [Float](repeating: 0, count: M * N)
        cpu.gemm(transA: false, transB: true, M: M, N: N, K: K, alpha: 1, A: xr, lda: K, B: wr, ldb: K, beta: 0, C: &y, ldc: N)
        let gx = try buf(x), gw = try buf(w), x16 = try CUDABuffer(bytes: x.count * 2), w16 = try CUDABuffer(bytes: w.count * 2)
        try dev.launch("f32_to_bf16", grid: dev.gridFor(x.count), block: 256, [.buffer(x16), .buffer(gx), .i64(Int64(x.count))])
        try dev.launch("f32_to_bf16", grid: dev.gridFor(w.count), block: 256, [.buffer(w16), .buffer(gw), .i64(Int64(w.count))])
        let gy = try CUDABuffer(bytes: M * N * 4)
        try dev.gemm(transA: false, transB: true, M: M, N: N, K: K, alpha: 1, A: x16, aType: .bf16, lda: K, B: w16, bType: .bf16, ldb: K,
                     beta: 0, C: gy, ldc: N)
        compare("cuBLAS bf16 GemmEx (f32 compute)", try read(gy, M * N), y, Tol.gemmBF16)
    }

    /// 10 AdamW steps with weight decay against LLaMA's AdamW (torch.optim.AdamW).
    mutating func adamw() throws {
        let n = 1000
        let p = Tensor([n], random(n)), g = Tensor([n])
        let opt = AdamW(params: [p], grads: [g])
        opt.weightDecay = 0.01
        let gp = try buf(p.array), gm = try buf([Float](repeating: 0, count: n)), gv = try buf([Float](repeating: 0, count: n))
        let gg = try CUDABuffer(bytes: n * 4)
        let lr = 3e-4
        for step in 1...10 {
            let grad = random(n)
            for i in 0..<n { g[i] = grad[i] }
            opt.update(lr: lr)
            try gg.upload(grad, bytes: n * 4)
            let bc1 = 1 - pow(opt.beta1, Double(step)), bc2 = (1 - pow(opt.beta2, Double(step))).squareRoot()
            try dev.launch("adamw_step", grid: dev.gridFor(n), block: 256,
                           [.buffer(gp), .buffer(gm), .buffer(gv), .buffer(gg), .i64(Int64(n)), .f32(Float(lr / bc1)), .f32(Float(opt.beta2)),
                            .f32(Float(1 - opt.beta1)), .f32(Float(1 - opt.beta2)), .f32(Float(opt.eps)), .f32(Float(bc2)),
                            .f32(Float(1 - lr * opt.weightDecay)), .int(1)])
        }
        compare("adamw_step x10 (weight decay 0.01)", try read(gp, n), p.array, Tol.elementwise)
        let blocks = 8
        let partial = try CUDABuffer(bytes: blocks * 8)
        try dev.launch("sumsq_partial", grid: blocks, block: 256, [.buffer(partial), .buffer(gg), .i64(Int64(n))])
        try dev.synchronize()
        let norm = try partial.read(Double.self, count: blocks).reduce(0, +).squareRoot()
        compare("sumsq_partial (grad norm)", [Float(norm)], [Float(opt.gradNorm())], (abs: 1e-6, rel: 1e-6))
    }
}

/// A pointer into a buffer (a vocabulary chunk of logits) as a kernel argument.
struct CUDABufferView {
    let base: CUDABuffer
    let offsetBytes: Int
    var arg: KernelArg { .i64(Int64(bitPattern: base.ptr + UInt64(offsetBytes))) }
}
