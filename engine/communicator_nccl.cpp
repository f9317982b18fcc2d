// NCCL for data parallelism over GPUs, loaded on first use (engine/communicator_nccl.h).
#include "engine/communicator_nccl.h"

#include <nccl.h>

#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <utility>

#include "common/error.h"

#if !defined(BERT_NCCL_EMULATED)
#include "common/shared_library.h"
#endif

namespace bert {

namespace {

// The NCCL functions used here: F(name) for each.
#define BERT_NCCL_FUNCTIONS(F) \
  F(ncclGetVersion)            \
  F(ncclGetErrorString)        \
  F(ncclGetUniqueId)           \
  F(ncclCommInitRank)          \
  F(ncclAllReduce)             \
  F(ncclCommGetAsyncError)     \
  F(ncclCommDestroy)

struct NcclApi {
  std::string path;  // the file the functions came from (the emulation: "emulated")
  int version = 0;   // ncclGetVersion(): major * 10000 + minor * 100 + patch
#define BERT_NCCL_FIELD(name) decltype(&::name) name = nullptr;
  BERT_NCCL_FUNCTIONS(BERT_NCCL_FIELD)
#undef BERT_NCCL_FIELD
};

[[noreturn]] void fail(const std::string& detail) {
  throw Error("cannot load NCCL: " + detail +
              " (data parallelism over GPUs needs it; it comes with the CUDA toolkit, the libnccl2 package or "
              "PyTorch's nvidia-nccl wheel: put its directory on LD_LIBRARY_PATH, or name the file in "
              "BERT_NCCL_LIBRARY)");
}

#if defined(BERT_NCCL_EMULATED)

NcclApi load_from(const std::string&) {
  NcclApi api;
  api.path = "emulated";
#define BERT_NCCL_LINK(name) api.name = &::name;
  BERT_NCCL_FUNCTIONS(BERT_NCCL_LINK)
#undef BERT_NCCL_LINK
  return api;
}

#else

NcclApi load_from(const std::string& requested) {
  const SharedLibrary library = open_library_like(requested, "libnccl.so." + std::to_string(NCCL_MAJOR),
                                                  reinterpret_cast<const void*>(&cudaGetDeviceCount));
  if (library.handle == nullptr) fail(library.errors);
  NcclApi api;
#define BERT_NCCL_RESOLVE(name) \
  if (const std::string missing = resolve_symbol(library, #name, api.name); !missing.empty()) fail(missing);
  BERT_NCCL_FUNCTIONS(BERT_NCCL_RESOLVE)
#undef BERT_NCCL_RESOLVE
  api.path = library_file(library, reinterpret_cast<const void*>(api.ncclCommInitRank));
  return api;
}

#endif

NcclApi load_nccl() {
  const char* requested = std::getenv("BERT_NCCL_LIBRARY");
  NcclApi api = load_from(requested != nullptr ? requested : "");
  if (api.ncclGetVersion(&api.version) != ncclSuccess || api.version / 10000 != NCCL_MAJOR)
    fail(api.path + " is NCCL " + std::to_string(api.version / 10000) + "." + std::to_string(api.version / 100 % 100) +
         ", but this build's headers are NCCL " + std::to_string(NCCL_MAJOR) + ".x");
  return api;
}

std::string describe(const NcclApi& api) {
  return "NCCL " + std::to_string(api.version / 10000) + "." + std::to_string(api.version / 100 % 100) + "." +
         std::to_string(api.version % 100) + " (" + api.path + ")";
}

class NcclCommunicator final : public DeviceCommunicator {
 public:
  NcclCommunicator(NcclApi api, ncclComm_t comm) : api_(std::move(api)), comm_(comm) {}
  // The trainer has waited for its stream (and so for every all-reduce) before it ends.
  ~NcclCommunicator() override { api_.ncclCommDestroy(comm_); }

  std::string description() const override { return describe(api_); }

  void allreduce_sum(float* data, size_t count, cudaStream_t stream) override {
    check(api_.ncclAllReduce(data, data, count, ncclFloat32, ncclSum, comm_, stream), "ncclAllReduce");
  }

  std::string async_error() override {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t result = api_.ncclCommGetAsyncError(comm_, &state);
    if (result != ncclSuccess) return std::string("ncclCommGetAsyncError: ") + api_.ncclGetErrorString(result);
    // ncclInProgress: a non-blocking communicator still working, not an error (this one is blocking).
    if (state == ncclSuccess || state == ncclInProgress) return "";
    return api_.ncclGetErrorString(state);
  }

 private:
  void check(ncclResult_t result, const char* call) const {
    if (result != ncclSuccess) throw Error(std::string("NCCL: ") + call + ": " + api_.ncclGetErrorString(result));
  }

  NcclApi api_;
  ncclComm_t comm_;
};

}  // namespace

std::string nccl_library_description() { return describe(load_nccl()); }

std::unique_ptr<DeviceCommunicator> make_nccl_communicator(Communicator& host) {
  // Every step that can fail on one rank is followed by a collective that tells the others, so no rank
  // waits forever in a collective another rank never reaches.
  std::string failure;
  NcclApi api;
  try {
    api = load_nccl();
  } catch (const Error& e) {
    failure = e.what();
  }
  if (host.any(!failure.empty()))
    throw Error(!failure.empty() ? failure : std::string("another rank could not load NCCL"));
  ncclUniqueId id{};
  ncclResult_t result = ncclSuccess;
  if (host.rank() == 0) result = api.ncclGetUniqueId(&id);
  if (host.any(result != ncclSuccess))
    throw Error(std::string("NCCL: ncclGetUniqueId on rank 0: ") +
                (result != ncclSuccess ? api.ncclGetErrorString(result) : "failed"));
  host.broadcast(std::as_writable_bytes(std::span<ncclUniqueId>(&id, 1)), 0);
  // ncclCommInitRank is NCCL's own collective: the other ranks wait inside it for one that failed, so
  // a failure ends the whole job here, with this rank's reason.
  ncclComm_t comm = nullptr;
  result = api.ncclCommInitRank(&comm, host.size(), id, host.rank());
  if (result != ncclSuccess) {
    std::fprintf(stderr, "error: rank %d of %d: NCCL: ncclCommInitRank: %s (NCCL_DEBUG=WARN says more)\n", host.rank(),
                 host.size(), api.ncclGetErrorString(result));
    std::fflush(stderr);
    host.abort(1);
  }
  return std::make_unique<NcclCommunicator>(std::move(api), comm);
}

}  // namespace bert
