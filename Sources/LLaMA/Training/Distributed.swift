import Foundation
#if MPI
import CMPI
#endif

// Data-parallel training over processes: every rank holds the whole model, the same adapter
// and optimizer state, trains on its share of each global batch, and the ranks sum their
// gradients once per optimizer step. The trainer is given a `Communicator` (no global one);
// a plain run passes `SingleProcess`, an `mpirun` launch `MPICommunicator` (build trait MPI).

/// The ranks of a run and the collectives data-parallel training needs.
public protocol Communicator: AnyObject {
    /// This process's index, 0 ..< size; rank 0 logs and writes files.
    var rank: Int { get }
    var size: Int { get }
    /// Sums `buffer` element-wise over all ranks, in place; every rank gets the same sum.
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws
    /// Returns when every rank has called it (used to tell waiting for the slowest rank
    /// apart from the allreduce's own cost).
    func barrier() throws
}

extension Communicator {
    public var isWriter: Bool { rank == 0 }

    /// Sums a few doubles (loss sums, token counts) over all ranks.
    public func allreduceSum(_ values: [Double]) throws -> [Double] {
        var v = values
        try v.withUnsafeMutableBufferPointer { try allreduceSum($0) }
        return v
    }
}

/// One process: the collectives are identities.
public final class SingleProcess: Communicator {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {}
    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
    public func barrier() throws {}
}

public enum DistributedError: Error, CustomStringConvertible, Equatable {
    /// This binary was built without MPI but a launcher started several copies of it.
    case notBuiltWithMPI(worldSize: Int, variable: String)
    case mpi(call: String, code: Int32)

    public var description: String {
        switch self {
        case let .notBuiltWithMPI(n, v):
            return "this lora was built without MPI, but it runs as one of \(n) processes (\(v)=\(n)); " +
                "\(n) independent runs would write the same output folder. Build with " +
                "`swift build -c release --traits MPI` (Debian: apt-get install openmpi-bin libopenmpi-dev) and launch that binary with mpirun"
        case let .mpi(call, code):
            return "\(call) failed with MPI error \(code)"
        }
    }
}

public enum Launcher {
    /// The environment variables MPI launchers set to the number of processes: Open MPI's
    /// mpirun, and the PMI of MPICH's Hydra (also used by Slurm's srun --mpi=pmi2).
    public static let worldSizeVariables = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]

    /// The world size a launcher announced, with the variable that said so; nil when this
    /// process was not started by an MPI launcher (or as a world of one).
    public static func worldSize(environment: [String: String]) -> (size: Int, variable: String)? {
        for v in worldSizeVariables {
            if let s = environment[v], let n = Int(s), n > 1 { return (n, v) }
        }
        return nil
    }

    /// How many ranks the launcher started on this host (Open MPI's
    /// OMPI_COMM_WORLD_LOCAL_SIZE, MPICH's MPI_LOCALNRANKS); nil when it did not say.
    public static func localRanks(environment: [String: String]) -> Int? {
        for v in ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"] {
            if let s = environment[v], let n = Int(s), n >= 1 { return n }
        }
        return nil
    }

    /// Threads per rank for `threads: 0` (all cores): the host's cores shared by its ranks,
    /// so N ranks on one machine do not run N x cores threads.
    public static func threadsPerRank(requested: Int, cores: Int, environment: [String: String]) -> Int {
        guard requested == 0, let local = localRanks(environment: environment), local > 1 else { return requested }
        return max(1, cores / local)
    }

    /// True when this binary was built with the MPI trait.
    public static var builtWithMPI: Bool {
        #if MPI
        return true
        #else
        return false
        #endif
    }
}

#if MPI
/// MPI_COMM_WORLD. Initializes MPI (MPI_THREAD_FUNNELED: only the calling thread uses MPI)
/// and finalizes it in `finalize()`. Errors in any MPI call are fatal to the whole job
/// (MPI_ERRORS_ARE_FATAL, set explicitly): with Open MPI, a rank that dies makes mpirun stop
/// every other rank and report which one died, so no rank waits forever in a collective.
public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    private var finalized = false

    public init() throws {
        if lora_mpi_initialized() == 0 {
            var provided: Int32 = 0
            let rc = lora_mpi_init(&provided)
            guard rc == 0 else { throw DistributedError.mpi(call: "MPI_Init_thread", code: rc) }
        }
        let rc = lora_mpi_errors_are_fatal()
        guard rc == 0 else { throw DistributedError.mpi(call: "MPI_Comm_set_errhandler", code: rc) }
        rank = Int(lora_mpi_rank())
        size = Int(lora_mpi_size())
    }

    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard let p = buffer.baseAddress, buffer.count > 0 else { return }
        precondition(buffer.count <= Int(Int32.max), "allreduce of \(buffer.count) floats exceeds MPI's int count")
        let rc = lora_mpi_allreduce_sum_float(p, Int32(buffer.count))
        guard rc == 0 else { throw DistributedError.mpi(call: "MPI_Allreduce", code: rc) }
    }

    public func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
        guard let p = buffer.baseAddress, buffer.count > 0 else { return }
        let rc = lora_mpi_allreduce_sum_double(p, Int32(buffer.count))
        guard rc == 0 else { throw DistributedError.mpi(call: "MPI_Allreduce", code: rc) }
    }

    public func barrier() throws {
        let rc = lora_mpi_barrier()
        guard rc == 0 else { throw DistributedError.mpi(call: "MPI_Barrier", code: rc) }
    }

    /// Waits for every rank (so rank 0's files are complete before any rank exits), then
    /// shuts MPI down.
    public func finalize() {
        guard !finalized, lora_mpi_finalized() == 0 else { return }
        finalized = true
        _ = lora_mpi_barrier()
        _ = lora_mpi_finalize()
    }

    /// Stops every rank of the job with `code` (a rank that failed must not leave the others
    /// waiting in the next collective).
    public func abort(code: Int32) -> Never {
        _ = lora_mpi_abort(code)
        exit(code)
    }
}
#endif
