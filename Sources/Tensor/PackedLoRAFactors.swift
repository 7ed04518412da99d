import CKernels

/// One LoRA site's factors as decoding's products read them (`lora_factors_*`): A [r, in]
/// transposed to [in, rp] and B [out, r] in panels of 16 outputs, so that each product is one
/// forward stream with no horizontal sums. A copy: whoever owns A and B repacks it (`pack`)
/// after changing them. Placed in a `WeightArena` (2 MB pages). Measured on Zen 4 (one thread,
/// SmolLM2's 210 r = 16 sites, factors from memory, C harness): the f32 GEMV on A and B
/// streamed 15.7 / 11.4 GB/s at 1 / 4 rows, these layouts 34.6 / 27.3 (a plain read 32.7); on
/// 4 KB pages a plain read ran at 19.
///
/// `half` copies hold IEEE half values (rounded to nearest even): half the bytes, for bases
/// whose own products are quantized (`WeightFormat.productsAreExact` false), where the
/// rounding (2^-12 of the LoRA term) is far below the base's. The products widen them exactly,
/// so their bits are those of f32 copies of the rounded values.
public final class PackedLoRAFactors: @unchecked Sendable {
    public let rank: Int, inFeatures: Int, outFeatures: Int
    /// Whether the copies are IEEE half (else f32).
    public let half: Bool
    /// AT [inFeatures, rp]; rp = rank rounded up to 8.
    public let at: UnsafeMutableRawPointer
    /// lora_factors_up_floats(outFeatures, rank) elements of panels.
    public let bp: UnsafeMutableRawPointer
    private let owner: AnyObject

    /// Bytes of both copies for a site of these sizes (without alignment).
    public static func byteCount(rank: Int, inFeatures: Int, outFeatures: Int, half: Bool = false) -> Int {
        (half ? 2 : 4) * (inFeatures * Int(lora_factors_rp(rank)) + Int(lora_factors_up_floats(outFeatures, rank)))
    }

    /// Room for the copies in `arena` (not packed yet: call `pack`).
    public init(rank: Int, inFeatures: Int, outFeatures: Int, half: Bool = false, arena: WeightArena) {
        precondition(rank >= 1 && inFeatures >= 1 && outFeatures >= 1)
        self.rank = rank; self.inFeatures = inFeatures; self.outFeatures = outFeatures; self.half = half
        let size = half ? 2 : 4
        // Each copy starts on a cache line (carve aligns to 64 bytes).
        let atBytes = (inFeatures * Int(lora_factors_rp(rank)) * size + 63) / 64 * 64
        let (p, o) = arena.carve(atBytes + Int(lora_factors_up_floats(outFeatures, rank)) * size)
        at = p
        bp = p + atBytes
        owner = o
    }

    /// Copies A [rank, in] and B [out, rank] into the packed layouts. False when the copies
    /// are half and a value does not fit one (|x| past 65504, inf, NaN): use f32 copies then.
    @discardableResult
    public func pack(A: UnsafePointer<Float>, B: UnsafePointer<Float>) -> Bool {
        if half {
            let down = lora_factors_pack_down_half(rank, inFeatures, A, at.assumingMemoryBound(to: UInt16.self))
            let up = lora_factors_pack_up_half(outFeatures, rank, B, bp.assumingMemoryBound(to: UInt16.self))
            return down != 0 && up != 0
        }
        lora_factors_pack_down(rank, inFeatures, A, at.assumingMemoryBound(to: Float.self))
        lora_factors_pack_up(outFeatures, rank, B, bp.assumingMemoryBound(to: Float.self))
        return true
    }
}
