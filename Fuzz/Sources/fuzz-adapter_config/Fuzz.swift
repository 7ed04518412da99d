import Foundation
import FuzzSupport
import LLaMA

/// adapter_config.json in an adapter folder, read as --lora-weights and merge read it: the
/// config, its layers against the model, then the (valid, fixed) weights it selects.
let model = try! LlamaConfig(contentsOf: fixtures.appendingPathComponent("tiny-mha/config.json"))
let weights = try! Data(contentsOf: fixtures.appendingPathComponent("reference/train-mha-qv.adapter/adapter_model.safetensors"))

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let dir = folder("adapter")
    put(input(data, size), Adapter.configFile, in: dir)
    _ = weights.withUnsafeBytes { put($0, Adapter.weightsFile, in: dir) }
    expectErrors { _ = try AdapterFactors.load(dir, model: model) }
    return 0
}
