// dlopen helpers (common/shared_library.h).
#include "common/shared_library.h"

#include <dlfcn.h>

namespace bert {

namespace {

std::string last_dl_error() {
  const char* error = dlerror();
  return error != nullptr ? error : "unknown dlopen error";
}

}  // namespace

SharedLibrary open_first_library(const std::vector<std::string>& candidates) {
  SharedLibrary library;
  for (const std::string& candidate : candidates) {
    if (candidate.empty()) continue;
    library.handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (library.handle != nullptr) {
      library.opened = candidate;
      return library;
    }
    library.errors += (library.errors.empty() ? "" : "; ") + last_dl_error();
  }
  return library;
}

void* library_symbol(const SharedLibrary& library, const char* name, std::string* error) {
  dlerror();
  void* symbol = dlsym(library.handle, name);
  if (symbol == nullptr && error != nullptr) *error = last_dl_error();
  return symbol;
}

std::string file_of_address(const void* address) {
  Dl_info info{};
  if (dladdr(address, &info) == 0 || info.dli_fname == nullptr) return "";
  return info.dli_fname;
}

SharedLibrary open_library_like(const std::string& requested, const std::string& soname, const void* beside) {
  if (!requested.empty()) return open_first_library({requested});
  const std::string file = file_of_address(beside);
  const size_t slash = file.rfind('/');
  return open_first_library({soname, slash == std::string::npos ? "" : file.substr(0, slash + 1) + soname});
}

std::string library_file(const SharedLibrary& library, const void* symbol) {
  const std::string file = file_of_address(symbol);
  return file.empty() ? library.opened : file;
}

}  // namespace bert
