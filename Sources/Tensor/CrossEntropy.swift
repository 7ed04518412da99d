import Foundation

// Token-level cross-entropy with its gradient in one pass, as
// `F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")` would give:
//   loss_n   = logsumexp(logits[n]) - logits[n, target[n]]     (rows with target -100 skipped)
//   dlogits  = (softmax(logits[n]) - onehot(target[n])) * gradScale, and 0 on skipped rows
// The caller turns the sum into HF's mean by passing gradScale = 1 / count (over the whole
// accumulated batch) and dividing lossSum by count.
//
// Exponentials are in Float after subtracting the row max; the row sum and the loss are in
// Double. Rows run in parallel; the loss is summed in row order afterwards, so the result does
// not depend on the thread count.
public enum CrossEntropy {
    public static let ignoreIndex: Int32 = -100

    /// Returns the summed loss over counted rows and how many rows counted.
    /// `dlogits` may be the same buffer as `logits` (the gradient then replaces the logits,
    /// which saves a [N, V] buffer); any other overlap is not allowed.
    @discardableResult
    public static func forwardBackward(pool: WorkerPool, dlogits: UnsafeMutablePointer<Float>?, // [N, V]; nil = loss only
                                       logits: UnsafePointer<Float>,          // [N, V]
                                       targets: UnsafePointer<Int32>,         // [N], -100 = ignore
                                       N: Int, V: Int,
                                       gradScale: Float) -> (lossSum: Double, count: Int) {
        let rowLoss = UnsafeMutablePointer<Double>.allocate(capacity: max(N, 1))
        defer { rowLoss.deallocate() }
        pool.chunks(N) { rows in
            for n in rows {
                let row = logits + n * V
                let t = targets[n]
                if t == ignoreIndex {
                    rowLoss[n] = 0
                    if let d = dlogits { (d + n * V).update(repeating: 0, count: V) }
                    continue
                }
                precondition(t >= 0 && Int(t) < V, "target \(t) outside vocabulary of \(V)")
                let target = Int(t)
                let xt = row[target] // read before an aliased dlogits overwrites it
                let m = VectorOps.max(row, count: V)
                let sum: Double
                if let d = dlogits {
                    let dr = d + n * V
                    sum = VectorOps.expShifted(y: dr, x: row, shift: m, count: V)
                    let s = Float(Double(gradScale) / sum)
                    for j in 0..<V { dr[j] *= s }
                    dr[target] -= gradScale
                } else {
                    sum = VectorOps.expShiftedSum(row, shift: m, count: V)
                }
                rowLoss[n] = Double(m) + Foundation.log(sum) - Double(xt)
            }
        }
        var total = 0.0, count = 0
        for n in 0..<N where targets[n] != ignoreIndex {
            total += rowLoss[n]
            count += 1
        }
        return (total, count)
    }
}
