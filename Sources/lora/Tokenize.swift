import ArgumentParser
import Foundation
import LLaMA

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the token ids (and pieces) of a text as JSON.")

    @Option(name: .customLong("base-model"), help: "Model folder (with tokenizer.model) or .gguf file.")
    var baseModel: String

    @Option(help: "The text to tokenize.")
    var text: String

    @Flag(name: .customLong("no-bos"), help: "Do not put the BOS id in front (when the tokenizer adds one).")
    var noBOS = false

    func run() throws {
        try runReportingErrors {
            let tok = try loadTokenizer(path: try resolveModelPath(baseModel))
            let ids = tok.encode(text, addBOS: tok.addsBOS && !noBOS)
            let out = JSON.object([
                ("ids", .array(ids.map { .int(Int64($0)) })),
                ("pieces", .array(ids.map { .string(tok.piece($0)) })),
                ("count", .int(Int64(ids.count))),
            ])
            print(out.serialized(pretty: false))
        }
    }
}
