#include "common/error.h"

namespace bert {

std::string located(const std::string& path, size_t line, const std::string& message) {
  if (line == 0) return path + ": " + message;
  return path + ":" + std::to_string(line) + ": " + message;
}

}  // namespace bert
