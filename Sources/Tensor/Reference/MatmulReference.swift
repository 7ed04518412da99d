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
            if let f = w.format as? Int8RowsFormat, let threshold = f.outlierThreshold {
                // The bound stays sum |x| |W| (+ |y| before), the scale of the f32 roundings.
                if let bound {
                    for m in 0..<M {
                        for n in 0..<N {
                            var b = accumulate ? abs(Double(y[m * N + n])) : 0
                            for k in 0..<K { b += abs(Double(x[m * K + k]) * weight(w, n, k)) }
                            bound[m * N + n] = Float(b)
                        }
                    }
                }
                llmInt8Forward(y: y, x: x, w: w, M: M, threshold: threshold, accumulate: accumulate)
                return
            }
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

        /// LLM.int8() (bitsandbytes' MatMul8bitLt with int8 weights, CKernels.h's statement)
        /// written out: Swift's Float16 for the half rounding, the int8 sums in Int, the
        /// outlier columns' sum in Double.
        static func llmInt8Forward(y: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, w: Weight, M: Int,
                                   threshold: Float, accumulate: Bool) {
            let N = w.outFeatures, K = w.inFeatures
            let wq = w.data.assumingMemoryBound(to: Int8.self), scales = w.scales!
            let half = { (v: Float) -> Float in Float(Float16(v)) }
            let thr = threshold > 0 ? half(threshold) : .infinity
            var outlier = [Bool](repeating: false, count: K)
            var stats = [Float](repeating: 0, count: M)
            for m in 0..<M {
                for k in 0..<K {
                    let h = abs(half(x[m * K + k]))
                    if h >= thr { outlier[k] = true } else { stats[m] = max(stats[m], h) }
                }
            }
            for m in 0..<M {
                let r: Float = (1 / stats[m]) * 127  // PyTorch's `127.0 / t`: reciprocal, then times 127
                let q = (0..<K).map { k -> Int in
                    if outlier[k] || stats[m] == 0 { return 0 }
                    return Int(max(-127, min(127, (half(x[m * K + k]) * r).rounded(.toNearestOrEven))))
                }
                for n in 0..<N {
                    var acc = 0
                    for k in 0..<K { acc += q[k] * Int(wq[n * K + k]) }
                    let scb = scales[n] * 127
                    var v = Float(acc) * (stats[m] * scb) * 6.200124e-05
                    var extra = 0.0
                    for k in 0..<K where outlier[k] {
                        extra += Double(x[m * K + k]) * Double(Float(wq[n * K + k]) * scb * 7.874015718698502e-3)
                    }
                    v = Float(Double(v) + extra)
                    y[m * N + n] = accumulate ? y[m * N + n] + v : v
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
