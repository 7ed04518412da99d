import Foundation

// Rotary position embedding in Hugging Face's rotate_half layout: within a head of
// headDim values, element i pairs with element i + headDim/2 (not with i + 1, as in the
// original Meta code), and both use frequency i:
//   out[i]        = x[i] * cos - x[i + half] * sin
//   out[i + half] = x[i + half] * cos + x[i] * sin
// which is HF's `q * cos + rotate_half(q) * sin` with `emb = cat(freqs, freqs)`.
//
// The table follows LlamaRotaryEmbedding in float32:
//   inv_freq[i] = 1 / theta ** (float(2i) / headDim)        (float32 pow and division)
//   angle       = float(pos) * inv_freq[i]                  (float32 product)
//   cos, sin    = cos(angle), sin(angle)                    (here: in Double, then rounded)
// times `attention_scaling`, which is 1 for the default rope type.

/// cos/sin for positions 0..<maxT, built once per model.
public final class RoPETable: @unchecked Sendable {
    public let maxT: Int
    public let headDim: Int
    public let cos: UnsafeMutablePointer<Float> // [maxT, headDim / 2]
    public let sin: UnsafeMutablePointer<Float> // [maxT, headDim / 2]

    /// The default rope type: inv_freq from theta.
    public convenience init(maxT: Int, headDim: Int, theta: Float) {
        self.init(maxT: maxT, headDim: headDim,
                  invFreq: RoPE.inverseFrequencies(headDim: headDim, theta: theta))
    }

    /// Any rope type whose inv_freq the caller computed (e.g. Llama 3 scaling), with HF's
    /// `attention_scaling` multiplied into cos and sin.
    public init(maxT: Int, headDim: Int, invFreq: [Float], attentionScaling: Float = 1) {
        precondition(headDim % 2 == 0 && invFreq.count == headDim / 2,
                     "RoPE needs an even headDim and headDim/2 frequencies")
        self.maxT = maxT
        self.headDim = headDim
        let n = max(maxT * headDim / 2, 1)
        cos = .allocate(capacity: n)
        sin = .allocate(capacity: n)
        invFreq.withUnsafeBufferPointer { f in
            RoPE.table(cos: cos, sin: sin, invFreq: f.baseAddress!, maxT: maxT, half: headDim / 2,
                       attentionScaling: attentionScaling)
        }
    }

    deinit {
        cos.deallocate()
        sin.deallocate()
    }
}

public enum RoPE {
    /// inv_freq[i] = 1 / theta ** (float(2i) / headDim), i < headDim / 2, as transformers
    /// computes it in float32 (the pow is done in Double and rounded once).
    public static func inverseFrequencies(headDim: Int, theta: Float) -> [Float] {
        (0..<headDim / 2).map { i in
            let exponent = Float(2 * i) / Float(headDim)
            let p = Float(Foundation.pow(Double(theta), Double(exponent)))
            return 1 / p
        }
    }

    /// Fills the default-type table: cos/sin of float(pos) * inv_freq[i].
    public static func table(cos: UnsafeMutablePointer<Float>, // [maxT, headDim / 2]
                             sin: UnsafeMutablePointer<Float>, // [maxT, headDim / 2]
                             maxT: Int, headDim: Int, theta: Float) {
        let f = inverseFrequencies(headDim: headDim, theta: theta)
        f.withUnsafeBufferPointer { f in
            table(cos: cos, sin: sin, invFreq: f.baseAddress!, maxT: maxT, half: headDim / 2,
                  attentionScaling: 1)
        }
    }

    /// Fills the table from given frequencies.
    public static func table(cos: UnsafeMutablePointer<Float>, // [maxT, half]
                             sin: UnsafeMutablePointer<Float>, // [maxT, half]
                             invFreq: UnsafePointer<Float>,    // [half]
                             maxT: Int, half: Int, attentionScaling: Float) {
        // maxT is max_position_embeddings (up to 131072): worth all the cores, once per model.
        WorkerPool.allCores.chunks(maxT, grain: 256) { positions in
            for pos in positions {
                for i in 0..<half {
                    let angle = Double(Float(pos) * invFreq[i])
                    cos[pos * half + i] = Float(Foundation.cos(angle)) * attentionScaling
                    sin[pos * half + i] = Float(Foundation.sin(angle)) * attentionScaling
                }
            }
        }
    }

    /// Rotates every head of every row in place by the angle of that row's position.
    public static func forward(pool: WorkerPool, x: UnsafeMutablePointer<Float>,  // [rows, nHeads, headDim], in place
                               positions: UnsafePointer<Int32>, // [rows]
                               rows: Int, nHeads: Int, headDim: Int, table: RoPETable) {
        rotate(pool: pool, x, positions: positions, rows: rows, nHeads: nHeads, headDim: headDim,
               table: table, sign: 1)
    }

    /// The transpose of forward (rotation by -angle), in place on the gradient:
    ///   dx[i]        =  dy[i] * cos + dy[i + half] * sin
    ///   dx[i + half] = -dy[i] * sin + dy[i + half] * cos
    public static func backward(pool: WorkerPool, dx: UnsafeMutablePointer<Float>, // [rows, nHeads, headDim], in place
                                positions: UnsafePointer<Int32>, // [rows]
                                rows: Int, nHeads: Int, headDim: Int, table: RoPETable) {
        rotate(pool: pool, dx, positions: positions, rows: rows, nHeads: nHeads, headDim: headDim,
               table: table, sign: -1)
    }

    @inline(__always)
    private static func rotate(pool: WorkerPool, _ x: UnsafeMutablePointer<Float>, // [rows, nHeads, headDim]
                               positions: UnsafePointer<Int32>,  // [rows]
                               rows: Int, nHeads: Int, headDim: Int, table: RoPETable,
                               sign: Float) {
        precondition(headDim == table.headDim, "RoPE table built for headDim \(table.headDim)")
        let half = headDim / 2
        let maxT = table.maxT
        pool.chunks(rows, grain: max(1, 4096 / max(nHeads * headDim, 1))) { r in
            for row in r {
                let pos = Int(positions[row])
                precondition(pos >= 0 && pos < maxT, "position \(pos) outside RoPE table")
                let c = table.cos + pos * half
                let s = table.sin + pos * half
                for h in 0..<nHeads {
                    let v = x + (row * nHeads + h) * headDim
                    for i in 0..<half {
                        let x1 = v[i], x2 = v[i + half]
                        let si = sign * s[i]
                        v[i] = x1 * c[i] - x2 * si
                        v[i + half] = x2 * c[i] + x1 * si
                    }
                }
            }
        }
    }
}
