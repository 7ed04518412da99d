// The LLaMA MLP's gate: h = silu(gate) * up, silu(x) = x * sigmoid(x) = x / (1 + exp(-x)),
// as torch's SiLU computes it in float32. Element-wise over `count` = N * intermediate values.
// With s = sigmoid(g):
//   d silu / dg = s * (1 + g * (1 - s))
//   dgate = dh * up * s * (1 + g * (1 - s)),   dup = dh * silu(g)
// Every output element depends only on the same element of the inputs, so any output may
// alias any input (each element is read before it is written).
//
// The CPU backend runs the C versions (vexp.c's lora_swiglu_*, 8 lanes with AVX2; the Swift
// SIMD code is compiled for baseline x86-64), which give these functions' bits on every
// family; these stay as their reference (SwiGLUTests).
import CKernels

public enum SwiGLU {
    /// The C kernels over the pool's workers, in the same chunks as the Swift code.
    public static func forward(pool: WorkerPool, vectorKernels fam: Int32, h: UnsafeMutablePointer<Float>,
                               gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        pool.chunks(count, grain: 1 << 14) { r in
            lora_swiglu_forward(fam, h + r.lowerBound, gate + r.lowerBound, up + r.lowerBound, r.count)
        }
    }

    public static func backward(pool: WorkerPool, vectorKernels fam: Int32, dgate: UnsafeMutablePointer<Float>,
                                dup: UnsafeMutablePointer<Float>, dh: UnsafePointer<Float>, gate: UnsafePointer<Float>,
                                up: UnsafePointer<Float>, count: Int) {
        pool.chunks(count, grain: 1 << 14) { r in
            let o = r.lowerBound
            lora_swiglu_backward(fam, dgate + o, dup + o, dh + o, gate + o, up + o, r.count)
        }
    }

    public static func forward(pool: WorkerPool, h: UnsafeMutablePointer<Float>, // [N, I]
                               gate: UnsafePointer<Float>,     // [N, I]
                               up: UnsafePointer<Float>,       // [N, I]
                               count: Int) {
        pool.chunks(count, grain: 1 << 14) { r in
            var i = r.lowerBound
            let one = SIMD8<Float>(repeating: 1)
            while i + 8 <= r.upperBound {
                let g = VectorOps.load8(gate + i), u = VectorOps.load8(up + i)
                let silu = g / (one + VectorOps.exp(-g))
                VectorOps.store8(silu * u, h + i)
                i += 8
            }
            while i < r.upperBound {
                let g = gate[i]
                h[i] = g / (1 + VectorOps.exp(-g)) * up[i]
                i += 1
            }
        }
    }

    /// Overwrites dgate and dup.
    public static func backward(pool: WorkerPool, dgate: UnsafeMutablePointer<Float>, // [N, I]
                                dup: UnsafeMutablePointer<Float>,   // [N, I]
                                dh: UnsafePointer<Float>,           // [N, I]
                                gate: UnsafePointer<Float>,         // [N, I]
                                up: UnsafePointer<Float>,           // [N, I]
                                count: Int) {
        pool.chunks(count, grain: 1 << 14) { r in
            var i = r.lowerBound
            let one = SIMD8<Float>(repeating: 1)
            while i + 8 <= r.upperBound {
                let g = VectorOps.load8(gate + i), u = VectorOps.load8(up + i)
                let d = VectorOps.load8(dh + i)
                let den = one + VectorOps.exp(-g)
                let s = one / den
                VectorOps.store8(d * u * s * (one + g * (one - s)), dgate + i)
                VectorOps.store8(d * (g / den), dup + i)
                i += 8
            }
            while i < r.upperBound {
                let g = gate[i], u = up[i], d = dh[i]
                let den = 1 + VectorOps.exp(-g)
                let s = 1 / den
                dgate[i] = d * u * s * (1 + g * (1 - s))
                dup[i] = d * (g / den)
                i += 1
            }
        }
    }
}
