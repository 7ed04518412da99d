// RMSNorm as Hugging Face's LlamaRMSNorm computes it in float32:
//   rstd = 1 / sqrt(mean(x^2) + eps)        (per row of C values)
//   y    = weight * (x * rstd)
// The weight is frozen, so backward gives only dx, and adds it: x is the residual stream,
// whose gradient also arrives through the skip connection.
public enum RMSNorm {
    /// y = weight * (x * rstd). `y` may alias `x`.
    public static func forward(pool: WorkerPool, y: UnsafeMutablePointer<Float>,    // [N, C]
                               rstd: UnsafeMutablePointer<Float>, // [N], kept for backward
                               x: UnsafePointer<Float>,           // [N, C]
                               weight: UnsafePointer<Float>,      // [C]
                               N: Int, C: Int, eps: Float) {
        pool.chunks(N, grain: max(1, 8192 / max(C, 1))) { rows in
            for n in rows {
                let xr = x + n * C, yr = y + n * C
                let meanSquare = VectorOps.sumOfSquaresRow(xr, count: C) / Float(C)
                let r = 1 / (meanSquare + eps).squareRoot()
                rstd[n] = r
                for i in 0..<C { yr[i] = weight[i] * (xr[i] * r) }
            }
        }
    }

    /// dx += r * (w * dy) - x * r^3 * sum(w * dy * x) / C, per row, with r = rstd.
    /// (From y_k = w_k x_k r and dr/dx_k = -r^3 x_k / C.)
    public static func backward(pool: WorkerPool, dx: UnsafeMutablePointer<Float>, // [N, C], accumulated (+=)
                                dy: UnsafePointer<Float>,        // [N, C]
                                x: UnsafePointer<Float>,         // [N, C]
                                weight: UnsafePointer<Float>,    // [C]
                                rstd: UnsafePointer<Float>,      // [N]
                                N: Int, C: Int) {
        pool.chunks(N, grain: max(1, 8192 / max(C, 1))) { rows in
            for n in rows {
                let xr = x + n * C, dyr = dy + n * C, dxr = dx + n * C
                let r = rstd[n]
                // s = sum(w * dy * x) in Float lanes.
                var acc = SIMD8<Float>()
                var i = 0
                while i + 8 <= C {
                    acc += VectorOps.load8(weight + i) * VectorOps.load8(dyr + i)
                        * VectorOps.load8(xr + i)
                    i += 8
                }
                var s = acc.sum()
                while i < C { s += weight[i] * dyr[i] * xr[i]; i += 1 }
                let c = s * r * r * r / Float(C)
                for k in 0..<C { dxr[k] += r * (weight[k] * dyr[k]) - c * xr[k] }
            }
        }
    }
}
