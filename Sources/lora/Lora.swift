import ArgumentParser
import Foundation
import LLaMA
import Tensor

@main
struct Lora: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lora",
        abstract: "Fine-tune LLaMA-family models with LoRA on a CPU, answer prompts, merge adapters.",
        discussion: "Adapters are Hugging Face PEFT folders (adapter_config.json + adapter_model.safetensors).",
        subcommands: [Finetune.self, Generate.self, Eval.self, Tokenize.self, Merge.self, Info.self, Serve.self, CudaCheck.self])

    /// The release this source tree is; the git commit comes from the BuildInfo plugin.
    static let version = "0.2.0"

    // The root's own flag (not CommandConfiguration.version, a fixed string) because the
    // answer probes the machine: kernel family, BLAS, GPU runtime.
    @Flag(name: .customLong("version"), help: "Show the version, git commit, kernel family, BLAS library and GPU runtime.")
    var showVersion = false

    func run() throws {
        guard showVersion else { throw CleanExit.helpRequest(self) }
        try runReportingErrors {
            for line in try Self.versionLines() { print(line) }
        }
    }

    static func versionLines() throws -> [String] {
        let (ctx, _) = try makeContext(threads: 1, device: .cpu)
        let family = (ctx.backend as? CPUBackend)?.family.rawValue ?? "n/a"
        return ["lora \(version) (commit \(BuildInfo.gitCommit ?? "unknown"))",
                "cpu: \(KernelFamily.cpuDescription)",
                "kernels: \(family) (available: \(KernelFamily.available.map(\.rawValue).joined(separator: " ")); LORA_KERNELS forces one)",
                "backend: \(ctx.backend.name)",
                "blas: \(RuntimeInfo.blas)",
                "gpu: \(RuntimeInfo.gpu(environment: ProcessInfo.processInfo.environment))"]
    }
}

/// Prints one line to stderr.
func note(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}

/// Runs `body`, mapping the library's typed errors to a one-line message and exit code 1.
/// Every subcommand runs through here, so Foundation/POSIX file errors (FileManager,
/// `Data(contentsOf:)`, `String(contentsOfFile:)`) that reach it from any of them print one
/// line, `error: PATH: REASON` ("permission denied", "no such file or directory", "not a
/// directory"), never an NSCocoaErrorDomain dump.
func runReportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as ExitCode {
        throw e
    } catch let e as CleanExit {
        throw e
    } catch let e as ValidationError {
        throw e
    } catch let e as TrainingError {
        note("error: \(e)")
        if case .interrupted = e { throw ExitCode(130) }
        throw ExitCode(1)
    } catch {
        note("error: \(fileErrorDescription(error) ?? "\(error)")")
        throw ExitCode(1)
    }
}

extension Bool {
    /// `true|false` for options such as --load-8bit false.
    static func parse(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "true", "1", "yes": return true
        case "false", "0", "no": return false
        default: return nil
        }
    }
}
