#include "tokenizer/vocab.h"

#include "common/error.h"
#include "common/file.h"
#include "common/utf8.h"

namespace bert {

Vocab::Vocab(std::vector<std::string> tokens) : tokens_(std::move(tokens)) {
  ids_.reserve(tokens_.size());
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (!ids_.emplace(tokens_[i], static_cast<int32_t>(i)).second)
      throw Error("vocabulary: duplicate token '" + tokens_[i] + "' at id " + std::to_string(i));
  }
}

Vocab Vocab::load(const std::string& path) {
  const std::string text = read_file(path);
  std::vector<std::string> tokens;
  std::unordered_map<std::string, int32_t> seen;
  size_t line_no = 0, pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);  // CRLF, as both HF readers take it
    if (line.empty()) throw Error(located(path, line_no, "malformed vocab.txt: empty token line"));
    // The two HF readers disagree on these, so no id could match both: transformers' load_vocab keeps
    // trailing blanks and splits at a lone CR; tokenizers' WordPiece strips the blanks and keeps the CR.
    if (line.back() == ' ' || line.back() == '\t')
      throw Error(located(path, line_no,
                          "malformed vocab.txt: token '" + std::string(line) +
                              "' ends in a space or tab (transformers keeps it, tokenizers strips it); remove it"));
    if (line.find('\r') != std::string_view::npos)
      throw Error(located(path, line_no,
                          "malformed vocab.txt: a carriage return inside a line (transformers splits the line "
                          "there, tokenizers does not); one token per line"));
    if (!utf8_valid(line)) throw Error(located(path, line_no, "malformed vocab.txt: invalid UTF-8"));
    auto [it, inserted] = seen.emplace(std::string(line), static_cast<int32_t>(tokens.size()));
    if (!inserted)
      throw Error(located(path, line_no,
                          "malformed vocab.txt: duplicate token '" + std::string(line) + "' (first at line " +
                              std::to_string(it->second + 1) + ")"));
    tokens.emplace_back(line);
  }
  if (tokens.empty()) throw Error(located(path, 0, "malformed vocab.txt: no tokens"));
  Vocab v;
  v.tokens_ = std::move(tokens);
  v.ids_ = std::move(seen);
  return v;
}

std::string Vocab::text() const {
  std::string out;
  for (const auto& t : tokens_) {
    out += t;
    out.push_back('\n');
  }
  return out;
}

void Vocab::save(const std::string& path) const { write_file_atomic(path, text()); }

int32_t Vocab::id(std::string_view token) const {
  auto it = ids_.find(std::string(token));
  return it == ids_.end() ? -1 : it->second;
}

}  // namespace bert
