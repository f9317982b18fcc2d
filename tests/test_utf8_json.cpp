#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "common/utf8.h"
#include "tests/legacy_text.h"
#include "tests/oracle_cases.h"

using namespace bert;

TEST_CASE("utf8 round trip over every scalar value") {
  std::string s;
  for (char32_t c = 0; c < 0x110000; c += (c < 0x1000 ? 1 : 97))
    if (c < 0xD800 || c > 0xDFFF) utf8_append(s, c);
  std::u32string cps;
  REQUIRE(utf8_decode(s, cps) == 0);
  CHECK(utf8_encode(cps) == s);
}

TEST_CASE("invalid utf8 becomes U+FFFD per maximal subsequence") {
  std::u32string cps;
  size_t first = 99;
  // truncated 3-byte sequence, a lone continuation byte, an overlong, a surrogate
  const std::string bad = std::string("a\xEA\xB0") + "b" + "\x80" + "\xC0\xAF" + "\xED\xA0\x80" + "c";
  const size_t n = utf8_decode(bad, cps, &first);
  CHECK(first == 1);
  CHECK(n == 7);  // E A B0 | 80 | C0 | AF | ED | A0 | 80
  CHECK(cps.front() == U'a');
  CHECK(cps.back() == U'c');
  CHECK_FALSE(utf8_valid(bad));
  CHECK(utf8_valid("이순신은 조선 중기의 무신이다."));
  CHECK(utf8_first_invalid(bad) == size_t{1});
  CHECK(utf8_first_invalid("조선\xff") == size_t{6});
  CHECK_FALSE(utf8_first_invalid("이순신은 조선 중기의 무신이다.").has_value());
  // The validator (no decoding, ASCII by words) finds what the decoder finds, on random bytes biased to
  // UTF-8's lead and continuation bytes, at every alignment.
  uint64_t state = 7;
  const auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 33);
  };
  const unsigned char bytes[] = {'a',  ' ',  0x80, 0xBF, 0x9F, 0xA0, 0x8F, 0x90, 0xC2, 0xDF,
                                 0xC0, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF, 0xEA, 0xB0};
  size_t invalid = 0;
  for (int it = 0; it < 200000; ++it) {
    std::string text(next() % 24, 'x');
    for (char& c : text)
      if (next() % 3 == 0) c = static_cast<char>(bytes[next() % std::size(bytes)]);
    size_t decoder_first = 0;
    const bool valid = utf8_decode(text, cps, &decoder_first) == 0;
    const auto found = utf8_first_invalid(text);
    REQUIRE(found.has_value() == !valid);
    if (found) REQUIRE(*found == decoder_first);
    invalid += !valid;
  }
  CHECK(invalid > 50000);
  CHECK(invalid < 190000);
}

TEST_CASE(
    "utf8_text_problem: binary formats, UTF-16 and legacy encodings are named, but not text with a few bad bytes") {
  // Text: Korean, an empty file, a UTF-8 BOM, and real text with a few bad bytes (the readers warn).
  std::string korean;
  for (int i = 0; i < 2000; ++i) korean += "대한민국 헌법 제1조 대한민국은 민주공화국이다.\n";
  CHECK(utf8_text_problem(korean, true).empty());
  CHECK(utf8_text_problem("", true).empty());
  CHECK(utf8_text_problem("\xEF\xBB\xBFtext\n", true).empty());
  std::string few_bad = korean;
  for (size_t i = 0; i < 31; ++i) few_bad[i * 1000] = '\xFF';
  CHECK(utf8_text_problem(few_bad, true).empty());
  // A window cut inside a character judges only whole lines.
  CHECK(utf8_text_problem(korean.substr(0, 1001), false).empty());

  // EUC-KR/CP949.
  const std::string cp949_line = cp949_korean(1), cp949 = cp949_korean(3);
  const std::string legacy = utf8_text_problem(cp949, true);
  CHECK_THAT(legacy, Catch::StartsWith("not UTF-8 text (") && Catch::EndsWith("iconv -f CP949 -t UTF-8"));
  CHECK(utf8_text_problem(cp949_line, true).empty());  // under 32 bad sequences: warnings, not an error
  // Korean text over 64 KiB of CP949 is judged on its first 64 KiB.
  std::string big;
  while (big.size() < (kTextSniffBytes << 1)) big += cp949_line;
  CHECK_THAT(utf8_text_problem(big, false), Catch::StartsWith("not UTF-8 text ("));

  CHECK_THAT(utf8_text_problem(std::string("BERTSHRD\x01\0\0\0", 12), true), Catch::StartsWith("a bert_prepare shard"));
  CHECK(utf8_text_problem("\x1f\x8b\x08\x00", true) == "gzip-compressed; decompress it (gunzip)");
  CHECK_THAT(utf8_text_problem("BZh91AY&SY", true), Catch::StartsWith("bzip2-compressed"));
  // Text that merely starts like a signature is text.
  CHECK(utf8_text_problem("BZh9 is bzip2's largest block size\n", true).empty());
  CHECK(utf8_text_problem("%PDF-1.7 is a file format version\n", true).empty());
  for (const size_t shift : {0, 1, 2}) {  // a long first line, the sniffing window inside a character
    std::string line = "%PDF-1.7 " + std::string(shift, 'a');
    for (int k = 0; k < 400; ++k) line += "\xea\xb0\x80";
    CHECK(utf8_text_problem(line + "\n", true).empty());
  }
  CHECK_THAT(utf8_text_problem("%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", true), Catch::StartsWith("a PDF"));
  CHECK_THAT(utf8_text_problem("%PDF-1.4\n1 0 obj << /Type /Catalog >>\n", true), Catch::StartsWith("a PDF"));
  // One stray NUL in a short ASCII file is a NUL, not UTF-16.
  CHECK_THAT(utf8_text_problem(std::string("a\0b\nab\n", 7), true),
             Catch::StartsWith("binary data (a NUL byte at offset 1)"));
  CHECK_THAT(utf8_text_problem(std::string("\xfd"
                                           "7zXZ\0\0",
                                           7),
                               true),
             Catch::StartsWith("xz-compressed"));
  CHECK_THAT(utf8_text_problem("\x28\xb5\x2f\xfd\x04", true), Catch::StartsWith("zstd-compressed"));
  CHECK_THAT(utf8_text_problem("PK\x03\x04", true), Catch::StartsWith("a zip archive"));
  CHECK_THAT(utf8_text_problem("%PDF-1.7\n", true), Catch::StartsWith("a PDF"));
  CHECK_THAT(utf8_text_problem(std::string("\xff\xfe\x00\xb3", 4), true), Catch::StartsWith("UTF-16 text"));
  CHECK_THAT(utf8_text_problem(std::string("\xfe\xff\xb3\x00", 4), true), Catch::StartsWith("UTF-16 text"));
  // UTF-16 without a byte-order mark: NULs on both sides of the units in Korean (the ASCII characters'
  // high bytes, and U+B300's low one: "대" is 00 B3 in UTF-16LE), text-like units in one byte order.
  const std::string utf16le("t\0e\0x\0t\0\n\0", 10);
  CHECK(utf8_text_problem(utf16le, true) ==
        "UTF-16 text without a byte-order mark, it seems; convert it: iconv -f UTF-16LE -t UTF-8");
  std::string korean16le, korean16be;
  for (int i = 0; i < 200; ++i)
    for (const char16_t unit : std::u16string(u"대한민국 헌법 제1조\n")) {
      korean16le += {static_cast<char>(unit & 0xFF), static_cast<char>(unit >> 8)};
      korean16be += {static_cast<char>(unit >> 8), static_cast<char>(unit & 0xFF)};
    }
  CHECK_THAT(utf8_text_problem(korean16le, true), Catch::EndsWith("iconv -f UTF-16LE -t UTF-8"));
  CHECK_THAT(utf8_text_problem(korean16be, true), Catch::EndsWith("iconv -f UTF-16BE -t UTF-8"));
  // Hangul without spaces or digits: a NUL only where a syllable has one (가, U+AC00), yet UTF-16.
  std::string hangul16le;
  for (int i = 0; i < 50; ++i)
    for (const char16_t unit : std::u16string(u"이순신은조선중기의무신이다한산도대첩에서일본수군을크게물리쳤다"))
      hangul16le += {static_cast<char>(unit & 0xFF), static_cast<char>(unit >> 8)};
  const auto nuls = static_cast<size_t>(std::count(hangul16le.begin(), hangul16le.end(), '\0'));
  REQUIRE(nuls > 0);
  REQUIRE(nuls * 16 < hangul16le.size());  // too few for the NUL count to tell
  CHECK_THAT(utf8_text_problem(hangul16le, true), Catch::EndsWith("iconv -f UTF-16LE -t UTF-8"));
  // ... or none (no syllable with a zero byte); EUC-KR's Hangul is still named CP949.
  std::string no_nul16le;
  for (int i = 0; i < 50; ++i)
    for (const char16_t unit : std::u16string(u"이순신은조선중기의무신이다"))
      no_nul16le += {static_cast<char>(unit & 0xFF), static_cast<char>(unit >> 8)};
  REQUIRE(no_nul16le.find('\0') == std::string::npos);
  CHECK_THAT(utf8_text_problem(no_nul16le, true), Catch::EndsWith("iconv -f UTF-16LE -t UTF-8"));
  std::string cp949_unspaced;  // "이순신은조선중기의무신이다" in CP949
  for (int i = 0; i < 50; ++i)
    cp949_unspaced +=
        "\xc0\xcc\xbc\xf8\xbd\xc5\xc0\xba\xc1\xb6\xbc\xb1\xc1\xdf\xb1\xe2\xc0\xc7\xb9\xab\xbd\xc5\xc0\xcc\xb4\xd9";
  CHECK_THAT(utf8_text_problem(cp949_unspaced, true), Catch::EndsWith("iconv -f CP949 -t UTF-8"));
  // NULs on both sides: binary.
  CHECK(utf8_text_problem(std::string("ab\0\0cd\0\0", 8), true) == "binary data (a NUL byte at offset 2), not text");
  const std::string head = korean.substr(0, 1000);
  CHECK(utf8_text_problem(head + std::string(1, '\0'), true) ==
        "binary data (a NUL byte at offset 1000), not text; if it is text with stray NUL bytes, remove them: tr -d "
        "'\\000'");
  // ASCII with a stray NUL: not UTF-16 (its byte pairs read as UTF-16 are CJK code units).
  std::string english;
  for (int i = 0; i < 40; ++i) english += "The quick brown fox jumps over the lazy dog.\n";
  CHECK(utf8_text_problem(english.substr(0, 500) + std::string(1, '\0') + english, true) ==
        "binary data (a NUL byte at offset 500), not text; if it is text with stray NUL bytes, remove them: tr -d "
        "'\\000'");
  CHECK(utf8_text_problem(korean + std::string(1, '\0'), true).empty());  // past the first 64 KiB
}

TEST_CASE("json parse and dump") {
  const Json j = Json::parse(R"({"a": [1, 2.5, "x\n\u00e9\ud83d\ude00"], "b": {"c": null, "d": true}})");
  REQUIRE(j.find("a"));
  CHECK(j.find("a")->as_array().size() == 3);
  CHECK(j.find("a")->as_array()[2].as_string() == "x\n\xC3\xA9\xF0\x9F\x98\x80");
  CHECK(j.find("b")->find("d")->as_bool());
  CHECK(Json::parse(j.dump()).dump() == j.dump());
  CHECK(Json::parse(j.dump(2)).dump() == j.dump());
}

TEST_CASE("64-bit integers kept as decimal strings parse strictly") {
  CHECK(parse_decimal_u64("0") == uint64_t{0});
  CHECK(parse_decimal_u64("18446744073709551615") == UINT64_MAX);
  CHECK(parse_decimal_u64("007") == uint64_t{7});
  // strtoull would take each of these (-1 as 2^64 - 1, leading spaces and '+').
  for (const char* bad : {"", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x10", "18446744073709551616", "abc"})
    CHECK_FALSE(parse_decimal_u64(bad).has_value());
}

TEST_CASE("json errors name the source and line") {
  try {
    Json::parse("{\n\"a\": 1,\n\"b\" 2}", "cfg.json");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "cfg.json:3: invalid JSON at column 5: expected ':'");
  }
  // A line of a larger file (metrics.jsonl) counts from its own number; the column is the byte's.
  CHECK_THROWS_WITH(Json::parse(R"({"step": 1, "loss": NaN})", "m.jsonl", 7),
                    "m.jsonl:7: invalid JSON at column 21: unexpected character 'N'");
  // A byte-order mark (Python's json refuses it too, as HF's config loading does), and a byte that is
  // not printable, shown as its value.
  CHECK_THROWS_WITH(Json::parse("\xEF\xBB\xBF{}", "config.json"),
                    "config.json:1: invalid JSON at column 1: starts with a UTF-8 byte-order mark (BOM), which JSON "
                    "does not allow (Python's json refuses it too)");
  CHECK_THROWS_WITH(Json::parse("[1, \x01]", "x.json"), "x.json:1: invalid JSON at column 5: unexpected byte 0x01");
  // A bad escape or number: its start.
  CHECK_THROWS_WITH(Json::parse(R"(["ab\q"])", "x.json"), "x.json:1: invalid JSON at column 5: bad escape");
  CHECK_THROWS_WITH(Json::parse(R"(["\ud800x"])", "x.json"),
                    "x.json:1: invalid JSON at column 3: unpaired high surrogate in a \\u escape");
  CHECK_THROWS_WITH(Json::parse("[1, 2.5.5]", "x.json"), "x.json:1: invalid JSON at column 5: bad number '2.5.5'");
  // JSON's number grammar, which strtod alone widens: Python's json refuses each of these.
  for (const char* bad : {"01", "-01", "1.", "1.e5", "-", "1e", "1e+", "00", "1E+-2", "-.5"})
    CHECK_THROWS_WITH(Json::parse(std::string("[") + bad + "]", "x.json"),
                      "x.json:1: invalid JSON at column 2: bad number '" + std::string(bad) + "'");
  for (const char* good : {"0", "-0", "0.5", "-0.0e-0", "10E+2", "1e400"}) CHECK_NOTHROW(Json::parse(good));
  CHECK(Json::parse("-0").as_number() == 0.0);
  CHECK(std::signbit(Json::parse("-0").as_number()));
  // A raw control character or invalid UTF-8 in a string (the text a file of ours would carry on).
  CHECK_THROWS_WITH(Json::parse("[\"a\tb\"]", "x.json"),
                    "x.json:1: invalid JSON at column 4: control character 0x09 in a string (JSON writes it as an "
                    "escape)");
  CHECK_THROWS_WITH(Json::parse("{\n\"k\": \"\xea\xb0\"}", "x.json"),
                    "x.json:2: invalid JSON at column 7: invalid UTF-8 in a string");
  CHECK(Json::parse("\"\x7f\xea\xb0\x80\"").as_string() == "\x7f\xea\xb0\x80");  // DEL is not a control here
  // What we write always reads back: a string that is not UTF-8 (a path from another locale) is written
  // with U+FFFD for each invalid sequence, in keys too.
  Json bytes = Json::object();
  bytes.set("config_path\xff", "/data/\xc7\xd1\xb1\xdb/run.toml");  // EUC-KR bytes of 한글
  const Json back = Json::parse(bytes.dump());
  REQUIRE(back.find("config_path\xef\xbf\xbd"));
  CHECK(back.find("config_path\xef\xbf\xbd")->as_string() ==
        "/data/\xef\xbf\xbd\xd1\xb1\xef\xbf\xbd/run.toml");  // (D1 B1 happens to be UTF-8: U+0471)
}

// ---- JSON against Python's json -------------------------------------------------------------------
// tests/conformance/test_json_python.py writes random documents as cases (tests/oracle_cases.h) and
// compares Python's json.loads of each with Json::parse, one line a document: "ok <tagged JSON>" (each value tagged:
// ["s", text], ["n", "%.17g" or inf/-inf], ["b", bool], ["z"] for null, ["a", [...]], ["o", [[key, value], ...]] in
// order), or "error <message>".

namespace {

Json tagged(const Json& v) {
  Json out = Json::array();
  if (v.is_null()) {
    out.push(Json("z"));
  } else if (v.is_bool()) {
    out.push(Json("b"));
    out.push(Json(v.as_bool()));
  } else if (v.is_number()) {
    char text[64];
    std::snprintf(text, sizeof(text), "%.17g", v.as_number());
    out.push(Json("n"));
    out.push(Json(std::string(text)));
  } else if (v.is_string()) {
    out.push(Json("s"));
    out.push(Json(v.as_string()));
  } else if (v.is_array()) {
    Json items = Json::array();
    for (const Json& item : v.as_array()) items.push(tagged(item));
    out.push(Json("a"));
    out.push(std::move(items));
  } else {
    Json members = Json::array();
    for (const auto& [key, value] : v.as_object()) {
      Json pair = Json::array();
      pair.push(Json(key));
      pair.push(tagged(value));
      members.push(std::move(pair));
    }
    out.push(Json("o"));
    out.push(std::move(members));
  }
  return out;
}

}  // namespace

TEST_CASE("json: documents read as Python's json reads them", "[.json-oracle]") {
  CHECK(testing::answer_oracle_cases("BERT_JSON_CASES", "BERT_JSON_OUT", [](std::string_view text) {
          return "ok " + tagged(Json::parse(text, "doc.json")).dump();
        }) > 0);
}
