// Where a computation runs: `--device auto|cpu|cuda[:N]` and `device:` in finetune YAML.

/// The device a user asked for. `auto` takes GPU 0 when CUDA loads and has a device, else the
/// CPU; `cuda` and `cuda:N` insist on that GPU (an error naming what is missing otherwise).
public enum DeviceRequest: Equatable, Sendable, CustomStringConvertible, Codable {
    case auto
    case cpu
    case cuda(index: Int)

    /// The accepted spellings, for error messages and help.
    public static let spellings = "auto, cpu, cuda or cuda:N (N = 0, 1, ...)"

    /// "auto", "cpu", "cuda" (= cuda:0), "cuda:N"; nil for anything else.
    public init?(_ s: String) {
        switch s {
        case "auto": self = .auto
        case "cpu": self = .cpu
        case "cuda": self = .cuda(index: 0)
        default:
            guard s.hasPrefix("cuda:"), let n = Int(s.dropFirst(5)), n >= 0, n < 1024,
                  !s.dropFirst(5).hasPrefix("+") else { return nil }
            self = .cuda(index: n)
        }
    }

    public var description: String {
        switch self {
        case .auto: return "auto"
        case .cpu: return "cpu"
        case .cuda(let n): return "cuda:\(n)"
        }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        let s = try c.decode(String.self)
        guard let d = DeviceRequest(s) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "'\(s)' is not a device; expected \(Self.spellings)")
        }
        self = d
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}
