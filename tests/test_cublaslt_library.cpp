// kernels/cuda/cublaslt_library.cpp without a GPU: cuBLASLt is loaded from the installed toolkit on
// first use and not before (this executable links bert_ops_cuda as bert_train does, and each test
// case runs in a fresh process under CTest), every function resolves, the library's version matches
// the headers', and every failure is one CudaError naming what was tried and the fix. None of this
// needs a driver: dlopen, dlsym and cublasLtGetVersion do not touch the device.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <string>

#include "kernels/cuda/check.h"
#include "kernels/cuda/cublaslt_library.h"

namespace {

using bert::cuda::CublasLtApi;
using bert::cuda::CudaError;
using Catch::Contains;

// Whether this process has loaded the library through the code under test yet. CTest runs each case
// in a fresh process, so there the "not mapped yet" checks always run; a run of the whole executable
// in one process skips them after the first load (they would be testing the order of the cases).
bool g_loaded = false;

bool cublaslt_mapped() {
  std::ifstream maps("/proc/self/maps");
  REQUIRE(maps.good());
  std::string line;
  bool any = false;
  while (std::getline(maps, line)) {
    any = true;
    if (line.find("libcublasLt") != std::string::npos) return true;
  }
  REQUIRE(any);
  return false;
}

// The message of the CudaError `call` throws; fails the test if it throws nothing or another type.
template <class Call>
std::string error_of(Call call) {
  try {
    call();
  } catch (const CudaError& error) {
    return error.what();
  }
  FAIL("no CudaError");
  return "";
}

void require_complete(const CublasLtApi& api) {
#define BERT_CHECK_RESOLVED(name) CHECK(api.name != nullptr);
  BERT_CUBLASLT_FUNCTIONS(BERT_CHECK_RESOLVED)
#undef BERT_CHECK_RESOLVED
}

}  // namespace

TEST_CASE("cuBLASLt is mapped on first use and not at program start", "[cublaslt]") {
  if (!g_loaded) REQUIRE_FALSE(cublaslt_mapped());
  g_loaded = true;
  const CublasLtApi& api = bert::cuda::cublaslt_api();
  CHECK(cublaslt_mapped());
  require_complete(api);
  CHECK_THAT(api.path, Contains("libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR)));
  CHECK(api.path.front() == '/');  // the file the search found, not the soname asked for
  CHECK(api.version / 10000 == CUBLAS_VER_MAJOR);
  CHECK(api.version == api.cublasLtGetVersion());
  CHECK(&bert::cuda::cublaslt_api() == &api);  // loaded once
}

TEST_CASE("cuBLASLt by explicit path and soname", "[cublaslt]") {
  g_loaded = true;
  const CublasLtApi by_search = bert::cuda::load_cublaslt("");
  const CublasLtApi by_path = bert::cuda::load_cublaslt(by_search.path);
  require_complete(by_path);
  CHECK(by_path.path == by_search.path);
  CHECK(by_path.cublasLtMatmul == by_search.cublasLtMatmul);  // one copy of the library
  const CublasLtApi by_soname = bert::cuda::load_cublaslt("libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR));
  CHECK(by_soname.cublasLtMatmul == by_search.cublasLtMatmul);
}

TEST_CASE("cuBLASLt that cannot be loaded gives one error naming the file and the fix", "[cublaslt]") {
  const std::string missing = "/nonexistent/dir/libcublasLt.so.13";
  const std::string message = error_of([&] { bert::cuda::load_cublaslt(missing); });
  CHECK_THAT(message, Contains("cannot load cuBLASLt"));
  CHECK_THAT(message, Contains(missing));
  CHECK_THAT(message, Contains("LD_LIBRARY_PATH"));
  CHECK_THAT(message, Contains("BERT_CUBLASLT_LIBRARY"));
  CHECK(message.find('\n') == std::string::npos);
  if (!g_loaded) CHECK_FALSE(cublaslt_mapped());
}

TEST_CASE("a library without cuBLASLt's functions is refused by name", "[cublaslt]") {
  const std::string message = error_of([] { bert::cuda::load_cublaslt("libc.so.6"); });
  CHECK_THAT(message, Contains("libc.so.6 has no cublasLtGetVersion"));
}

TEST_CASE("BERT_CUBLASLT_LIBRARY picks the file and a failed load is tried again", "[cublaslt]") {
  if (g_loaded) {  // cublaslt_api() has its table already: only a fresh process (CTest's) tests this
    WARN("not checked: run this case in a process of its own");
    return;
  }
  REQUIRE(setenv("BERT_CUBLASLT_LIBRARY", "/nonexistent/libcublasLt-custom.so", 1) == 0);
  const std::string message = error_of([] { bert::cuda::cublaslt_api(); });
  CHECK_THAT(message, Contains("/nonexistent/libcublasLt-custom.so"));
  CHECK_FALSE(cublaslt_mapped());
  REQUIRE(unsetenv("BERT_CUBLASLT_LIBRARY") == 0);
  g_loaded = true;
  const CublasLtApi& api = bert::cuda::cublaslt_api();
  require_complete(api);
  CHECK(cublaslt_mapped());
}

TEST_CASE("a cuBLAS failure names its status", "[cublaslt]") {
  using bert::cuda::check_cublas;
  CHECK(error_of([] { check_cublas(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul", "gemm.cu", 7); }) ==
        "gemm.cu:7: cublasLtMatmul failed: CUBLAS_STATUS_NOT_SUPPORTED (15)");
  CHECK(error_of([] { check_cublas(static_cast<cublasStatus_t>(99), "cublasLtCreate", "context.cu", 9); }) ==
        "context.cu:9: cublasLtCreate failed: an unknown cuBLAS status (99)");
  CHECK_NOTHROW(CUBLAS_CHECK(CUBLAS_STATUS_SUCCESS));
}
