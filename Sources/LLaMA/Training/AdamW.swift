import Foundation
import Tensor

/// AdamW exactly as torch.optim.AdamW (decoupled weight decay, bias correction), over the
/// LoRA parameters. Moments live here, one buffer per parameter, allocated once.
public final class AdamW: @unchecked Sendable {
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var eps: Double = 1e-8
    public var weightDecay: Double = 0
    public private(set) var step = 0
    public let params: [Tensor]
    public let grads: [Tensor]
    let m: [Tensor]
    let v: [Tensor]

    public init(params: [Tensor], grads: [Tensor]) {
        precondition(params.count == grads.count)
        self.params = params
        self.grads = grads
        m = params.map { Tensor($0.shape) }
        v = params.map { Tensor($0.shape) }
    }

    /// One update with learning rate `lr`:
    ///   p -= lr * wd * p;  m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2
    ///   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    public func update(lr: Double) {
        step += 1
        let bc1 = 1 - Foundation.pow(beta1, Double(step))
        let bc2sqrt = (1 - Foundation.pow(beta2, Double(step))).squareRoot()
        let stepSize = Float(lr / bc1)
        let b1 = Float(beta1), b2 = Float(beta2), omb1 = Float(1 - beta1), omb2 = Float(1 - beta2)
        let e = Float(eps), bc2 = Float(bc2sqrt), decay = Float(1 - lr * weightDecay)
        for k in 0..<params.count {
            let p = params[k].data, g = grads[k].data, mk = m[k].data, vk = v[k].data
            let n = params[k].count
            for i in 0..<n {
                if weightDecay != 0 { p[i] *= decay }
                let gi = g[i]
                mk[i] = mk[i] + omb1 * (gi - mk[i])     // torch's lerp_
                _ = b1
                vk[i] = vk[i] * b2 + omb2 * gi * gi
                let denom = vk[i].squareRoot() / bc2 + e
                p[i] -= stepSize * (mk[i] / denom)
            }
        }
    }

    /// The L2 norm over all gradients (torch's clip_grad_norm_ total norm).
    public func gradNorm() -> Double {
        var total = 0.0
        for g in grads {
            var s = 0.0
            for i in 0..<g.count { s += Double(g[i]) * Double(g[i]) }
            total += s
        }
        return total.squareRoot()
    }

    /// Scales gradients so their total norm is at most `maxNorm` (coefficient
    /// maxNorm / (norm + 1e-6), as torch). Returns the norm before clipping.
    @discardableResult
    public func clipGradients(maxNorm: Double) -> Double {
        let norm = gradNorm()
        let coef = maxNorm / (norm + 1e-6)
        if coef < 1 {
            let c = Float(coef)
            for g in grads { for i in 0..<g.count { g[i] *= c } }
        }
        return norm
    }

    public func zeroGradients() { for g in grads { g.zero() } }

    /// Moments and step, for checkpoints.
    public var state: [(m: Tensor, v: Tensor)] { zip(m, v).map { ($0, $1) } }

    public func restore(step: Int) { self.step = step }
}

/// transformers' get_linear_schedule_with_warmup: linear warm-up from 0 over `warmup`
/// steps, then linear decay to 0 at `total`. `step` counts from 0 (the first update).
public struct LinearSchedule: Sendable, Equatable {
    public var baseLR: Double
    public var warmup: Int
    public var total: Int
    public init(baseLR: Double, warmup: Int, total: Int) {
        self.baseLR = baseLR; self.warmup = warmup; self.total = total
    }
    public func lr(at step: Int) -> Double {
        if step < warmup { return baseLR * Double(step) / Double(max(1, warmup)) }
        return baseLR * max(0, Double(total - step) / Double(max(1, total - warmup)))
    }
}
