import Foundation
import XCTest
@testable import LLaMA
import Tensor

/// Timing of one training micro-batch at SmolLM2-135M's shape with random weights.
/// Runs only with LORA_BENCH=1 (a benchmark, not a timed test); prints a per-op profile.
final class TrainStepBenchmark: XCTestCase {
    static func smolShapedModel(quantization: Quantization, layers: Int = 30) -> LlamaModel {
        let c = LlamaConfig(hiddenSize: 576, intermediateSize: 1536, numAttentionHeads: 9, numKeyValueHeads: 3,
                            numHiddenLayers: layers, rmsNormEps: 1e-5, ropeTheta: 100000, headDim: 64, vocabSize: 49152,
                            tieWordEmbeddings: true, bosTokenID: 1, eosTokenIDs: [2], maxPositionEmbeddings: 2048)
        var rng = RNG(seed: 1)
        func rand(_ shape: [Int], _ std: Float) -> Tensor {
            let t = Tensor(shape); for i in 0..<t.count { t[i] = rng.normal() * std }; return t
        }
        func lin(_ o: Int, _ i: Int) -> Linear {
            let w = rand([o, i], 0.02)
            return Linear(Weight.make(quantization.format, from: w, pool: .allCores))
        }
        let ones = { () -> Tensor in let t = Tensor([576]); for i in 0..<576 { t[i] = 1 }; return t }
        let blocks = (0..<layers).map { _ in
            Block(attnNorm: ones(), mlpNorm: ones(), q: lin(576, 576), k: lin(192, 576), v: lin(192, 576), o: lin(576, 576),
                  gate: lin(1536, 576), up: lin(1536, 576), down: lin(576, 1536))
        }
        let embed = rand([49152, 576], 0.02)
        return LlamaModel(config: c, embed: embed, blocks: blocks, norm: ones(), lmHead: embed, quantization: quantization)
    }

    func testTrainStepThroughput() throws {
        guard ProcessInfo.processInfo.environment["LORA_BENCH"] == "1" else { throw XCTSkip("set LORA_BENCH=1") }
        let env = ProcessInfo.processInfo.environment
        var ctx = try ExecutionContext.cpu(threads: 0, environment: env)
        // LORA_BENCH_BLAS_ATTENTION=1: attention's products on OpenBLAS (the A/B of attn_train.c).
        if env["LORA_BENCH_BLAS_ATTENTION"] == "1", let cpu = ctx.backend as? CPUBackend {
            ctx = ExecutionContext(backend: CPUBackend(family: cpu.family, pool: cpu.pool, decoding: cpu.decoding, blasAttention: true))
        }
        print("\(KernelFamily.cpuDescription), \(ctx.backend.name)\(env["LORA_BENCH_BLAS_ATTENTION"] == "1" ? ", attention on OpenBLAS" : "")")
        // LORA_BENCH_QUANT=none,int8,llm_int8 (the default: all three).
        let quants = (env["LORA_BENCH_QUANT"] ?? "none,int8,llm_int8").split(separator: ",").compactMap { Quantization(rawValue: String($0)) }
        for quantization in quants {
            let model = Self.smolShapedModel(quantization: quantization)
            var rng = RNG(seed: 2)
            let cfg = AdapterConfig(r: 8, loraAlpha: 16, loraDropout: 0.05, targetModules: [.q, .v], useRslora: false, baseModelNameOrPath: nil)
            let adapter = LoRAAdapter(new: cfg, model: model.config, rng: &rng)
            adapter.enableGradients()
            let set = AdapterSet(adapter)
            let B = 4, T = 256
            let ids = (0..<(B * T)).map { _ in Int32(rng.int(below: 49152)) }
            let batch = Batch(B: B, T: T, inputIDs: ids, attentionMask: .init(repeating: 1, count: B * T), labels: ids)
            let acts = Activations(model: model, trained: adapter, maxB: B, maxT: T)
            _ = model.forwardBackward(batch, adapters: set, acts: acts, ctx: ctx, rng: &rng, gradScale: 1 / Float(B * T))
            var times: [Double] = []
            for _ in 0..<3 {
                let t0 = Date()
                _ = model.forwardBackward(batch, adapters: set, acts: acts, ctx: ctx, rng: &rng, gradScale: 1 / Float(B * T))
                times.append(Date().timeIntervalSince(t0))
            }
            ctx.profile = OpProfile()
            _ = model.forwardBackward(batch, adapters: set, acts: acts, ctx: ctx, rng: &rng, gradScale: 1 / Float(B * T))
            print(ctx.profile!.report)
            ctx.profile = nil
            let best = times.min()!
            print(String(format: "SmolLM2-shaped train step (%@, B=%d T=%d): %.3f s, %.0f tokens/s", quantization.rawValue, B, T, best, Double(B * T) / best))
        }
    }
}
