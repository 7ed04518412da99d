import Foundation
import FuzzSupport
import LLaMA
import Tensor

/// `resume_from_checkpoint: checkpoint-N` on a real (tiny) trainer: trainer_state.json SEP
/// optimizer.safetensors, next to the adapter the trainer itself saved, through
/// `Trainer.resume(from:)` (state, its consistency with the run, moments, best weights).
/// The run: tiny-mha, r 1 on q_proj (4 trainable tensors of 64), 6 records, batch 2 of
/// micro-batch 1, 6 steps; Fuzz/make_corpus.py's seeds match it.
let checkpoint = scratch.appendingPathComponent("checkpoint-3")
let trainer: Trainer = {
    var c = TrainConfig()
    c.baseModel = fixtures.appendingPathComponent("tiny-mha").path
    c.outputDir = scratch.appendingPathComponent("out").path
    c.batchSize = 2; c.microBatchSize = 1; c.maxSteps = 6; c.cutoffLen = 32; c.valSetSize = 0
    c.loraR = 1; c.loraTargetModules = [.q]; c.quantization = .none
    try! c.validate()
    let ctx = try! ExecutionContext.cpu(threads: 1, environment: [:])
    let loaded = try! LoadedModel(path: c.baseModel, quantization: c.quantization, pool: ctx.pool)
    let records = try! AlpacaData.load(fixtures.appendingPathComponent("records.json"))
    let builder = ExampleBuilder(tokenizer: loaded.tokenizer, prompter: try! Prompter(named: "alpaca"),
                                 cutoffLen: c.cutoffLen, trainOnInputs: true, addEOSToken: false)
    var rng = RNG(seed: c.seed)
    let adapter = LoRAAdapter(new: c.adapterConfig, model: loaded.model.config, rng: &rng)
    try! FileManager.default.createDirectory(atPath: c.outputDir, withIntermediateDirectories: true)
    try! Adapter.save(adapter, to: checkpoint)
    return try! Trainer(config: c, model: loaded.model, adapter: adapter, ctx: ctx,
                        train: records.map { builder.example($0) }, validation: [], padID: loaded.padID)
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let p = parts(input(data, size), 2)
    let t = trainer
    put(p[0], "trainer_state.json", in: checkpoint)
    put(p[1], "optimizer.safetensors", in: checkpoint)
    expectErrors { try t.resume(from: checkpoint) }
    return 0
}
