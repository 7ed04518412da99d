import FuzzSupport
import LLaMA

/// A finetune config as `lora finetune --config` reads it: size and UTF-8 checks, the pre-scan,
/// YAML, keys, decoding to TrainConfig, then validation.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let u = put(input(data, size), "finetune.yml")
    expectErrors {
        let c = try ConfigFile.load(u.path)
        try c.validate()
        _ = c.yaml
    }
    return 0
}
