import Foundation
import Tensor

/// Writes GGUF version 3 files (the layout `GGUFFile` reads):
///
///     "GGUF" u32 3, u64 tensor_count, u64 kv_count
///     kv_count x  { string key, u32 value_type, value }
///     tensor_count x { string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset }
///     zero padding to `alignment`, then each tensor's data, each padded to `alignment`
///
/// Little-endian throughout; a string is u64 length + UTF-8 bytes, an array u32 element type +
/// u64 count + elements. `dims` are ggml order (dims[0] contiguous: a row-major [out, in]
/// matrix has dims [in, out]). Offsets are computed from the tensors' types and sizes before any
/// data exists, so data is produced and written one tensor at a time.
public struct GGUFWriter {
    public struct TensorSpec {
        public let name: String
        public let dims: [Int]
        public let type: GGMLType
        /// Fills exactly `byteCount` bytes of this tensor's data.
        public let fill: (UnsafeMutableRawBufferPointer) throws -> Void
        public init(name: String, dims: [Int], type: GGMLType, fill: @escaping (UnsafeMutableRawBufferPointer) throws -> Void) {
            self.name = name; self.dims = dims; self.type = type; self.fill = fill
        }
        public var byteCount: Int { type.byteCount(elements: dims.reduce(1, *)) ?? 0 }
    }

    public var metadata: [(key: String, value: GGUFValue)] = []
    public var tensors: [TensorSpec] = []
    public let alignment: Int

    public init(alignment: Int = GGUFFile.defaultAlignment) { self.alignment = alignment }

    public mutating func add(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.key == key }) { metadata[i].value = value }
        else { metadata.append((key, value)) }
    }

    /// Header, tensor infos and padding: every byte before the data section.
    public func header() -> [UInt8] {
        var b = ByteWriter()
        b.bytes(Array("GGUF".utf8))
        b.u32(3)
        b.u64(UInt64(tensors.count))
        b.u64(UInt64(metadata.count + (alignment == GGUFFile.defaultAlignment ? 0 : 1)))
        for (k, v) in metadata {
            b.string(k)
            b.u32(v.type.rawValue)
            b.value(v)
        }
        if alignment != GGUFFile.defaultAlignment {
            b.string("general.alignment"); b.u32(GGUFValueType.uint32.rawValue); b.u32(UInt32(alignment))
        }
        var offset = 0
        for t in tensors {
            b.string(t.name)
            b.u32(UInt32(t.dims.count))
            for d in t.dims { b.u64(UInt64(d)) }
            b.u32(t.type.rawValue)
            b.u64(UInt64(offset))
            offset += padded(t.byteCount)
        }
        b.bytes([UInt8](repeating: 0, count: padded(b.out.count) - b.out.count))
        return b.out
    }

    func padded(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// Writes the file atomically (temporary sibling, then rename), one tensor in memory at a time.
    public func write(to url: URL, progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws {
        for t in tensors {
            guard t.dims.count >= 1, t.dims.count <= 4, (t.dims.first ?? 0) % t.type.blockSize == 0,
                  t.type.byteCount(elements: t.dims.reduce(1, *)) != nil else {
                throw ExportError.unsupported(what: "GGUF tensor '\(t.name)' with dims \(t.dims) cannot be stored as \(t.type)")
            }
        }
        try? FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try AtomicFile.write(to: url) { h in
            try h.write(contentsOf: Data(header()))
            for (i, t) in tensors.enumerated() {
                var data = [UInt8](repeating: 0, count: padded(t.byteCount))
                try data.withUnsafeMutableBytes { try t.fill(UnsafeMutableRawBufferPointer(rebasing: $0[0..<t.byteCount])) }
                try h.write(contentsOf: Data(data))
                progress?(i + 1, tensors.count)
            }
        }
    }
}

/// Little-endian serialization of GGUF header fields.
private struct ByteWriter {
    var out: [UInt8] = []
    mutating func bytes(_ b: [UInt8]) { out += b }
    mutating func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
    mutating func u32(_ v: UInt32) { le(v) }
    mutating func u64(_ v: UInt64) { le(v) }
    mutating func string(_ s: String) { let u = Array(s.utf8); u64(UInt64(u.count)); out += u }

    mutating func value(_ v: GGUFValue) {
        switch v {
        case .uint8(let x): le(x)
        case .int8(let x): le(x)
        case .uint16(let x): le(x)
        case .int16(let x): le(x)
        case .uint32(let x): le(x)
        case .int32(let x): le(x)
        case .uint64(let x): le(x)
        case .int64(let x): le(x)
        case .float32(let x): le(x.bitPattern)
        case .float64(let x): le(x.bitPattern)
        case .bool(let x): out.append(x ? 1 : 0)
        case .string(let s): string(s)
        case .array(let t, let items):
            u32(t.rawValue)
            u64(UInt64(items.count))
            for i in items { value(i) }
        }
    }
}
