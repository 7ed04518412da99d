import FuzzSupport
import LLaMA

/// A .safetensors file: header, offsets and dtypes, then every tensor converted as loaders do.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let u = put(input(data, size), "model.safetensors")
    expectErrors {
        let f = try SafeTensorsFile(path: u.path)
        for name in f.order {
            let e = f.entries[name]!
            guard e.range.count / e.dtype.size <= maxConvertedElements else { continue }
            if e.dtype.isFloat {
                if let t = try f.f32(name) { try checkFinite(t, name: name, file: f.path) }
            } else {
                _ = f.ints(name)
            }
        }
    }
    return 0
}
