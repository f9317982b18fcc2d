// A shared library opened at run time (dlopen), for the vendor libraries the CUDA backend loads only
// when it needs them (kernels/cuda/cublaslt_library.h: cuBLASLt; engine/communicator_nccl.h: NCCL),
// so that no executable maps hundreds of MB of them before main.
#pragma once

#include <string>
#include <vector>

namespace bert {

struct SharedLibrary {
  void* handle = nullptr;  // nullptr: none of the candidates loaded
  std::string opened;      // the candidate that loaded, as given (a path or a soname)
  std::string errors;      // the loader's message for each candidate that failed, joined by "; "
};

// dlopen (RTLD_NOW | RTLD_LOCAL) of the first candidate that loads; empty candidates are skipped. A
// library that loaded stays loaded for the life of the process (its functions are in use).
SharedLibrary open_first_library(const std::vector<std::string>& candidates);

// The address of `name` in `library`, or nullptr with the loader's message in *error.
void* library_symbol(const SharedLibrary& library, const char* name, std::string* error);

// The file the code or data at `address` was loaded from (dladdr); empty when unknown.
std::string file_of_address(const void* address);

// `file`'s directory with a trailing '/'; empty when it has none.
std::string directory_of(const std::string& file);

}  // namespace bert
