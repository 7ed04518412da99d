// swift-tools-version:5.4
// 5.4, not newer: from 5.5 on SwiftPM renames an executable's entry point and links
// `main` to `<target>_main`, which clashes with libFuzzer's own `main`.
// libFuzzer targets over the parsers of the root package. Built only by scripts/fuzz.sh,
// which adds -sanitize=fuzzer,address for every module (so LLaMA is instrumented too).
import PackageDescription

let targets = ["safetensors", "safetensors_index", "gguf", "gguf_tokenizer", "config", "adapter_config",
               "tokenizer_json", "data", "yaml", "prompter", "resume", "chat_data", "gguf_lora"]

let package = Package(
    name: "LoraFuzz",
    dependencies: [.package(name: "lora", path: "..")],
    targets: [
        .target(name: "FuzzSupport", dependencies: [.product(name: "LLaMA", package: "lora")]),
    ] + targets.map { name in
        .executableTarget(name: "fuzz-\(name)", dependencies: ["FuzzSupport", .product(name: "LLaMA", package: "lora"),
                                                       .product(name: "Tensor", package: "lora")])
    },
    swiftLanguageVersions: [.v5]
)
