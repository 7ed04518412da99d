import CKernels

/// One LoRA site's factors as decoding's products read them (`lora_factors_*`): A [r, in]
/// transposed to [in, rp] and B [out, r] in panels of 16 outputs, so that each product is one
/// forward stream with no horizontal sums. A copy: whoever owns A and B repacks it (`pack`)
/// after changing them. Placed in a `WeightArena` (2 MB pages). Measured on Zen 4 (one thread,
/// SmolLM2's 210 r = 16 sites, factors from memory, C harness): the f32 GEMV on A and B
/// streamed 15.7 / 11.4 GB/s at 1 / 4 rows, these layouts 34.6 / 27.3 (a plain read 32.7); on
/// 4 KB pages a plain read ran at 19.
public final class PackedLoRAFactors: @unchecked Sendable {
    public let rank: Int, inFeatures: Int, outFeatures: Int
    /// AT [inFeatures, rp]; rp = rank rounded up to 8.
    public let at: UnsafeMutablePointer<Float>
    /// lora_factors_up_floats(outFeatures, rank) floats of panels.
    public let bp: UnsafeMutablePointer<Float>
    private let owner: AnyObject

    /// Bytes of both copies for a site of these sizes (without alignment).
    public static func byteCount(rank: Int, inFeatures: Int, outFeatures: Int) -> Int {
        4 * (inFeatures * Int(lora_factors_rp(rank)) + Int(lora_factors_up_floats(outFeatures, rank)))
    }

    /// Room for the copies in `arena` (not packed yet: call `pack`).
    public init(rank: Int, inFeatures: Int, outFeatures: Int, arena: WeightArena) {
        precondition(rank >= 1 && inFeatures >= 1 && outFeatures >= 1)
        self.rank = rank; self.inFeatures = inFeatures; self.outFeatures = outFeatures
        // Each copy starts on a cache line (carve aligns to 64 bytes).
        let atBytes = (inFeatures * Int(lora_factors_rp(rank)) * 4 + 63) / 64 * 64
        let (p, o) = arena.carve(atBytes + Int(lora_factors_up_floats(outFeatures, rank)) * 4)
        at = p.assumingMemoryBound(to: Float.self)
        bp = (p + atBytes).assumingMemoryBound(to: Float.self)
        owner = o
    }

    /// Copies A [rank, in] and B [out, rank] into the packed layouts.
    public func pack(A: UnsafePointer<Float>, B: UnsafePointer<Float>) {
        lora_factors_pack_down(rank, inFeatures, A, at)
        lora_factors_pack_up(outFeatures, rank, B, bp)
    }
}
