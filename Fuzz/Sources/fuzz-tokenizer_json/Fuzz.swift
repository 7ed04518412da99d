import FuzzSupport
import LLaMA

/// A model folder's byte-level BPE tokenizer: tokenizer.json SEP tokenizer_config.json SEP
/// config.json (empty parts are left out), loaded and checked against the model as
/// `LoadedModel` does, then used on a short text.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let p = parts(input(data, size), 3)
    let dir = folder("model")
    put(p[0], "tokenizer.json", in: dir)
    if p[1].count > 0 { put(p[1], "tokenizer_config.json", in: dir) }
    if p[2].count > 0 { put(p[2], "config.json", in: dir) }
    expectErrors {
        let t = try loadTokenizer(folder: dir)
        if p[2].count > 0 {
            let c = try LlamaConfig(contentsOf: dir.appendingPathComponent("config.json"))
            try LoadedModel.checkTokenizer(t, fits: c, file: dir.appendingPathComponent("tokenizer.json").path)
        }
        let ids = t.encode("Hello wörld <|im_start|> 12\n", addBOS: true)
        _ = t.decode(ids)
        for id in ids.prefix(8) { _ = t.piece(id) }
    }
    return 0
}
