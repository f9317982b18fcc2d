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

// A library searched for as the dynamic linker would look for a linked one, then beside another:
// `requested` alone when not empty (the user's choice, e.g. BERT_CUBLASLT_LIBRARY), else `soname` on
// LD_LIBRARY_PATH / the loader cache, else `soname` in the directory of the file that holds
// `beside` (e.g. libcudart's cudaGetDeviceCount: the toolkit keeps its libraries together).
SharedLibrary open_library_like(const std::string& requested, const std::string& soname, const void* beside);

// Sets `function` to the symbol `name` in `library`. Returns "" on success, else
// "<library.opened> has no <name> (<the loader's words>)".
template <class Function>
std::string resolve_symbol(const SharedLibrary& library, const char* name, Function*& function) {
  std::string error;
  function = reinterpret_cast<Function*>(library_symbol(library, name, &error));
  return function != nullptr ? std::string() : library.opened + " has no " + name + " (" + error + ")";
}

// The file `library` was loaded from, found through the address of one of its symbols (a soname
// names no file); library.opened when unknown.
std::string library_file(const SharedLibrary& library, const void* symbol);

// The file the code or data at `address` was loaded from (dladdr); empty when unknown.
std::string file_of_address(const void* address);

}  // namespace bert
