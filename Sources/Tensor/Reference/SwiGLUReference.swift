import Foundation

extension Reference {
    /// SiLU gate with libm's exp in Double, the oracle for `Tensor.SwiGLU` (SIMD exp).
    public enum SwiGLU {
        public static func forward(h: UnsafeMutablePointer<Float>, // [N, I]
                                   gate: UnsafePointer<Float>,     // [N, I]
                                   up: UnsafePointer<Float>,       // [N, I]
                                   count: Int) {
            for i in 0..<count {
                let g = Double(gate[i])
                h[i] = Float(g / (1 + Foundation.exp(-g)) * Double(up[i]))
            }
        }

        public static func backward(dgate: UnsafeMutablePointer<Float>, // [N, I]
                                    dup: UnsafeMutablePointer<Float>,   // [N, I]
                                    dh: UnsafePointer<Float>,           // [N, I]
                                    gate: UnsafePointer<Float>,         // [N, I]
                                    up: UnsafePointer<Float>,           // [N, I]
                                    count: Int) {
            for i in 0..<count {
                let g = Double(gate[i]), u = Double(up[i]), d = Double(dh[i])
                let s = 1 / (1 + Foundation.exp(-g))
                dgate[i] = Float(d * u * (s + g * s * (1 - s)))
                dup[i] = Float(d * g * s)
            }
        }
    }
}
