// engine/communicator_nccl.cpp's loader without a GPU: NCCL (installed with the CUDA toolkit) is
// loaded on first use and not at program start (this executable links bert_trainer as bert_train
// does, and each case runs in a fresh process under CTest), its version matches the headers', and a
// library that cannot be used is one bert::Error naming what was tried and the fix. dlopen, dlsym and
// ncclGetVersion do not touch the device.
#include <nccl.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <string>

#include "common/error.h"
#include "engine/communicator_nccl.h"

namespace {

using Catch::Contains;

bool nccl_mapped() {
  std::ifstream maps("/proc/self/maps");
  REQUIRE(maps.good());
  std::string line;
  while (std::getline(maps, line))
    if (line.find("libnccl") != std::string::npos) return true;
  return false;
}

// The message of the bert::Error `call` throws; fails the test if it throws nothing.
template <class Call>
std::string error_of(Call call) {
  try {
    call();
  } catch (const bert::Error& error) {
    return error.what();
  }
  FAIL("no bert::Error");
  return "";
}

}  // namespace

TEST_CASE("NCCL is mapped on first use and not at program start", "[nccl]") {
  ::unsetenv("BERT_NCCL_LIBRARY");
  const bool before = nccl_mapped();
  const std::string description = bert::nccl_library_description();
  INFO(description);
  CHECK_FALSE(before);  // meaningful in a fresh process (CTest runs each case in one)
  CHECK(description.rfind("NCCL " + std::to_string(NCCL_MAJOR) + ".", 0) == 0);
  CHECK(description.find("libnccl.so") != std::string::npos);
  CHECK(nccl_mapped());
}

TEST_CASE("an NCCL that cannot be loaded is one line naming the file and the fix", "[nccl]") {
  ::setenv("BERT_NCCL_LIBRARY", "/nonexistent/libnccl.so.2", 1);
  const std::string missing = error_of([] { bert::nccl_library_description(); });
  CHECK_THAT(missing, Contains("cannot load NCCL: /nonexistent/libnccl.so.2"));
  CHECK_THAT(missing, Contains("LD_LIBRARY_PATH"));
  CHECK_THAT(missing, Contains("BERT_NCCL_LIBRARY"));
  CHECK(missing.find('\n') == std::string::npos);

  ::setenv("BERT_NCCL_LIBRARY", "libc.so.6", 1);  // loads, but is not NCCL
  CHECK_THAT(error_of([] { bert::nccl_library_description(); }), Contains("libc.so.6 has no ncclGetVersion"));
  ::unsetenv("BERT_NCCL_LIBRARY");
}
