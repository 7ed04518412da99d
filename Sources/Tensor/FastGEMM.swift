import CKernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The implementation behind `Matmul.forward` / `Matmul.backwardInput`.
public enum MatmulKernels: String, Sendable, CaseIterable {
    /// OpenBLAS sgemm, int8 weights dequantized tile by tile: the portable fallback and the
    /// oracle the fast kernels are tested against.
    case blas
    /// Sources/CKernels/gemm_avx512.c: packed, cache-blocked AVX-512 GEMM (int8 weights are
    /// dequantized while packing, so they stream as int8), and an unpacked kernel for small M.
    case avx512

    /// Whether this CPU can run them (AVX-512F/BW/VL and FMA on x86-64; BLAS always).
    public var isAvailable: Bool {
        switch self {
        case .blas: return true
        case .avx512: return MatmulKernels.avx512Available
        }
    }

    private static let avx512Available = lora_gemm_avx512_available() != 0

    /// AVX-512 when the CPU has it; the environment variable LORA_KERNELS=blas forces OpenBLAS
    /// (for comparisons). Read once, at first use.
    public static let `default`: MatmulKernels = {
        guard let raw = getenv("LORA_KERNELS") else { return avx512Available ? .avx512 : .blas }
        let name = String(cString: raw).lowercased()
        if name.isEmpty { return avx512Available ? .avx512 : .blas }
        // An unknown name gets the default rather than a crash.
        guard let k = MatmulKernels(rawValue: name) else { return avx512Available ? .avx512 : .blas }
        // Asking for AVX-512 on a CPU without it gets the portable path, which computes the same.
        return k.isAvailable ? k : .blas
    }()
}

/// Threading and shape dispatch for the AVX-512 kernels. Each worker computes a disjoint range
/// of C's columns (whole packed panels) over all M rows: one GEMM per matmul, never per row,
/// and no OpenBLAS call inside these workers.
enum AVX512GEMM {
    /// Forward with M up to this uses the unpacked small-M kernel (decoding); measured on Zen 5
    /// it is as fast as the packed GEMM up to M = 24..32 (packing W^T costs ~40 us per 576 x 576).
    static let smallM = 16
    /// Below this many flops (2 M N K) a product stays on one thread: splitting costs more.
    static let parallelFlops = 1 << 22
    /// Decoding (M = 1) is bound by memory bandwidth, which one core nearly saturates (~34 of
    /// ~40 GB/s measured on the 2-core Zen 5), while a split adds Dispatch overhead to every
    /// matmul (a 135 MB int8 decode step measured no faster split than not): the small-M
    /// kernel splits only above `parallelFlops` (M of a few and up, compute bound) or for
    /// weights this large (the lm_head).
    static let parallelBytes = 1 << 24

    /// y[M, N] (+)= x[M, K] @ W^T, W [N, K].
    static func forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight,
                        M: Int, accumulate: Bool) {
        let N = w.outFeatures, K = w.inFeatures
        if M == 0 || N == 0 { return }
        let acc: Int32 = accumulate ? 1 : 0
        if M <= smallM {
            // Rows of W in blocks of 16 per worker.
            let units = (N + 15) / 16
            let bytes = N * K * (w.isInt8 ? 1 : 4)
            let split = 2 * M * N * K >= parallelFlops || bytes >= parallelBytes
            Parallel.chunks(units, grain: split ? 1 : units) { r in
                let n0 = r.lowerBound * 16, n1 = min(N, r.upperBound * 16)
                switch w {
                case .f32(let t):
                    lora_gemv_abt_f32(M, n0, n1, K, x, K, t.data, K, y, N, acc)
                case .int8(let q):
                    lora_gemv_abt_i8(M, n0, n1, K, x, K, q.q, K, q.scales, y, N, acc)
                }
            }
            return
        }
        split(columns: N, flops: 2 * M * N * K) { n0, n1 in
            switch w {
            case .f32(let t):
                lora_gemm_abt_f32(M, n0, n1, K, x, K, t.data, K, y, N, acc)
            case .int8(let q):
                lora_gemm_abt_i8(M, n0, n1, K, x, K, q.q, K, q.scales, y, N, acc)
            }
        }
    }

    /// dx[M, K] (+)= dy[M, N] @ W, W [N, K].
    static func backwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                              w: Weight, M: Int, accumulate: Bool) {
        let N = w.outFeatures, K = w.inFeatures
        if M == 0 || K == 0 { return }
        let acc: Int32 = accumulate ? 1 : 0
        split(columns: K, flops: 2 * M * N * K) { k0, k1 in
            switch w {
            case .f32(let t):
                lora_gemm_ab_f32(M, k0, k1, N, dy, N, t.data, K, dx, K, acc)
            case .int8(let q):
                lora_gemm_ab_i8(M, k0, k1, N, dy, N, q.q, K, q.scales, dx, K, acc)
            }
        }
    }

    /// Runs `body(c0, c1)` over disjoint column ranges made of whole panels, one per worker.
    @inline(__always)
    private static func split(columns: Int, flops: Int, _ body: (Int, Int) -> Void) {
        let nr = Int(lora_gemm_panel_width())
        let panels = (columns + nr - 1) / nr
        Parallel.chunks(panels, grain: flops >= parallelFlops ? 1 : panels) { r in
            body(r.lowerBound * nr, min(columns, r.upperBound * nr))
        }
    }
}

extension Weight {
    var isInt8: Bool {
        if case .int8 = self { return true }
        return false
    }
}
