import ArgumentParser
import Foundation
import LLaMA
import Tensor

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge LoRA adapters into a base model (Hugging Face folder or GGUF), or convert an adapter to GGUF.",
        discussion: """
        Each adapter adds WEIGHT * scale * B @ A to the weights it targets (scale = lora_alpha / r, or \
        lora_alpha / sqrt(r) with rsLoRA, from its own adapter_config.json), computed from the base's \
        full-precision weights. The base is always read unquantized, whatever the adapter was trained \
        on (int8, nf4: a QLoRA adapter merges into the full-precision base, as PEFT recommends). The \
        output is written under a temporary name and renamed into place when complete.
        """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case hf, gguf }

    @Option(name: .customLong("base-model"), help: "Base model: a Hugging Face folder or a .gguf file (merged from its full-precision weights).")
    var baseModel: String

    @OptionGroup var adapters: AdapterOptions

    @Option(help: "Output folder (--format hf) or file (--format gguf).")
    var output: String

    @Option(help: "hf: a Hugging Face folder (safetensors); gguf: one GGUF file for llama.cpp.")
    var format: Format = .hf

    @Option(help: "f32, f16, bf16 or q8_0 (gguf only). Default f16; f32 with --adapter-only.")
    var dtype: String?

    @Option(name: .customLong("max-shard-size"), help: "hf: shard model.safetensors above this size (e.g. 2GB, 500MB, 1GiB).")
    var maxShardSize = "2GB"

    @Flag(help: "Replace an existing, non-empty output.")
    var force = false

    @Flag(name: .customLong("adapter-only"), help: "With --format gguf: write the adapter itself as a llama.cpp LoRA adapter (for --lora), not a merged model.")
    var adapterOnly = false

    @OptionGroup var compute: ComputeOptions
    @OptionGroup var outputOptions: OutputOptions

    var exportDType: ExportDType { ExportDType(rawValue: dtype ?? (adapterOnly ? "f32" : "f16"))! }

    func validate() throws {
        if adapters.loraWeights.isEmpty { throw ValidationError("give at least one --lora-weights DIR[:WEIGHT]") }
        if let d = dtype, ExportDType(rawValue: d) == nil {
            throw ValidationError("--dtype '\(d)': expected one of \(ExportDType.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if format == .hf, exportDType == .q8_0 { throw ValidationError("--dtype q8_0 needs --format gguf (safetensors holds f32, f16 or bf16)") }
        if HFExport.parseSize(maxShardSize) == nil { throw ValidationError("--max-shard-size '\(maxShardSize)': expected a size such as 2GB, 500MB or 1GiB") }
        if adapterOnly {
            if format != .gguf { throw ValidationError("--adapter-only writes a GGUF LoRA adapter; add --format gguf") }
            if adapters.loraWeights.count != 1 { throw ValidationError("--adapter-only converts one adapter; give --lora-weights once") }
            if ![.f32, .f16].contains(exportDType) { throw ValidationError("--adapter-only writes f32 or f16 tensors, not \(exportDType.rawValue)") }
        }
    }

    func run() throws {
        try runReportingErrors {
            _ = try compute.context()
            let out = URL(fileURLWithPath: output)
            try ExportError.checkOutput(out, file: format == .gguf, force: force)
            let specs = adapters.specs
            let start = Date()
            // Every adapter is read and checked against the base before anything is written.
            let merger = try Merger(base: try resolveModelPath(baseModel), adapters: specs)
            let quiet = outputOptions.quiet
            if !adapterOnly && !quiet { note("base \(baseModel): read at full precision (an adapter trained on an int8 or nf4 base merges into the unquantized weights)") }
            for a in merger.adapters where !quiet {
                note("adapter \(a.source): r \(a.config.r), alpha \(a.config.loraAlpha)\(a.config.useRslora ? " (rsLoRA)" : ""), "
                     + "\(a.config.targetModules.map(\.rawValue).joined(separator: ",")), \(a.factors.count) weights, "
                     + "weight \(a.weight) x scale \(a.config.scale)")
            }
            let renderer = ProgressRenderer(quiet: quiet)
            renderer.labels[.merge] = format == .gguf ? "writing GGUF" : "merging"
            renderer.begin(.merge)
            let progress = renderer.handler
            if adapterOnly {
                let a = merger.adapters[0]
                let s = try GGUFExport.writeAdapter(a, model: merger.config, name: URL(fileURLWithPath: a.source).lastPathComponent,
                                                    to: out, dtype: exportDType)
                note("wrote \(out.path): GGUF LoRA adapter, \(s.tensors) tensors, \(exportDType.rawValue), alpha \(a.scale * Float(a.config.r))")
            } else if format == .gguf {
                let s = try GGUFExport.writeModel(merger, to: out, dtype: exportDType, progress: progress)
                if !s.fallbacks.isEmpty && !quiet {
                    note("\(s.fallbacks.count) tensors have rows that are not a multiple of 32 and were written as f16: \(s.fallbacks.joined(separator: ", "))")
                }
                note("wrote \(out.path): GGUF, \(s.tensors) tensors, \(exportDType.rawValue), \(byteCount(s.bytes)) of tensor data in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
            } else {
                let s = try HFExport.write(merger, to: out, options: .init(dtype: exportDType, maxShardSize: HFExport.parseSize(maxShardSize)!),
                                           progress: progress)
                for n in s.notes where !quiet { note("note: \(n)") }
                note("wrote \(out.path): \(s.files.joined(separator: ", ")) (\(exportDType.rawValue), \(s.shards) shard\(s.shards == 1 ? "" : "s"), "
                     + "\(byteCount(s.tensorBytes))) in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
            }
        }
    }
}

/// 1.2 GB, 340.5 MB, 12.0 kB (decimal units, as --max-shard-size).
func byteCount(_ n: Int) -> String {
    for (unit, size) in [("GB", 1e9), ("MB", 1e6), ("kB", 1e3)] where Double(n) >= size {
        return String(format: "%.1f", Double(n) / size) + " " + unit
    }
    return "\(n) bytes"
}
