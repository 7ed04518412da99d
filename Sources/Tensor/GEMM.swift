import COpenBLAS

/// Row-major single-precision GEMM: C = alpha * op(A) @ op(B) + beta * C.
/// One call per matmul over all rows (M = batch x tokens); never one call per row.
///   op(A): [M, K] (A stored [M, K] with lda, or [K, M] when transA)
///   op(B): [K, N] (B stored [K, N] with ldb, or [N, K] when transB)
///   C:     [M, N] with ldc
@inline(__always)
public func sgemm(transA: Bool = false, transB: Bool = false,
                  M: Int, N: Int, K: Int,
                  alpha: Float = 1,
                  A: UnsafePointer<Float>, lda: Int,
                  B: UnsafePointer<Float>, ldb: Int,
                  beta: Float = 0,
                  C: UnsafeMutablePointer<Float>, ldc: Int) {
    if M == 0 || N == 0 { return }
    if K == 0 {
        if beta == 0 { for i in 0..<M { (C + i * ldc).update(repeating: 0, count: N) } }
        else if beta != 1 { for i in 0..<M { for j in 0..<N { C[i * ldc + j] *= beta } } }
        return
    }
    cblas_sgemm(CblasRowMajor,
                transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans,
                blasint(M), blasint(N), blasint(K),
                alpha, A, blasint(lda), B, blasint(ldb),
                beta, C, blasint(ldc))
}

/// OpenBLAS runs on one thread, always: our pool's workers call it with disjoint pieces of
/// work, and its own threads (process-wide, spinning while idle) would take the cores from ours.
/// Done once, before the first context computes anything.
enum BLASThreads {
    static let single: Void = { openblas_set_num_threads(1) }()
}
