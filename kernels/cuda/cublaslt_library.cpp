// cuBLASLt loaded on first use (kernels/cuda/cublaslt_library.h says why and from where).
#include "kernels/cuda/cublaslt_library.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

#include "kernels/cuda/check.h"

#if !defined(BERT_CUBLASLT_EMULATED)
#include "common/shared_library.h"
#endif

namespace bert::cuda {

namespace {

[[noreturn]] void fail(const std::string& detail) {
  throw CudaError("cannot load cuBLASLt: " + detail +
                  " (the CUDA backend's GEMM library, from the CUDA toolkit or the libcublas package: put its "
                  "directory on LD_LIBRARY_PATH, or name the file in BERT_CUBLASLT_LIBRARY)");
}

#if defined(BERT_CUBLASLT_EMULATED)

CublasLtApi load_from(const std::string&) {
  CublasLtApi api;
  api.path = "emulated";
#define BERT_CUBLASLT_LINK(name) api.name = &::name;
  BERT_CUBLASLT_FUNCTIONS(BERT_CUBLASLT_LINK)
#undef BERT_CUBLASLT_LINK
  return api;
}

#else

CublasLtApi load_from(const std::string& requested) {
  // The soname of the headers' major version, as `-lcublasLt` would have recorded it.
  const SharedLibrary library = open_library_like(requested, "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR),
                                                  reinterpret_cast<const void*>(&cudaGetDeviceCount));
  if (library.handle == nullptr) fail(library.errors);
  CublasLtApi api;
#define BERT_CUBLASLT_RESOLVE(name) \
  if (const std::string missing = resolve_symbol(library, #name, api.name); !missing.empty()) fail(missing);
  BERT_CUBLASLT_FUNCTIONS(BERT_CUBLASLT_RESOLVE)
#undef BERT_CUBLASLT_RESOLVE
  api.path = library_file(library, reinterpret_cast<const void*>(api.cublasLtCreate));
  return api;
}

#endif

}  // namespace

CublasLtApi load_cublaslt(const std::string& library) {
  CublasLtApi api = load_from(library);
  api.version = api.cublasLtGetVersion();
  if (api.version / 10000 != CUBLAS_VER_MAJOR)
    fail(api.path + " is cuBLASLt " + std::to_string(api.version / 10000) + "." +
         std::to_string(api.version / 100 % 100) + ", but this build's headers are cuBLAS " +
         std::to_string(CUBLAS_VER_MAJOR) + ".x");
  return api;
}

const CublasLtApi& cublaslt_api() {
  // A throwing initialiser leaves the static uninitialised: the next call tries again.
  static const CublasLtApi api = [] {
    const char* requested = std::getenv("BERT_CUBLASLT_LIBRARY");
    return load_cublaslt(requested != nullptr ? requested : "");
  }();
  return api;
}

}  // namespace bert::cuda
