import ArgumentParser
import Foundation
import LLaMA
import Tensor

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Answer an instruction (Alpaca prompt template) or continue a raw prompt.",
        discussion: "Defaults are alpaca-lora generate.py's: beam search with 4 beams, 128 new tokens.")

    @OptionGroup var model: ModelOptions
    @OptionGroup var adapters: AdapterOptions

    @Option(name: .customLong("prompt-template"), help: "alpaca, alpaca_short, alpaca_legacy, vigogne, a JSON file, or none.")
    var promptTemplate = "alpaca"

    @Option(help: "The instruction, filled into the template.")
    var instruction: String?

    @Option(help: "Optional input for the instruction.")
    var input: String?

    @Option(help: "Raw prompt text, no template (\"\" starts from BOS alone).")
    var prompt: String?

    @Option(help: "A user message, wrapped with the model's chat template (or --chat-template); prints the assistant's answer.")
    var chat: String?

    @Option(name: .customLong("chat-template"), help: "With --chat: chatml, llama2, llama3, mistral, alpaca, or a Jinja file (default: the model's own).")
    var chatTemplate: String?

    @Option(help: "With --chat: a system message before the user's.")
    var system: String?

    @Flag(help: "Read one instruction per line from standard input; Ctrl-D exits.")
    var interactive = false

    @Option(name: .customLong("num-beams"),
            help: "Beams for beam search (1 = greedy or sampling; default \(GenerationOptions().numBeams) as alpaca-lora's, 1 with --do-sample).")
    var numBeams: Int?

    @Option(name: .customLong("max-new-tokens"), help: "Most new tokens to generate.")
    var maxNewTokens = GenerationOptions().maxNewTokens

    @Option(name: .customLong("min-new-tokens"), help: "EOS is ignored until this many new tokens (benchmarks).")
    var minNewTokens = GenerationOptions().minNewTokens

    @Flag(help: "Print prompt length, time to first token and decode speed to stderr.")
    var stats = false

    @Flag(help: "Print the wall time of each op (projections, attention, ...) to stderr.")
    var profile = false

    @Flag(name: .customLong("do-sample"), help: "Sample instead of greedy/beam decoding (one beam: --num-beams then defaults to 1).")
    var doSample = false

    @Option(help: "Sampling temperature.")
    var temperature = GenerationOptions().temperature

    @Option(name: .customLong("top-p"), help: "Nucleus sampling mass.")
    var topP = GenerationOptions().topP

    @Option(name: .customLong("top-k"), help: "Sample among the k most likely tokens (0 = off).")
    var topK = GenerationOptions().topK

    @Option(name: .customLong("repetition-penalty"), help: "Penalty for tokens already in the sequence (1 = off).")
    var repetitionPenalty = GenerationOptions().repetitionPenalty

    @Option(help: "Seed of the sampling RNG.")
    var seed: UInt64 = 0

    @OptionGroup var compute: ComputeOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        let modes = [instruction != nil, prompt != nil, interactive, chat != nil].filter { $0 }.count
        if modes != 1 { throw ValidationError("give exactly one of --instruction, --prompt, --chat or --interactive") }
        if chat == nil, chatTemplate != nil || system != nil { throw ValidationError("--chat-template and --system go with --chat") }
        if input != nil && instruction == nil { throw ValidationError("--input goes with --instruction") }
        if prompt != nil && !["none", "alpaca"].contains(promptTemplate) {
            throw ValidationError("--prompt is raw text; --prompt-template must be none (or left out) with it")
        }
        if instruction != nil || interactive, promptTemplate == "none" {
            throw ValidationError("--instruction needs a prompt template (not none)")
        }
    }

    var options: GenerationOptions {
        var o = GenerationOptions()
        // --do-sample alone samples (one beam); an explicit --num-beams above 1 with it stays an error.
        o.numBeams = numBeams ?? (doSample ? 1 : o.numBeams); o.maxNewTokens = maxNewTokens; o.minNewTokens = minNewTokens; o.doSample = doSample
        o.temperature = temperature; o.topP = topP; o.topK = topK
        o.repetitionPenalty = repetitionPenalty; o.seed = seed
        return o
    }

    func run() throws {
        try runReportingErrors {
            let (ctx, deviceLine) = try compute.context()
            let opts = options
            try opts.validate()
            let progress = ProgressRenderer(quiet: output.quiet)
            let loaded = try model.load(default: .none, ctx: ctx, purpose: .decoding, progress: progress)
            deviceLine.print(quiet: output.quiet)
            let set = try adapters.load(model: loaded.model.config)
            let prompter: Prompter? = prompt != nil || chat != nil ? nil : try loadPrompter(promptTemplate)
            let gen = Generator(model: loaded.model, adapters: set, ctx: ctx, eosIDs: loaded.eosIDs)
            if profile { ctx.profile = OpProfile() }
            defer { if let p = ctx.profile { note("\(ctx.backend.name), \(loaded.model.quantization.rawValue) weights:\n" + p.report) } }
            if let chat {
                let template = try loaded.chatTemplate(override: chatTemplate)
                let messages = (system.map { [ChatMessage(role: "system", content: $0)] } ?? []) + [ChatMessage(role: "user", content: chat)]
                let text = try template.render(messages, addGenerationPrompt: true)
                // The template writes BOS itself; its BOS/EOS texts become their ids.
                let ids = template.encode(text, tokenizer: loaded.tokenizer)
                try answer(ids: ids, strip: true, stops: template.stopStrings, template: nil, loaded: loaded, gen: gen, opts: opts,
                           progress: progress)
            } else if let prompt {
                try answer(prompt, template: nil, loaded: loaded, gen: gen, opts: opts, progress: progress)
            } else if let instruction, let prompter {
                try answer(prompter.generatePrompt(instruction: instruction, input: input), template: prompter,
                           loaded: loaded, gen: gen, opts: opts, progress: progress)
            } else if let prompter {
                while true {
                    FileHandle.standardError.write(Data("> ".utf8))
                    guard let line = readLine() else { note(""); break }
                    let text = line.trimmingCharacters(in: .whitespaces)
                    if text.isEmpty { continue }
                    try answer(prompter.generatePrompt(instruction: text, input: nil), template: prompter,
                               loaded: loaded, gen: gen, opts: opts, progress: progress)
                }
            }
        }
    }

    /// Generates and prints. With a template only the response is printed, stripped of
    /// surrounding whitespace (alpaca-lora's get_response); a single sequence streams.
    func answer(_ text: String, template: Prompter?, loaded: LoadedModel, gen: Generator, opts: GenerationOptions,
                progress: ProgressRenderer) throws {
        var ids = loaded.tokenizer.encode(text, addBOS: loaded.tokenizer.addsBOS)
        // An empty prompt starts from BOS alone, also for tokenizers that add none by default.
        if ids.isEmpty, let bos = loaded.tokenizer.bosID { ids = [bos] }
        try answer(ids: ids, strip: template != nil, stops: [], template: template, loaded: loaded, gen: gen, opts: opts,
                   progress: progress)
    }

    /// `stops`: texts that end the answer (a chat template's end of turn, when the model does
    /// not emit an EOS id for it); the text from the first one on is not printed.
    func answer(ids: [Int32], strip: Bool, stops: [String], template: Prompter?, loaded: LoadedModel, gen: Generator,
                opts: GenerationOptions, progress: ProgressRenderer) throws {
        let out = StreamOut(strip: strip, stops: stops)
        var decoder = StreamingDecoder(tokenizer: loaded.tokenizer, context: ids)
        let streaming = opts.numBeams == 1
        let t0 = Date()
        var firstToken: Date? = nil
        let generated = try gen.generate(prompt: ids, options: opts, onToken: streaming ? { id in
            if firstToken == nil { firstToken = Date() }
            out.write(decoder.push(id))
        } : nil, onPrefill: progress.handler)
        let t1 = Date()
        defer {
            if stats, firstToken == nil {
                // Beam search hands its tokens over at the end: no first-token time to split on.
                let total = t1.timeIntervalSince(t0)
                note(String(format: "prompt %d tokens, %d new tokens (%d beams); %.1f new tokens/s over the whole run, prompt included; total %.2f s",
                            ids.count, generated.count, opts.numBeams, Double(generated.count) / max(total, 1e-9), total))
            } else if stats {
                let ttft = (firstToken ?? t1).timeIntervalSince(t0)
                let rest = t1.timeIntervalSince(firstToken ?? t1)
                note(String(format: "prompt %d tokens, %d new tokens; time to first token %.3f s; decode %.1f tokens/s; total %.2f s",
                            ids.count, generated.count, ttft, generated.count > 1 ? Double(generated.count - 1) / max(rest, 1e-9) : 0,
                            t1.timeIntervalSince(t0)))
            }
        }
        if streaming {
            out.write(decoder.finish())
            out.end()
        } else {
            let full = loaded.tokenizer.decode(ids + generated)
            var answer = template.map { $0.response(from: full) } ?? loaded.tokenizer.decode(generated)
            if let cut = stops.compactMap({ answer.range(of: $0)?.lowerBound }).min() { answer = String(answer[..<cut]) }
            if strip { answer = answer.trimmingCharacters(in: .whitespacesAndNewlines) }
            out.write(answer)
            out.end()
        }
    }
}

/// A built-in template by name, else a JSON file; a bare word that is neither (a typo such as
/// "alpacca") is reported as an unknown template rather than a missing file.
func loadPrompter(_ name: String) throws -> Prompter {
    if Prompter.builtinNames.contains(name) { return try Prompter(named: name) }
    if !name.contains("/"), !name.lowercased().hasSuffix(".json"), !FileManager.default.fileExists(atPath: name) {
        return try Prompter(named: name)   // throws unknownTemplate, listing the built-in names
    }
    return try Prompter(path: URL(fileURLWithPath: name))
}

/// Writes streamed text to stdout; with `strip`, leading and trailing whitespace is held back
/// so the printed text equals the stripped response.
final class StreamOut {
    let strip: Bool
    let stops: [String]
    var started = false
    var pendingSpace = ""
    /// With stop strings: text not yet printed because it may be the start of one.
    var held = ""
    var stopped = false
    init(strip: Bool, stops: [String] = []) { self.strip = strip; self.stops = stops.filter { !$0.isEmpty } }

    func write(_ s: String) {
        guard !stopped, !s.isEmpty else { return }
        guard !stops.isEmpty else { return show(s) }
        held += s
        if let cut = stops.compactMap({ held.range(of: $0)?.lowerBound }).min() {
            show(String(held[..<cut])); held = ""; stopped = true; return
        }
        // Keep back the longest tail that could begin a stop string.
        var keep = 0
        for stop in stops {
            for n in stride(from: min(stop.count - 1, held.count), to: 0, by: -1) where held.hasSuffix(stop.prefix(n)) {
                keep = max(keep, n); break
            }
        }
        show(String(held.dropLast(keep))); held = String(held.suffix(keep))
    }

    private func show(_ s: String) {
        guard !s.isEmpty else { return }
        guard strip else { emit(s); return }
        var text = s
        if !started {
            text = String(text.drop { $0.isWhitespace })
            if text.isEmpty { return }
            started = true
        }
        // Hold back trailing whitespace until more text arrives.
        let trailing = text.reversed().prefix { $0.isWhitespace }
        let body = text.dropLast(trailing.count)
        if !body.isEmpty { emit(pendingSpace + body); pendingSpace = "" }
        pendingSpace += String(trailing.reversed())
    }

    func end() {
        if !stopped, !held.isEmpty { show(held) }
        held = ""
        emit("\n")
    }

    private func emit(_ s: String) {
        FileHandle.standardOutput.write(Data(s.utf8))
    }
}
