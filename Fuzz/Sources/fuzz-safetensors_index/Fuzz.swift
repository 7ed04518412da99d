import Foundation
import FuzzSupport
import LLaMA

/// A sharded checkpoint folder: model.safetensors.index.json SEP the shard it names
/// (model-00001-of-00001.safetensors), with the tiny fixture's config.json.
let config = try! Data(contentsOf: fixtures.appendingPathComponent("tiny-mha/config.json"))

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let p = parts(input(data, size), 2)
    let dir = folder("model")
    _ = config.withUnsafeBytes { put($0, "config.json", in: dir) }
    put(p[0], "model.safetensors.index.json", in: dir)
    put(p[1], "model-00001-of-00001.safetensors", in: dir)
    expectErrors {
        let ck = try openCheckpoint(dir.path) as! SafeTensorsCheckpoint
        let f = try SafeTensorsFile(path: dir.appendingPathComponent("model-00001-of-00001.safetensors").path)
        for name in f.order where ck.has(name) {
            let e = f.entries[name]!
            guard e.dtype.isFloat, e.range.count / e.dtype.size <= maxConvertedElements else { continue }
            _ = try ck.tensor(name, shape: e.shape)
        }
    }
    return 0
}
