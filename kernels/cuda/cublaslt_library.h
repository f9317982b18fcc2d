// cuBLASLt, loaded when the first CUDA context is made, never at program start.
//
// Why: libcublasLt is ~500 MB of code and data. Linked into an executable, the dynamic loader maps
// and relocates it before main: `bert_infer --help` from a CUDA build took 2.8 s and 206 MB of RSS
// on the 2-core build machine, against 0.01 s and 6 MB from a CPU-only build, and every CPU training
// run paid the same ~155 MB. So nothing links it: kernels/cuda calls the library through the table
// below, which cublaslt_api() fills on first use by dlopen + dlsym. A CPU run never touches it.
//
// Which file: BERT_CUBLASLT_LIBRARY if set (a path or a soname), else "libcublasLt.so.<major>" with the
// major version of the headers we were compiled against (the soname the linker would have recorded),
// found on LD_LIBRARY_PATH / the loader cache, else in the directory libcudart was loaded from (the
// toolkit keeps them side by side). The library's own major version must equal the headers'.
// Failure is a CudaError that names what was tried, the loader's words, and the fix.
//
// The kernel emulation (tests/kernel_emu) compiles cublaslt_library.cpp with
// BERT_CUBLASLT_EMULATED: the table then holds the emulated functions, linked directly.
#pragma once

#include <cublasLt.h>

#include <string>

namespace bert::cuda {

// The cuBLASLt functions the backend calls: F(name) for each.
#define BERT_CUBLASLT_FUNCTIONS(F)        \
  F(cublasLtGetVersion)                   \
  F(cublasLtCreate)                       \
  F(cublasLtDestroy)                      \
  F(cublasLtMatmul)                       \
  F(cublasLtMatmulAlgoConfigGetAttribute) \
  F(cublasLtMatmulAlgoGetHeuristic)       \
  F(cublasLtMatmulDescCreate)             \
  F(cublasLtMatmulDescDestroy)            \
  F(cublasLtMatmulDescSetAttribute)       \
  F(cublasLtMatmulPreferenceCreate)       \
  F(cublasLtMatmulPreferenceDestroy)      \
  F(cublasLtMatmulPreferenceSetAttribute) \
  F(cublasLtMatrixLayoutCreate)           \
  F(cublasLtMatrixLayoutDestroy)

// One pointer per function above, named as the function: cublaslt_api().cublasLtMatmul(...).
struct CublasLtApi {
  std::string path;    // the file the functions came from (the emulation: "emulated")
  size_t version = 0;  // cublasLtGetVersion(): major * 10000 + minor * 100 + patch
#define BERT_CUBLASLT_FIELD(name) decltype(&::name) name = nullptr;
  BERT_CUBLASLT_FUNCTIONS(BERT_CUBLASLT_FIELD)
#undef BERT_CUBLASLT_FIELD
};

// The process's table: loaded on the first call (thread-safe), the same object afterwards. Throws
// CudaError when the library cannot be loaded; a later call tries again.
const CublasLtApi& cublaslt_api();

// Loads `library` (a path or a soname, as dlopen takes it; empty: the default search above) into a
// new table. Each call dlopens again (the loader shares one copy of the file); for cublaslt_api() and
// for tests of the failure messages. Throws CudaError.
CublasLtApi load_cublaslt(const std::string& library);

}  // namespace bert::cuda
