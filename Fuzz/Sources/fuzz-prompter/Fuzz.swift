import FuzzSupport
import LLaMA

/// A prompt template file (--prompt-template-name path.json), then used both ways.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let u = put(input(data, size), "template.json")
    expectErrors {
        let p = try Prompter(path: u)
        let s = p.generatePrompt(instruction: "Say {hi}", input: "x", label: "y")
        _ = p.generatePrompt(instruction: "", input: nil, label: nil)
        _ = p.response(from: s)
    }
    return 0
}
