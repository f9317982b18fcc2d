#include "common/json.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/error.h"
#include "common/utf8.h"

namespace bert {

bool Json::as_bool() const {
  if (!is_bool()) throw Error("JSON value is not a boolean");
  return std::get<bool>(value_);
}
double Json::as_number() const {
  if (!is_number()) throw Error("JSON value is not a number");
  return std::get<double>(value_);
}
int64_t Json::as_int() const {
  const double v = as_number();
  if (v != std::floor(v)) throw Error("JSON value is not an integer");
  if (!(std::fabs(v) < 9.2e18)) throw Error("JSON value is outside the 64-bit integer range");
  return static_cast<int64_t>(v);
}
const std::string& Json::as_string() const {
  if (!is_string()) throw Error("JSON value is not a string");
  return std::get<std::string>(value_);
}
const Json::Array& Json::as_array() const {
  if (!is_array()) throw Error("JSON value is not an array");
  return std::get<Array>(value_);
}
Json::Array& Json::as_array() {
  if (!is_array()) throw Error("JSON value is not an array");
  return std::get<Array>(value_);
}
const Json::Object& Json::as_object() const {
  if (!is_object()) throw Error("JSON value is not an object");
  return std::get<Object>(value_);
}

const Json* Json::find(std::string_view key) const {
  if (!is_object()) return nullptr;
  for (const auto& [k, v] : std::get<Object>(value_))
    if (k == key) return &v;
  return nullptr;
}

Json& Json::set(std::string key, Json value) {
  if (!is_object()) value_ = Object{};
  auto& obj = std::get<Object>(value_);
  for (auto& [k, v] : obj) {
    if (k == key) {
      v = std::move(value);
      return v;
    }
  }
  obj.emplace_back(std::move(key), std::move(value));
  return obj.back().second;
}

Json& Json::push(Json value) {
  if (!is_array()) value_ = Array{};
  auto& arr = std::get<Array>(value_);
  arr.push_back(std::move(value));
  return arr.back();
}

void json_escape(std::string& out, std::string_view s) {
  // JSON text is UTF-8, and readers refuse anything else (ours and Python's): a string that is not
  // (a path in bytes another locale wrote) is written with each invalid sequence as U+FFFD.
  std::string repaired;
  if (!utf8_valid(s)) {
    utf8_repair(s, repaired);
    s = repaired;
  }
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
}

std::optional<uint64_t> parse_decimal_u64(std::string_view text) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  const std::from_chars_result parsed = std::from_chars(text.data(), end, value);
  if (text.empty() || parsed.ec != std::errc() || parsed.ptr != end) return std::nullopt;
  return value;
}

static void newline(std::string& out, int indent, int depth) {
  if (indent < 0) return;
  out.push_back('\n');
  out.append(static_cast<size_t>(indent * depth), ' ');
}

void Json::dump_to(std::string& out, int indent, int depth) const {
  if (is_null()) {
    out += "null";
  } else if (is_bool()) {
    out += std::get<bool>(value_) ? "true" : "false";
  } else if (is_number()) {
    const double v = std::get<double>(value_);
    char buf[32];
    if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.007199254740992e15) {
      std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
    } else if (std::isfinite(v)) {
      std::snprintf(buf, sizeof buf, "%.9g", v);
    } else {
      std::snprintf(buf, sizeof buf, "null");  // JSON has no NaN/Inf
    }
    out += buf;
  } else if (is_string()) {
    json_escape(out, std::get<std::string>(value_));
  } else if (is_array()) {
    const auto& arr = std::get<Array>(value_);
    out.push_back('[');
    for (size_t i = 0; i < arr.size(); ++i) {
      if (i) out.push_back(',');
      if (indent >= 0 && !arr[i].is_array() && !arr[i].is_object()) {
        if (i) out.push_back(' ');
      } else {
        newline(out, indent, depth + 1);
      }
      arr[i].dump_to(out, indent, depth + 1);
    }
    if (!arr.empty() && indent >= 0 && (arr.back().is_array() || arr.back().is_object()))
      newline(out, indent, depth);
    out.push_back(']');
  } else {
    const auto& obj = std::get<Object>(value_);
    out.push_back('{');
    for (size_t i = 0; i < obj.size(); ++i) {
      if (i) out.push_back(',');
      if (indent < 0 && i) out.push_back(' ');
      newline(out, indent, depth + 1);
      json_escape(out, obj[i].first);
      out += ": ";
      obj[i].second.dump_to(out, indent, depth + 1);
    }
    if (!obj.empty()) newline(out, indent, depth);
    out.push_back('}');
  }
}

std::string Json::dump(int indent) const {
  std::string out;
  dump_to(out, indent, 0);
  return out;
}

namespace {

// Arrays and objects nested deeper than this are refused: the parser recurses once per level, so a
// header of a million '[' (a safetensors file's header may be 100 MB) would otherwise overflow the
// stack. serde_json, which Hugging Face's safetensors and tokenizers parse with, stops at 128 too.
constexpr int kMaxJsonDepth = 128;

struct Parser {
  std::string_view s;
  const std::string& source;
  size_t first_line = 1;
  size_t i = 0;
  int depth = 0;

  [[noreturn]] void fail(const std::string& what) const {
    size_t line = first_line, line_start = 0;
    for (size_t k = 0; k < i && k < s.size(); ++k)
      if (s[k] == '\n') ++line, line_start = k + 1;
    throw Error(
        located(source, line,
                "invalid JSON at column " + std::to_string(std::min(i, s.size()) - line_start + 1) + ": " + what));
  }
  // The same, pointing at `at` (where the bad escape or number begins, as Python's json does).
  [[noreturn]] void fail_at(size_t at, const std::string& what) {
    i = at;
    fail(what);
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
  }
  bool eat(char c) {
    ws();
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(std::string("expected '") + c + "'");
  }
  unsigned hex4(size_t escape_at) {
    if (i + 4 > s.size()) fail_at(escape_at, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else
        fail_at(escape_at, "bad \\u escape");
    }
    return v;
  }
  std::string str() {
    expect('"');
    std::string out;
    while (true) {
      // A run of plain characters: no control character (Python's json and serde_json refuse them
      // raw), valid UTF-8 (Python decodes the file first; our strings must stay UTF-8).
      const size_t run = i;
      while (i < s.size() && s[i] != '"' && s[i] != '\\') {
        if (static_cast<unsigned char>(s[i]) < 0x20) {
          char code[8];
          std::snprintf(code, sizeof code, "0x%02X", static_cast<unsigned>(s[i]));
          fail(std::string("control character ") + code + " in a string (JSON writes it as an escape)");
        }
        ++i;
      }
      const std::string_view plain = s.substr(run, i - run);
      if (const auto bad = utf8_first_invalid(plain)) fail_at(run + *bad, "invalid UTF-8 in a string");
      out.append(plain);
      if (i >= s.size()) fail("unterminated string");
      const char c = s[i++];
      if (c == '"') break;
      if (i >= s.size()) fail("unterminated escape");
      const size_t escape_at = i - 1;
      const char e = s[i++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          // A surrogate is valid only as a high-low pair; a lone one has no UTF-8 form (serde_json refuses
          // it too), and writing its 3-byte CESU-8 form would put invalid UTF-8 into our strings.
          char32_t cp = hex4(escape_at);
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail_at(escape_at, "unpaired low surrogate in a \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (!(i + 1 < s.size() && s[i] == '\\' && s[i + 1] == 'u'))
              fail_at(escape_at, "unpaired high surrogate in a \\u escape");
            i += 2;
            const unsigned lo = hex4(escape_at);
            if (lo < 0xDC00 || lo > 0xDFFF) fail_at(escape_at, "unpaired high surrogate in a \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          utf8_append(out, cp);
          break;
        }
        default:
          fail_at(escape_at, "bad escape");
      }
    }
    return out;
  }
  // A repeated key keeps its first position and its last value, as set() does (and as Python's json
  // does); sorting instead of set()'s linear search keeps a wide object (a safetensors header names
  // every tensor) O(n log n) rather than quadratic.
  static void merge_duplicate_keys(Json::Object& obj) {
    if (obj.size() < 2) return;
    std::vector<uint32_t> order(obj.size());
    for (size_t k = 0; k < order.size(); ++k) order[k] = static_cast<uint32_t>(k);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return obj[a].first < obj[b].first; });
    std::vector<bool> dropped(obj.size(), false);
    bool any = false;
    for (size_t run = 0; run < order.size();) {
      size_t end = run + 1;
      while (end < order.size() && obj[order[end]].first == obj[order[run]].first) ++end;
      if (end - run > 1) {
        obj[order[run]].second = std::move(obj[order[end - 1]].second);
        for (size_t k = run + 1; k < end; ++k) dropped[order[k]] = true;
        any = true;
      }
      run = end;
    }
    if (!any) return;
    size_t kept = 0;
    for (size_t k = 0; k < obj.size(); ++k)
      if (!dropped[k]) {
        if (kept != k) obj[kept] = std::move(obj[k]);  // never a self-move: it would empty the key
        ++kept;
      }
    obj.resize(kept);
  }
  void enter() {
    if (++depth > kMaxJsonDepth) fail("arrays and objects nested more than " + std::to_string(kMaxJsonDepth) + " deep");
  }
  Json value() {
    ws();
    if (i >= s.size()) fail("unexpected end");
    const char c = s[i];
    if (c == '{') {
      ++i;
      enter();
      Json::Object obj;
      if (!eat('}')) {
        do {
          ws();
          std::string key = str();
          expect(':');
          obj.emplace_back(std::move(key), value());
        } while (eat(','));
        expect('}');
      }
      --depth;
      merge_duplicate_keys(obj);
      return Json(std::move(obj));
    }
    if (c == '[') {
      ++i;
      enter();
      Json arr = Json::array();
      if (!eat(']')) {
        do arr.push(value());
        while (eat(','));
        expect(']');
      }
      --depth;
      return arr;
    }
    if (c == '"') return Json(str());
    if (s.compare(i, 4, "true") == 0) { i += 4; return Json(true); }
    if (s.compare(i, 5, "false") == 0) { i += 5; return Json(false); }
    if (s.compare(i, 4, "null") == 0) { i += 4; return Json(nullptr); }
    if (c == '-' || (c >= '0' && c <= '9')) {
      const size_t start = i;
      ++i;
      while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.' || s[i] == 'e' ||
                              s[i] == 'E' || s[i] == '+' || s[i] == '-'))
        ++i;
      const std::string num(s.substr(start, i - start));
      // JSON's grammar, -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, which strtod alone would widen
      // (01, 1., .5e3, 1.e5: Python's json refuses them all).
      size_t k = num[0] == '-' ? 1 : 0;
      const auto digits = [&] {
        const size_t from = k;
        while (k < num.size() && std::isdigit(static_cast<unsigned char>(num[k]))) ++k;
        return k - from;
      };
      const size_t int_start = k;
      bool ok = digits() > 0 && !(num[int_start] == '0' && k - int_start > 1);
      if (ok && k < num.size() && num[k] == '.') ++k, ok = digits() > 0;
      if (ok && k < num.size() && (num[k] == 'e' || num[k] == 'E')) {
        ++k;
        if (k < num.size() && (num[k] == '+' || num[k] == '-')) ++k;
        ok = digits() > 0;
      }
      if (!ok || k != num.size()) fail_at(start, "bad number '" + num + "'");
      return Json(std::strtod(num.c_str(), nullptr));
    }
    if (i == 0 && s.substr(0, 3) == "\xEF\xBB\xBF")
      fail("starts with a UTF-8 byte-order mark (BOM), which JSON does not allow (Python's json refuses it too)");
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7F) {
      char code[8];
      std::snprintf(code, sizeof code, "0x%02X", static_cast<unsigned>(static_cast<unsigned char>(c)));
      fail(std::string("unexpected byte ") + code);
    }
    fail(std::string("unexpected character '") + c + "'");
  }
};

}  // namespace

Json Json::parse(std::string_view text, const std::string& source, size_t first_line) {
  Parser p{text, source, first_line};
  Json v = p.value();
  p.ws();
  if (p.i != text.size()) p.fail("trailing characters");
  return v;
}

}  // namespace bert
