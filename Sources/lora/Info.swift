import ArgumentParser
import Foundation
import LLaMA
import Tensor

/// What this machine gives `lora`: the CPU, the kernel families it can run and the one chosen.
struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the CPU, the kernel families it can run and the one in use (LORA_KERNELS forces one).")

    @Flag(name: .customLong("families"), help: "Print only the available kernel families, one per line.")
    var familiesOnly = false

    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try runReportingErrors {
            if familiesOnly {
                for k in KernelFamily.available { print(k.rawValue) }
                return
            }
            let (ctx, deviceLine) = try compute.context()
            deviceLine.print(quiet: false)
            print("cpu: \(KernelFamily.cpuDescription)")
            print("kernel families: \(KernelFamily.available.map(\.rawValue).joined(separator: " ")) (best: \(KernelFamily.best.rawValue))")
            print("backend: \(ctx.backend.name)")
            print("weight formats: \(WeightFormats.all.map(\.name).joined(separator: " "))")
        }
    }
}
