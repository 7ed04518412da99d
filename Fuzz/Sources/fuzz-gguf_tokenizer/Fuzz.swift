import FuzzSupport
import LLaMA

/// The tokenizer in a GGUF file's tokenizer.ggml.* metadata (SentencePiece or BPE), checked
/// against the model config as loading does, then used on a short text.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let u = put(input(data, size), "model.gguf")
    expectErrors {
        let f = try GGUFFile(path: u.path)
        let t = try loadTokenizer(gguf: f)
        if let ck = try? GGUFCheckpoint(path: u.path) {
            try LoadedModel.checkTokenizer(t, fits: ck.config, file: u.path)
        }
        let ids = t.encode("Hello wörld <s> 12\n", addBOS: true)
        _ = t.decode(ids)
        for id in ids.prefix(8) { _ = t.piece(id) }
    }
    return 0
}
