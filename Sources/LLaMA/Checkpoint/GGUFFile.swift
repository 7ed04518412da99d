import Foundation
import Tensor

/// GGUF metadata value types (gguf.h `enum gguf_type`).
public enum GGUFValueType: UInt32, Sendable, CustomStringConvertible {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
    case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

    public var description: String {
        ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64",
         "float64"][Int(rawValue)]
    }

    /// Bytes of one value on disk, or nil for strings and arrays.
    var fixedSize: Int? {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string, .array: return nil
        }
    }

    /// The fewest bytes one value can take (a string is at least its 8-byte length, an array
    /// its 4-byte type and 8-byte count): a count is checked against this before anything is
    /// allocated for it.
    var minSize: Int { fixedSize ?? (self == .string ? 8 : 12) }
}

/// One metadata value. Arrays keep their element type (even when empty).
public indirect enum GGUFValue: Sendable, Equatable, CustomStringConvertible {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32), uint64(UInt64), int64(Int64)
    case float32(Float), float64(Double), bool(Bool), string(String)
    case array(GGUFValueType, [GGUFValue])

    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .uint64: return .uint64
        case .int64: return .int64
        case .float32: return .float32
        case .float64: return .float64
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        }
    }

    /// "uint32", "string", "array of string": for messages.
    public var typeName: String {
        if case .array(let t, _) = self { return "array of \(t)" }
        return type.description
    }

    /// Any integer type whose value fits an Int (not bool, not float).
    public var int: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return Int(exactly: v)
        case .int64(let v): return Int(v)
        default: return nil
        }
    }

    public var isInteger: Bool {
        switch self {
        case .uint8, .int8, .uint16, .int16, .uint32, .int32, .uint64, .int64: return true
        default: return false
        }
    }

    /// A float or an integer, as Double.
    public var double: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        case .uint64(let v): return Double(v)
        case .int64(let v): return Double(v)
        default: return int.map(Double.init)
        }
    }

    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }

    /// The value as a message shows it: numbers plainly, strings quoted, arrays by count.
    public var description: String {
        switch self {
        case .float32(let v): return "\(v)"
        case .float64(let v): return "\(v)"
        case .bool(let b): return "\(b)"
        case .string(let s): return "'\(s.count > 80 ? String(s.prefix(80)) + "..." : s)'"
        case .array(let t, let a): return "[\(a.count) values of type \(t)]"
        case .uint64(let u): return "\(u)"
        default: return "\(int!)"
        }
    }
    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var array: [GGUFValue]? { if case .array(_, let a) = self { return a }; return nil }
}

/// One tensor's entry in a GGUF header.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    /// ggml order: `dims[0]` is the contiguous axis (a [out, in] matrix has dims [in, out]).
    public let dims: [Int]
    public let type: GGMLType
    /// From the start of the data section; a multiple of the alignment.
    public let offset: Int
    public let byteCount: Int

    /// Row-major shape, as Hugging Face and `Tensor` write it: `dims` reversed.
    public var shape: [Int] { dims.reversed() }
    public var elementCount: Int { dims.reduce(1, *) }
}

/// A memory-mapped GGUF file (version 2 or 3, little-endian):
///
///     "GGUF" u32 version, u64 tensor_count, u64 kv_count
///     kv_count x  { string key, u32 value_type, value }
///     tensor_count x { string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset }
///     padding to `general.alignment` (default 32), then the data section
///
/// where a string is u64 length + UTF-8 bytes and an array is u32 element type + u64 count +
/// elements. Every count, length, offset and size is checked against the file size before it is
/// used; a truncated or hostile file gives `CheckpointError.corrupt` naming what is wrong.
public final class GGUFFile: @unchecked Sendable {
    public let file: MappedFile
    public var path: String { file.path }
    public let version: Int
    /// Metadata by key, and the keys in file order.
    public let metadata: [String: GGUFValue]
    public let keys: [String]
    /// Tensor infos in file order.
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Absolute file offset of the data section.
    public let dataStart: Int
    private let index: [String: Int]

    public static let defaultAlignment = 32
    /// Nested arrays deeper than this are refused (they are never needed; the limit keeps a
    /// hostile file from exhausting the stack).
    static let maxArrayDepth = 8
    /// ggml's GGML_MAX_DIMS.
    static let maxDims = 4

    public init(path: String) throws {
        file = try MappedFile(path: path)
        var r = Reader(base: file.base, size: file.size, path: path)
        guard file.size >= 4 else {
            throw CheckpointError.corrupt(file: path, detail: "\(file.size) bytes, shorter than the 4-byte magic 'GGUF'")
        }
        let magic = try r.bytes(4, "magic")
        guard Array(magic) == Array("GGUF".utf8) else {
            let hex = magic.map { String(format: "%02x", $0) }.joined(separator: " ")
            throw CheckpointError.corrupt(file: path, detail: "bad magic \(hex), expected 'GGUF' (47 47 55 46)")
        }
        let v = try r.u32("version")
        switch v {
        case 2, 3: version = Int(v)
        case 1: throw CheckpointError.unsupported(file: path, what: "GGUF version 1 (32-bit counts); convert it again with a current llama.cpp")
        case 0x0200_0000, 0x0300_0000:
            throw CheckpointError.unsupported(file: path, what: "big-endian GGUF")
        default: throw CheckpointError.unsupported(file: path, what: "GGUF version \(v) (expected 2 or 3)")
        }
        let nTensors = try r.u64("tensor count"), nKV = try r.u64("metadata count")
        // The smallest key-value is 8 (key length) + 4 (type) + 1 bytes; the smallest tensor info
        // 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
        guard nKV <= UInt64(r.remaining / 13) else {
            throw CheckpointError.corrupt(file: path, detail: "metadata count \(nKV) cannot fit in the \(r.remaining) bytes after the header")
        }
        guard nTensors <= UInt64(r.remaining / 24) else {
            throw CheckpointError.corrupt(file: path, detail: "tensor count \(nTensors) cannot fit in the \(r.remaining) bytes after the header")
        }

        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        keys.reserveCapacity(Int(nKV))
        for i in 0..<Int(nKV) {
            let key = try r.string("key of metadata entry \(i)")
            let rawType = try r.u32("type of '\(key)'")
            guard let t = GGUFValueType(rawValue: rawType) else {
                throw CheckpointError.corrupt(file: path, detail: "metadata '\(key)' has unknown value type \(rawType)")
            }
            let value = try r.value(t, key: key, depth: 0)
            guard metadata[key] == nil else {
                throw CheckpointError.corrupt(file: path, detail: "metadata key '\(key)' appears twice")
            }
            metadata[key] = value
            keys.append(key)
        }

        var alignment = Self.defaultAlignment
        if let a = metadata["general.alignment"] {
            guard let n = a.int, n > 0, n & (n - 1) == 0, n <= 1 << 20 else {
                throw CheckpointError.corrupt(file: path, detail: "general.alignment is \(a) (\(a.typeName)), expected a power of two")
            }
            alignment = n
        }

        var tensors: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        tensors.reserveCapacity(Int(nTensors))
        for i in 0..<Int(nTensors) {
            let name = try r.string("name of tensor \(i)")
            let nDims = try r.u32("number of dimensions of tensor '\(name)'")
            guard nDims <= UInt32(Self.maxDims) else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' has \(nDims) dimensions (at most \(Self.maxDims))")
            }
            var dims: [Int] = []
            var elements = 1
            for _ in 0..<Int(nDims) {
                let d = try r.u64("dimensions of tensor '\(name)'")
                guard d < 1 << 50 else {
                    throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' has a dimension of \(d)")
                }
                let (e, o) = elements.multipliedReportingOverflow(by: Int(d))
                guard !o, e < 1 << 50 else {
                    throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' has too many elements (dimensions \(dims + [Int(d)]))")
                }
                dims.append(Int(d)); elements = e
            }
            let rawType = try r.u32("type of tensor '\(name)'")
            guard let type = GGMLType(rawValue: rawType) else {
                throw CheckpointError.unsupported(file: path, what: "tensor '\(name)' has ggml type \(rawType), which this reader does not know")
            }
            let off = try r.u64("offset of tensor '\(name)'")
            guard (dims.first ?? 1) % type.blockSize == 0, let bytes = type.byteCount(elements: elements) else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)': rows of \(dims.first ?? 1) elements are not whole \(type) blocks of \(type.blockSize)")
            }
            guard off % UInt64(alignment) == 0 else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' has offset \(off), not a multiple of the alignment \(alignment)")
            }
            guard off < 1 << 62 else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' has offset \(off), past the end of the file")
            }
            guard index[name] == nil else {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(name)' appears twice")
            }
            index[name] = tensors.count
            tensors.append(GGUFTensorInfo(name: name, dims: dims, type: type, offset: Int(off), byteCount: bytes))
        }

        let (padded, o) = r.pos.addingReportingOverflow(alignment - 1)
        let dataStart = o ? Int.max : padded / alignment * alignment
        if !tensors.isEmpty {
            guard dataStart <= file.size else {
                throw CheckpointError.corrupt(file: path, detail: "data section would start at \(dataStart), past the end of the file (\(file.size) bytes)")
            }
            let dataSize = file.size - dataStart
            for t in tensors where t.offset > dataSize || t.byteCount > dataSize - t.offset {
                throw CheckpointError.corrupt(file: path, detail: "tensor '\(t.name)' (\(t.type), dims \(t.dims)) needs bytes \(t.offset)..<\(t.offset + t.byteCount) of a data section of \(dataSize) bytes")
            }
        }
        self.metadata = metadata
        self.keys = keys
        self.tensors = tensors
        self.index = index
        self.alignment = alignment
        self.dataStart = dataStart
    }

    // MARK: tensors

    public func tensorInfo(_ name: String) -> GGUFTensorInfo? { index[name].map { tensors[$0] } }

    /// The stored bytes of a tensor (already checked to lie inside the file).
    public func raw(_ t: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        file.bytes((dataStart + t.offset)..<(dataStart + t.offset + t.byteCount))
    }

    /// The tensor dequantized to f32, shaped `t.shape` (row-major, dims reversed).
    public func f32(_ t: GGUFTensorInfo) throws -> Tensor {
        guard t.type.canDequantize else {
            throw CheckpointError.unsupported(file: path, what: "tensor '\(t.name)' is stored as \(t.type); supported types are \(GGMLType.dequantizable.map(\.description).joined(separator: ", "))")
        }
        let out = Tensor(t.shape)
        GGMLQuants.dequantizeParallel(file.base + dataStart + t.offset, type: t.type, count: t.elementCount, into: out.data)
        return out
    }

    public func f32(_ name: String) throws -> Tensor? { try tensorInfo(name).map { try f32($0) } }

    // MARK: metadata accessors
    // Each returns nil when the key is absent and throws `wrongType` when it holds another type.

    public func value(_ key: String) -> GGUFValue? { metadata[key] }

    public func string(_ key: String) throws -> String? {
        guard let v = metadata[key] else { return nil }
        guard let s = v.string else { throw wrongType(key, "a string", v) }
        return s
    }

    /// Any integer type.
    public func int(_ key: String) throws -> Int? {
        guard let v = metadata[key] else { return nil }
        guard let i = v.int else {
            if v.isInteger { throw CheckpointError.badValue(file: path, key: key, value: "\(v)", expected: "an integer that fits 64 bits signed") }
            throw wrongType(key, "an integer", v)
        }
        return i
    }

    /// float32, float64 or an integer.
    public func float(_ key: String) throws -> Float? {
        guard let v = metadata[key] else { return nil }
        guard v.type != .bool, let d = v.double else { throw wrongType(key, "a number", v) }
        return Float(d)
    }

    public func bool(_ key: String) throws -> Bool? {
        guard let v = metadata[key] else { return nil }
        guard let b = v.bool else { throw wrongType(key, "a bool", v) }
        return b
    }

    public func strings(_ key: String) throws -> [String]? {
        guard let v = metadata[key] else { return nil }
        guard case .array(.string, let a) = v else { throw wrongType(key, "an array of strings", v) }
        return a.map { $0.string! }
    }

    /// An array of float32, float64 or integers.
    public func floats(_ key: String) throws -> [Float]? {
        guard let v = metadata[key] else { return nil }
        guard case .array(let t, let a) = v, t != .bool, t != .string, t != .array else {
            throw wrongType(key, "an array of numbers", v)
        }
        return a.map { Float($0.double!) }
    }

    /// An array of any integer type.
    public func ints(_ key: String) throws -> [Int]? {
        guard let v = metadata[key] else { return nil }
        guard case .array(let t, let a) = v, [.uint8, .int8, .uint16, .int16, .uint32, .int32, .uint64, .int64].contains(t) else {
            throw wrongType(key, "an array of integers", v)
        }
        var out: [Int] = []
        out.reserveCapacity(a.count)
        for (i, x) in a.enumerated() {
            guard let n = x.int else {
                throw CheckpointError.badValue(file: path, key: "\(key)[\(i)]", value: "\(x)", expected: "an integer that fits 64 bits signed")
            }
            out.append(n)
        }
        return out
    }

    private func wrongType(_ key: String, _ expected: String, _ v: GGUFValue) -> CheckpointError {
        .wrongType(file: path, key: key, expected: expected, found: v.typeName)
    }
}

/// A cursor over the mapped bytes; every read is bounds-checked first.
private struct Reader {
    let base: UnsafeRawPointer
    let size: Int
    let path: String
    var pos = 0

    var remaining: Int { size - pos }

    init(base: UnsafeRawPointer, size: Int, path: String) { self.base = base; self.size = size; self.path = path }

    mutating func bytes(_ n: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        guard n >= 0, n <= remaining else {
            throw CheckpointError.corrupt(file: path, detail: "\(what()): \(n) bytes needed at offset \(pos), but the file ends at \(size)")
        }
        defer { pos += n }
        return UnsafeRawBufferPointer(start: base + pos, count: n)
    }

    mutating func load<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        let b = try bytes(MemoryLayout<T>.size, what())
        return T(littleEndian: b.loadUnaligned(as: T.self))
    }

    mutating func u32(_ what: @autoclosure () -> String) throws -> UInt32 { try load(UInt32.self, what()) }
    mutating func u64(_ what: @autoclosure () -> String) throws -> UInt64 { try load(UInt64.self, what()) }

    /// u64 length + UTF-8 bytes; invalid UTF-8 is an error, not repaired.
    mutating func string(_ what: @autoclosure () -> String) throws -> String {
        let start = pos
        let n = try u64(what())
        guard n <= UInt64(remaining) else {
            throw CheckpointError.corrupt(file: path, detail: "\(what()): string length \(n) at offset \(start) runs past the end of the file (\(size) bytes)")
        }
        let b = try bytes(Int(n), what())
        guard let s = String(validating: b, as: UTF8.self) else {
            throw CheckpointError.corrupt(file: path, detail: "\(what()): string at offset \(start) is not valid UTF-8")
        }
        return s
    }

    mutating func value(_ type: GGUFValueType, key: String, depth: Int) throws -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try load(UInt8.self, "value of '\(key)'"))
        case .int8: return .int8(try load(Int8.self, "value of '\(key)'"))
        case .uint16: return .uint16(try load(UInt16.self, "value of '\(key)'"))
        case .int16: return .int16(try load(Int16.self, "value of '\(key)'"))
        case .uint32: return .uint32(try load(UInt32.self, "value of '\(key)'"))
        case .int32: return .int32(try load(Int32.self, "value of '\(key)'"))
        case .uint64: return .uint64(try load(UInt64.self, "value of '\(key)'"))
        case .int64: return .int64(try load(Int64.self, "value of '\(key)'"))
        case .float32: return .float32(Float(bitPattern: try load(UInt32.self, "value of '\(key)'")))
        case .float64: return .float64(Double(bitPattern: try load(UInt64.self, "value of '\(key)'")))
        case .bool:
            let b = try load(UInt8.self, "value of '\(key)'")
            guard b <= 1 else {
                throw CheckpointError.corrupt(file: path, detail: "metadata '\(key)': bool stored as \(b), expected 0 or 1")
            }
            return .bool(b == 1)
        case .string: return .string(try string("string value of '\(key)'"))
        case .array:
            guard depth < GGUFFile.maxArrayDepth else {
                throw CheckpointError.corrupt(file: path, detail: "metadata '\(key)': arrays nested more than \(GGUFFile.maxArrayDepth) deep")
            }
            let rawType = try u32("array type of '\(key)'")
            guard let et = GGUFValueType(rawValue: rawType) else {
                throw CheckpointError.corrupt(file: path, detail: "metadata '\(key)' is an array of unknown value type \(rawType)")
            }
            let n = try u64("array length of '\(key)'")
            guard n <= UInt64(remaining / et.minSize) else {
                throw CheckpointError.corrupt(file: path, detail: "metadata '\(key)': array of \(n) \(et) values cannot fit in the \(remaining) bytes left")
            }
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(n))
            for _ in 0..<Int(n) { items.append(try value(et, key: key, depth: depth + 1)) }
            return .array(et, items)
        }
    }
}
