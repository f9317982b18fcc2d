// cuBLASLt loaded on first use (kernels/cuda/cublaslt_library.h says why and from where).
#include "kernels/cuda/cublaslt_library.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

#include "kernels/cuda/check.h"

#if !defined(BERT_CUBLASLT_EMULATED)
#include <vector>

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
  // The soname of the headers' major version, as `-lcublasLt` would have recorded it, then the same
  // file beside libcudart.
  const std::string soname = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
  const std::string beside_cudart = directory_of(file_of_address(reinterpret_cast<void*>(&cudaGetDeviceCount)));
  const SharedLibrary library = open_first_library(
      !requested.empty() ? std::vector<std::string>{requested}
                         : std::vector<std::string>{soname, beside_cudart.empty() ? "" : beside_cudart + soname});
  if (library.handle == nullptr) fail(library.errors);
  CublasLtApi api;
  std::string error;
#define BERT_CUBLASLT_RESOLVE(name)                                                        \
  api.name = reinterpret_cast<decltype(api.name)>(library_symbol(library, #name, &error)); \
  if (api.name == nullptr) fail(library.opened + " has no " #name " (" + error + ")");
  BERT_CUBLASLT_FUNCTIONS(BERT_CUBLASLT_RESOLVE)
#undef BERT_CUBLASLT_RESOLVE
  // The file the search found (a soname names none).
  const std::string file = file_of_address(reinterpret_cast<void*>(api.cublasLtCreate));
  api.path = file.empty() ? library.opened : file;
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
