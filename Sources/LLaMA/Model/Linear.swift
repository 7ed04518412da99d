import Tensor

/// A frozen linear layer (no bias, as in LLaMA) with optional LoRA adapters attached.
/// Training uses one adapter; generation may stack several (each with its own scale).
public final class Linear: @unchecked Sendable {
    public let weight: Weight          // [out, in], f32 or int8 rows
    public var adapters: [LoRA] = []

    public init(_ weight: Weight) { self.weight = weight }

    public var inFeatures: Int { weight.inFeatures }
    public var outFeatures: Int { weight.outFeatures }

    /// y[M, out] = x[M, in] @ W^T + sum over adapters of scale * (x A^T) B^T.
    /// `u` receives x A^T [M, r] for each adapter (kept for backward when training).
    /// With dropout, `loraInput[k]` is the dropped-out input the k-th adapter saw.
    public func forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, M: Int,
                        scratch: MatmulScratch, u: [UnsafeMutablePointer<Float>],
                        loraInput: [UnsafePointer<Float>?] = [], profile: OpProfile? = nil) {
        profile.time(.projection) { Matmul.forward(y: y, x: x, w: weight, M: M, scratch: scratch) }
        profile.time(.lora) {
        for (k, a) in adapters.enumerated() {
            let xin = k < loraInput.count ? (loraInput[k] ?? x) : x
            // u[M, r] = xin[M, in] @ A^T
            sgemm(transB: true, M: M, N: a.r, K: a.inFeatures, A: xin, lda: a.inFeatures,
                  B: a.A.data, ldb: a.inFeatures, C: u[k], ldc: a.r)
            // y[M, out] += scale * u[M, r] @ B^T
            sgemm(transB: true, M: M, N: a.outFeatures, K: a.r, alpha: a.scale, A: u[k], lda: a.r,
                  B: a.B.data, ldb: a.r, beta: 1, C: y, ldc: a.outFeatures)
        }
        }
    }

    /// Backward for training (one adapter at most):
    ///   dx[M, in] (+)= dy @ W  +  (scale * dy @ B) @ A      (through the dropout mask)
    ///   gradB[out, r] += scale * dy^T @ u,  gradA[r, in] += du^T @ xin
    /// `du` is scratch [M, r]; `dz` scratch [M, in] needed only with dropout.
    public func backward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, M: Int,
                         accumulate: Bool, scratch: MatmulScratch,
                         u: UnsafePointer<Float>?, loraInput: UnsafePointer<Float>?,
                         keep: UnsafePointer<UInt8>?,
                         du: UnsafeMutablePointer<Float>, dz: UnsafeMutablePointer<Float>?, profile: OpProfile? = nil) {
        profile.time(.projection) { Matmul.backwardInput(dx: dx, dy: dy, w: weight, M: M, accumulate: accumulate, scratch: scratch) }
        guard let a = adapters.first, let u, let loraInput, let gA = a.gradA, let gB = a.gradB else { return }
        profile.time(.lora) {
        let out = a.outFeatures, inF = a.inFeatures, r = a.r
        // gradB[out, r] += scale * dy^T[out, M] @ u[M, r]
        sgemm(transA: true, M: out, N: r, K: M, alpha: a.scale, A: dy, lda: out, B: u, ldb: r,
              beta: 1, C: gB.data, ldc: r)
        // du[M, r] = scale * dy[M, out] @ B[out, r]
        sgemm(M: M, N: r, K: out, alpha: a.scale, A: dy, lda: out, B: a.B.data, ldb: r, C: du, ldc: r)
        // gradA[r, in] += du^T[r, M] @ xin[M, in]
        sgemm(transA: true, M: r, N: inF, K: M, A: du, lda: r, B: loraInput, ldb: inF,
              beta: 1, C: gA.data, ldc: inF)
        if let keep, let dz {
            // dz = du @ A, then dx += dz * keep / (1 - p): dropout's backward.
            sgemm(M: M, N: inF, K: r, A: du, lda: r, B: a.A.data, ldb: inF, C: dz, ldc: inF)
            let n = M * inF, s = 1 / (1 - a.dropout)
            for i in 0..<n where keep[i] != 0 { dx[i] += dz[i] * s }
        } else {
            // dx[M, in] += du[M, r] @ A[r, in]
            sgemm(M: M, N: inF, K: r, A: du, lda: r, B: a.A.data, ldb: inF, beta: 1, C: dx, ldc: inF)
        }
        }
    }
}
