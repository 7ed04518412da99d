// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "lora",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "lora", targets: ["lora"]),
        .library(name: "LLaMA", targets: ["LLaMA"]),
        .library(name: "Tensor", targets: ["Tensor"]),
    ],
    // `swift build --traits MPI` adds data-parallel training over MPI (Debian: openmpi-bin
    // libopenmpi-dev); the default build needs no MPI and says how to enable it.
    traits: [
        .trait(name: "MPI", description: "Data-parallel training with MPI (needs libopenmpi-dev)"),
        .default(enabledTraits: []),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
        // `lora serve`: HTTP/1.1 with streaming bodies and graceful shutdown (adds ~minutes to a
        // clean build: NIO and its friends).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
    ],
    targets: [
        // System libraries (Debian: libopenblas-dev, libjson-c-dev, libsentencepiece-dev).
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        // Only with the MPI trait: inline wrappers for mpi.h's handles (macros Swift cannot import).
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "mpi-c",
                       providers: [.apt(["libopenmpi-dev"])]),
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
                                            .product(name: "Yams", package: "Yams"),
                                            .target(name: "CMPI", condition: .when(traits: ["MPI"]))]),
        .executableTarget(name: "lora", dependencies: [
            "LLaMA", "Tensor",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Hummingbird", package: "hummingbird"),
        ], plugins: ["BuildInfo"]),
        // Stamps the git commit into the `lora` binary (lora --version).
        .plugin(name: "BuildInfo", capability: .buildTool(), path: "Plugins/BuildInfo"),
        .testTarget(name: "TensorTests", dependencies: ["Tensor", "CKernels", "CTestSupport"], path: "Tests/TensorTests"),
        // C the tests need that Swift cannot call (CPU affinity).
        .target(name: "CTestSupport", path: "Tests/CTestSupport"),
        // What the test targets share (temporary folders); imports XCTest, used only by tests.
        .target(name: "TestHelpers", path: "Tests/TestHelpers"),
        .testTarget(name: "LLaMATests", dependencies: ["LLaMA", "Tensor", "TestHelpers"], path: "Tests/LLaMATests"),
        .testTarget(name: "loraTests", dependencies: ["lora", "LLaMA", "TestHelpers"], path: "Tests/loraTests"),
    ],
    swiftLanguageModes: [.v5],
    cxxLanguageStandard: .cxx17
)
