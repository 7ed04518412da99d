import FuzzSupport
import LLaMA

/// config.json as `lora` reads it from a model folder.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let u = put(input(data, size), "config.json")
    expectErrors { _ = try LlamaConfig(contentsOf: u) }
    return 0
}
