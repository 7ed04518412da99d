import CSentencePiece
import Foundation

/// A SentencePiece tokenizer (LLaMA 1 and 2's `tokenizer.model`), through libsentencepiece.
///
/// `encode` gives libsentencepiece's ids (what Hugging Face's slow LlamaTokenizer gives, with BOS
/// in front when asked); `decode` gives libsentencepiece's text: control pieces are invisible
/// (Hugging Face would print "<s>" unless told to skip special tokens), byte pieces are joined into
/// characters, and the leading space the encoder adds is dropped.
///
/// Immutable after loading; libsentencepiece's encode and decode are const and may run on several
/// threads at once, hence `@unchecked Sendable`.
public final class SentencePieceTokenizer: Tokenizer, @unchecked Sendable {
    private let handle: OpaquePointer  // lora_spm *

    /// Where the model came from (a path, or a description), for messages.
    public let source: String
    public let vocabSize: Int
    public let bosID: Int32?
    public let eosID: Int32?
    public let unkID: Int32?
    public let padID: Int32?
    public var eosIDs: Set<Int32> { eosID.map { [$0] } ?? [] }
    public var addsBOS: Bool { bosID != nil }

    /// Loads `tokenizer.model`.
    public convenience init(path: URL) throws {
        guard FileManager.default.fileExists(atPath: path.path) else {
            throw TokenizerError.unreadable(file: path.path, reason: "no such file")
        }
        var error: UnsafeMutablePointer<CChar>?
        guard let handle = lora_spm_load_file(path.path, &error) else {
            throw TokenizerError.invalidModel(file: path.path, reason: Self.take(error))
        }
        self.init(handle: handle, source: path.path)
        try checkEncodes()
    }

    /// Loads a serialized SentencePiece `ModelProto` held in memory (as a GGUF file or a test
    /// can build one); `source` names it in messages.
    public convenience init(serializedModel bytes: [UInt8], source: String? = nil) throws {
        let name = source ?? "serialized SentencePiece model (\(bytes.count) bytes)"
        var error: UnsafeMutablePointer<CChar>?
        let loaded = bytes.withUnsafeBytes { raw in
            lora_spm_load_proto(raw.baseAddress, raw.count, &error)
        }
        guard let handle = loaded else {
            throw TokenizerError.invalidModel(file: name, reason: Self.take(error))
        }
        self.init(handle: handle, source: name)
        try checkEncodes()
    }

    private init(handle: OpaquePointer, source: String) {
        self.handle = handle
        self.source = source
        self.vocabSize = Int(lora_spm_vocab_size(handle))
        func reserved(_ id: Int32) -> Int32? { id >= 0 ? id : nil }
        self.bosID = reserved(lora_spm_bos_id(handle))
        self.eosID = reserved(lora_spm_eos_id(handle))
        self.unkID = reserved(lora_spm_unk_id(handle))
        self.padID = reserved(lora_spm_pad_id(handle))
    }

    deinit { lora_spm_free(handle) }

    // MARK: Tokenizer

    public func encode(_ text: String, addBOS: Bool) -> [Int32] {
        let prefix = addBOS ? bosID.map { [$0] } ?? [] : []
        switch encodeIDs(text) {
        case .success(let ids): return prefix + ids
        case .failure:
            // Only a vocabulary that SentencePiece cannot segment some text with gets here
            // (loading refuses one that fails on common text): each character alone, and one
            // that still fails becomes <unk> (or nothing without one). Degraded, not a crash.
            var ids: [Int32] = []
            for ch in text {
                switch encodeIDs(String(ch)) {
                case .success(let part): ids += part
                case .failure: if let unkID { ids.append(unkID) }
                }
            }
            return prefix + ids
        }
    }

    struct EncodeFailure: Error { let reason: String }

    /// libsentencepiece's ids for `text`, or its error.
    private func encodeIDs(_ text: String) -> Result<[Int32], EncodeFailure> {
        var text = text
        return text.withUTF8 { utf8 -> Result<[Int32], EncodeFailure> in
            // Most text encodes to fewer ids than bytes; NFKC expansion can exceed that, and then
            // the C side reports the size needed and we call again.
            var capacity = utf8.count + 2
            while true {
                var ids = [Int32](repeating: 0, count: capacity)
                var error: UnsafeMutablePointer<CChar>?
                let n = ids.withUnsafeMutableBufferPointer { out in
                    utf8.withMemoryRebound(to: CChar.self) { chars in
                        lora_spm_encode(handle, chars.baseAddress, chars.count, out.baseAddress!, capacity, &error)
                    }
                }
                if n < 0 { return .failure(EncodeFailure(reason: Self.take(error))) }
                if n <= capacity {
                    ids.removeLast(capacity - Int(n))
                    return .success(ids)
                }
                capacity = Int(n)
            }
        }
    }

    /// Text every usable vocabulary encodes (with byte fallback or <unk> for what it lacks):
    /// ASCII letters, digits, punctuation and whitespace, accented Latin, CJK and an emoji.
    static let probeText = "Hello, World! 0123456789 \"'`~@#$%^&*()[]{}<>/\\|-_=+;:.,?\n\t wörld café 中文 🙂"

    /// Refuses a vocabulary that libsentencepiece loads but cannot segment common text with
    /// (it reports "all normalized characters are not consumed", e.g. for a GGUF whose token
    /// types make single characters control tokens).
    private func checkEncodes() throws {
        if case .failure(let f) = encodeIDs(Self.probeText) {
            throw TokenizerError.cannotEncode(file: source, reason: f.reason)
        }
    }

    public func decode(_ ids: [Int32]) -> String {
        let valid = ids.allSatisfy(isValid) ? ids : ids.filter(isValid)
        var error: UnsafeMutablePointer<CChar>?
        var length = 0
        let text = valid.withUnsafeBufferPointer { buf in
            lora_spm_decode(handle, buf.baseAddress, buf.count, &length, &error)
        }
        guard let text else {
            // Every id is in range, so only a vocabulary libsentencepiece mishandles gets here:
            // the pieces themselves, '▁' as a space (degraded, not a crash).
            _ = Self.take(error)
            return valid.map { piece($0) }.joined().replacingOccurrences(of: "\u{2581}", with: " ")
        }
        defer { lora_spm_free_string(text) }
        return text.withMemoryRebound(to: UInt8.self, capacity: length) {
            String(decoding: UnsafeBufferPointer(start: $0, count: length), as: UTF8.self)
        }
    }

    public func piece(_ id: Int32) -> String {
        var length = 0
        guard let p = lora_spm_id_to_piece(handle, id, &length) else { return "" }
        return p.withMemoryRebound(to: UInt8.self, capacity: length) {
            String(decoding: UnsafeBufferPointer(start: $0, count: length), as: UTF8.self)
        }
    }

    // MARK: SentencePiece specifics

    /// The id of a vocabulary entry, or nil when there is none (rather than SentencePiece's unk id).
    public func id(ofPiece piece: String) -> Int32? {
        var piece = piece
        let id = piece.withUTF8 { utf8 in
            utf8.withMemoryRebound(to: CChar.self) { lora_spm_piece_to_id(handle, $0.baseAddress, $0.count) }
        }
        guard id >= 0 else { return nil }
        if lora_spm_is_unknown(handle, id) != 0 && self.piece(id) != piece { return nil }
        return id
    }

    /// A byte-fallback piece such as "<0xE6>".
    public func isByte(_ id: Int32) -> Bool { lora_spm_is_byte(handle, id) != 0 }
    /// A control piece such as "<s>" or "</s>" (decodes to nothing).
    public func isControl(_ id: Int32) -> Bool { lora_spm_is_control(handle, id) != 0 }
    /// The unknown piece "<unk>".
    public func isUnknown(_ id: Int32) -> Bool { lora_spm_is_unknown(handle, id) != 0 }
    /// A piece marked unused in the model.
    public func isUnused(_ id: Int32) -> Bool { lora_spm_is_unused(handle, id) != 0 }

    private func isValid(_ id: Int32) -> Bool { id >= 0 && Int(id) < vocabSize }

    /// Takes ownership of a C error string and returns it as a Swift string.
    private static func take(_ error: UnsafeMutablePointer<CChar>?) -> String {
        guard let error else { return "unknown error" }
        defer { lora_spm_free_string(error) }
        return String(cString: error)
    }
}
