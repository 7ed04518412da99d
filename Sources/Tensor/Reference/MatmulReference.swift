extension Reference {
    /// The products with a frozen weight, loop by loop in Double: the oracle for both
    /// kernel families. W[n, k] is the weight's value as its format's scalar `dequantizeRows`
    /// computes it in Float (f32 as is, bf16 widened, int8 q[n, k] * scale[n]).
    /// `bound`, when given, receives sum |a| |b| over each output's terms (plus |C| before an
    /// accumulate): the scale against which a Float kernel's rounding error is judged.
    public enum Matmul {

        /// y[M, N] (+)= x[M, K] @ W^T, W [N, K].
        public static func forward(y: UnsafeMutablePointer<Float>,  // [M, N]
                                   x: UnsafePointer<Float>,         // [M, K]
                                   w: Weight, M: Int, accumulate: Bool,
                                   bound: UnsafeMutablePointer<Float>? = nil) { // [M, N]
            let N = w.outFeatures, K = w.inFeatures
            let d = w.dense()
            func weight(_ w: Weight, _ n: Int, _ k: Int) -> Double { Double(d.data[n * K + k]) }
            for m in 0..<M {
                for n in 0..<N {
                    var s = accumulate ? Double(y[m * N + n]) : 0
                    var b = abs(s)
                    for k in 0..<K {
                        let p = Double(x[m * K + k]) * weight(w, n, k)
                        s += p
                        b += abs(p)
                    }
                    y[m * N + n] = Float(s)
                    bound?[m * N + n] = Float(b)
                }
            }
        }

        /// dx[M, K] (+)= dy[M, N] @ W, W [N, K].
        public static func backwardInput(dx: UnsafeMutablePointer<Float>,  // [M, K]
                                         dy: UnsafePointer<Float>,         // [M, N]
                                         w: Weight, M: Int, accumulate: Bool,
                                         bound: UnsafeMutablePointer<Float>? = nil) { // [M, K]
            let N = w.outFeatures, K = w.inFeatures
            let d = w.dense()
            func weight(_ w: Weight, _ n: Int, _ k: Int) -> Double { Double(d.data[n * K + k]) }
            for m in 0..<M {
                for k in 0..<K {
                    var s = accumulate ? Double(dx[m * K + k]) : 0
                    var b = abs(s)
                    for n in 0..<N {
                        let p = Double(dy[m * N + n]) * weight(w, n, k)
                        s += p
                        b += abs(p)
                    }
                    dx[m * K + k] = Float(s)
                    bound?[m * K + k] = Float(b)
                }
            }
        }
    }
}
