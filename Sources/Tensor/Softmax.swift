import Foundation

// Softmax and log-softmax over one vector (a row of logits when sampling). Max-subtracted,
// exponentials in Float, the normalizing sum in Double. Attention and cross-entropy do their
// own row softmax inline (masked, fused with the loss); this is the plain one.
public enum Softmax {
    /// y = exp(x - max) / sum(exp(x - max)). `y` may alias `x`.
    public static func forward(y: UnsafeMutablePointer<Float>, // [count]
                               x: UnsafePointer<Float>,        // [count]
                               count: Int) {
        guard count > 0 else { return }
        let m = VectorOps.max(x, count: count)
        let sum = VectorOps.expShifted(y: y, x: x, shift: m, count: count)
        let inv = Float(1 / sum)
        for i in 0..<count { y[i] *= inv }
    }

    /// dx = y * (dy - sum(dy * y)), the input gradient of y = softmax(x).
    /// Overwrites dx; `dx` may alias `dy`.
    public static func backward(dx: UnsafeMutablePointer<Float>, // [count]
                                dy: UnsafePointer<Float>,        // [count]
                                y: UnsafePointer<Float>,         // [count]
                                count: Int) {
        let d = VectorOps.dot(dy, y, count: count)
        for i in 0..<count { dx[i] = y[i] * (dy[i] - d) }
    }

    /// y = x - logsumexp(x). `y` may alias `x`.
    public static func logForward(y: UnsafeMutablePointer<Float>, // [count]
                                  x: UnsafePointer<Float>,        // [count]
                                  count: Int) {
        guard count > 0 else { return }
        let m = VectorOps.max(x, count: count)
        let lse = Float(Double(m) + Foundation.log(VectorOps.expShiftedSum(x, shift: m, count: count)))
        for i in 0..<count { y[i] = x[i] - lse }
    }

    /// dx = dy - softmax(x) * sum(dy) = dy - exp(y) * sum(dy), the input gradient of
    /// y = logSoftmax(x). Overwrites dx; `dx` may alias `dy`.
    public static func logBackward(dx: UnsafeMutablePointer<Float>, // [count]
                                   dy: UnsafePointer<Float>,        // [count]
                                   y: UnsafePointer<Float>,         // [count]
                                   count: Int) {
        var s: Float = 0
        for i in 0..<count { s += dy[i] }
        for i in 0..<count { dx[i] = dy[i] - VectorOps.exp(y[i]) * s }
    }
}
