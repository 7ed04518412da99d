/// Everything that can be wrong with a checkpoint a user points us at. Each message names the
/// file and the key or tensor, and what was expected.
public enum CheckpointError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case notFound(path: String, expected: String)
    case missingKey(file: String, key: String)
    case wrongType(file: String, key: String, expected: String, found: String)
    case badValue(file: String, key: String, value: String, expected: String)
    case unsupported(file: String, what: String)
    case corrupt(file: String, detail: String)
    case missingTensor(file: String, name: String)
    case shapeMismatch(file: String, name: String, expected: [Int], found: [Int])
    case unsupportedDType(file: String, name: String, dtype: String)
    case pickle(path: String)
    case nonFinite(file: String, name: String, index: Int, value: Float)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): return "\(path): cannot read: \(reason)"
        case let .notFound(path, expected): return "\(path): not found (expected \(expected))"
        case let .missingKey(file, key): return "\(file): missing key '\(key)'"
        case let .wrongType(file, key, expected, found):
            return "\(file): key '\(key)' should be \(expected), found \(found)"
        case let .badValue(file, key, value, expected):
            return "\(file): key '\(key)' has value \(value), expected \(expected)"
        case let .unsupported(file, what): return "\(file): unsupported: \(what)"
        case let .corrupt(file, detail): return "\(file): corrupt or truncated: \(detail)"
        case let .missingTensor(file, name): return "\(file): missing tensor '\(name)'"
        case let .shapeMismatch(file, name, expected, found):
            return "\(file): tensor '\(name)' has shape \(found), expected \(expected)"
        case let .unsupportedDType(file, name, dtype):
            return "\(file): tensor '\(name)' has dtype \(dtype), expected F32, F16 or BF16"
        case let .nonFinite(file, name, index, value):
            return "\(file): tensor '\(name)' holds a non-finite value (\(value) at element \(index)); the weights are damaged"
        case let .pickle(path):
            return "\(path): PyTorch pickle checkpoints (.bin/.pt) are not loaded, for safety; convert to safetensors first (e.g. `model.save_pretrained(dir, safe_serialization=True)`)"
        }
    }
}
