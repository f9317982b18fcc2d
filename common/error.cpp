#include "common/error.h"

namespace bert {

std::string Error::one_line(const std::string& message) {
  size_t i = 0;
  while (i < message.size() && static_cast<unsigned char>(message[i]) >= 0x20 && message[i] != 0x7F) ++i;
  if (i == message.size()) return message;
  std::string out = message.substr(0, i);
  for (; i < message.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(message[i]);
    if (c >= 0x20 && c != 0x7F) {
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string located(const std::string& path, size_t line, const std::string& message) {
  if (line == 0) return path + ": " + message;
  return path + ":" + std::to_string(line) + ": " + message;
}

}  // namespace bert
