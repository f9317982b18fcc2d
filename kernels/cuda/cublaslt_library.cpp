// cuBLASLt loaded on first use (kernels/cuda/cublaslt_library.h says why and from where).
#include "kernels/cuda/cublaslt_library.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

#include "kernels/cuda/check.h"

#if !defined(BERT_CUBLASLT_EMULATED)
#include <dlfcn.h>
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

std::string last_dl_error() {
  const char* error = dlerror();
  return error != nullptr ? error : "unknown dlopen error";
}

// The directory libcudart was loaded from, with a trailing '/'; empty if unknown.
std::string cudart_directory() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&cudaGetDeviceCount), &info) == 0 || info.dli_fname == nullptr) return "";
  const std::string file = info.dli_fname;
  const size_t slash = file.rfind('/');
  return slash == std::string::npos ? "" : file.substr(0, slash + 1);
}

CublasLtApi load_from(const std::string& requested) {
  // The soname of the headers' major version, as `-lcublasLt` would have recorded it.
  const std::string soname = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
  std::string tried;
  void* handle = nullptr;
  std::string path;
  auto attempt = [&](const std::string& candidate) {
    if (handle != nullptr || candidate.empty()) return;
    handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) {
      path = candidate;
    } else {
      tried += (tried.empty() ? "" : "; ") + last_dl_error();
    }
  };
  if (!requested.empty()) {
    attempt(requested);
  } else {
    attempt(soname);
    const std::string beside_cudart = cudart_directory();
    if (!beside_cudart.empty()) attempt(beside_cudart + soname);
  }
  if (handle == nullptr) fail(tried);
  // A library that loaded stays loaded for the life of the process (its functions are in use).
  CublasLtApi api;
#define BERT_CUBLASLT_RESOLVE(name)                                                   \
  dlerror();                                                                          \
  api.name = reinterpret_cast<decltype(api.name)>(dlsym(handle, #name));              \
  if (api.name == nullptr) {                                                          \
    const std::string message = path + " has no " #name " (" + last_dl_error() + ")"; \
    dlclose(handle);                                                                  \
    fail(message);                                                                    \
  }
  BERT_CUBLASLT_FUNCTIONS(BERT_CUBLASLT_RESOLVE)
#undef BERT_CUBLASLT_RESOLVE
  // The file the search found (a soname names none).
  Dl_info info{};
  const bool found = dladdr(reinterpret_cast<void*>(api.cublasLtCreate), &info) != 0 && info.dli_fname != nullptr;
  api.path = found ? info.dli_fname : path;
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
