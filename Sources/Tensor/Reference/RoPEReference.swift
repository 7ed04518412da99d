import Foundation

extension Reference {
    /// RoPE written as Hugging Face writes it: emb = cat(freqs, freqs), cos/sin over all
    /// headDim values, and `x * cos + rotate_half(x) * sin` with rotate_half(x) = cat(-x2, x1).
    /// The oracle for the index mapping of `Tensor.RoPE`.
    public enum RoPE {
        public static func forward(x: UnsafeMutablePointer<Float>,  // [rows, nHeads, headDim], in place
                                   positions: UnsafePointer<Int32>, // [rows]
                                   rows: Int, nHeads: Int, headDim: Int, theta: Float) {
            let half = headDim / 2
            var rotated = [Float](repeating: 0, count: headDim)
            var cosEmb = [Float](repeating: 0, count: headDim)
            var sinEmb = [Float](repeating: 0, count: headDim)
            for r in 0..<rows {
                for d in 0..<headDim {
                    let i = d % half
                    let invFreq = 1 / Float(Foundation.pow(Double(theta), Double(Float(2 * i) / Float(headDim))))
                    let angle = Double(Float(positions[r]) * invFreq)
                    cosEmb[d] = Float(Foundation.cos(angle))
                    sinEmb[d] = Float(Foundation.sin(angle))
                }
                for h in 0..<nHeads {
                    let v = x + (r * nHeads + h) * headDim
                    for d in 0..<half { rotated[d] = -v[d + half]; rotated[d + half] = v[d] }
                    for d in 0..<headDim { v[d] = v[d] * cosEmb[d] + rotated[d] * sinEmb[d] }
                }
            }
        }
    }
}
