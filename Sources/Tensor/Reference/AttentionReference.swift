import Foundation

extension Reference {
    /// Triple-loop causal GQA attention, the oracle for `Tensor.Attention`.
    /// Same arguments and semantics; Double accumulation; O(B nH T^2 hd) scalar work.
    public enum Attention {
        public static func forward(out: UnsafeMutablePointer<Float>,   // [B, T, nH, hd]
                                   probs: UnsafeMutablePointer<Float>, // [B, nH, T, T]
                                   q: UnsafePointer<Float>,            // [B, T, nH, hd]
                                   k: UnsafePointer<Float>,            // [B, T, nKV, hd]
                                   v: UnsafePointer<Float>,            // [B, T, nKV, hd]
                                   keyMask: UnsafePointer<Float>?,     // [B, T]
                                   B: Int, T: Int, nH: Int, nKV: Int, hd: Int) {
            let rep = nH / nKV
            let scale = 1 / Double(hd).squareRoot()
            var s = [Double](repeating: 0, count: T)
            for b in 0..<B {
                for h in 0..<nH {
                    let g = h / rep
                    for i in 0..<T {
                        let qi = q + ((b * T + i) * nH + h) * hd
                        let p = probs + ((b * nH + h) * T + i) * T
                        var m = -Double.infinity
                        for j in 0..<T {
                            let allowed = j <= i && (keyMask == nil || keyMask![b * T + j] != 0)
                            guard allowed else { s[j] = -.infinity; continue }
                            let kj = k + ((b * T + j) * nKV + g) * hd
                            var dot = 0.0
                            for c in 0..<hd { dot += Double(qi[c]) * Double(kj[c]) }
                            s[j] = dot * scale
                            m = max(m, s[j])
                        }
                        var sum = 0.0
                        if m > -.infinity {
                            for j in 0..<T where s[j] > -.infinity { s[j] = Foundation.exp(s[j] - m); sum += s[j] }
                        }
                        // No allowed key: HF's additive-min mask makes the row uniform over all T keys.
                        let w: [Double] = sum > 0 ? (0..<T).map { s[$0] > -.infinity ? s[$0] / sum : 0 }
                                                  : [Double](repeating: 1 / Double(T), count: T)
                        for j in 0..<T { p[j] = Float(w[j]) }
                        let o = out + ((b * T + i) * nH + h) * hd
                        for c in 0..<hd {
                            var acc = 0.0
                            for j in 0..<T where w[j] != 0 { acc += w[j] * Double(v[((b * T + j) * nKV + g) * hd + c]) }
                            o[c] = Float(acc)
                        }
                    }
                }
            }
        }

        /// Overwrites dq, dk, dv.
        public static func backward(dq: UnsafeMutablePointer<Float>, // [B, T, nH, hd]
                                    dk: UnsafeMutablePointer<Float>, // [B, T, nKV, hd]
                                    dv: UnsafeMutablePointer<Float>, // [B, T, nKV, hd]
                                    dout: UnsafePointer<Float>,      // [B, T, nH, hd]
                                    probs: UnsafePointer<Float>,     // [B, nH, T, T]
                                    q: UnsafePointer<Float>,         // [B, T, nH, hd]
                                    k: UnsafePointer<Float>,         // [B, T, nKV, hd]
                                    v: UnsafePointer<Float>,         // [B, T, nKV, hd]
                                    B: Int, T: Int, nH: Int, nKV: Int, hd: Int) {
            let rep = nH / nKV
            let scale = 1 / Double(hd).squareRoot()
            var dkAcc = [Double](repeating: 0, count: B * T * nKV * hd)
            var dvAcc = [Double](repeating: 0, count: B * T * nKV * hd)
            var ds = [Double](repeating: 0, count: T)
            for b in 0..<B {
                for h in 0..<nH {
                    let g = h / rep
                    for i in 0..<T {
                        let p = probs + ((b * nH + h) * T + i) * T
                        let doi = dout + ((b * T + i) * nH + h) * hd
                        let qi = q + ((b * T + i) * nH + h) * hd
                        // dP_ij = dO_i . V_j ; dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij')
                        var rowDot = 0.0
                        for j in 0..<T {
                            var dp = 0.0
                            for c in 0..<hd { dp += Double(doi[c]) * Double(v[((b * T + j) * nKV + g) * hd + c]) }
                            ds[j] = dp
                            rowDot += Double(p[j]) * dp
                        }
                        for j in 0..<T { ds[j] = Double(p[j]) * (ds[j] - rowDot) }
                        for c in 0..<hd {
                            var acc = 0.0
                            for j in 0..<T { acc += ds[j] * Double(k[((b * T + j) * nKV + g) * hd + c]) }
                            dq[((b * T + i) * nH + h) * hd + c] = Float(acc * scale)
                        }
                        for j in 0..<T {
                            let base = ((b * T + j) * nKV + g) * hd
                            for c in 0..<hd {
                                dkAcc[base + c] += ds[j] * scale * Double(qi[c])
                                dvAcc[base + c] += Double(p[j]) * Double(doi[c])
                            }
                        }
                    }
                }
            }
            for i in 0..<B * T * nKV * hd {
                dk[i] = Float(dkAcc[i])
                dv[i] = Float(dvAcc[i])
            }
        }
    }
}
