import Foundation

/// The Jinja chat template a checkpoint carries, as text (nil when it has none); `ChatTemplate`
/// recognises it. Reading it does not load weights.
///
/// - GGUF: metadata `tokenizer.chat_template`.
/// - Hugging Face folder: `chat_template.jinja` (where transformers >= 4.43 saves it, and which it
///   prefers), else `tokenizer_config.json`'s `chat_template`: a string, or a list of
///   `{"name", "template"}` of which the one named "default" is used.
public func loadChatTemplateSource(modelPath: String) throws -> String? {
    if URL(fileURLWithPath: modelPath).pathExtension.lowercased() == "gguf" {
        return try chatTemplateSource(gguf: GGUFFile(path: modelPath))
    }
    return try chatTemplateSource(folder: URL(fileURLWithPath: modelPath))
}

public func chatTemplateSource(gguf: GGUFFile) throws -> String? {
    try gguf.string("tokenizer.chat_template")
}

public func chatTemplateSource(folder: URL) throws -> String? {
    let fm = FileManager.default
    let jinja = folder.appendingPathComponent("chat_template.jinja")
    if fm.fileExists(atPath: jinja.path) {
        guard let data = fm.contents(atPath: jinja.path) else {
            throw CheckpointError.unreadable(path: jinja.path, reason: "cannot open")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw CheckpointError.corrupt(file: jinja.path, detail: "not UTF-8 text")
        }
        return text
    }
    let config = folder.appendingPathComponent("tokenizer_config.json")
    guard fm.fileExists(atPath: config.path) else { return nil }
    let j: JSON
    do { j = try JSON.parse(contentsOf: config) } catch let e as JSONError {
        throw CheckpointError.corrupt(file: config.path, detail: e.description)
    }
    guard let v = j["chat_template"], !v.isNull else { return nil }
    if let s = v.string { return s }
    guard let list = v.array else {
        throw CheckpointError.wrongType(file: config.path, key: "chat_template", expected: "a string or a list of {name, template}", found: v.typeName)
    }
    for (i, item) in list.enumerated() {
        guard let name = item["name"]?.string, let template = item["template"]?.string else {
            throw CheckpointError.wrongType(file: config.path, key: "chat_template[\(i)]", expected: "an object with string 'name' and 'template'", found: item.typeName)
        }
        if name == "default" { return template }
    }
    return nil
}
