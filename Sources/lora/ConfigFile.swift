import Foundation
import LLaMA
import Yams

/// Reads a finetune YAML file into `TrainConfig`: unknown keys are an error that names the
/// closest valid key, wrong types name the key and the expected type.
enum ConfigFile {
    static func load(_ path: String) throws -> TrainConfig {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError.unreadable(file: path, reason: "cannot read: \(error.localizedDescription)")
        }
        let node: Any?
        do { node = try Yams.load(yaml: text) } catch {
            throw ConfigError.unreadable(file: path, reason: "invalid YAML: \(error)")
        }
        guard let node else { return TrainConfig() }   // an empty file: all defaults
        guard let dict = node as? [String: Any] else {
            throw ConfigError.unreadable(file: path, reason: "expected a mapping of keys to values at the top level")
        }
        let valid = Set(TrainConfig.CodingKeys.allCases.map(\.rawValue) + TrainConfig.AliasKeys.allCases.map(\.rawValue))
        for key in dict.keys.sorted() where !valid.contains(key) {
            throw ConfigError.unknownKey(file: path, key: key, suggestion: TrainConfig.nearestKey(to: key))
        }
        do {
            return try YAMLDecoder().decode(TrainConfig.self, from: text)
        } catch let DecodingError.typeMismatch(type, ctx), let DecodingError.valueNotFound(type, ctx) {
            throw ConfigError.wrongType(file: path, key: keyPath(ctx), expected: describe(type))
        } catch let DecodingError.dataCorrupted(ctx) {
            throw ConfigError.wrongType(file: path, key: keyPath(ctx), expected: expectation(for: ctx))
        } catch let e as ConfigError {
            throw e
        } catch {
            throw ConfigError.unreadable(file: path, reason: "\(error)")
        }
    }

    static func keyPath(_ ctx: DecodingError.Context) -> String {
        ctx.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }

    static func expectation(for ctx: DecodingError.Context) -> String {
        if ctx.codingPath.first?.stringValue == TrainConfig.CodingKeys.loraTargetModules.rawValue {
            return "a list of \(Projection.allCases.map(\.rawValue).joined(separator: ", "))"
        }
        if ctx.codingPath.first?.stringValue == TrainConfig.CodingKeys.quantization.rawValue {
            return "one of \(Quantization.allCases.map(\.rawValue).joined(separator: ", "))"
        }
        return "a valid value (\(ctx.debugDescription))"
    }

    static func describe(_ t: Any.Type) -> String {
        switch t {
        case is Int.Type, is UInt64.Type: return "an integer"
        case is Double.Type, is Float.Type: return "a number"
        case is Bool.Type: return "true or false"
        case is String.Type: return "a string"
        default: return "\(t)"
        }
    }
}
