// vocab.txt: one token a line, id = line index, trailing whitespace trimmed (as HF reads it).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace bert {

class Vocab {
 public:
  Vocab() = default;
  explicit Vocab(std::vector<std::string> tokens);

  // Throws bert::Error with the path and line for: missing/unreadable file, invalid UTF-8, an empty
  // line, a duplicate token, an empty vocabulary.
  static Vocab load(const std::string& path);
  // Atomic write (temp file + rename) of text().
  void save(const std::string& path) const;
  // vocab.txt's bytes: every token followed by a newline.
  std::string text() const;

  size_t size() const { return tokens_.size(); }
  const std::string& token(int32_t id) const { return tokens_.at(static_cast<size_t>(id)); }
  const std::vector<std::string>& tokens() const { return tokens_; }
  // -1 when absent.
  int32_t id(std::string_view token) const;

 private:
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int32_t> ids_;
};

}  // namespace bert
