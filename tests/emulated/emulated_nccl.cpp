// The NCCL calls of engine/communicator_nccl.cpp, emulated over MPI on the emulated CUDA device's
// memory (tests/emulated/emulated_runtime.cpp), so that bert_train with device = "cuda" runs as
// several ranks without GPUs: bert_train_emulated under mpirun (tests/test_trainer_mpi.cpp).
//
// Each communicator is a duplicate of MPI_COMM_WORLD (NCCL's communicators do not order against the
// host's MPI calls either). ncclCommInitRank checks what NCCL would need: MPI started, nranks and rank
// as the world's, and the same unique id on every rank (the bootstrap's broadcast worked). The
// all-reduce checks that its buffers are device memory, then runs the stream's queued work and sums
// at once: performed when the host issues it rather than when the stream reaches it, so that the
// ranks' deferred queues (emulated_runtime.cpp) never meet the host's own collectives in a different
// order on different ranks. Only what the trainer uses is supported: fp32 sums.
//
// Failures, each on the rank an environment variable names:
//   BERT_EMULATED_NCCL_INIT_FAILS=<rank>      its ncclCommInitRank fails (ncclRemoteError) before it
//                                            joins the others, which wait inside theirs, as NCCL's ranks
//                                            wait for one that never arrives
//   BERT_EMULATED_NCCL_ASYNC_ERROR=<rank>    once it has issued an all-reduce, ncclCommGetAsyncError
//                                            reports ncclRemoteError (its sums still complete)
//   BERT_EMULATED_NCCL_ALLREDUCE_FAILS=<rank> its ncclAllReduce returns ncclUnhandledCudaError, as NCCL
//                                            does when a cudaMalloc for its buffers fails
// and on every rank:
//   BERT_EMULATED_NCCL_STALLS=1              no all-reduce finishes (its stream work is a stall,
//                                            emulated_runtime.h), as when the network between the GPUs
//                                            fails while the hosts still reach each other
// The all-reduce failures (stall, async error, failed call) start at a communicator's all-reduce number
// BERT_EMULATED_NCCL_FAIL_FROM (counted from 0 as issued; default 0): bert_train's warm-up sums before
// the first step come first, so a failure in training proper needs a count past them.
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>

#include "tests/emulated/emulated_runtime.h"

struct ncclComm {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 0;
  int64_t allreduces = 0;  // issued
};

namespace {

constexpr char kMagic[] = "bertforge emulated NCCL id";

// Whether the failure `variable` names is this rank's.
bool fails_here(const char* variable, int rank) {
  const char* value = std::getenv(variable);
  return value != nullptr && *value != '\0' && std::atoi(value) == rank;
}

// Whether an all-reduce numbered `index` (from 0, as issued) is past BERT_EMULATED_NCCL_FAIL_FROM.
bool failures_apply(int64_t index) {
  return index >= bert::emulated::detail::env_int("BERT_EMULATED_NCCL_FAIL_FROM", 0, 0, 1 << 30,
                                                  "an all-reduce count (0 or more)");
}

bool mpi_running() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized != 0 && finalized == 0;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) return ncclInvalidArgument;
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error (emulated)";
    case ncclSystemError:
      return "unhandled system error (emulated: MPI is not running)";
    case ncclInternalError:
      return "internal error (emulated)";
    case ncclInvalidArgument:
      return "invalid argument (emulated)";
    case ncclInvalidUsage:
      return "invalid usage (emulated)";
    case ncclRemoteError:
      return "remote process exited or there was a network error (emulated)";
    default:
      return "unknown result code (emulated)";
  }
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id == nullptr) return ncclInvalidArgument;
  std::memset(id->internal, 0, sizeof id->internal);
  std::memcpy(id->internal, kMagic, sizeof kMagic);
  std::random_device random;
  for (size_t i = sizeof kMagic; i + sizeof(uint32_t) <= sizeof id->internal; i += sizeof(uint32_t)) {
    const uint32_t bits = random();
    std::memcpy(id->internal + i, &bits, sizeof bits);
  }
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (comm == nullptr) return ncclInvalidArgument;
  if (!mpi_running()) return ncclSystemError;
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  if (nranks != world_size || rank != world_rank || std::memcmp(id.internal, kMagic, sizeof kMagic) != 0)
    return ncclInvalidArgument;
  if (fails_here("BERT_EMULATED_NCCL_INIT_FAILS", rank)) return ncclRemoteError;
  auto* created = new ncclComm;
  MPI_Comm_dup(MPI_COMM_WORLD, &created->comm);
  created->rank = rank;
  created->size = nranks;
  // Rank 0's id must have reached every rank.
  ncclUniqueId root = id;
  MPI_Bcast(root.internal, sizeof root.internal, MPI_BYTE, 0, created->comm);
  int differs = std::memcmp(root.internal, id.internal, sizeof id.internal) != 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &differs, 1, MPI_INT, MPI_MAX, created->comm);
  if (differs != 0) {
    MPI_Comm_free(&created->comm);
    delete created;
    return ncclInvalidUsage;
  }
  *comm = created;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  using bert::emulated::detail::device_arg;
  if (comm == nullptr || datatype != ncclFloat32 || op != ncclSum) return ncclInvalidArgument;
  device_arg("ncclAllReduce", "sendbuff", static_cast<const float*>(sendbuff), static_cast<int64_t>(count));
  device_arg("ncclAllReduce", "recvbuff", static_cast<const float*>(recvbuff), static_cast<int64_t>(count));
  const int64_t index = comm->allreduces++;
  if (failures_apply(index) && fails_here("BERT_EMULATED_NCCL_ALLREDUCE_FAILS", comm->rank))
    return ncclUnhandledCudaError;
  if (const char* stalls = std::getenv("BERT_EMULATED_NCCL_STALLS");
      stalls != nullptr && *stalls != '\0' && failures_apply(index)) {
    bert::emulated::detail::enqueue_stall(stream, "ncclAllReduce (BERT_EMULATED_NCCL_STALLS)");
    return ncclSuccess;
  }
  bert::emulated::detail::run_queued(stream);
  // MPI counts are ints: sum in chunks.
  constexpr size_t kChunk = size_t{1} << 28;
  auto* out = static_cast<float*>(recvbuff);
  const auto* in = static_cast<const float*>(sendbuff);
  for (size_t at = 0; at < count; at += kChunk) {
    const int n = static_cast<int>(std::min(kChunk, count - at));
    const void* source = in == out ? MPI_IN_PLACE : static_cast<const void*>(in + at);
    MPI_Allreduce(source, out + at, n, MPI_FLOAT, MPI_SUM, comm->comm);
  }
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (comm == nullptr || async_error == nullptr) return ncclInvalidArgument;
  *async_error = comm->allreduces > 0 && failures_apply(comm->allreduces - 1) &&
                         fails_here("BERT_EMULATED_NCCL_ASYNC_ERROR", comm->rank)
                     ? ncclRemoteError
                     : ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclInvalidArgument;
  if (mpi_running()) MPI_Comm_free(&comm->comm);
  delete comm;
  return ncclSuccess;
}

}  // extern "C"
