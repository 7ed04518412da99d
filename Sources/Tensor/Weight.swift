/// A frozen weight matrix W [out, in] in PyTorch's Linear layout, f32 or int8 rows.
/// Frozen weights get no gradient; only the products with activations are needed:
///   forward        y[M, out]  = x[M, in] @ W^T
///   backward input dx[M, in] += dy[M, out] @ W
public enum Weight: @unchecked Sendable {
    case f32(Tensor)            // [out, in]
    case int8(QuantizedMatrix)  // [out, in]

    public var outFeatures: Int {
        switch self {
        case .f32(let t): return t.shape[0]
        case .int8(let q): return q.rows
        }
    }

    public var inFeatures: Int {
        switch self {
        case .f32(let t): return t.shape[1]
        case .int8(let q): return q.cols
        }
    }

    /// Full-precision copy (dequantized for int8).
    public func dense() -> Tensor {
        switch self {
        case .f32(let t): return t
        case .int8(let q): return q.dequantized()
        }
    }

    public var byteCount: Int {
        switch self {
        case .f32(let t): return t.count * 4
        case .int8(let q): return q.byteCount
        }
    }
}

/// Scratch memory for dequantized weight tiles. Owned by the caller (one per model),
/// sized once, so matmuls against int8 weights allocate nothing.
public final class MatmulScratch: @unchecked Sendable {
    public let capacity: Int
    public let data: UnsafeMutablePointer<Float>
    public init(capacity: Int = 1 << 18) {
        self.capacity = capacity
        data = .allocate(capacity: capacity)
    }
    deinit { data.deallocate() }
}

/// The two products with a frozen weight, ~85% of a training step's flops. `kernels` picks the
/// implementation (`MatmulKernels.default`: AVX-512 when the CPU has it, else OpenBLAS); the
/// OpenBLAS path below is the fallback and the oracle the AVX-512 kernels are tested against.
public enum Matmul {
    /// y[M, out] (+)= x[M, in] @ W^T.  `accumulate` adds into y (beta = 1).
    public static func forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                               w: Weight, M: Int, accumulate: Bool = false,
                               scratch: MatmulScratch, kernels: MatmulKernels = .default) {
        if kernels == .avx512 {
            precondition(kernels.isAvailable, "AVX-512 matmul kernels on a CPU without AVX-512")
            AVX512GEMM.forward(y: y, x: x, w: w, M: M, accumulate: accumulate)
            return
        }
        let N = w.outFeatures, K = w.inFeatures
        switch w {
        case .f32(let t):
            // y = x @ W^T : A = x [M, K], B = W [N, K] transposed.
            sgemm(transB: true, M: M, N: N, K: K, A: x, lda: K, B: t.data, ldb: K,
                  beta: accumulate ? 1 : 0, C: y, ldc: N)
        case .int8(let q):
            // Dequantize a tile of rows of W, then one GEMM for that tile over all M rows.
            precondition(scratch.capacity >= K, "MatmulScratch(\(scratch.capacity)) is smaller than a row of W (\(K))")
            let tile = max(1, min(N, scratch.capacity / max(K, 1)))
            var n0 = 0
            while n0 < N {
                let n1 = min(N, n0 + tile)
                q.dequantizeRows(n0, n1, into: scratch.data)
                sgemm(transB: true, M: M, N: n1 - n0, K: K, A: x, lda: K,
                      B: scratch.data, ldb: K, beta: accumulate ? 1 : 0, C: y + n0, ldc: N)
                n0 = n1
            }
        }
    }

    /// dx[M, in] (+)= dy[M, out] @ W.
    public static func backwardInput(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>,
                                     w: Weight, M: Int, accumulate: Bool,
                                     scratch: MatmulScratch, kernels: MatmulKernels = .default) {
        if kernels == .avx512 {
            precondition(kernels.isAvailable, "AVX-512 matmul kernels on a CPU without AVX-512")
            AVX512GEMM.backwardInput(dx: dx, dy: dy, w: w, M: M, accumulate: accumulate)
            return
        }
        let N = w.outFeatures, K = w.inFeatures
        switch w {
        case .f32(let t):
            // dx = dy @ W : A = dy [M, N], B = W [N, K].
            sgemm(M: M, N: K, K: N, A: dy, lda: N, B: t.data, ldb: K,
                  beta: accumulate ? 1 : 0, C: dx, ldc: K)
        case .int8(let q):
            // Sum over tiles of W's rows: dx += dy[:, n0:n1] @ W[n0:n1, :].
            if N == 0 {
                if !accumulate { dx.update(repeating: 0, count: M * K) }
                return
            }
            precondition(scratch.capacity >= K, "MatmulScratch(\(scratch.capacity)) is smaller than a row of W (\(K))")
            let tile = max(1, min(N, scratch.capacity / max(K, 1)))
            var n0 = 0
            var first = !accumulate
            while n0 < N {
                let n1 = min(N, n0 + tile)
                q.dequantizeRows(n0, n1, into: scratch.data)
                sgemm(M: M, N: K, K: n1 - n0, A: dy + n0, lda: N, B: scratch.data, ldb: K,
                      beta: first ? 0 : 1, C: dx, ldc: K)
                first = false
                n0 = n1
            }
        }
    }
}
