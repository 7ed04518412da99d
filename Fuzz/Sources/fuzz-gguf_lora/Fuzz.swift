import Foundation
import FuzzSupport
import LLaMA

/// A llama.cpp LoRA adapter file as `--lora-weights x.gguf` and `serve --adapter` read it: the
/// GGUF header and tensor table, the adapter keys, then every lora_a / lora_b pair checked and
/// converted against a model (the tiny MHA fixture, or the GQA one when the first byte is odd,
/// so shapes that fit one and not the other are both reached).
let models = try! ["tiny-mha", "tiny-gqa"].map {
    try LlamaConfig(contentsOf: fixtures.appendingPathComponent("\($0)/config.json"))
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let model = size > 0 && data[size - 1] & 1 == 1 ? models[1] : models[0]
    let u = put(input(data, size), "adapter.gguf")
    expectErrors { _ = try GGUFLoRA.load(u, model: model) }
    return 0
}
