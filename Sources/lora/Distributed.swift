import Foundation
import LLaMA

// How `lora finetune` runs under an MPI launcher. The library's `Communicator` does the
// collectives; this file picks one, reports errors of any rank and stops the whole job.

/// The communicator for this process: MPI_COMM_WORLD when an MPI launcher started several
/// copies of an MPI build, a single process otherwise. A build without MPI started as one of
/// several copies refuses (N independent runs would write the same output folder).
func makeCommunicator(environment: [String: String]) throws -> Communicator {
    guard let (n, variable) = Launcher.worldSize(environment: environment) else { return SingleProcess() }
    #if MPI
    _ = (n, variable)
    return try MPICommunicator()
    #else
    throw DistributedError.notBuiltWithMPI(worldSize: n, variable: variable)
    #endif
}

/// Waits for every rank and shuts MPI down (a no-op for a single process).
func finishCommunicator(_ comm: Communicator) {
    #if MPI
    (comm as? MPICommunicator)?.finalize()
    #endif
}

/// A rank that failed prints why (naming itself) and stops every rank of the job, which
/// would otherwise wait for it in the next allreduce.
func abortJob(_ comm: Communicator, error: Error) -> Never {
    let what = (error as? TrainingError).map { "\($0)" } ?? fileErrorDescription(error) ?? "\(error)"
    note("error (rank \(comm.rank) of \(comm.size)): \(what); stopping all ranks")
    #if MPI
    (comm as? MPICommunicator)?.abort(code: 1)
    #endif
    exit(1)
}

enum DistributedSignals {
    /// Under mpirun, SIGTERM is how the runtime stops the surviving ranks when one dies (and
    /// how it forwards Ctrl-C). A rank may be blocked in a collective and cannot reach the
    /// trainer's checkpoint-and-stop check, so it says why it stops and exits at once; files
    /// are written atomically, so the last periodic checkpoint is intact.
    static func install(rank: Int, size: Int) {
        message = strdup("lora: rank \(rank) of \(size): stopped by the MPI runtime (another rank failed or the job was interrupted); resume from the last checkpoint-N\n")
        for sig in [SIGTERM, SIGINT] {
            signal(sig) { s in
                if let m = DistributedSignals.message { _ = write(STDERR_FILENO, m, strlen(m)) }
                _exit(128 + s)
            }
        }
    }
    // A C signal handler cannot capture; the message is made once, before any signal.
    nonisolated(unsafe) static var message: UnsafeMutablePointer<CChar>?
}
