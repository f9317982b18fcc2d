// Typed errors for the boundaries (files, configs, command lines). main() turns them into one line
// on stderr and a non-zero exit; nothing below the boundary prints.
#pragma once

#include <stdexcept>
#include <string>

namespace bert {

// A user-facing error: the message already names the file/line/field and, where useful, a fix. It is
// one line: control characters (a '\r' or '\n' quoted from a corrupt file, say) are written as
// escapes such as \n and \x01; other bytes, UTF-8 included, are kept.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(one_line(message)) {}

  static std::string one_line(const std::string& message);
};

// "path:line: message" (line omitted when 0).
std::string located(const std::string& path, size_t line, const std::string& message);

}  // namespace bert
