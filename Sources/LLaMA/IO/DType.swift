import Tensor

/// Element types found in checkpoints (safetensors names).
public enum DType: String, Sendable, CaseIterable {
    case f32 = "F32", f16 = "F16", bf16 = "BF16", f64 = "F64"
    case i8 = "I8", u8 = "U8", i16 = "I16", i32 = "I32", i64 = "I64", bool = "BOOL"

    public var size: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8, .u8, .bool: return 1
        }
    }

    public var isFloat: Bool { self == .f32 || self == .f16 || self == .bf16 || self == .f64 }
}

/// IEEE half to float, exact for every value including subnormals, inf and NaN.
@inline(__always)
public func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exp = Int((h >> 10) & 0x1F)
    let mant = UInt32(h & 0x3FF)
    if exp == 0 {
        if mant == 0 { return Float(bitPattern: sign) }
        // Subnormal: value = mant * 2^-24.
        let v = Float(mant) * (1.0 / 16_777_216.0)
        return sign != 0 ? -v : v
    }
    if exp == 31 { return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13)) }
    return Float(bitPattern: sign | UInt32(exp - 15 + 127) << 23 | (mant << 13))
}

/// Float to IEEE half, round to nearest even (as torch's .half()).
@inline(__always)
public func floatToHalf(_ f: Float) -> UInt16 {
    let x = f.bitPattern
    let sign = UInt16((x >> 16) & 0x8000)
    let exp = Int((x >> 23) & 0xFF)
    var mant = x & 0x7F_FFFF
    if exp == 255 { return sign | 0x7C00 | (mant != 0 ? 0x200 : 0) }
    var e = exp - 127 + 15
    if e >= 31 { return sign | 0x7C00 }
    if e <= 0 {
        if e < -10 { return sign }
        mant |= 0x80_0000
        let shift = UInt32(14 - e)
        var h = mant >> shift
        let rem = mant & ((1 << shift) - 1), half = UInt32(1) << (shift - 1)
        if rem > half || (rem == half && (h & 1) != 0) { h += 1 }
        return sign | UInt16(h)
    }
    var h = UInt32(e) << 10 | (mant >> 13)
    let rem = mant & 0x1FFF
    if rem > 0x1000 || (rem == 0x1000 && (h & 1) != 0) { h += 1 }
    e = 0
    return sign | UInt16(truncatingIfNeeded: h)
}

@inline(__always)
public func bf16ToFloat(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

/// Float to bfloat16, round to nearest even (NaN stays NaN).
@inline(__always)
public func floatToBF16(_ f: Float) -> UInt16 {
    let x = f.bitPattern
    if f.isNaN { return UInt16(x >> 16) | 0x40 }
    let rounding = 0x7FFF + ((x >> 16) & 1)
    return UInt16((x &+ rounding) >> 16)
}

/// Converts `count` elements of a float dtype to f32.
public func convertToF32(_ src: UnsafeRawPointer, dtype: DType, count: Int, into dst: UnsafeMutablePointer<Float>) {
    switch dtype {
    case .f32:
        UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: count * 4)
    case .f16:
        let s = src.assumingMemoryBound(to: UInt16.self)
        for i in 0..<count { dst[i] = halfToFloat(s[i]) }
    case .bf16:
        let s = src.assumingMemoryBound(to: UInt16.self)
        for i in 0..<count { dst[i] = bf16ToFloat(s[i]) }
    case .f64:
        for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: i * 8, as: Double.self)) }
    default:
        preconditionFailure("convertToF32 called with \(dtype)")
    }
}
