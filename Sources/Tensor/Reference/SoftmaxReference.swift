import Foundation

extension Reference {
    /// Softmax and log-softmax in Double, the oracle for `Tensor.Softmax`.
    public enum Softmax {
        public static func forward(y: UnsafeMutablePointer<Float>, // [count]
                                   x: UnsafePointer<Float>,        // [count]
                                   count: Int) {
            var m = -Double.infinity
            for i in 0..<count { m = max(m, Double(x[i])) }
            var sum = 0.0
            for i in 0..<count { sum += Foundation.exp(Double(x[i]) - m) }
            for i in 0..<count { y[i] = Float(Foundation.exp(Double(x[i]) - m) / sum) }
        }

        public static func logForward(y: UnsafeMutablePointer<Float>, // [count]
                                      x: UnsafePointer<Float>,        // [count]
                                      count: Int) {
            var m = -Double.infinity
            for i in 0..<count { m = max(m, Double(x[i])) }
            var sum = 0.0
            for i in 0..<count { sum += Foundation.exp(Double(x[i]) - m) }
            let lse = m + Foundation.log(sum)
            for i in 0..<count { y[i] = Float(Double(x[i]) - lse) }
        }
    }
}
