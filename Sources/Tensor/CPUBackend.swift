import CKernels

/// Scratch memory for dequantized weight tiles on the OpenBLAS path. Owned by the caller (one
/// per model run or request), sized once, so products with quantized weights allocate nothing.
/// Each worker uses its own slice.
public final class MatmulScratch: @unchecked Sendable {
    public let capacity: Int
    public let data: UnsafeMutablePointer<Float>
    public init(capacity: Int = 1 << 18) {
        self.capacity = capacity
        data = .allocate(capacity: capacity)
    }
    deinit {
        data.deallocate()
        llmInt8?.deallocate()
    }

    /// LLM.int8()'s quantized activations (CPUBackend.llmInt8Forward), grown on demand: a
    /// training step's are megabytes, which `capacity` is not sized for.
    private var llmInt8: UnsafeMutableRawPointer?
    private var llmInt8Bytes = 0
    func llmInt8Space(_ bytes: Int) -> UnsafeMutableRawPointer {
        if llmInt8Bytes < bytes {
            llmInt8?.deallocate()
            llmInt8 = .allocate(byteCount: bytes, alignment: 64)
            llmInt8Bytes = bytes
        }
        return llmInt8!
    }
}

/// A Swift closure handed through the C pool's context pointer.
final class TaskBox {
    let body: (Int) -> Void
    init(_ body: @escaping (Int) -> Void) { self.body = body }
}

/// The CPU backend: the `Tensor` ops on a worker pool, and the frozen-weight products on the
/// C kernels of one family (chosen once, at creation) or on OpenBLAS.
public final class CPUBackend: Backend, @unchecked Sendable {
    public let family: KernelFamily
    public let pool: WorkerPool
    /// How decoding products with Q4_0 / Q4_1 / Q8_0 weights are computed.
    public let decoding: DecodeArithmetic

    /// Spinning workers for the decoding step's GEMVs (see spinpool.c); nil with one thread.
    private let spin: OpaquePointer?

    /// Training attention's products: the family's C tiles (attn_train.c), or with
    /// `blasAttention` (and always for the `blas` family) OpenBLAS sgemm, whose bits are
    /// `Attention`'s. The tiles round differently in the last bit; LLM.int8()'s activation
    /// rounding can turn that into a whole int8 step, so its bit-level parity suite pins sgemm.
    public let attentionKernels: Int32?

    public init(family: KernelFamily = .best, pool: WorkerPool, decoding: DecodeArithmetic = .q8, blasAttention: Bool = false) {
        precondition(family.isAvailable, "kernel family \(family) is not available on this CPU")
        _ = BLASThreads.single
        self.family = family
        self.pool = pool
        self.decoding = decoding
        attentionKernels = blasAttention ? nil : family.kernelID
        spin = pool.threads > 1 ? lora_pool_create(Int32(pool.threads)) : nil
    }

    deinit { if let spin { lora_pool_destroy(spin) } }

    /// A decode step's attention (heads x context x head size) at least this large is split
    /// over the spinning workers.
    static let spinAttention = 1 << 14
    /// Weights at least this large are split over the spinning workers when decoding.
    static let spinBytes = 1 << 16

    public var name: String { "cpu \(family.rawValue) x\(pool.threads)" + (decoding == .q8 ? "" : " decode \(decoding.rawValue)") }

    /// Forward with M up to this uses the unpacked small-M kernel (decoding); measured on Zen 5
    /// it is as fast as the packed GEMM up to M = 24..32 (packing W^T costs ~40 us per 576 x 576).
    static let smallM = 16
    /// The rows a decoding call on a weight with the integer GEMV (Q4_0 / Q4_1 / Q8_0, `.q8`)
    /// takes in one pass over it: a server step of 7 decoding rows and a 14-token prompt rest
    /// read every weight twice in pieces of 16, and took 1.9x an 8-row step (Zen 4; the
    /// kernels loop over rows in passes of 2-4 from L1, each row the same bits at any M).
    static let q8Width = 32
    /// `q8Width` for a weight the integer GEMV takes while decoding, else `smallM`.
    static func decodingWidth(_ w: Weight, decoding: DecodeArithmetic) -> Int {
        guard decoding == .q8, let fmt = w.format.kernelID, lora_q8_gemv_format(fmt) != 0, w.cols % 32 == 0 else { return smallM }
        return q8Width
    }
    /// Largest M x K that the small-M path of `gemm` copies to apply alpha (LoRA's u, r wide).
    static let smallScaled = 16 * 256
    static let f32Format = F32Format().kernelID!
    /// Below this many flops (2 M N K) a product stays on one thread: splitting costs more.
    static let parallelFlops = 1 << 22
    /// Decoding (M = 1) is bound by memory bandwidth, which one core nearly saturates on Zen 5,
    /// while a split adds dispatch overhead to every matmul: the small-M kernel splits only
    /// above `parallelFlops` or for weights this large (the lm_head).
    static let parallelBytes = 1 << 24
    /// Rows or columns per OpenBLAS call when a product is split over the workers.
    static let blasBlock = 64

    // MARK: products with a frozen weight

    /// y[M, out] (+)= x[M, in] @ W^T.
    public func matmul(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int,
                       accumulate: Bool, scratch: MatmulScratch) {
        matmul(y: y, x: x, w: w, M: M, accumulate: accumulate, scratch: scratch, small: Self.smallM)
    }

    /// `matmul` with the small-M (GEMV) path taken up to `small` rows: `smallM`, or for a
    /// decoding call on an integer-GEMV weight, `q8Width`.
    private func matmul(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int,
                        accumulate: Bool, scratch: MatmulScratch, small: Int) {
        let N = w.rows, K = w.cols
        if M == 0 || N == 0 { return }
        if let f = w.format as? Int8RowsFormat, let threshold = f.outlierThreshold {
            llmInt8Forward(y: y, x: x, w: w, M: M, threshold: threshold, accumulate: accumulate, scratch: scratch)
            return
        }
        guard let fam = family.kernelID, let fmt = w.format.kernelID else {
            blasForward(y: y, x: x, w: w, M: M, accumulate: accumulate, scratch: scratch)
            return
        }
        if M > small, decoding == .q8, w.format is GroupedBlockFormat {
            // A decoding-only weight (DoRA's prompt rows land here): the integer GEMV in pieces,
            // as matmulDecoding; the grouped layout has no packed-GEMM kernel.
            let piece = Self.decodingWidth(w, decoding: decoding)
            for m0 in stride(from: 0, to: M, by: piece) {
                matmul(y: y + m0 * N, x: x + m0 * K, w: w, M: min(piece, M - m0), accumulate: accumulate, scratch: scratch, small: piece)
            }
            return
        }
        let acc: Int32 = accumulate ? 1 : 0
        let scales = w.scales
        if M <= small {
            if !(decoding == .q8 && lora_q8_gemv_format(fmt) != 0 && K % 32 == 0) && w.format is GroupedBlockFormat {
                // Only the integer GEMV reads the grouped layout (LORA_DECODE=f32 lands here).
                blasForward(y: y, x: x, w: w, M: M, accumulate: accumulate, scratch: scratch)
                return
            }
            if let spin, w.byteCount >= Self.spinBytes {
                let threads = Int(lora_pool_threads(spin))
                let (rows, prepare) = smallRows(fam, fmt, x: x, M: M, K: K, scratch: scratch, deferring: true)
                // x's rows quantized by the job's first tasks (see smallRows(deferring:)).
                let prep = prepare == nil ? 0 : Self.prepareTasks(M: M, threads: threads)
                if prep == 0 { prepare?(0, M) }
                let tasks = Self.spinTasks(w, threads: threads)
                let done = UnsafeMutablePointer<Int>.allocate(capacity: 1)
                done.initialize(to: 0)
                defer { done.deallocate() }
                runSpin(spin, prep + tasks.count) { j in
                    if j < prep {
                        prepare!(j * M / prep, (j + 1) * M / prep)
                        lora_count_add(done)
                        return
                    }
                    let (n0, n1) = tasks.range(j - prep)
                    lora_count_wait(done, prep)
                    if n0 < n1 { rows(w, y, acc, n0, n1) }
                }
                return
            }
            let rows = smallRows(fam, fmt, x: x, M: M, K: K, scratch: scratch)
            // Rows of W in blocks of 16 per worker.
            let units = (N + 15) / 16
            let split = 2 * M * N * K >= Self.parallelFlops || w.byteCount >= Self.parallelBytes
            pool.chunks(units, grain: split ? 1 : units) { r in
                rows(w, y, acc, r.lowerBound * 16, min(N, r.upperBound * 16))
            }
            return
        }
        if w.format is GroupedBlockFormat {
            blasForward(y: y, x: x, w: w, M: M, accumulate: accumulate, scratch: scratch)
            return
        }
        split(columns: N, flops: 2 * M * N * K, fam) { n0, n1 in
            lora_gemm_abt(fam, fmt, M, n0, n1, K, x, K, w.data, K, scales, y, N, acc)
        }
    }

    /// The small-M (decoding) product's x, prepared once per call for every worker and every
    /// weight of format `fmt` and depth K that shares it: quantized to q8 for the integer GEMV,
    /// or in fixed point for int8 rows with VNNI (the bits of lora_gemv_abt's own conversion,
    /// at every M), or read as f32. Returns the kernel for rows n0..<n1 of one such weight.
    /// The same arithmetic at every M <= 16, so that a row's result does not depend on the rows
    /// beside it: a request served alone and batched gives the same tokens. (Until session 6
    /// one-row Q8_0 products with weights under 1 MB stayed f32, a little faster from cache,
    /// which broke that for Q8_0 models of SmolLM2's size.)
    private func smallRows(_ fam: Int32, _ fmt: Int32, x: UnsafePointer<Float>, M: Int, K: Int, scratch: MatmulScratch)
        -> (Weight, UnsafeMutablePointer<Float>, Int32, Int, Int) -> Void {
        smallRows(fam, fmt, x: x, M: M, K: K, scratch: scratch, deferring: false).rows
    }

    /// As above; with `deferring`, the q8 path leaves x's quantization to the caller, who runs
    /// `prepare(r0, r1)` over rows (any split: each row is quantized alone, so the same bits)
    /// before any `rows` call: in a spinning job, as its first tasks, the rows of a batched
    /// step are quantized on both cores instead of on the caller while the workers wait (8
    /// rows: 0.5-0.7 ms of a 11-13 ms serve step on Zen 4). `prepare` is nil when nothing is
    /// left to do.
    private func smallRows(_ fam: Int32, _ fmt: Int32, x: UnsafePointer<Float>, M: Int, K: Int, scratch: MatmulScratch,
                           deferring: Bool)
        -> (rows: (Weight, UnsafeMutablePointer<Float>, Int32, Int, Int) -> Void, prepare: ((Int, Int) -> Void)?) {
        let nb = K / 32, bytes = M * K + 8 * M * nb
        let q8 = decoding == .q8 && lora_q8_gemv_format(fmt) != 0 && K % 32 == 0
            && bytes <= scratch.capacity * MemoryLayout<Float>.stride
        let raw = UnsafeMutableRawPointer(scratch.data)
        if q8 {
            let q = raw.assumingMemoryBound(to: Int8.self)
            let d = (raw + M * K).assumingMemoryBound(to: Float.self)  // M * K is a multiple of 32
            let sums = (raw + M * K + 4 * M * nb).assumingMemoryBound(to: Int32.self)
            let prepare = { (r0: Int, r1: Int) in
                lora_q8_quantize(fam, r1 - r0, K, x + r0 * K, K, q + r0 * K, d + r0 * nb, sums + r0 * nb)
            }
            let rows = { (w: Weight, y: UnsafeMutablePointer<Float>, acc: Int32, n0: Int, n1: Int) in
                lora_q8_gemv(fam, fmt, M, n0, n1, K, q, d, sums, w.data, K, y, w.rows, acc)
            }
            if deferring { return (rows, prepare) }
            prepare(0, M)
            return (rows, nil)
        }
        let units = raw.assumingMemoryBound(to: Double.self), planes = (raw + 8 * M).assumingMemoryBound(to: UInt8.self)
        if fmt == LORA_FORMAT_I8_ROWS && lora_i8_fixed_wanted(fam, K) != 0
            && 8 * M + lora_i8_fixed_bytes(M, K) <= scratch.capacity * MemoryLayout<Float>.stride
            && lora_i8_fixed_prepare(fam, M, K, x, K, planes, units) != 0 {
            return ({ w, y, acc, n0, n1 in lora_i8_fixed_gemv(fam, M, n0, n1, K, planes, units, w.data, K, w.scales, y, w.rows, acc) }, nil)
        }
        return ({ w, y, acc, n0, n1 in lora_gemv_abt(fam, fmt, M, n0, n1, K, x, K, w.data, K, w.scales, y, w.rows, acc) }, nil)
    }

    /// How many tasks of a spinning job quantize a step's M rows (`smallRows(deferring:)`):
    /// none for one row (the other core would only wait for it), else up to one per worker.
    private static func prepareTasks(M: Int, threads: Int) -> Int { M >= 2 ? min(M, threads) : 0 }

    /// A small-M product's tasks on the spinning workers: ranges of 16-row units, taken by
    /// whichever worker is free. At least one per worker, at most 8 per worker, and otherwise
    /// one per `spinTaskBytes` of the weight: each claim costs a cross-core atomic and starts a
    /// new memory stream, and SmolLM2's 16-row tasks (9-55 KB) spent ~10% of a decoding step on
    /// that (2 cores, Zen 4: `stored` 250-280 -> 300-340 tokens/s, `llm_int8` 157-180 -> 187-212).
    struct SpinTasks {
        let N: Int, count: Int, per: Int
        func range(_ i: Int) -> (Int, Int) { (min(N, i * per * 16), min(N, (i + 1) * per * 16)) }
    }
    static let spinTaskBytes = 128 << 10
    static func spinTasks(_ w: Weight, threads: Int) -> SpinTasks {
        let N = w.rows, units = (N + 15) / 16
        let t = min(units, max(threads, min(8 * threads, w.byteCount / spinTaskBytes)))
        return SpinTasks(N: N, count: t, per: (units + t - 1) / t)
    }

    /// LLM.int8()'s forward (Int8RowsFormat with a threshold): x quantized once (rows of int16
    /// in `scratch`), then the int8 product and the outlier columns' f32 product over disjoint
    /// column ranges per worker. The blas family runs the portable kernel (the C reference).
    private func llmInt8Forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int,
                                threshold: Float, accumulate: Bool, scratch: MatmulScratch) {
        let N = w.rows, K = w.cols, fam = family.kernelID ?? KernelFamily.portable.kernelID!
        let rows = llmInt8Rows(x: x, M: M, K: K, threshold: threshold, scratch: scratch)
        if M <= Self.smallM, let spin, w.byteCount >= Self.spinBytes {
            // Decoding: the spinning workers, in 16-row units, as the other small-M products.
            let tasks = Self.spinTasks(w, threads: Int(lora_pool_threads(spin)))
            runSpin(spin, tasks.count) { i in
                let (n0, n1) = tasks.range(i)
                if n0 < n1 { rows(w, y, accumulate ? 1 : 0, n0, n1) }
            }
            return
        }
        split(columns: N, flops: 2 * M * N * K, fam) { n0, n1 in rows(w, y, accumulate ? 1 : 0, n0, n1) }
    }

    /// LLM.int8()'s x prepared once (outlier columns found, the rest quantized per row into
    /// `scratch`) for every weight of depth K that shares it; returns the product for rows
    /// n0..<n1 of one such weight (the int8 part, then the outlier columns in f32).
    private func llmInt8Rows(x: UnsafePointer<Float>, M: Int, K: Int, threshold: Float, scratch: MatmulScratch)
        -> (Weight, UnsafeMutablePointer<Float>, Int32, Int, Int) -> Void {
        let ldq = K + (K & 1)
        let fam = family.kernelID ?? KernelFamily.portable.kernelID!
        let round64 = { (n: Int) in (n + 63) / 64 * 64 }
        let qBytes = round64(M * ldq * 2), statBytes = round64(M * 4), maskBytes = round64(K)
        let raw = scratch.llmInt8Space(qBytes + statBytes + maskBytes + K * MemoryLayout<Int>.stride)
        let q = raw.assumingMemoryBound(to: Int16.self)
        let stats = (raw + qBytes).assumingMemoryBound(to: Float.self)
        let mask = (raw + qBytes + statBytes).assumingMemoryBound(to: UInt8.self)
        let cols = (raw + qBytes + statBytes + maskBytes).assumingMemoryBound(to: Int.self)
        // Rows split over the workers: each scans its rows into its own mask (OR'd after),
        // then each packs its rows with the whole mask.
        let parts = min(pool.threads, max(1, M / 16))
        let masks = UnsafeMutablePointer<UInt8>.allocate(capacity: parts * K)
        defer { masks.deallocate() }
        masks.initialize(repeating: 0, count: parts * K)
        let per = (M + parts - 1) / parts
        pool.chunks(parts) { r in
            for i in r where i * per < M {
                let m0 = i * per, m1 = min(M, m0 + per)
                lora_llm_int8_scan(fam, m1 - m0, K, x + m0 * K, K, threshold, masks + i * K, stats + m0)
            }
        }
        var c = 0
        for k in 0..<K {
            var any: UInt8 = 0
            for i in 0..<parts { any |= masks[i * K + k] }
            mask[k] = any
            if any != 0 { cols[c] = k; c += 1 }
        }
        pool.chunks(parts) { r in
            for i in r where i * per < M {
                let m0 = i * per, m1 = min(M, m0 + per)
                lora_llm_int8_pack(fam, m1 - m0, K, x + m0 * K, K, mask, stats + m0, q + m0 * ldq, ldq)
            }
        }
        let outliers = c
        return { w, y, acc, n0, n1 in
            let wq = w.data.assumingMemoryBound(to: Int8.self), scales = w.scales!, c = outliers
            lora_llm_int8_gemm(fam, M, n0, n1, K, q, ldq, stats, wq, K, scales, y, w.rows, acc)
            if c > 0 {
                let sub = UnsafeMutablePointer<Float>.allocate(capacity: c * (n1 - n0))
                defer { sub.deallocate() }
                lora_llm_int8_outliers(fam, M, n0, n1, x, K, cols, c, wq, K, scales, y, w.rows, sub)
            }
        }
    }

    /// Weights with an integer decoding path (Q4_0 / Q4_1 / Q8_0 and `.q8`) take it for any M,
    /// in pieces of `smallM` rows: its rows are independent (a row alone gets the same bits),
    /// and for a prompt's rows it is also faster than the f32 GEMM (Q4_1 1536 x 576, 48 rows, one
    /// Zen 3 core: 48 vs 32 GMAC/s). Other formats keep `matmul`'s choice by M.
    public func matmulDecoding(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int, scratch: MatmulScratch) {
        guard M > Self.smallM, decoding == .q8, family.kernelID != nil, let fmt = w.format.kernelID,
              lora_q8_gemv_format(fmt) != 0, w.cols % 32 == 0 else {
            matmul(y: y, x: x, w: w, M: M, accumulate: false, scratch: scratch)
            return
        }
        let K = w.cols, N = w.rows, piece = Self.q8Width
        for m0 in stride(from: 0, to: M, by: piece) {
            matmul(y: y + m0 * N, x: x + m0 * K, w: w, M: min(piece, M - m0), accumulate: false, scratch: scratch, small: piece)
        }
    }

    /// dx[M, in] (+)= dy[M, out] @ W.
    public func matmulBackwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, w: Weight, M: Int,
                                    accumulate: Bool, scratch: MatmulScratch) {
        let N = w.rows, K = w.cols
        if M == 0 || K == 0 { return }
        guard let fam = family.kernelID, let fmt = w.format.kernelID, !(w.format is GroupedBlockFormat) else {
            blasBackwardInput(dx: dx, dy: dy, w: w, M: M, accumulate: accumulate, scratch: scratch)
            return
        }
        let acc: Int32 = accumulate ? 1 : 0
        let scales = w.scales
        split(columns: K, flops: 2 * M * N * K, fam) { k0, k1 in
            lora_gemm_ab(fam, fmt, M, k0, k1, N, dy, N, w.data, K, scales, dx, K, acc)
        }
    }

    /// Runs `body(c0, c1)` over disjoint column ranges made of whole panels, one per worker:
    /// every output element is computed by one worker, whatever the thread count.
    @inline(__always)
    private func split(columns: Int, flops: Int, _ fam: Int32, _ body: (Int, Int) -> Void) {
        let nr = Int(lora_family_panel_width(fam))
        let panels = (columns + nr - 1) / nr
        pool.chunks(panels, grain: flops >= Self.parallelFlops ? 1 : panels) { r in
            body(r.lowerBound * nr, min(columns, r.upperBound * nr))
        }
    }

    // MARK: the OpenBLAS path (oracle; formats without C kernels)

    /// Output columns per worker, each worker dequantizing its own tile of W's rows into its
    /// slice of `scratch` and running one single-threaded sgemm over all M rows.
    private func blasForward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int,
                             accumulate: Bool, scratch: MatmulScratch) {
        let N = w.rows, K = w.cols, beta: Float = accumulate ? 1 : 0
        // Fixed blocks of W's rows (output columns), whatever the thread count.
        let isF32 = w.format.name == WeightFormats.f32.name
        let block = isF32 ? Self.blasBlock : max(1, min(Self.blasBlock, scratch.capacity / pool.threads / max(K, 1)))
        precondition(isF32 || scratch.capacity / pool.threads >= K, "MatmulScratch(\(scratch.capacity)) is smaller than \(pool.threads) rows of W (\(K))")
        let per = scratch.capacity / pool.threads
        pool.chunks((N + block - 1) / block) { r in
            // One scratch slice per worker: the worker's first block index names it.
            let slot = scratch.data + (r.lowerBound * pool.threads / max((N + block - 1) / block, 1)) * per
            for bi in r {
                let n0 = bi * block, n1 = min(N, n0 + block)
                let wt: UnsafePointer<Float>
                if isF32 {
                    wt = w.data.assumingMemoryBound(to: Float.self) + n0 * K
                } else {
                    w.dequantizeRows(n0, n1, into: slot)
                    wt = UnsafePointer(slot)
                }
                // y[:, n0:n1] = x [M, K] @ W[n0:n1, :]^T
                sgemm(transB: true, M: M, N: n1 - n0, K: K, A: x, lda: K, B: wt, ldb: K,
                      beta: beta, C: y + n0, ldc: N)
            }
        }
    }

    /// Tiles of W's rows in order (the depth of this product); per tile, workers take disjoint
    /// column ranges of dx.
    private func blasBackwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, w: Weight, M: Int,
                                   accumulate: Bool, scratch: MatmulScratch) {
        let N = w.rows, K = w.cols
        if N == 0 {
            if !accumulate { dx.update(repeating: 0, count: M * K) }
            return
        }
        let isF32 = w.format.name == WeightFormats.f32.name
        precondition(isF32 || scratch.capacity >= K, "MatmulScratch(\(scratch.capacity)) is smaller than a row of W (\(K))")
        let tile = isF32 ? N : max(1, min(N, scratch.capacity / max(K, 1)))
        var n0 = 0, first = !accumulate
        while n0 < N {
            let n1 = min(N, n0 + tile)
            let wt: UnsafePointer<Float>
            if isF32 {
                wt = w.data.assumingMemoryBound(to: Float.self)
            } else {
                let rows = n1 - n0
                pool.chunks(rows, grain: max(1, rows / pool.threads)) { r in
                    w.dequantizeRows(n0 + r.lowerBound, n0 + r.upperBound, into: scratch.data + r.lowerBound * K)
                }
                wt = UnsafePointer(scratch.data)
            }
            let beta: Float = first ? 0 : 1
            pool.blocks(K, block: Self.blasBlock) { c in
                // dx[:, c] (+)= dy[:, n0:n1] @ W[n0:n1, c]
                sgemm(M: M, N: c.count, K: n1 - n0, A: dy + n0, lda: N, B: wt + c.lowerBound, ldb: K,
                      beta: beta, C: dx + c.lowerBound, ldc: K)
            }
            first = false
            n0 = n1
        }
    }

    // MARK: general GEMM and the element-wise ops

    /// C rows split over the workers (each row of C is one worker's), single-threaded sgemm each.
    public func gemm(transA: Bool = false, transB: Bool = false, M: Int, N: Int, K: Int, alpha: Float = 1,
                     A: UnsafePointer<Float>, lda: Int, B: UnsafePointer<Float>, ldb: Int,
                     beta: Float = 0, C: UnsafeMutablePointer<Float>, ldc: Int) {
        // Decoding's LoRA products (a few rows against r x in or out x r factors): OpenBLAS's
        // per-call packing costs more than the product, so the small-M f32 kernel takes them.
        if !transA, transB, M <= Self.smallM, beta == 0 || beta == 1, alpha == 1 || M * K <= Self.smallScaled,
           let fam = family.kernelID {
            var a = A, lda = lda
            var scaled: [Float] = []
            if alpha != 1 {
                scaled = [Float](unsafeUninitializedCapacity: M * K) { buf, n in
                    for m in 0..<M { for k in 0..<K { buf[m * K + k] = alpha * A[m * lda + k] } }
                    n = M * K
                }
                lda = K
            }
            scaled.withUnsafeBufferPointer { sp in
                if alpha != 1 { a = UnsafePointer(sp.baseAddress!) }
                lora_gemv_abt(fam, Self.f32Format, Int(M), 0, Int(N), Int(K), a, lda, B, ldb, nil, C, ldc, beta == 1 ? 1 : 0)
            }
            return
        }
        // Fixed blocks of C's rows, so the bits do not depend on the thread count.
        let flops = 2 * M * N * K
        let block = flops >= Self.parallelFlops ? Self.blasBlock : M
        pool.blocks(M, block: block) { r in
            let a = transA ? A + r.lowerBound : A + r.lowerBound * lda
            sgemm(transA: transA, transB: transB, M: r.count, N: N, K: K, alpha: alpha, A: a, lda: lda,
                  B: B, ldb: ldb, beta: beta, C: C + r.lowerBound * ldc, ldc: ldc)
        }
    }

    /// On the spinning workers when every term takes gemm's small-M path: first each term's
    /// u = x A^T (tasks of a term and a range of its rank), then y's columns in blocks of 16,
    /// each task adding every term to its columns in order. The kernel calls are the ones `gemm` makes (same M, alpha
    /// applied to u as gemm's scaled copy does), only split by columns, which changes no
    /// output's arithmetic: the same bits as `loraGroupedSerial`.
    public func loraGrouped(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, inFeatures: Int, outFeatures: Int,
                            terms all: [LoRATerm], u: UnsafeMutablePointer<Float>) {
        let terms = LoRATerm.pieces(all)
        guard let spin, let plan = loraPlan(terms, inFeatures: inFeatures, u: u) else {
            loraGroupedSerial(y: y, x: x, inFeatures: inFeatures, outFeatures: outFeatures, terms: terms, u: u,
                              packedFamily: family.vectorID)
            return
        }
        runSpin(spin, plan.jobs.count) { i in loraFirst(plan, i, terms, x: x, inFeatures: inFeatures) }
        let out = outFeatures
        let units = (out + 15) / 16, tasks = min(units, 4 * Int(lora_pool_threads(spin))), per = (units + tasks - 1) / tasks
        runSpin(spin, tasks) { i in
            let n0 = min(out, i * per * 16), n1 = min(out, (i + 1) * per * 16)
            if n0 < n1 { loraSecond(plan, terms, y: y, outFeatures: out, n0, n1) }
        }
    }

    /// `loraGrouped`'s work on the spinning workers: each term's slice of u, and the first
    /// product's tasks (a term and a range of its rank, in pieces of 4 outputs and
    /// `spinTaskBytes` of A at least: an r = 16 A of 576 or 1536 columns is one task, since
    /// SmolLM2's 9 KB pieces cost more in claims and stream starts than the second worker
    /// gave; a piece's outputs get the same bits). nil when a term does not take gemm's
    /// small-M path.
    private struct LoRAPlan {
        let fam: Int32
        let us: [UnsafeMutablePointer<Float>]
        let jobs: [(term: Int, n0: Int, n1: Int)]
    }
    private func loraPlan(_ terms: [LoRATerm], inFeatures: Int, u: UnsafeMutablePointer<Float>) -> LoRAPlan? {
        guard let spin, let fam = family.kernelID, !terms.isEmpty,
              terms.allSatisfy({ $0.packed != nil || ($0.r1 - $0.r0 <= Self.smallM && (($0.alpha == 1 && $0.alphas == nil) || ($0.r1 - $0.r0) * $0.rank <= Self.smallScaled)) })
        else { return nil }
        var us: [UnsafeMutablePointer<Float>] = []
        var at = u
        for t in terms { us.append(at); at += (t.r1 - t.r0) * t.rank }
        let threads = Int(lora_pool_threads(spin))
        // No piece under `spinTaskBytes` of A unless the term has no more (as the weights' tasks).
        let pieces = terms.map { t in
            max(1, min(t.rank / 4, (4 * threads + terms.count - 1) / terms.count, t.rank * inFeatures * 4 / Self.spinTaskBytes))
        }
        var jobs: [(term: Int, n0: Int, n1: Int)] = []
        for (j, t) in terms.enumerated() {
            var per = (t.rank + pieces[j] - 1) / pieces[j]
            if t.packed != nil { per = (per + 7) / 8 * 8 }   // lora_factors_down's ranges start at multiples of 8
            for n0 in stride(from: 0, to: t.rank, by: per) { jobs.append((j, n0, min(t.rank, n0 + per))) }
        }
        return LoRAPlan(fam: fam, us: us, jobs: jobs)
    }
    /// Task i of the first product: u[:, n0..<n1] = x A^T for one term, times its alpha(s).
    @inline(__always)
    private func loraFirst(_ plan: LoRAPlan, _ i: Int, _ terms: [LoRATerm], x: UnsafePointer<Float>, inFeatures inF: Int) {
        let (j, n0, n1) = plan.jobs[i], t = terms[j], M = t.r1 - t.r0, uj = plan.us[j]
        if let p = t.packed {
            lora_factors_down(plan.fam, M, inF, t.rank, n0, n1, x + t.r0 * inF, inF, p.at, p.half ? 1 : 0, uj, t.rank)
        } else {
            lora_gemv_abt(plan.fam, Self.f32Format, M, n0, n1, inF, x + t.r0 * inF, inF, t.A, inF, nil, uj, t.rank, 0)
        }
        for m in 0..<M {
            let a = t.alpha(row: t.r0 + m)
            if a != 1 { for n in n0..<n1 { uj[m * t.rank + n] = a * uj[m * t.rank + n] } }
        }
    }
    /// y[:, n0..<n1] += u B^T, every term in order (n0 a multiple of 16: the kernel's blocks
    /// of outputs then fall where they fall in any other 16-aligned split, so the same bits).
    @inline(__always)
    private func loraSecond(_ plan: LoRAPlan, _ terms: [LoRATerm], y: UnsafeMutablePointer<Float>, outFeatures out: Int, _ n0: Int, _ n1: Int) {
        for (j, t) in terms.enumerated() {
            if let p = t.packed {
                lora_factors_up(plan.fam, t.r1 - t.r0, n0, n1, t.rank, plan.us[j], t.rank, p.bp, p.half ? 1 : 0, y + t.r0 * out, out)
            } else {
                lora_gemv_abt(plan.fam, Self.f32Format, t.r1 - t.r0, n0, n1, t.rank, plan.us[j], t.rank, t.B, t.rank, nil, y + t.r0 * out, out, 1)
            }
        }
    }

    /// A decoding step's projection and its LoRA terms as one job on the spinning workers:
    /// first the terms' x A^T tasks, then per range of 16-row units the integer GEMV of W's
    /// rows and, once every x A^T task is done (they were handed out first), the terms' u B^T
    /// on the same columns. Two hand-offs fewer per projection than `matmulDecoding` then
    /// `loraGrouped`, and one core streams LoRA factors while the other multiplies; the kernel
    /// calls and their column splits are theirs (16-aligned), so the same bits.
    public func decodeProjection(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int, scratch: MatmulScratch,
                                 terms all: [LoRATerm], u: UnsafeMutablePointer<Float>) {
        let N = w.rows, K = w.cols, nb = K / 32, bytes = M * K + 8 * M * nb
        let terms = LoRATerm.pieces(all)
        guard !terms.isEmpty, M >= 1, M <= Self.q8Width, decoding == .q8, let spin, let fmt = w.format.kernelID,
              lora_q8_gemv_format(fmt) != 0, K % 32 == 0, w.byteCount >= Self.spinBytes,
              bytes <= scratch.capacity * MemoryLayout<Float>.stride, let plan = loraPlan(terms, inFeatures: K, u: u)
        else {
            matmulDecoding(y: y, x: x, w: w, M: M, scratch: scratch)
            if !all.isEmpty { loraGrouped(y: y, x: x, inFeatures: K, outFeatures: N, terms: all, u: u) }
            return
        }
        let fam = plan.fam
        let raw = UnsafeMutableRawPointer(scratch.data)
        let q = raw.assumingMemoryBound(to: Int8.self)
        let d = (raw + M * K).assumingMemoryBound(to: Float.self)
        let sums = (raw + M * K + 4 * M * nb).assumingMemoryBound(to: Int32.self)
        let threads = Int(lora_pool_threads(spin))
        // x's rows quantized by the job's first tasks (see smallRows(deferring:)).
        let prep = Self.prepareTasks(M: M, threads: threads)
        if prep == 0 { lora_q8_quantize(fam, M, K, x, K, q, d, sums) }
        // The same ranges as matmul's spinning path.
        let tasks = Self.spinTasks(w, threads: threads), t = tasks.count
        let first = plan.jobs.count
        let done = UnsafeMutablePointer<Int>.allocate(capacity: 2)   // x A^T tasks, quantizing tasks
        done.initialize(repeating: 0, count: 2)
        defer { done.deallocate() }
        runSpin(spin, prep + first + t) { j in
            if j < prep {
                let r0 = j * M / prep, r1 = (j + 1) * M / prep
                lora_q8_quantize(fam, r1 - r0, K, x + r0 * K, K, q + r0 * K, d + r0 * nb, sums + r0 * nb)
                lora_count_add(done + 1)
                return
            }
            let i = j - prep
            if i < first {
                loraFirst(plan, i, terms, x: x, inFeatures: K)
                lora_count_add(done)
                return
            }
            let (n0, n1) = tasks.range(i - first)
            lora_count_wait(done + 1, prep)
            if n0 < n1 { lora_q8_gemv(fam, fmt, M, n0, n1, K, q, d, sums, w.data, K, y, N, 0) }
            lora_count_wait(done, first)
            if n0 < n1 { loraSecond(plan, terms, y: y, outFeatures: N, n0, n1) }
        }
    }

    /// Several projections of one x (a layer's q, k and v; gate and up), each with its plain
    /// LoRA terms, as one job on the spinning workers: x prepared once (q8 or fixed point), then
    /// per output its terms' x A^T tasks and its weight's 16-row ranges, each range followed
    /// (once those x A^T tasks are done) by the terms' u B^T on the same columns. Each output gets the
    /// kernels and ranges of its own `decodeProjection` (the same bits) and the layer 2 or 3
    /// hand-offs fewer (LLM.int8() weights: x's outlier columns found and the rest quantized
    /// once); anything else (mixed formats or depths, many rows) runs as separate calls.
    public func decodeProjections(_ outputs: [DecodeOutput], x: UnsafePointer<Float>, M: Int, scratch: MatmulScratch,
                                  u: UnsafeMutablePointer<Float>) {
        let separate = {
            var at = u
            for o in outputs {
                self.decodeProjection(y: o.y, x: x, w: o.w, M: M, scratch: scratch, terms: o.terms, u: at)
                at += LoRATerm.scratchCount(o.terms)
            }
        }
        let threshold = (outputs.first?.w.format as? Int8RowsFormat)?.outlierThreshold
        guard outputs.count > 1, M >= 1, M <= Self.decodingWidth(outputs[0].w, decoding: decoding), let spin, let fam = family.kernelID,
              let fmt = outputs[0].w.format.kernelID,
              outputs.allSatisfy({ o in
                  o.w.format.kernelID == fmt && o.w.cols == outputs[0].w.cols && o.w.byteCount >= Self.spinBytes
                      && (o.w.format as? Int8RowsFormat)?.outlierThreshold == threshold
              })
        else { separate(); return }
        let K = outputs[0].w.cols
        if outputs[0].w.format is GroupedBlockFormat && !(decoding == .q8 && lora_q8_gemv_format(fmt) != 0 && K % 32 == 0) {
            separate()
            return
        }
        // Each output's terms in pieces and its plan, in its own part of u.
        var plans: [LoRAPlan?] = [], pieces: [[LoRATerm]] = []
        var at = u
        for o in outputs {
            let p = LoRATerm.pieces(o.terms)
            pieces.append(p)
            if p.isEmpty { plans.append(nil); continue }
            guard let plan = loraPlan(p, inFeatures: K, u: at) else { separate(); return }
            plans.append(plan)
            at += LoRATerm.scratchCount(p)
        }
        let threads = Int(lora_pool_threads(spin))
        let rows: (Weight, UnsafeMutablePointer<Float>, Int32, Int, Int) -> Void
        var prepare: ((Int, Int) -> Void)? = nil
        if let threshold {
            rows = llmInt8Rows(x: x, M: M, K: K, threshold: threshold, scratch: scratch)
        } else {
            (rows, prepare) = smallRows(fam, fmt, x: x, M: M, K: K, scratch: scratch, deferring: true)
        }
        // x's rows quantized by the job's first tasks (see smallRows(deferring:)).
        let prep = prepare == nil ? 0 : Self.prepareTasks(M: M, threads: threads)
        if prep == 0 { prepare?(0, M) }
        // Output after output: its x A^T tasks, then its ranges, which wait for those tasks
        // only (handed out first, so a waiting range never waits on an unclaimed task).
        let tasks = outputs.map { Self.spinTasks($0.w, threads: threads) }
        var starts = [Int](), total = 0
        for (o, t) in tasks.enumerated() { starts.append(total); total += (plans[o]?.jobs.count ?? 0) + t.count }
        let done = UnsafeMutablePointer<Int>.allocate(capacity: outputs.count + 1)   // per output; the quantizing tasks
        done.initialize(repeating: 0, count: outputs.count + 1)
        defer { done.deallocate() }
        runSpin(spin, prep + total) { j in
            if j < prep {
                prepare!(j * M / prep, (j + 1) * M / prep)
                lora_count_add(done + outputs.count)
                return
            }
            let i = j - prep
            var o = 0
            while o + 1 < starts.count && starts[o + 1] <= i { o += 1 }
            let first = plans[o]?.jobs.count ?? 0, k = i - starts[o]
            if k < first {
                loraFirst(plans[o]!, k, pieces[o], x: x, inFeatures: K)
                lora_count_add(done + o)
                return
            }
            let (n0, n1) = tasks[o].range(k - first), out = outputs[o]
            lora_count_wait(done + outputs.count, prep)
            if n0 < n1 { rows(out.w, out.y, 0, n0, n1) }
            if let plan = plans[o] {
                lora_count_wait(done + o, first)
                if n0 < n1 { loraSecond(plan, pieces[o], y: out.y, outFeatures: out.w.rows, n0, n1) }
            }
        }
    }

    /// The decode items (Tq = 1) as one job on the spinning workers, a task per item and head
    /// (`Attention.decodeHead`, as `attentionCached` runs them: the same bits); prefill items
    /// one after another through `attentionCached`.
    public func attentionCachedBatch(_ items: [CachedAttention], nH: Int, nKV: Int, hd: Int) {
        let decode = items.filter { $0.Tq == 1 }
        for it in items where it.Tq != 1 {
            attentionCached(out: it.out, scores: it.scores, q: it.q, kCache: it.kCache, vCache: it.vCache, keyMask: nil,
                            start: it.start, Tq: it.Tq, nH: nH, nKV: nKV, hd: hd, layout: it.layout)
        }
        guard let spin, decode.count > 1 else {
            for it in decode {
                attentionCached(out: it.out, scores: it.scores, q: it.q, kCache: it.kCache, vCache: it.vCache, keyMask: nil,
                                start: it.start, Tq: 1, nH: nH, nKV: nKV, hd: hd, layout: it.layout)
            }
            return
        }
        let fam = family.vectorID
        // A task per item and key-value head: its query heads (GQA's group) one after another,
        // so the group's keys and values come from memory once and then from this core's cache
        // (with a task per query head, the two cores each fetched them).
        runSpin(spin, decode.count * nKV) { t in
            let it = decode[t / nKV]
            let rep = nH / nKV, g = t % nKV
            Attention.decodeHeads(g * rep ..< (g + 1) * rep, vectorKernels: fam, out: it.out, scores: it.scores, q: it.q,
                                  kCache: it.kCache, vCache: it.vCache, keyMask: nil, L: it.start + 1, nH: nH, nKV: nKV, hd: hd,
                                  layout: it.layout)
        }
    }

    /// body(0..<n) on the spinning workers, each index run once by whichever is free.
    private func runSpin(_ spin: OpaquePointer, _ n: Int, _ body: (Int) -> Void) {
        withoutActuallyEscaping(body) { body in
            let box = TaskBox(body)
            lora_pool_run(spin, n, { ctx, i in Unmanaged<TaskBox>.fromOpaque(ctx!).takeUnretainedValue().body(i) },
                          Unmanaged.passUnretained(box).toOpaque())
        }
    }

    public func embedding(out: UnsafeMutablePointer<Float>, ids: UnsafePointer<Int32>, table: UnsafePointer<Float>, N: Int, C: Int) {
        Embedding.forward(pool: pool, out: out, ids: ids, table: table, N: N, C: C)
    }
    public func rmsnormForward(y: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                               weight: UnsafePointer<Float>, N: Int, C: Int, eps: Float) {
        if let spin, N >= 2, N <= Self.q8Width, N * C >= Self.spinElementwise.lowerBound, N * C < Self.spinElementwise.upperBound {
            // A batched decoding step's rows on the spinning workers; each row alone, same bits.
            let parts = min(N, Int(lora_pool_threads(spin)))
            runSpin(spin, parts) { i in
                let r0 = i * N / parts, r1 = (i + 1) * N / parts
                RMSNorm.forward(pool: .serial, y: y + r0 * C, rstd: rstd + r0, x: x + r0 * C, weight: weight, N: r1 - r0, C: C, eps: eps)
            }
            return
        }
        RMSNorm.forward(pool: pool, y: y, rstd: rstd, x: x, weight: weight, N: N, C: C, eps: eps)
    }
    public func rmsnormBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                                weight: UnsafePointer<Float>, rstd: UnsafePointer<Float>, N: Int, C: Int) {
        RMSNorm.backward(pool: pool, dx: dx, dy: dy, x: x, weight: weight, rstd: rstd, N: N, C: C)
    }
    public func ropeForward(x: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, rows: Int, nHeads: Int, headDim: Int, table: RoPETable) {
        let width = nHeads * headDim
        if let spin, rows >= 2, rows <= Self.q8Width, rows * width >= Self.spinElementwise.lowerBound, rows * width < Self.spinElementwise.upperBound {
            // A step's rows on the spinning workers (as rmsnormForward); each row alone, same bits.
            let parts = min(rows, Int(lora_pool_threads(spin)))
            runSpin(spin, parts) { i in
                let r0 = i * rows / parts, r1 = (i + 1) * rows / parts
                RoPE.forward(pool: .serial, x: x + r0 * width, positions: positions + r0, rows: r1 - r0, nHeads: nHeads,
                             headDim: headDim, table: table)
            }
            return
        }
        RoPE.forward(pool: pool, x: x, positions: positions, rows: rows, nHeads: nHeads, headDim: headDim, table: table)
    }
    public func ropeBackward(dx: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, rows: Int, nHeads: Int, headDim: Int, table: RoPETable) {
        RoPE.backward(pool: pool, dx: dx, positions: positions, rows: rows, nHeads: nHeads, headDim: headDim, table: table)
    }
    public func attentionForward(out: UnsafeMutablePointer<Float>, stats: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                                 k: UnsafePointer<Float>, v: UnsafePointer<Float>, keyMask: UnsafePointer<Float>?,
                                 B: Int, T: Int, nH: Int, nKV: Int, hd: Int) {
        FlashAttention.forward(pool: pool, out: out, stats: stats, q: q, k: k, v: v, keyMask: keyMask, B: B, T: T, nH: nH, nKV: nKV, hd: hd, kernels: attentionKernels)
    }
    public func attentionBackward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                                  dout: UnsafePointer<Float>, stats: UnsafePointer<Float>, q: UnsafePointer<Float>,
                                  k: UnsafePointer<Float>, v: UnsafePointer<Float>, keyMask: UnsafePointer<Float>?,
                                  B: Int, T: Int, nH: Int, nKV: Int, hd: Int) {
        FlashAttention.backward(pool: pool, dq: dq, dk: dk, dv: dv, dout: dout, stats: stats, q: q, k: k, v: v, keyMask: keyMask,
                                B: B, T: T, nH: nH, nKV: nKV, hd: hd, kernels: attentionKernels)
    }
    public func attentionCached(out: UnsafeMutablePointer<Float>, scores: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                                kCache: UnsafePointer<Float>, vCache: UnsafePointer<Float>, keyMask: UnsafePointer<Float>?,
                                start: Int, Tq: Int, nH: Int, nKV: Int, hd: Int, layout: KVLayout?) {
        let L = start + 1
        if Tq == 1, let spin, nH * L * hd >= Self.spinAttention {
            // A decode step's heads on the spinning workers, in one contiguous range per worker
            // (the bits of `forwardCached`'s decodeHeads): a group's cached keys and values are
            // read from memory by one core where the split allows. A task per key-value head
            // leaves one of two cores idle a third of the time with SmolLM2's 3 (measured slower),
            // a task per query head has both cores fetch most groups.
            let fam = family.vectorID, t = min(nH, Int(lora_pool_threads(spin)))
            runSpin(spin, t) { i in
                Attention.decodeHeads(nH * i / t ..< nH * (i + 1) / t, vectorKernels: fam, out: out, scores: scores, q: q,
                                      kCache: kCache, vCache: vCache, keyMask: keyMask, L: L, nH: nH, nKV: nKV, hd: hd, layout: layout)
            }
            return
        }
        // A prompt chunk's rows: on the spinning workers when there are any (Dispatch's
        // threads would wait for a core the spinning ones hold: 2 cores, Zen 4).
        let spread: ((Int, (Int) -> Void) -> Void)? = spin.map { spin in { n, body in self.runSpin(spin, n, body) } }
        Attention.forwardCached(pool: pool, vectorKernels: family.vectorID, out: out, scores: scores, q: q, kCache: kCache, vCache: vCache, keyMask: keyMask,
                                start: start, Tq: Tq, nH: nH, nKV: nKV, hd: hd, layout: layout, spread: spread)
    }
    public func dropout(seed: UInt64, threshold: UInt64, x: UnsafePointer<Float>, scale: Float,
                        keep: UnsafeMutablePointer<UInt8>, z: UnsafeMutablePointer<Float>, count: Int) {
        // The mask depends on (seed, i) only, so any split over the workers gives the same bits.
        pool.blocks((count + 1) / 2, block: 8192) { r in
            lora_dropout_mask(family.vectorID, seed, threshold, x, scale, keep, z, r.lowerBound, r.upperBound, count)
        }
    }
    public func maskedAdd(dx: UnsafeMutablePointer<Float>, dz: UnsafePointer<Float>, keep: UnsafePointer<UInt8>, scale: Float, count: Int) {
        // Element-wise, so the blocks (and the thread count) do not change a bit.
        pool.blocks(count, block: 16384) { r in
            for i in r where keep[i] != 0 { dx[i] += dz[i] * scale }
        }
    }
    public func swigluForward(h: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        if let spin, count >= Self.spinElementwise.lowerBound, count < Self.spinElementwise.upperBound {
            // A batched decoding step's rows: on the spinning workers (the pool's grain keeps
            // them on the caller while the workers spin). Element-wise: any split, same bits.
            let parts = Int(lora_pool_threads(spin)), per = (count / parts + 15) / 16 * 16, fam = family.vectorID
            runSpin(spin, parts) { i in
                let lo = min(count, i * per), hi = min(count, lo + per)
                if lo < hi { lora_swiglu_forward(fam, h + lo, gate + lo, up + lo, hi - lo) }
            }
            return
        }
        SwiGLU.forward(pool: pool, vectorKernels: family.vectorID, h: h, gate: gate, up: up, count: count)
    }
    /// Sizes of element-wise work (floats) that a decoding step splits over the spinning
    /// workers: from a few rows of SmolLM2's MLP (8 rows of 1536: 0.3 ms a step on the caller
    /// alone, Zen 4) to what the pool's grain takes over. RMSNorm and RoPE also stop past a
    /// decoding step's rows (`q8Width`): a training step's ops stay on Dispatch, whose threads
    /// a worker left spinning after a job would keep from a core.
    static let spinElementwise = 4096 ..< (1 << 16)
    public func swigluBackward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>, dh: UnsafePointer<Float>,
                               gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        SwiGLU.backward(pool: pool, vectorKernels: family.vectorID, dgate: dgate, dup: dup, dh: dh, gate: gate, up: up, count: count)
    }
    public func add(out: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>, count: Int) {
        // VectorOps.add is the reference; Swift's loop there is not vectorized (a decode step's
        // residual adds ran at a float a nanosecond on the caller while the workers waited).
        let fam = family.vectorID
        pool.chunks(count, grain: 1 << 15) { r in
            lora_add(fam, out + r.lowerBound, a + r.lowerBound, b + r.lowerBound, r.count)
        }
    }
    public func argmax(_ x: UnsafePointer<Float>, count: Int) -> Int { Int(lora_argmax(family.vectorID, x, count)) }
    public func crossEntropy(dlogits: UnsafeMutablePointer<Float>?, logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>,
                             N: Int, V: Int, gradScale: Float) -> (lossSum: Double, count: Int) {
        CrossEntropy.forwardBackward(pool: pool, dlogits: dlogits, logits: logits, targets: targets, N: N, V: V, gradScale: gradScale)
    }
}
