import Foundation
import Tensor

/// One tensor's entry in a safetensors header.
public struct TensorEntry: Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let range: Range<Int>   // absolute byte range in the file
}

/// A memory-mapped `.safetensors` file: 8-byte little-endian header length, a JSON header
/// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then data.
/// Every offset, shape and dtype is validated against the file size before use.
public final class SafeTensorsFile: @unchecked Sendable {
    public let file: MappedFile
    public let entries: [String: TensorEntry]
    public let order: [String]
    public let metadata: [String: String]
    public var path: String { file.path }

    public init(path: String) throws {
        file = try MappedFile(path: path)
        guard file.size >= 8 else {
            throw CheckpointError.corrupt(file: path, detail: "\(file.size) bytes, shorter than the 8-byte header length")
        }
        // Compared as UInt64: a length past Int.max must be an error, not a trapping conversion.
        let n64 = UInt64(littleEndian: file.base.loadUnaligned(as: UInt64.self))
        guard n64 > 0, n64 <= UInt64(file.size - 8), n64 < 100_000_000 else {
            throw CheckpointError.corrupt(file: path, detail: "header length \(n64) does not fit in a file of \(file.size) bytes")
        }
        let n = Int(n64)
        let headerBytes = file.bytes(8..<(8 + n))
        guard let text = String(bytes: headerBytes, encoding: .utf8) else {
            throw CheckpointError.corrupt(file: path, detail: "header is not UTF-8")
        }
        let header: JSON
        do { header = try JSON.parse(text, source: path) } catch {
            throw CheckpointError.corrupt(file: path, detail: "header is not valid JSON")
        }
        guard case .object(let items) = header else {
            throw CheckpointError.corrupt(file: path, detail: "header is \(header.typeName), expected an object")
        }
        let dataStart = 8 + n
        let dataSize = file.size - dataStart
        var entries: [String: TensorEntry] = [:]
        var order: [String] = []
        var meta: [String: String] = [:]
        for (name, value) in items {
            if name == "__metadata__" {
                if case .object(let kv) = value {
                    for (k, v) in kv { if let s = v.string { meta[k] = s } }
                }
                continue
            }
            guard let ds = value["dtype"]?.string else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' has no dtype")
            }
            guard let dtype = DType(rawValue: ds) else {
                throw CheckpointError.unsupportedDType(file: path, name: name, dtype: ds)
            }
            guard let shapeJ = value["shape"]?.array else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' has no shape")
            }
            var shape: [Int] = []
            for d in shapeJ {
                guard let v = d.int, v >= 0, v < 1 << 40 else {
                    throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' has a bad dimension \(d.serialized(pretty: false))")
                }
                shape.append(v)
            }
            guard let offs = value["data_offsets"]?.array, offs.count == 2,
                  let b = offs[0].int, let e = offs[1].int else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' has no valid data_offsets")
            }
            guard shape.count <= 8 else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' has \(shape.count) dimensions (at most 8)")
            }
            // Overflow is an error, never a wrapped product that happens to match the byte range.
            var elements = 1, overflow = false
            for d in shape {
                let (m, o) = elements.multipliedReportingOverflow(by: d)
                elements = m; overflow = overflow || o
            }
            let (needed, o2) = elements.multipliedReportingOverflow(by: dtype.size)
            guard !overflow, !o2 else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' shape \(shape) has too many elements")
            }
            guard b >= 0, b <= e, e <= dataSize else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' data_offsets [\(b), \(e)] lie outside the \(dataSize) data bytes")
            }
            guard e - b == needed else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' has \(e - b) bytes, but shape \(shape) of \(ds) needs \(elements * dtype.size)")
            }
            entries[name] = TensorEntry(name: name, dtype: dtype, shape: shape,
                                        range: (dataStart + b)..<(dataStart + e))
            order.append(name)
        }
        self.entries = entries
        self.order = order
        self.metadata = meta
    }

    public func raw(_ name: String) -> UnsafeRawBufferPointer? {
        entries[name].map { file.bytes($0.range) }
    }

    /// The tensor as f32 (converted from F16/BF16/F64), or nil if absent.
    public func f32(_ name: String) throws -> Tensor? {
        guard let e = entries[name] else { return nil }
        guard e.dtype.isFloat else {
            throw CheckpointError.unsupportedDType(file: path, name: name, dtype: e.dtype.rawValue)
        }
        let t = Tensor(e.shape)
        convertToF32(file.base + e.range.lowerBound, dtype: e.dtype, count: t.count, into: t.data)
        return t
    }

    /// Integer tensors (I32/I64/I8/U8) as Int, for fixtures and token ids.
    public func ints(_ name: String) -> [Int]? {
        guard let e = entries[name] else { return nil }
        let p = file.base + e.range.lowerBound
        let n = e.range.count / e.dtype.size
        switch e.dtype {
        case .i64: return (0..<n).map { Int(p.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
        case .i32: return (0..<n).map { Int(p.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
        case .i8: return (0..<n).map { Int(p.load(fromByteOffset: $0, as: Int8.self)) }
        case .u8, .bool: return (0..<n).map { Int(p.load(fromByteOffset: $0, as: UInt8.self)) }
        case .i16: return (0..<n).map { Int(p.loadUnaligned(fromByteOffset: $0 * 2, as: Int16.self)) }
        default: return nil
        }
    }
}

/// Writes safetensors files. Tensors are written in the given order, the header padded with
/// spaces to a multiple of 8 bytes (as the reference implementation does).
public enum SafeTensorsWriter {
    public struct Item {
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        public let bytes: (UnsafeMutableRawBufferPointer) -> Void   // fills exactly count*size bytes
        public init(name: String, dtype: DType, shape: [Int], bytes: @escaping (UnsafeMutableRawBufferPointer) -> Void) {
            self.name = name; self.dtype = dtype; self.shape = shape; self.bytes = bytes
        }
        public var byteCount: Int { shape.reduce(1, *) * dtype.size }

        /// An f32 tensor stored as `dtype` (F32, F16 or BF16).
        public static func tensor(_ name: String, _ t: Tensor, as dtype: DType = .f32, shape: [Int]? = nil) -> Item {
            Item(name: name, dtype: dtype, shape: shape ?? t.shape) { buf in
                switch dtype {
                case .f16:
                    let d = buf.bindMemory(to: UInt16.self)
                    for i in 0..<t.count { d[i] = floatToHalf(t.data[i]) }
                case .bf16:
                    let d = buf.bindMemory(to: UInt16.self)
                    for i in 0..<t.count { d[i] = floatToBF16(t.data[i]) }
                default:
                    buf.baseAddress!.copyMemory(from: t.data, byteCount: t.count * 4)
                }
            }
        }
    }

    /// Serializes to memory; `AtomicFile` puts it on disk.
    public static func encode(_ items: [Item], metadata: [String: String] = [:]) -> [UInt8] {
        let h = header(items, metadata: metadata)
        let size = items.reduce(0) { $0 + $1.byteCount }
        var out = [UInt8](repeating: 0, count: h.count + size)
        out.replaceSubrange(0..<h.count, with: h)
        out.withUnsafeMutableBytes { buf in
            var o = h.count
            for it in items {
                it.bytes(UnsafeMutableRawBufferPointer(rebasing: buf[o..<(o + it.byteCount)]))
                o += it.byteCount
            }
        }
        return out
    }

    /// The bytes before the tensor data: the 8-byte header length and the JSON header (items'
    /// data follow in the given order, each `byteCount` long). For writers that stream data.
    public static func header(_ items: [Item], metadata: [String: String] = [:]) -> [UInt8] {
        var header: [(String, JSON)] = []
        if !metadata.isEmpty {
            header.append(("__metadata__", .object(metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })))
        }
        var offset = 0
        for it in items {
            header.append((it.name, .object([
                ("dtype", .string(it.dtype.rawValue)),
                ("shape", .array(it.shape.map { .int(Int64($0)) })),
                ("data_offsets", .array([.int(Int64(offset)), .int(Int64(offset + it.byteCount))])),
            ])))
            offset += it.byteCount
        }
        var h = Array(JSON.object(header).serialized(pretty: false).utf8)
        while h.count % 8 != 0 { h.append(0x20) }
        return withUnsafeBytes(of: UInt64(h.count).littleEndian) { Array($0) } + h
    }
}
