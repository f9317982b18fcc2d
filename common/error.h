// Typed errors for the boundaries (files, configs, command lines). main() turns them into one line
// on stderr and a non-zero exit; nothing below the boundary prints.
#pragma once

#include <stdexcept>
#include <string>

namespace bert {

// A user-facing error: the message already names the file/line/field and, where useful, a fix.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// "path:line: message" (line omitted when 0).
std::string located(const std::string& path, size_t line, const std::string& message);

}  // namespace bert
