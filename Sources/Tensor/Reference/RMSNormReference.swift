extension Reference {
    /// RMSNorm with Double sums, the oracle for `Tensor.RMSNorm` (which sums in Float lanes).
    public enum RMSNorm {
        public static func forward(y: UnsafeMutablePointer<Float>,    // [N, C]
                                   rstd: UnsafeMutablePointer<Float>, // [N]
                                   x: UnsafePointer<Float>,           // [N, C]
                                   weight: UnsafePointer<Float>,      // [C]
                                   N: Int, C: Int, eps: Float) {
            for n in 0..<N {
                var ss = 0.0
                for i in 0..<C { ss += Double(x[n * C + i]) * Double(x[n * C + i]) }
                let r = 1 / (ss / Double(C) + Double(eps)).squareRoot()
                rstd[n] = Float(r)
                for i in 0..<C { y[n * C + i] = Float(Double(weight[i]) * Double(x[n * C + i]) * r) }
            }
        }

        /// dx += ..., same formula as the fast version, in Double.
        public static func backward(dx: UnsafeMutablePointer<Float>, // [N, C], accumulated (+=)
                                    dy: UnsafePointer<Float>,        // [N, C]
                                    x: UnsafePointer<Float>,         // [N, C]
                                    weight: UnsafePointer<Float>,    // [C]
                                    rstd: UnsafePointer<Float>,      // [N]
                                    N: Int, C: Int) {
            for n in 0..<N {
                let r = Double(rstd[n])
                var s = 0.0
                for i in 0..<C { s += Double(weight[i]) * Double(dy[n * C + i]) * Double(x[n * C + i]) }
                for k in 0..<C {
                    let g = r * Double(weight[k]) * Double(dy[n * C + k])
                        - Double(x[n * C + k]) * r * r * r * s / Double(C)
                    dx[n * C + k] = Float(Double(dx[n * C + k]) + g)
                }
            }
        }
    }
}
