// A TOML subset, enough for run configs (configs/*.toml):
//   # comments; [section] and [a.b] tables; key = value with bare or "quoted" keys;
//   "basic strings" with escapes (\b \t \n \f \r \" \\ \uXXXX \UXXXXXXXX), 'literal strings';
//   integers (+-, 1_000, 0x/0o/0b), floats (3.0, 5e-5, 1_000.5, inf, nan), true/false;
//   arrays of values, possibly spanning lines, with comments and a trailing comma.
// Not supported (an error that says so): dates/times, inline tables, arrays of tables, dotted keys,
// multi-line strings, a quoted table name with a '.' inside. Otherwise it reads what Python's tomllib
// reads and refuses what it refuses (control characters, invalid UTF-8, a key and a table of one name,
// a header through a key: [a.b] after a = 1), checked on random documents against tomllib itself
// (tests/conformance/test_toml_tomllib.py); but a leading UTF-8 byte order mark (Windows editors write
// one), which tomllib refuses, is skipped. Every table, key and value keeps its line for error messages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bert {

struct TomlValue {
  enum class Kind { kString, kInteger, kFloat, kBool, kArray };
  Kind kind = Kind::kString;
  std::string string;
  int64_t integer = 0;
  double floating = 0;
  bool boolean = false;
  std::vector<TomlValue> array;
  size_t line = 0;

  bool is_number() const { return kind == Kind::kInteger || kind == Kind::kFloat; }
  double as_double() const { return kind == Kind::kInteger ? static_cast<double>(integer) : floating; }
  // "a string", "an integer", "a float", "a boolean", "an array".
  std::string_view kind_name() const;
  // The value as TOML would write it (for messages): "hello" in quotes, 5e-05, [1, 2].
  std::string to_string() const;
};

struct TomlEntry {
  std::string key;
  TomlValue value;
  size_t line = 0;
};

struct TomlTable {
  std::string name;  // "" for the root table (keys before any [section]), else "a" or "a.b"
  size_t line = 0;   // of the [header]; 0 for the root
  std::vector<TomlEntry> entries;
  const TomlEntry* find(std::string_view key) const;
};

struct TomlDocument {
  std::string path;
  std::vector<TomlTable> tables;  // tables[0] is the root; then in file order
  const TomlTable* find(std::string_view name) const;
};

// Throws bert::Error "path:line: message" on malformed input.
TomlDocument parse_toml(std::string_view text, const std::string& path);
TomlDocument load_toml(const std::string& path);

// The candidate closest to `name` by edit distance, or "" when none is close enough to be a typo.
std::string closest_match(std::string_view name, const std::vector<std::string>& candidates);

}  // namespace bert
