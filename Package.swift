// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "lora",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "lora", targets: ["lora"]),
        .library(name: "LLaMA", targets: ["LLaMA"]),
        .library(name: "Tensor", targets: ["Tensor"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
    ],
    targets: [
        // System libraries (Debian: libopenblas-dev, libjson-c-dev, libsentencepiece-dev).
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CJSONC", path: "Sources/CJSONC", pkgConfig: "json-c",
                       providers: [.apt(["libjson-c-dev"])]),
        // A C API over libsentencepiece's C++ so Swift needs no C++ interop.
        .target(name: "CSentencePiece", path: "Sources/CSentencePiece",
                cxxSettings: [.unsafeFlags(["-O2"])],
                linkerSettings: [.linkedLibrary("sentencepiece"), .linkedLibrary("stdc++")]),
        // Hand-written SIMD kernels, dispatched at run time on CPU features.
        .target(name: "CKernels", path: "Sources/CKernels",
                cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])]),
        // Optional CUDA shim: loads libcudart at run time; absent GPU is not an error.
        .target(name: "CUDAShim", path: "Sources/CUDAShim",
                linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "Tensor", dependencies: ["COpenBLAS", "CKernels", "CUDAShim"],
                swiftSettings: [.unsafeFlags(["-Ounchecked"])]),
        // Checked (-O): user input (checkpoints, configs, tokenizers, data) reaches this
        // module, so its preconditions and overflow traps must stay in.
        .target(name: "LLaMA", dependencies: ["Tensor", "CSentencePiece", "CJSONC",
                                            .product(name: "Yams", package: "Yams")]),
        .executableTarget(name: "lora", dependencies: [
            "LLaMA", "Tensor",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], plugins: ["BuildInfo"]),
        // Stamps the git commit into the `lora` binary (lora --version).
        .plugin(name: "BuildInfo", capability: .buildTool(), path: "Plugins/BuildInfo"),
        .testTarget(name: "TensorTests", dependencies: ["Tensor", "CKernels"], path: "Tests/TensorTests"),
        .testTarget(name: "LLaMATests", dependencies: ["LLaMA", "Tensor"], path: "Tests/LLaMATests"),
        .testTarget(name: "loraTests", dependencies: ["lora", "LLaMA"], path: "Tests/loraTests"),
    ],
    swiftLanguageModes: [.v5],
    cxxLanguageStandard: .cxx17
)
