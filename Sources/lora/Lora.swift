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
        subcommands: [Finetune.self, Generate.self, Eval.self, Tokenize.self, Merge.self, Info.self, CudaCheck.self])
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
