#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CKernels

/// Storage for many weights in a few large chunks, backed by 2 MB pages where the kernel allows
/// (Linux: `madvise(MADV_HUGEPAGE)`, honoured when transparent huge pages are `always` or
/// `madvise`). A decoding step streams every weight once; with 4 KB pages SmolLM2's 66 MB of
/// projections are 16 K pages, past any TLB, and each miss is a page walk (a nested one in a
/// VM). Measured on Zen 3 in a VM (210 grouped Q4_1 projections, two threads, C harness): 8
/// rows 8.2-9.3 -> 7.8-8.0 ms, one row 2.3-2.6 -> 2.3-2.5 ms. A small weight gets no huge page
/// on its own, hence the chunks. Each carved weight keeps its chunk alive (`Weight.owner`).
/// Thread-safe; bump allocation, nothing is freed before its chunk.
public final class WeightArena: @unchecked Sendable {
    /// One chunk: freed when the arena and every weight carved from it are gone.
    final class Chunk {
        let base: UnsafeMutableRawPointer
        let size: Int
        var used = 0
        init(size: Int) {
            self.size = size
            base = .allocate(byteCount: size, alignment: WeightArena.pageBytes)
            #if os(Linux)
            // Before the first touch: the pages are faulted in as 2 MB pages when possible.
            _ = madvise(base, size, MADV_HUGEPAGE)
            #endif
        }
        deinit { base.deallocate() }
    }

    static let pageBytes = 2 << 20
    /// Bytes per chunk (a larger request gets a chunk of its own size, rounded to 2 MB). Large,
    /// because the 2 MB page holding a chunk's last bytes is resident whole: one partly used page
    /// per chunk, not per weight (a 7B model's 28 MB projections, one to a 32 MB chunk, would
    /// waste ~1.8 MB each). Untouched pages of a chunk cost address space only.
    public let chunkBytes: Int
    private var current: Chunk?
    private let lock = NSLock()

    public init(chunkBytes: Int = 256 << 20) {
        self.chunkBytes = max(Self.pageBytes, (chunkBytes + Self.pageBytes - 1) / Self.pageBytes * Self.pageBytes)
    }

    /// `byteCount` zeroed bytes, 64-byte aligned, and the object that keeps them alive.
    func carve(_ byteCount: Int) -> (UnsafeMutableRawPointer, AnyObject) {
        lock.lock(); defer { lock.unlock() }
        let need = (max(byteCount, 1) + 63) / 64 * 64
        if let c = current, c.used + need <= c.size {
            let p = c.base + c.used
            c.used += need
            p.initializeMemory(as: UInt8.self, repeating: 0, count: need)   // only what is used is touched
            return (p, c)
        }
        let c = Chunk(size: max(chunkBytes, (need + Self.pageBytes - 1) / Self.pageBytes * Self.pageBytes))
        c.base.initializeMemory(as: UInt8.self, repeating: 0, count: need)
        c.used = need
        // A chunk left with more room than a fresh one keeps serving small weights.
        if current == nil || c.size - need >= current!.size - current!.used { current = c }
        return (c.base, c)
    }

    /// Hands freed heap pages back to the system: after `place` the first copies are freed,
    /// and glibc keeps large frees below its (rising) mmap threshold resident.
    public static func releaseFreedMemory() { lora_release_free_memory() }

    /// `w`'s bytes copied into the arena (huge pages), for formats whose bytes are one block
    /// (f32, bf16) or one block and per-row scales (int8 rows); any other weight is returned
    /// as it is. The copy has the same bytes, so the same products.
    public func place(_ w: Weight) -> Weight {
        let scaleCount: Int
        if w.scales == nil, w.format is F32Format || w.format is BF16Format {
            scaleCount = 0
        } else if w.format is Int8RowsFormat, w.scales != nil {
            scaleCount = w.rows
        } else {
            return w
        }
        let dataBytes = w.byteCount - scaleCount * 4
        let (p, owner) = carve(dataBytes + scaleCount * 4 + 64)
        p.copyMemory(from: w.data, byteCount: dataBytes)
        var scales: UnsafePointer<Float>? = nil
        if let src = w.scales {
            let s = (p + (dataBytes + 63) / 64 * 64).assumingMemoryBound(to: Float.self)
            s.update(from: src, count: scaleCount)
            scales = UnsafePointer(s)
        }
        return Weight(format: w.format, rows: w.rows, cols: w.cols, data: UnsafeRawPointer(p), scales: scales, owner: owner)
    }
}
