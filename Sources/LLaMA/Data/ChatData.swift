import Foundation

/// One chat-format record: `{"messages": [{"role": ..., "content": ...}, ...]}` (the format of
/// OpenAI fine-tuning files and TRL's conversational datasets). Other keys are ignored.
public struct ChatRecord: Sendable, Equatable {
    public var messages: [ChatMessage]
    public init(messages: [ChatMessage]) { self.messages = messages }
}

/// The records of a training file, in the format the file turned out to hold.
public enum TrainingRecords: Sendable, Equatable {
    case alpaca([AlpacaRecord])
    case chat([ChatRecord])

    public var count: Int {
        switch self {
        case .alpaca(let r): return r.count
        case .chat(let r): return r.count
        }
    }

    /// Reads a JSON list or JSON lines; the first record decides the format (a `messages` key:
    /// chat, otherwise Alpaca), and every record must then be in it: errors name the file, the
    /// record (from 0) and the field.
    public static func load(_ url: URL) throws -> TrainingRecords {
        let objects = try DataFile.objects(url)
        if ChatData.isChat(objects[0]) { return .chat(try ChatData.records(objects, path: url.path)) }
        return .alpaca(try AlpacaData.records(objects, path: url.path))
    }
}

public enum ChatData {
    /// Bounds checked before anything is sized from a record.
    public static let maxMessages = 10_000

    /// Whether a record looks like a chat record (has `messages`).
    public static func isChat(_ o: JSON) -> Bool { o["messages"] != nil }

    public static func load(_ url: URL) throws -> [ChatRecord] {
        try records(DataFile.objects(url), path: url.path)
    }

    /// Every record must have a non-empty `messages` list of {role, content} strings, with at
    /// least one assistant turn (the loss is taken on assistant turns only, so a record without
    /// one would train nothing).
    public static func records(_ objects: [JSON], path: String) throws -> [ChatRecord] {
        var out: [ChatRecord] = []
        out.reserveCapacity(objects.count)
        for (i, o) in objects.enumerated() {
            func bad(_ field: String, _ problem: String) -> DataError {
                .badRecord(path: path, record: i, field: field, problem: problem)
            }
            guard case .object = o else { throw bad("(record)", "is \(o.typeName), expected an object with 'messages'") }
            guard let m = o["messages"], !m.isNull else { throw bad("messages", "is missing (the file's first record is chat-format)") }
            guard let list = m.array else { throw bad("messages", "is \(m.typeName), expected a list of {role, content} objects") }
            guard !list.isEmpty else { throw bad("messages", "is an empty list") }
            guard list.count <= maxMessages else { throw bad("messages", "has \(list.count) messages, more than \(maxMessages)") }
            var messages: [ChatMessage] = []
            messages.reserveCapacity(list.count)
            for (j, e) in list.enumerated() {
                guard case .object = e else { throw bad("messages[\(j)]", "is \(e.typeName), expected an object with role and content") }
                func str(_ k: String) throws -> String {
                    guard let v = e[k], !v.isNull else { throw bad("messages[\(j)].\(k)", "is missing") }
                    guard let s = v.string else { throw bad("messages[\(j)].\(k)", "is \(v.typeName), expected a string") }
                    return s
                }
                let role = try str("role")
                guard !role.isEmpty else { throw bad("messages[\(j)].role", "is empty") }
                messages.append(ChatMessage(role: role, content: try str("content")))
            }
            guard messages.contains(where: { $0.role == "assistant" }) else {
                throw bad("messages", "has no assistant message (the loss is taken on assistant turns only)")
            }
            out.append(ChatRecord(messages: messages))
        }
        if out.isEmpty { throw DataError.empty(path: path) }
        return out
    }
}

/// Chat records to training examples: the conversation rendered with the chat template,
/// tokenized as one text, labels -100 everywhere but on the assistant turns' contents and
/// end-of-turn markers (as `train_on_inputs: false` masks the prompt of an Alpaca record).
///
/// Tokenization follows `apply_chat_template(tokenize=True)`: the template writes BOS/EOS as
/// text and no BOS is added; the tokenizer's BOS and EOS texts become their ids (SentencePiece
/// does not match them in text, byte-level BPE does through its added tokens), with no "▁"
/// after them (LlamaTokenizer with legacy=False). Then ids past
/// `cutoffLen` are dropped; no EOS is appended (the template's end-of-turn marker is the target).
///
/// A token's label follows the segment its text starts in: the tokens of a segment are those
/// past the tokenization of the text before it. A token that straddles a boundary (BPE merging
/// across it) counts with the later segment.
public struct ChatExampleBuilder: Sendable {
    public let tokenizer: Tokenizer
    public let template: ChatTemplate
    public let cutoffLen: Int
    private let specials: [(text: String, id: Int32)]

    public init(tokenizer: Tokenizer, template: ChatTemplate, cutoffLen: Int) {
        self.tokenizer = tokenizer; self.template = template; self.cutoffLen = cutoffLen
        var s: [(String, Int32)] = []
        for (text, id) in [(template.bosToken, tokenizer.bosID), (template.eosToken, tokenizer.eosID)] {
            if let id, !text.isEmpty, tokenizer.piece(id) == text, !s.contains(where: { $0.0 == text }) { s.append((text, id)) }
        }
        // Longest first, so that one special text inside another cannot split it.
        specials = s.sorted { $0.0.count > $1.0.count }
    }

    /// `text` to ids: the BOS/EOS texts as their ids, the rest through the tokenizer.
    public func encode(_ text: String) -> [Int32] {
        var ids: [Int32] = []
        var rest = Substring(text)
        while !rest.isEmpty {
            var hit: (range: Range<Substring.Index>, id: Int32)?
            for (t, id) in specials {
                if let r = rest.range(of: t), hit == nil || r.lowerBound < hit!.range.lowerBound { hit = (r, id) }
            }
            let end = hit?.range.lowerBound ?? rest.endIndex
            if end > rest.startIndex { ids += encodePlain(String(rest[..<end]), afterSpecial: !ids.isEmpty) }
            guard let h = hit else { break }
            ids.append(h.id)
            rest = rest[h.range.upperBound...]
        }
        return ids
    }

    /// SentencePiece puts its "▁" prefix in front of every text it encodes; after a special
    /// token Hugging Face's LlamaTokenizer (legacy=False, the default) and llama.cpp do not, so
    /// the text is encoded behind "<unk>" and that prefix's ids dropped, as LlamaTokenizer does.
    /// Byte-level BPE has no such prefix.
    private func encodePlain(_ text: String, afterSpecial: Bool) -> [Int32] {
        guard afterSpecial, tokenizer is SentencePieceTokenizer else { return tokenizer.encode(text, addBOS: false) }
        let marker = tokenizer.encode("<unk>", addBOS: false)
        let ids = tokenizer.encode("<unk>" + text, addBOS: false)
        guard ids.starts(with: marker) else { return tokenizer.encode(text, addBOS: false) }
        return Array(ids.dropFirst(marker.count))
    }

    /// The example and the rendered segments it came from.
    public func example(_ r: ChatRecord) throws -> Example {
        let segments = try template.renderForTraining(r.messages)
        var text = ""
        var ids: [Int32] = []
        var labels: [Int32] = []
        // `ids` tokenizes the text so far; each segment's tokens are what the longer prefix adds.
        for seg in segments {
            text += seg.text
            let prefix = encode(text)
            var common = 0
            while common < min(prefix.count, ids.count), prefix[common] == ids[common] { common += 1 }
            // Tokens re-cut by the new text (a merge across the boundary) move to this segment.
            ids.removeLast(ids.count - common); labels.removeLast(labels.count - common)
            for t in prefix[common...] { ids.append(t); labels.append(seg.trainable ? t : -100) }
        }
        if ids.count > cutoffLen { ids.removeLast(ids.count - cutoffLen); labels.removeLast(labels.count - cutoffLen) }
        return Example(inputIDs: ids, labels: labels)
    }

    /// Examples of `records[i]` for each index; a conversation the template refuses is an error
    /// naming the file, the record and the message.
    public func examples(_ records: [ChatRecord], indices: [Int], path: String) throws -> [Example] {
        try indices.map { i in
            do { return try example(records[i]) } catch let ChatTemplateError.badConversation(message, reason) {
                throw DataError.badRecord(path: path, record: i, field: message.map { "messages[\($0)]" } ?? "messages", problem: reason)
            }
        }
    }
}

extension ChatTemplate {
    /// Text this template rendered (a prompt from `render(_:addGenerationPrompt: true)`) as the
    /// ids training uses for it: BOS/EOS texts as their ids, no BOS added (the template writes
    /// it). What `generate --chat` and a server feed the model.
    public func encode(_ text: String, tokenizer: Tokenizer) -> [Int32] {
        ChatExampleBuilder(tokenizer: tokenizer, template: self, cutoffLen: Int.max).encode(text)
    }
}
