#if canImport(Glibc)
import Glibc
#endif
// Contiguous f32 storage with a row-major shape. The one tensor type of the project.
//
// A `Tensor` owns its buffer (64-byte aligned, so SIMD kernels can assume it) and never
// reallocates: buffers are sized once per run and reused, which is what keeps the training
// loop free of allocation. Views are not a concept here; ops take pointers plus dimensions,
// llm.c-style, and `Tensor` is only the owner of memory and its shape.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>

    /// Zero-filled tensor of the given shape. `hugePages`: on 2 MB pages where the kernel
    /// allows (Linux `madvise(MADV_HUGEPAGE)` before the first touch; transparent huge pages
    /// `always` or `madvise`), for buffers a step streams whole, as a KV cache: on 4 KB pages
    /// a plain read ran at 19 against 33 GB/s here (Zen 4 VM, C harness), each page a TLB miss.
    public init(_ shape: [Int], hugePages: Bool = false) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        let bytes = max(count, 1) * 4
        let huge = hugePages && bytes >= Self.hugePageBytes
        let raw = UnsafeMutableRawPointer.allocate(byteCount: huge ? (bytes + Self.hugePageBytes - 1) / Self.hugePageBytes * Self.hugePageBytes : bytes,
                                                   alignment: huge ? Self.hugePageBytes : 64)
        #if os(Linux)
        if huge { _ = madvise(raw, (bytes + Self.hugePageBytes - 1) / Self.hugePageBytes * Self.hugePageBytes, MADV_HUGEPAGE) }
        #endif
        self.data = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        data.initialize(repeating: 0, count: max(count, 1))
    }

    static let hugePageBytes = 2 << 20

    public convenience init(_ shape: [Int], _ values: [Float]) {
        self.init(shape)
        precondition(values.count == count, "\(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    deinit { UnsafeMutableRawPointer(data).deallocate() }

    public var rank: Int { shape.count }
    public var buffer: UnsafeMutableBufferPointer<Float> { .init(start: data, count: count) }
    public var array: [Float] { Array(buffer) }

    public subscript(i: Int) -> Float {
        get { data[i] }
        set { data[i] = newValue }
    }

    public func zero() { data.update(repeating: 0, count: count) }

    public func copy(from other: Tensor) {
        precondition(other.count == count)
        data.update(from: other.data, count: count)
    }

    public func clone() -> Tensor {
        let t = Tensor(shape)
        t.copy(from: self)
        return t
    }
}
