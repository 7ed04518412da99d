// The few MPI calls lora needs, as plain C functions: Open MPI's MPI_COMM_WORLD, MPI_FLOAT,
// MPI_SUM, MPI_IN_PLACE ... are macros casting addresses of globals, which Swift does not
// import. Built only with `swift build --traits MPI` (Debian: libopenmpi-dev).
#include <mpi.h>

/// MPI_Init_thread asking for MPI_THREAD_FUNNELED (only the main thread calls MPI; the
/// compute pool's workers never do). Returns an MPI error code.
static inline int lora_mpi_init(int *provided) {
    return MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, provided);
}
static inline int lora_mpi_initialized(void) { int f = 0; MPI_Initialized(&f); return f; }
static inline int lora_mpi_finalized(void) { int f = 0; MPI_Finalized(&f); return f; }
static inline int lora_mpi_finalize(void) { return MPI_Finalize(); }
static inline int lora_mpi_rank(void) { int r = 0; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
static inline int lora_mpi_size(void) { int n = 1; MPI_Comm_size(MPI_COMM_WORLD, &n); return n; }

/// Errors in collectives abort the whole job (the default, set explicitly so no library
/// linked in can change it): a rank that dies or fails never leaves the others waiting.
static inline int lora_mpi_errors_are_fatal(void) {
    return MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
}

/// In-place sum over all ranks.
static inline int lora_mpi_allreduce_sum_float(float *buf, int count) {
    return MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
}
static inline int lora_mpi_allreduce_sum_double(double *buf, int count) {
    return MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}
static inline int lora_mpi_barrier(void) { return MPI_Barrier(MPI_COMM_WORLD); }
static inline int lora_mpi_abort(int code) { return MPI_Abort(MPI_COMM_WORLD, code); }
static inline double lora_mpi_wtime(void) { return MPI_Wtime(); }
