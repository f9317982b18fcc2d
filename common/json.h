// A small JSON reader/writer for the few JSON files we own (tokenizer_config.json, config.json,
// trainer state, --json outputs). Objects keep insertion order so what we write is stable.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace bert {

class Json {
 public:
  using Array = std::vector<Json>;
  using Object = std::vector<std::pair<std::string, Json>>;

  Json() : value_(nullptr) {}
  Json(std::nullptr_t) : value_(nullptr) {}
  Json(bool b) : value_(b) {}
  Json(int v) : value_(static_cast<double>(v)) {}
  Json(int64_t v) : value_(static_cast<double>(v)) {}
  Json(uint64_t v) : value_(static_cast<double>(v)) {}
  Json(double v) : value_(v) {}
  Json(const char* s) : value_(std::string(s)) {}
  Json(std::string s) : value_(std::move(s)) {}
  Json(Array a) : value_(std::move(a)) {}
  Json(Object o) : value_(std::move(o)) {}

  static Json object() { return Json(Object{}); }
  static Json array() { return Json(Array{}); }

  bool is_null() const { return std::holds_alternative<std::nullptr_t>(value_); }
  bool is_bool() const { return std::holds_alternative<bool>(value_); }
  bool is_number() const { return std::holds_alternative<double>(value_); }
  bool is_string() const { return std::holds_alternative<std::string>(value_); }
  bool is_array() const { return std::holds_alternative<Array>(value_); }
  bool is_object() const { return std::holds_alternative<Object>(value_); }

  bool as_bool() const;
  double as_number() const;
  int64_t as_int() const;
  const std::string& as_string() const;
  const Array& as_array() const;
  Array& as_array();
  const Object& as_object() const;

  // Object access. find() returns nullptr when absent; set() replaces or appends.
  const Json* find(std::string_view key) const;
  Json& set(std::string key, Json value);
  // Array append.
  Json& push(Json value);

  // Compact when indent < 0, else pretty with `indent` spaces. Non-ASCII is written as UTF-8, and a
  // string that is not valid UTF-8 with each invalid sequence as U+FFFD (no JSON reader takes it raw).
  std::string dump(int indent = -1) const;

  // Throws bert::Error naming `source` and the line on malformed input.
  // Errors read "source:line: invalid JSON at column C: ..." (C in bytes, at the start of a bad escape
  // or number), counting lines from first_line (a line of a larger file: its number there).
  static Json parse(std::string_view text, const std::string& source = "<json>", size_t first_line = 1);

 private:
  std::variant<std::nullptr_t, bool, double, std::string, Array, Object> value_;
  void dump_to(std::string& out, int indent, int depth) const;
};

// Appends `s` as a JSON string literal (with quotes).
void json_escape(std::string& out, std::string_view s);

// A 64-bit unsigned integer that the JSON files we write keep as a decimal string (JSON numbers are
// doubles, exact only to 2^53): seeds, hashes, checksums. Digits only: no sign, no spaces, no empty
// string, nothing past 2^64 - 1; none otherwise.
std::optional<uint64_t> parse_decimal_u64(std::string_view text);

}  // namespace bert
