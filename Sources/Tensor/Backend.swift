import CKernels

// Seam 2: a backend executes ops. The model's forward, backward and decode are written once
// against `Backend`; `CPUBackend` is the reference implementation (its kernel family chosen once
// from the CPU), and any other backend is tested against it op by op.
//
// Buffers are plain pointers to f32 memory that the backend can read and write. For the CPU
// that is host memory; a device backend (CUDA, issue 13) keeps resident buffers of its own and
// is handed the model through the same calls.

/// The ops of a LLaMA forward and backward pass. Argument order as in the `Tensor` ops (outputs
/// first, then inputs, then dimensions); each has the semantics of the op of the same name.
public protocol Backend: AnyObject, Sendable {
    /// A short name for logs ("cpu avx512", ...).
    var name: String { get }

    // Products with a frozen weight (any WeightFormat).
    func matmul(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int,
                accumulate: Bool, scratch: MatmulScratch)
    func matmulBackwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, w: Weight, M: Int,
                             accumulate: Bool, scratch: MatmulScratch)
    /// `matmul` (y = x W^T) for a decoding step's rows: prompt chunks and new tokens, of one
    /// sequence or a server's many. Each row's result must not depend on the rows that share
    /// the call, so a request gets the same bits alone or batched, and a prompt the same in
    /// any chunking.
    func matmulDecoding(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int, scratch: MatmulScratch)
    /// `decodeProjection` of several weights over the same x, each into its own y with its own
    /// terms: a layer's q, k and v, or gate and up. The bits of the separate calls; a backend
    /// may run them as one job. `u` holds every output's terms one after another
    /// (the sum of their `LoRATerm.scratchCount`).
    func decodeProjections(_ outputs: [DecodeOutput], x: UnsafePointer<Float>, M: Int, scratch: MatmulScratch,
                           u: UnsafeMutablePointer<Float>)
    /// `matmulDecoding`, then (terms not empty) `loraGrouped` with the same x: one projection of
    /// a decoding step with its plain LoRA terms, the bits of those two calls.
    func decodeProjection(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int, scratch: MatmulScratch,
                          terms: [LoRATerm], u: UnsafeMutablePointer<Float>)
    /// General f32 GEMM (the LoRA factors' small products): C = alpha op(A) op(B) + beta C.
    func gemm(transA: Bool, transB: Bool, M: Int, N: Int, K: Int, alpha: Float,
              A: UnsafePointer<Float>, lda: Int, B: UnsafePointer<Float>, ldb: Int,
              beta: Float, C: UnsafeMutablePointer<Float>, ldc: Int)

    func embedding(out: UnsafeMutablePointer<Float>, ids: UnsafePointer<Int32>, table: UnsafePointer<Float>, N: Int, C: Int)
    func rmsnormForward(y: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                        weight: UnsafePointer<Float>, N: Int, C: Int, eps: Float)
    func rmsnormBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                         weight: UnsafePointer<Float>, rstd: UnsafePointer<Float>, N: Int, C: Int)
    func ropeForward(x: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, rows: Int, nHeads: Int, headDim: Int, table: RoPETable)
    func ropeBackward(dx: UnsafeMutablePointer<Float>, positions: UnsafePointer<Int32>, rows: Int, nHeads: Int, headDim: Int, table: RoPETable)
    /// Training attention; keeps only `stats` [B, nH, T, 2] (`FlashAttention.statsCount`) for backward.
    func attentionForward(out: UnsafeMutablePointer<Float>, stats: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                          k: UnsafePointer<Float>, v: UnsafePointer<Float>, keyMask: UnsafePointer<Float>?,
                          B: Int, T: Int, nH: Int, nKV: Int, hd: Int)
    func attentionBackward(dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                           dout: UnsafePointer<Float>, stats: UnsafePointer<Float>, q: UnsafePointer<Float>,
                           k: UnsafePointer<Float>, v: UnsafePointer<Float>, keyMask: UnsafePointer<Float>?,
                           B: Int, T: Int, nH: Int, nKV: Int, hd: Int)
    /// `Attention.forwardCached`: a cache laid out as `layout` says (nil: [maxT, nKV, hd]).
    func attentionCached(out: UnsafeMutablePointer<Float>, scores: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                         kCache: UnsafePointer<Float>, vCache: UnsafePointer<Float>, keyMask: UnsafePointer<Float>?,
                         start: Int, Tq: Int, nH: Int, nKV: Int, hd: Int, layout: KVLayout?)
    func swigluForward(h: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int)
    func swigluBackward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>, dh: UnsafePointer<Float>,
                        gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int)
    func add(out: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>, count: Int)
    /// The first index of the largest of x[0..<count] (greedy decoding's pick; NaNs never win).
    func argmax(_ x: UnsafePointer<Float>, count: Int) -> Int
    /// Dropout's mask and output over `count` elements: `lora_dropout_mask`'s hash of (seed, i / 2),
    /// keep[i] = 0 when its 32 bits fall under `threshold`, else 1; z[i] = keep ? x[i] * scale : 0.
    func dropout(seed: UInt64, threshold: UInt64, x: UnsafePointer<Float>, scale: Float,
                 keep: UnsafeMutablePointer<UInt8>, z: UnsafeMutablePointer<Float>, count: Int)
    /// dx[i] += dz[i] * scale where keep[i] != 0, dx[i] untouched elsewhere (dropout's backward).
    func maskedAdd(dx: UnsafeMutablePointer<Float>, dz: UnsafePointer<Float>, keep: UnsafePointer<UInt8>, scale: Float, count: Int)
    func crossEntropy(dlogits: UnsafeMutablePointer<Float>?, logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>,
                      N: Int, V: Int, gradScale: Float) -> (lossSum: Double, count: Int)
    /// `attentionCached` for several sequences of a batch, each with its own cache and length
    /// (a server's slots): the same results as one call per item, in any order. Each item's
    /// `scores` is its own scratch of [nH, Tq, start + Tq] floats.
    func attentionCachedBatch(_ items: [CachedAttention], nH: Int, nKV: Int, hd: Int)
    /// The LoRA terms of one projection over a batch whose row groups use different adapters
    /// (S-LoRA / Punica's grouped product): for each term, in order, y[r0..<r1] += alpha *
    /// (x[r0..<r1] @ A^T) @ B^T. Each term's result is what `gemm` gives for each of its
    /// pieces of `LoRATerm.pieceRows` rows alone (two calls per piece, as `LoRALayer.forward`
    /// makes them); terms on the same rows add in the order given.
    /// `u` is scratch of `LoRATerm.scratchCount(terms)` floats.
    func loraGrouped(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, inFeatures: Int, outFeatures: Int,
                     terms: [LoRATerm], u: UnsafeMutablePointer<Float>)
}

/// One adapter's term of `Backend.loraGrouped`: rows r0..<r1, factors A [rank, in] and
/// B [out, rank], and alpha (the adapter's weight times its scale).
public struct LoRATerm {
    public let r0: Int, r1: Int, rank: Int, alpha: Float
    public let A: UnsafePointer<Float>, B: UnsafePointer<Float>
    /// Per-row alphas (alphas[i] for row r0 + i) when rows of several groups share the factors
    /// with different weights (a mix and one of its adapters): `alpha` is then unused.
    public let alphas: UnsafePointer<Float>?
    /// The same factors packed for decoding (`PackedLoRAFactors`): when given, the CPU backend
    /// runs the term with `lora_factors_down` / `_up` (whose bits do not depend on M, so no
    /// pieces are needed for them) instead of two `gemm` calls.
    public let packed: PackedLoRAFactors?
    public init(r0: Int, r1: Int, rank: Int, alpha: Float, A: UnsafePointer<Float>, B: UnsafePointer<Float>,
                alphas: UnsafePointer<Float>? = nil, packed: PackedLoRAFactors? = nil) {
        self.r0 = r0; self.r1 = r1; self.rank = rank; self.alpha = alpha; self.A = A; self.B = B; self.alphas = alphas
        self.packed = packed
    }
    /// Row r's alpha (r0 <= r < r1).
    @inline(__always) public func alpha(row r: Int) -> Float { alphas.map { $0[r - r0] } ?? alpha }
    /// The floats of u that `loraGrouped` needs: each term's [r1 - r0, rank] intermediate.
    public static func scratchCount(_ terms: [LoRATerm]) -> Int { terms.reduce(0) { $0 + ($1.r1 - $1.r0) * $1.rank } }

    /// Rows per piece: `loraGrouped` computes a term's rows in pieces of at most this many, each
    /// as `gemm` computes it alone. `gemm` takes another kernel past 16 rows, so without pieces
    /// a row's bits would depend on how many rows share its term: a server's request batched
    /// with others of the same adapter, or a prompt fed whole against one started from cache.
    public static let pieceRows = 16

    /// `terms` with each split into consecutive pieces of at most `pieceRows` rows, in order.
    public static func pieces(_ terms: [LoRATerm]) -> [LoRATerm] {
        guard terms.contains(where: { $0.r1 - $0.r0 > pieceRows }) else { return terms }
        var out: [LoRATerm] = []
        for t in terms {
            for r0 in stride(from: t.r0, to: t.r1, by: pieceRows) {
                out.append(LoRATerm(r0: r0, r1: min(t.r1, r0 + pieceRows), rank: t.rank, alpha: t.alpha, A: t.A, B: t.B,
                                    alphas: t.alphas.map { $0 + (r0 - t.r0) }, packed: t.packed))
            }
        }
        return out
    }
}

/// One projection of `Backend.decodeProjections`: its weight, where its product goes, and its
/// plain LoRA terms (none for a base-model step).
public struct DecodeOutput {
    public let y: UnsafeMutablePointer<Float>
    public let w: Weight
    public let terms: [LoRATerm]
    public init(y: UnsafeMutablePointer<Float>, w: Weight, terms: [LoRATerm] = []) { self.y = y; self.w = w; self.terms = terms }
}

/// One sequence of `Backend.attentionCachedBatch`: `attentionCached`'s per-sequence arguments.
public struct CachedAttention {
    public let out: UnsafeMutablePointer<Float>, scores: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>
    public let kCache: UnsafePointer<Float>, vCache: UnsafePointer<Float>
    public let start: Int, Tq: Int
    public let layout: KVLayout?
    public init(out: UnsafeMutablePointer<Float>, scores: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                kCache: UnsafePointer<Float>, vCache: UnsafePointer<Float>, start: Int, Tq: Int, layout: KVLayout? = nil) {
        self.out = out; self.scores = scores; self.q = q; self.kCache = kCache; self.vCache = vCache
        self.start = start; self.Tq = Tq; self.layout = layout
    }
}

extension Backend {
    public func matmulDecoding(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int, scratch: MatmulScratch) {
        matmul(y: y, x: x, w: w, M: M, accumulate: false, scratch: scratch)
    }

    public func decodeProjections(_ outputs: [DecodeOutput], x: UnsafePointer<Float>, M: Int, scratch: MatmulScratch,
                                  u: UnsafeMutablePointer<Float>) {
        for o in outputs { decodeProjection(y: o.y, x: x, w: o.w, M: M, scratch: scratch, terms: o.terms, u: u) }
    }

    public func decodeProjection(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int, scratch: MatmulScratch,
                                 terms: [LoRATerm], u: UnsafeMutablePointer<Float>) {
        matmulDecoding(y: y, x: x, w: w, M: M, scratch: scratch)
        if !terms.isEmpty { loraGrouped(y: y, x: x, inFeatures: w.inFeatures, outFeatures: w.outFeatures, terms: terms, u: u) }
    }

    public func attentionCachedBatch(_ items: [CachedAttention], nH: Int, nKV: Int, hd: Int) {
        for it in items {
            attentionCached(out: it.out, scores: it.scores, q: it.q, kCache: it.kCache, vCache: it.vCache, keyMask: nil,
                            start: it.start, Tq: it.Tq, nH: nH, nKV: nKV, hd: hd, layout: it.layout)
        }
    }

    /// A cache of [maxT, nKV, hd] rows.
    public func attentionCached(out: UnsafeMutablePointer<Float>, scores: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                                kCache: UnsafePointer<Float>, vCache: UnsafePointer<Float>, keyMask: UnsafePointer<Float>?,
                                start: Int, Tq: Int, nH: Int, nKV: Int, hd: Int) {
        attentionCached(out: out, scores: scores, q: q, kCache: kCache, vCache: vCache, keyMask: keyMask,
                        start: start, Tq: Tq, nH: nH, nKV: nKV, hd: hd, layout: nil)
    }

    public func loraGrouped(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, inFeatures: Int, outFeatures: Int,
                            terms: [LoRATerm], u: UnsafeMutablePointer<Float>) {
        loraGroupedSerial(y: y, x: x, inFeatures: inFeatures, outFeatures: outFeatures, terms: terms, u: u)
    }

    /// The reference: each term's pieces as two `gemm` calls each, one after another; a
    /// packed term as `lora_factors_down` then `_up` over all its rows, in `packedFamily`
    /// (every family gives the portable loops' bits).
    public func loraGroupedSerial(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, inFeatures: Int, outFeatures: Int,
                                  terms: [LoRATerm], u: UnsafeMutablePointer<Float>, packedFamily: Int32 = 0) {
        var ut = u
        // Per-row alphas: runs of one alpha, each a term of its own (the same bits per row).
        var runs: [LoRATerm] = []
        for t in LoRATerm.pieces(terms) {
            guard t.alphas != nil else { runs.append(t); continue }
            var a = t.r0
            while a < t.r1 {
                var b = a + 1
                while b < t.r1 && t.alpha(row: b) == t.alpha(row: a) { b += 1 }
                runs.append(LoRATerm(r0: a, r1: b, rank: t.rank, alpha: t.alpha(row: a), A: t.A, B: t.B, packed: t.packed))
                a = b
            }
        }
        for t in runs {
            let M = t.r1 - t.r0
            if let p = t.packed {
                lora_factors_down(packedFamily, M, inFeatures, t.rank, 0, t.rank, x + t.r0 * inFeatures, inFeatures, p.at, p.half ? 1 : 0, ut, t.rank)
                if t.alpha != 1 { for i in 0..<(M * t.rank) { ut[i] = t.alpha * ut[i] } }
                lora_factors_up(packedFamily, M, 0, outFeatures, t.rank, ut, t.rank, p.bp, p.half ? 1 : 0, y + t.r0 * outFeatures, outFeatures)
                ut += M * t.rank
                continue
            }
            gemm(transA: false, transB: true, M: M, N: t.rank, K: inFeatures, alpha: 1, A: x + t.r0 * inFeatures, lda: inFeatures,
                 B: t.A, ldb: inFeatures, beta: 0, C: ut, ldc: t.rank)
            gemm(transA: false, transB: true, M: M, N: outFeatures, K: t.rank, alpha: t.alpha, A: ut, lda: t.rank,
                 B: t.B, ldb: t.rank, beta: 1, C: y + t.r0 * outFeatures, ldc: outFeatures)
            ut += M * t.rank
        }
    }
}

/// A cooperative stop request: set from a signal handler or another task, read between steps.
public final class Cancellation: @unchecked Sendable {
    private let flag = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    public init() { flag.initialize(to: 0) }
    deinit { flag.deallocate() }
    /// Async-signal-safe: one aligned store.
    public func cancel() { flag.pointee = 1 }
    public var isCancelled: Bool { flag.pointee != 0 }
    /// The raw flag, for a C signal handler.
    public var rawFlag: UnsafeMutablePointer<Int32> { flag }
}

/// Everything a computation needs that is not data: the backend (with its threads), an
/// optional profiler and cancellation. Made once by the caller (the CLI, a test, a server
/// request) and passed down; nothing in the library reads a global setting instead.
public final class ExecutionContext: @unchecked Sendable {
    public let backend: any Backend
    /// Wall time per op when set (docs/PERFORMANCE.md's profile).
    public var profile: OpProfile?
    public let cancellation: Cancellation

    public init(backend: any Backend, profile: OpProfile? = nil, cancellation: Cancellation = Cancellation()) {
        self.backend = backend; self.profile = profile; self.cancellation = cancellation
    }

    /// A CPU context: `threads` workers (0 = all cores), the kernel family from `environment`
    /// (LORA_KERNELS) or the best the CPU has, the decoding arithmetic from LORA_DECODE (q8).
    public static func cpu(threads: Int = 0, environment: [String: String] = [:]) throws -> ExecutionContext {
        // The decoding workers spin while they wait; more of them than CPUs take turns a
        // scheduler slice at a time (4 threads on 2 CPUs decoded 44x slower).
        let cpus = ProcessInfoCores.count
        if threads > cpus { throw ExecutionContextError.tooManyThreads(requested: threads, cpus: cpus) }
        let pool = threads > 0 ? WorkerPool(threads: threads) : .allCores
        return ExecutionContext(backend: CPUBackend(family: try KernelFamily.select(environment: environment), pool: pool,
                                                    decoding: try KernelFamily.selectDecoding(environment: environment)))
    }

    /// The CPU backend's worker pool (loading and quantizing use it too).
    public var pool: WorkerPool { (backend as? CPUBackend)?.pool ?? .allCores }
}

public enum ExecutionContextError: Error, CustomStringConvertible, Equatable {
    case tooManyThreads(requested: Int, cpus: Int)
    public var description: String {
        switch self {
        case let .tooManyThreads(requested, cpus):
            return "threads = \(requested): expected 0 (all CPUs) to \(cpus), the CPUs this process may run on"
        }
    }
}
