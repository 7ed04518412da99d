import FuzzSupport
import LLaMA

/// Alpaca data: the first byte picks the file name (even: data.json, odd: data.jsonl), the
/// rest is the file; then each record through the prompt template, as finetune builds examples.
let prompter = try! Prompter(named: "alpaca")

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let name = data[0] % 2 == 0 ? "data.json" : "data.jsonl"
    let u = put(UnsafeRawBufferPointer(start: data + 1, count: size - 1), name)
    expectErrors {
        for r in try AlpacaData.load(u).prefix(64) {
            _ = prompter.generatePrompt(instruction: r.instruction, input: r.input, label: r.output)
        }
    }
    return 0
}
