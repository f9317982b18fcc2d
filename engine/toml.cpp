#include "engine/toml.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <unordered_map>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "common/utf8.h"

namespace bert {

std::string_view TomlValue::kind_name() const {
  switch (kind) {
    case Kind::kString:
      return "a string";
    case Kind::kInteger:
      return "an integer";
    case Kind::kFloat:
      return "a float";
    case Kind::kBool:
      return "a boolean";
    case Kind::kArray:
      return "an array";
  }
  return "a value";
}

std::string TomlValue::to_string() const {
  switch (kind) {
    case Kind::kString: {
      std::string out;
      json_escape(out, string);  // JSON's escapes are valid TOML basic-string escapes
      return out;
    }
    case Kind::kInteger:
      return std::to_string(integer);
    case Kind::kFloat: {
      if (std::isnan(floating)) return "nan";
      if (std::isinf(floating)) return floating > 0 ? "inf" : "-inf";
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", floating);
      for (int digits = 1; digits < 17; ++digits) {  // the shortest form that reads back exactly
        char shorter[32];
        std::snprintf(shorter, sizeof shorter, "%.*g", digits, floating);
        if (std::strtod(shorter, nullptr) == floating) {
          std::snprintf(buf, sizeof buf, "%s", shorter);
          break;
        }
      }
      // 768.0, not 768 (which reads as an integer) or 1e+03: a whole float the way TOML writes one.
      if (floating == std::floor(floating) && std::fabs(floating) < 1e16)
        std::snprintf(buf, sizeof buf, "%.1f", floating);
      return buf;
    }
    case Kind::kBool:
      return boolean ? "true" : "false";
    case Kind::kArray: {
      std::string out = "[";
      for (size_t i = 0; i < array.size(); ++i) out += (i ? ", " : "") + array[i].to_string();
      return out + "]";
    }
  }
  return "";
}

const TomlEntry* TomlTable::find(std::string_view key) const {
  for (const auto& e : entries)
    if (e.key == key) return &e;
  return nullptr;
}

const TomlTable* TomlDocument::find(std::string_view name) const {
  for (const auto& t : tables)
    if (t.name == name) return &t;
  return nullptr;
}

namespace {

bool is_bare_key_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; }

bool is_digit(char c) { return c >= '0' && c <= '9'; }

class Parser {
 public:
  Parser(std::string_view text, const std::string& path) : s_(text), path_(path) {}

  TomlDocument parse() {
    TomlDocument doc;
    doc.path = path_;
    doc.tables.push_back(TomlTable{});
    TomlTable* table = &doc.tables.back();
    // Hash lookups for the duplicate checks, so a file of 100,000 keys parses in linear time.
    std::unordered_map<std::string, size_t> table_index = {{"", 0}};
    std::vector<std::unordered_map<std::string, size_t>> key_lines(1);  // per table: key -> line
    // The tables a header makes without naming them: [a.b.c] makes a and a.b (each may be named by a
    // header of its own later, but is no longer free to be a key's name).
    std::unordered_map<std::string, size_t> implied;  // name -> line of the header that made it
    if (s_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;  // UTF-8 byte order mark
    while (true) {
      skip_blank();
      if (eof()) break;
      const char c = peek();
      if (c == '\n' || c == '\r' || c == '#') {
        end_of_line();
        continue;
      }
      if (c == '[') {
        const size_t line = line_;
        if (peek(1) == '[') fail("arrays of tables ([[...]]) are not supported");
        ++pos_;
        std::string name = table_name();
        if (const auto it = table_index.find(name); it != table_index.end())
          fail(line, "table [" + name + "] defined twice (first at line " +
                         std::to_string(doc.tables[it->second].line) + ")");
        // [a.b] after a key b in [a], or a key a at the top (or [a] after a key a at the top): one
        // name, two meanings. Every prefix of the name is a table, so none may be a key of its parent.
        for (size_t end = name.find('.');; end = name.find('.', end + 1)) {
          const std::string prefix = name.substr(0, end);
          const size_t dot = prefix.rfind('.');
          const std::string parent = dot == std::string::npos ? std::string() : prefix.substr(0, dot);
          const std::string leaf = dot == std::string::npos ? prefix : prefix.substr(dot + 1);
          if (const auto p = table_index.find(parent); p != table_index.end())
            if (const auto k = key_lines[p->second].find(leaf); k != key_lines[p->second].end())
              fail(line, "table [" + name + "] redefines the key '" + leaf + "'" + in_table(doc.tables[p->second]) +
                             " (line " + std::to_string(k->second) + ")");
          if (end == std::string::npos) break;
          implied.emplace(prefix, line);
        }
        table_index.emplace(name, doc.tables.size());
        doc.tables.push_back(TomlTable{name, line, {}});
        key_lines.emplace_back();
        table = &doc.tables.back();
      } else {
        TomlEntry entry;
        entry.line = line_;
        entry.key = key();
        skip_blank();
        if (peek() == '.') fail("dotted keys are not supported; use a [section] header");
        if (peek() != '=') fail("expected '=' after key '" + entry.key + "'");
        ++pos_;
        skip_blank();
        if (eof() || peek() == '\n' || peek() == '\r' || peek() == '#')
          fail("missing value for key '" + entry.key + "'");
        entry.value = value();
        auto& keys = key_lines[static_cast<size_t>(table - doc.tables.data())];
        if (const auto first = keys.find(entry.key); first != keys.end())
          fail(entry.line, "duplicate key '" + entry.key + "'" + in_table(*table) + " (first at line " +
                               std::to_string(first->second) + ")");
        // (A quoted key that is empty or holds a '.' is never a table's name: those are refused.)
        const std::string as_table = table->name.empty() ? entry.key : table->name + "." + entry.key;
        if (!entry.key.empty() && entry.key.find('.') == std::string::npos) {
          if (const auto t = table_index.find(as_table); t != table_index.end())
            fail(entry.line, "key '" + entry.key + "'" + in_table(*table) + " has the name of the table [" + as_table +
                                 "] (line " + std::to_string(doc.tables[t->second].line) + ")");
          if (const auto t = implied.find(as_table); t != implied.end())
            fail(entry.line, "key '" + entry.key + "'" + in_table(*table) + " has the name of the table [" + as_table +
                                 "] that the header at line " + std::to_string(t->second) + " makes");
        }
        keys.emplace(entry.key, entry.line);
        table->entries.push_back(std::move(entry));
      }
      skip_blank();
      if (!eof() && peek() != '\n' && peek() != '\r' && peek() != '#')
        fail("unexpected text '" + rest_of_line() + "' at the end of the line (one key = value or [table] per line)");
      end_of_line();
    }
    return doc;
  }

 private:
  std::string_view s_;
  const std::string& path_;
  size_t pos_ = 0;
  size_t line_ = 1;
  int array_depth_ = 0;  // value() recurses once per nested array; run configs use one level
  static constexpr int kMaxArrayDepth = 32;

  bool eof() const { return pos_ >= s_.size(); }
  char peek(size_t ahead = 0) const { return pos_ + ahead < s_.size() ? s_[pos_ + ahead] : '\0'; }

  [[noreturn]] void fail(size_t line, const std::string& message) const { throw Error(located(path_, line, message)); }
  [[noreturn]] void fail(const std::string& message) const { fail(line_, message); }

  static std::string in_table(const TomlTable& table) {
    return table.name.empty() ? std::string() : " in [" + table.name + "]";
  }

  std::string rest_of_line() const {
    size_t end = pos_;
    while (end < s_.size() && s_[end] != '\n' && s_[end] != '\r') ++end;
    return std::string(s_.substr(pos_, end - pos_));
  }

  void skip_blank() {
    while (!eof() && (peek() == ' ' || peek() == '\t')) ++pos_;
  }

  // At '#', '\r', '\n' or the end: consumes the comment and the newline.
  void end_of_line() {
    if (peek() == '#') {
      for (; !eof() && peek() != '\n'; ++pos_) {
        const auto c = static_cast<unsigned char>(peek());
        if (c == '\r' && peek(1) == '\n') continue;
        if ((c < 0x20 && c != '\t') || c == 0x7f) fail("control character in a comment");
      }
    }
    if (peek() == '\r') {
      if (peek(1) != '\n') fail("bare carriage return (use \\n or \\r\\n line endings)");
      ++pos_;
    }
    if (peek() == '\n') {
      ++pos_;
      ++line_;
    }
  }

  // Blank space, newlines and comments between array elements.
  void skip_blank_lines() {
    while (true) {
      skip_blank();
      if (peek() == '#' || peek() == '\n' || peek() == '\r') {
        if (eof()) return;
        end_of_line();
      } else {
        return;
      }
    }
  }

  std::string key() {
    if (peek() == '"') return basic_string();
    if (peek() == '\'') return literal_string();
    const size_t start = pos_;
    while (!eof() && is_bare_key_char(peek())) ++pos_;
    if (static_cast<unsigned char>(peek()) >= 0x80) {  // "café = 1": name the whole key, and the fix
      size_t end = pos_;
      while (end < s_.size() && std::string_view(" \t=.\r\n").find(s_[end]) == std::string_view::npos) ++end;
      fail("bare keys are ASCII letters, digits, '_' and '-'; quote this one: \"" +
           std::string(s_.substr(start, end - start)) + "\"");
    }
    if (pos_ == start) fail(std::string("expected a key, got '") + peek() + "'");
    return std::string(s_.substr(start, pos_ - start));
  }

  std::string table_name() {
    std::string name;
    while (true) {
      skip_blank();
      if (peek() == ']') fail(name.empty() ? "empty table name []" : "table name ends with '.'");
      const bool quoted = peek() == '"' || peek() == '\'';
      const std::string part = key();
      if (quoted && part.find('.') != std::string::npos)
        fail("a quoted table name with a '.' inside (\"" + part + "\") is not supported");
      // (So no table's name has an empty part: a key that is empty never names a table.)
      if (part.empty()) fail("an empty quoted table name or part of one (\"\") is not supported");
      name += part;
      skip_blank();
      if (peek() == '.') {
        ++pos_;
        name += '.';
        continue;
      }
      if (peek() != ']') fail("expected ']' to close the table header [" + name);
      ++pos_;
      return name;
    }
  }

  unsigned hex_digits(int count) {
    unsigned v = 0;
    for (int k = 0; k < count; ++k) {
      const char c = peek();
      v <<= 4;
      if (c >= '0' && c <= '9')
        v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f')
        v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        v |= static_cast<unsigned>(c - 'A' + 10);
      else
        fail("escape \\" + std::string(count == 4 ? "u" : "U") + " needs " + std::to_string(count) + " hex digits");
      ++pos_;
    }
    return v;
  }

  std::string basic_string() {
    if (s_.substr(pos_, 3) == "\"\"\"") fail("multi-line strings (\"\"\") are not supported");
    ++pos_;
    std::string out;
    while (true) {
      if (eof() || peek() == '\n' || peek() == '\r') fail("unterminated string (a \" is missing on this line)");
      const char c = s_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f)
          fail("control character in a string (write it as an escape)");
        out.push_back(c);
        continue;
      }
      const char e = peek();
      ++pos_;
      switch (e) {
        case 'b':
          out.push_back('\b');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case 'u':
        case 'U': {
          const unsigned cp = hex_digits(e == 'u' ? 4 : 8);
          if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("escape is not a Unicode scalar value");
          utf8_append(out, static_cast<char32_t>(cp));
          break;
        }
        default:
          if (e == '\n' || e == '\r' || pos_ > s_.size()) fail("unterminated string (a \" is missing on this line)");
          // (the whole character: the file is valid UTF-8; a control character by its code)
          std::string shown = "\\" + std::string(1, e);
          while (!eof() && (static_cast<unsigned char>(peek()) & 0xC0) == 0x80) shown.push_back(s_[pos_++]);
          if (static_cast<unsigned char>(e) < 0x20 || e == 0x7f) {
            char code[32];
            std::snprintf(code, sizeof(code), "\\ before U+%04X", static_cast<unsigned>(e));
            shown = code;
          }
          fail("unknown escape " + shown + " in a string (use \\\\ for a backslash, or a 'literal string')");
      }
    }
  }

  std::string literal_string() {
    if (s_.substr(pos_, 3) == "'''") fail("multi-line strings (''') are not supported");
    ++pos_;
    const size_t start = pos_;
    while (!eof() && peek() != '\'' && peek() != '\n' && peek() != '\r') {
      const auto c = static_cast<unsigned char>(peek());
      if ((c < 0x20 && c != '\t') || c == 0x7f) fail("control character in a string");
      ++pos_;
    }
    if (eof() || peek() != '\'') fail("unterminated string (a ' is missing on this line)");
    return std::string(s_.substr(start, pos_++ - start));
  }

  TomlValue value() {
    TomlValue v;
    v.line = line_;
    const char c = peek();
    if (c == '"') {
      v.string = basic_string();
    } else if (c == '\'') {
      v.string = literal_string();
    } else if (c == '[') {
      v.kind = TomlValue::Kind::kArray;
      if (++array_depth_ > kMaxArrayDepth) fail("arrays nested more than " + std::to_string(kMaxArrayDepth) + " deep");
      ++pos_;
      while (true) {
        skip_blank_lines();
        if (eof()) fail(v.line, "unterminated array (a ']' is missing)");
        if (peek() == ']') break;
        v.array.push_back(value());
        skip_blank_lines();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        if (peek() == ']') break;
        if (eof()) fail(v.line, "unterminated array (a ']' is missing)");
        fail("expected ',' or ']' in the array opened at line " + std::to_string(v.line) + ", got '" + rest_of_line() +
             "'");
      }
      ++pos_;
      --array_depth_;
    } else if (c == '{') {
      fail("inline tables ({...}) are not supported; use a [section]");
    } else {
      scalar(v);
    }
    return v;
  }

  void scalar(TomlValue& v) {
    const size_t start = pos_;
    while (!eof() && (std::isalnum(static_cast<unsigned char>(peek())) || peek() == '_' || peek() == '+' ||
                      peek() == '-' || peek() == '.' || peek() == ':'))
      ++pos_;
    const std::string token(s_.substr(start, pos_ - start));
    if (token.empty()) fail("bad value '" + rest_of_line() + "'");
    if (token == "true" || token == "false") {
      v.kind = TomlValue::Kind::kBool;
      v.boolean = token == "true";
      return;
    }
    if (token.find(':') != std::string::npos ||
        (token.size() >= 10 && is_digit(token[0]) && is_digit(token[3]) && token[4] == '-'))
      fail("bad value '" + token + "': dates and times are not supported");
    if (parse_number(token, v)) return;
    const bool word = std::all_of(token.begin(), token.end(), [](char ch) { return is_bare_key_char(ch); }) &&
                      std::isalpha(static_cast<unsigned char>(token[0]));
    if (word) fail("bad value '" + token + "' (strings need quotes: \"" + token + "\")");
    fail("bad value '" + token + "'");
  }

  // Digits with '_' only between two digits. Appends the digits to `out`.
  static bool digits(std::string_view t, bool (*ok)(char), std::string& out) {
    if (t.empty()) return false;
    for (size_t i = 0; i < t.size(); ++i) {
      if (t[i] == '_') {
        if (i == 0 || i + 1 == t.size() || !ok(t[i - 1]) || !ok(t[i + 1])) return false;
        continue;
      }
      if (!ok(t[i])) return false;
      out.push_back(t[i]);
    }
    return true;
  }

  bool parse_number(const std::string& token, TomlValue& v) {
    std::string_view t = token;
    const bool negative = !t.empty() && t[0] == '-';
    const bool signed_ = !t.empty() && (t[0] == '-' || t[0] == '+');
    std::string_view body = signed_ ? t.substr(1) : t;
    if (body == "inf" || body == "nan") {
      v.kind = TomlValue::Kind::kFloat;
      v.floating = body == "inf" ? HUGE_VAL : std::nan("");
      if (negative) v.floating = -v.floating;
      return true;
    }
    if (body.size() > 2 && body[0] == '0' && (body[1] == 'x' || body[1] == 'o' || body[1] == 'b')) {
      if (signed_) fail("bad value '" + token + "': hex, octal and binary integers take no sign");
      const int base = body[1] == 'x' ? 16 : body[1] == 'o' ? 8 : 2;
      bool (*ok)(char) = base == 16  ? +[](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; }
                         : base == 8 ? +[](char c) { return c >= '0' && c <= '7'; }
                                     : +[](char c) { return c == '0' || c == '1'; };
      std::string clean;
      if (!digits(body.substr(2), ok, clean)) fail("bad value '" + token + "'");
      errno = 0;
      const unsigned long long u = std::strtoull(clean.c_str(), nullptr, base);
      if (errno == ERANGE || u > static_cast<unsigned long long>(INT64_MAX))
        fail("integer " + token + " is out of the 64-bit range");
      v.kind = TomlValue::Kind::kInteger;
      v.integer = static_cast<int64_t>(u);
      return true;
    }
    if (body.empty() || !is_digit(body[0])) return false;
    // Split into integer part, fraction and exponent.
    const size_t dot = body.find('.');
    const size_t exp = body.find_first_of("eE");
    const size_t int_end = std::min(dot, exp);
    std::string clean = signed_ ? std::string(1, t[0]) : std::string();
    const std::string_view int_part = body.substr(0, int_end);
    if (!digits(int_part, is_digit, clean)) return false;
    if (int_part.size() > 1 && int_part[0] == '0') fail("bad value '" + token + "': leading zeros are not allowed");
    if (dot == std::string_view::npos && exp == std::string_view::npos) {
      errno = 0;
      const long long i = std::strtoll(clean.c_str(), nullptr, 10);
      if (errno == ERANGE) fail("integer " + token + " is out of the 64-bit range");
      v.kind = TomlValue::Kind::kInteger;
      v.integer = i;
      return true;
    }
    if (dot != std::string_view::npos) {
      if (exp != std::string_view::npos && exp < dot) return false;
      clean.push_back('.');
      const size_t frac_end = exp == std::string_view::npos ? body.size() : exp;
      if (!digits(body.substr(dot + 1, frac_end - dot - 1), is_digit, clean))
        fail("bad value '" + token + "': a float needs digits after the '.'");
    }
    if (exp != std::string_view::npos) {
      clean.push_back('e');
      std::string_view e = body.substr(exp + 1);
      if (!e.empty() && (e[0] == '+' || e[0] == '-')) {
        clean.push_back(e[0]);
        e.remove_prefix(1);
      }
      if (!digits(e, is_digit, clean)) fail("bad value '" + token + "': bad exponent");
    }
    v.kind = TomlValue::Kind::kFloat;
    v.floating = std::strtod(clean.c_str(), nullptr);
    if (std::isinf(v.floating)) fail("float " + token + " is out of range");
    return true;
  }
};

}  // namespace

TomlDocument parse_toml(std::string_view text, const std::string& path) {
  if (const auto bad = utf8_first_invalid(text)) {  // TOML is UTF-8: name the line with the bad byte
    const size_t line =
        1 + static_cast<size_t>(std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(*bad), '\n'));
    throw Error(located(path, line, "invalid UTF-8 (a TOML file is UTF-8 text)"));
  }
  return Parser(text, path).parse();
}

TomlDocument load_toml(const std::string& path) { return parse_toml(read_file(path), path); }

namespace {

// Optimal string alignment distance (an adjacent transposition counts 1), case-insensitive.
size_t edit_distance(std::string_view a, std::string_view b) {
  const auto lower = [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); };
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) && lower(a[i - 2]) == lower(b[j - 1]))
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

}  // namespace

std::string closest_match(std::string_view name, const std::vector<std::string>& candidates) {
  const size_t threshold = std::clamp<size_t>((name.size() + 2) / 4, 1, 3);
  std::string best;
  size_t best_distance = threshold + 1;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(name, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  if (!best.empty() || name.size() < 4) return best;
  for (const auto& c : candidates)  // "batch_size" -> "per_device_train_batch_size"
    if (c.find(name) != std::string::npos) return c;
  return "";
}

}  // namespace bert
