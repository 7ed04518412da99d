import Foundation

extension Reference {
    /// Cross-entropy with every exponential in Double, the oracle for `Tensor.CrossEntropy`.
    public enum CrossEntropy {
        public static func forwardBackward(dlogits: UnsafeMutablePointer<Float>?, // [N, V]
                                           logits: UnsafePointer<Float>,          // [N, V]
                                           targets: UnsafePointer<Int32>,         // [N], -100 = ignore
                                           N: Int, V: Int,
                                           gradScale: Float) -> (lossSum: Double, count: Int) {
            var total = 0.0, count = 0
            for n in 0..<N {
                let row = logits + n * V
                let t = targets[n]
                if t == -100 {
                    if let d = dlogits { for j in 0..<V { d[n * V + j] = 0 } }
                    continue
                }
                var m = -Double.infinity
                for j in 0..<V { m = max(m, Double(row[j])) }
                var sum = 0.0
                for j in 0..<V { sum += Foundation.exp(Double(row[j]) - m) }
                let lse = m + Foundation.log(sum)
                total += lse - Double(row[Int(t)])
                count += 1
                if let d = dlogits {
                    var g = [Double](repeating: 0, count: V)
                    for j in 0..<V {
                        g[j] = (Foundation.exp(Double(row[j]) - lse) - (j == Int(t) ? 1 : 0))
                            * Double(gradScale)
                    }
                    for j in 0..<V { d[n * V + j] = Float(g[j]) }
                }
            }
            return (total, count)
        }
    }
}
