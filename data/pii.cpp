#include "data/pii.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <initializer_list>
#include <span>
#include <string_view>

namespace bert {

std::string_view pii_placeholder(PiiType type) {
  switch (type) {
    case PiiType::kRrn:
      return "[RRN]";
    case PiiType::kPhone:
      return "[PHONE]";
    case PiiType::kEmail:
      return "[EMAIL]";
    case PiiType::kCard:
      return "[CARD]";
    case PiiType::kAccount:
      return "[ACCOUNT]";
    case PiiType::kIp:
      return "[IP]";
  }
  return "[PII]";
}

std::string_view pii_name(PiiType type) {
  switch (type) {
    case PiiType::kRrn:
      return "rrn";
    case PiiType::kPhone:
      return "phone";
    case PiiType::kEmail:
      return "email";
    case PiiType::kCard:
      return "card";
    case PiiType::kAccount:
      return "account";
    case PiiType::kIp:
      return "ip";
  }
  return "pii";
}

uint64_t& PiiCounts::operator[](PiiType type) {
  switch (type) {
    case PiiType::kRrn:
      return rrn;
    case PiiType::kPhone:
      return phone;
    case PiiType::kEmail:
      return email;
    case PiiType::kCard:
      return card;
    case PiiType::kAccount:
      return account;
    case PiiType::kIp:
      return ip;
  }
  return ip;
}

uint64_t PiiCounts::operator[](PiiType type) const {
  switch (type) {
    case PiiType::kRrn:
      return rrn;
    case PiiType::kPhone:
      return phone;
    case PiiType::kEmail:
      return email;
    case PiiType::kCard:
      return card;
    case PiiType::kAccount:
      return account;
    case PiiType::kIp:
      return ip;
  }
  return 0;
}

PiiCounts& PiiCounts::operator+=(const PiiCounts& o) {
  rrn += o.rrn;
  phone += o.phone;
  email += o.email;
  card += o.card;
  account += o.account;
  ip += o.ip;
  return *this;
}

namespace {

constexpr size_t npos = std::string_view::npos;

inline bool is_digit(unsigned char c) { return static_cast<unsigned>(c - '0') < 10u; }
inline bool is_alpha(unsigned char c) { return static_cast<unsigned>((c | 0x20) - 'a') < 26u; }
inline bool is_alnum(unsigned char c) { return is_digit(c) || is_alpha(c); }
inline bool is_hex(unsigned char c) { return is_digit(c) || static_cast<unsigned>((c | 0x20) - 'a') < 6u; }
inline bool is_phone_sep(unsigned char c) { return c == '-' || c == '.' || c == ' '; }

// Bytes that can start a numeric or IP match, or end 공 (EA B3 B5) or 영 (EC 98 81), the zeros that
// start a number in Hangul digit words ("공일공-일이삼사-오육칠팔"). Everything else (nearly all of
// Hangul) is skipped by a single table lookup.
constexpr std::array<bool, 256> make_trigger_table() {
  std::array<bool, 256> t{};
  t[0xB5] = true;
  t[0x81] = true;
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (int c = 'a'; c <= 'f'; ++c) t[c] = true;
  for (int c = 'A'; c <= 'F'; ++c) t[c] = true;
  t['+'] = true;
  t['('] = true;
  t[':'] = true;  // "::ffff:192.0.2.1"
  return t;
}
constexpr std::array<bool, 256> kTrigger = make_trigger_table();

// The text under scan: s[0, n) where n may stop short of the whole line (at the next e-mail), with
// at() returning 0 past the end so matchers can look ahead without bounds checks.
struct Text {
  const unsigned char* s;
  size_t n;
  // The end of the previous match (or where the scan began): labels are looked for after it only.
  size_t floor = 0;
  // The type of the match ending at floor, or -1 (the scan began there).
  int floor_type = -1;

  unsigned char at(size_t i) const { return i < n ? s[i] : 0; }
  bool digit(size_t i) const { return i < n && is_digit(s[i]); }
  size_t digits_end(size_t i) const {
    while (i < n && is_digit(s[i])) ++i;
    return i;
  }
  unsigned value(size_t b, size_t e) const {
    unsigned v = 0;
    for (size_t i = b; i < e; ++i) v = v * 10 + (s[i] - '0');
    return v;
  }
};

// The type of our placeholder ending at k ("[PHONE]" just before k), or -1.
int placeholder_ending_at(const Text& t, size_t k) {
  for (int type = 0; type < kPiiTypeCount; ++type) {
    const std::string_view ph = pii_placeholder(static_cast<PiiType>(type));
    if (k >= ph.size() && std::memcmp(t.s + k - ph.size(), ph.data(), ph.size()) == 0) return type;
  }
  return -1;
}

// Whether a match ends at k: this scan's previous one, or our placeholder, which an earlier scrub put
// where a match was ("[PHONE]"). What follows either is judged alike (a number may start right after
// it, as after a word boundary), so that scrubbed text scans as the original did: scrubbing twice
// changes nothing.
bool match_ends_at(const Text& t, size_t k) {
  if (k == t.floor && t.floor_type >= 0) return true;
  return k > 0 && t.s[k - 1] == ']' && placeholder_ending_at(t, k) >= 0;
}

// Whether one of our placeholders starts at k: a number's (all but [EMAIL]), or with `email` any.
bool placeholder_at(const Text& t, size_t k, bool email = false) {
  if (t.at(k) != '[') return false;
  for (int type = 0; type < kPiiTypeCount; ++type) {
    if (!email && static_cast<PiiType>(type) == PiiType::kEmail) continue;
    const std::string_view ph = pii_placeholder(static_cast<PiiType>(type));
    if (k + ph.size() <= t.n && std::memcmp(t.s + k, ph.data(), ph.size()) == 0) return true;
  }
  return false;
}

// A dash with a space on either side or both, between two groups of a number at i ("010 - 1234 -
// 5678", "900101 - 1234567", "900101- 1234567", as typed and OCR'd forms write them): its end, or npos.
size_t spaced_dash_end(const Text& t, size_t i) {
  if (t.at(i) == ' ' && t.at(i + 1) == '-') return t.at(i + 2) == ' ' ? i + 3 : i + 2;
  if (t.at(i) == '-' && t.at(i + 1) == ' ') return i + 2;
  return npos;
}

// A phone number's group separator at i (- . space, or a spaced dash): its end, or npos.
size_t phone_sep_end(const Text& t, size_t i) {
  if (const size_t e = spaced_dash_end(t, i); e != npos) return e;
  return is_phone_sep(t.at(i)) ? i + 1 : npos;
}

// A numeric match may not start inside a word ("v1.2.3", "abc123"), a signed number or country
// code ("+82" handled by its own matcher), or a numeric token ("2024-01-15" tails, "12:30:45").
// A comma is a list separator here ("010-1234-5678,010-2345-6789"): no matcher takes a comma, and a
// thousands group (",234") is too short for any of them, so "1,234,000" cannot match anyway.
bool numeric_start_ok(const Text& t, size_t p) {
  if (p == 0) return true;
  const unsigned char c = t.s[p - 1];
  if (is_alnum(c) || c == '_' || c == '+') return false;
  if ((c == '.' || c == '-' || c == ':') && p >= 2 && is_digit(t.s[p - 2]) && !match_ends_at(t, p - 1)) return false;
  return true;
}

// ... and may not end inside one ("1.2.3.4.5", "010-1234-5678-9", "4111...1111abc").
bool numeric_end_ok(const Text& t, size_t e) {
  if (e >= t.n) return true;
  const unsigned char c = t.s[e];
  if (is_alnum(c) || c == '_') return false;
  // A placeholder glued on stands for what was glued on before ("1234:4567::[ACCOUNT]" was
  // "1234:4567::1256785678"; "[PHONE]" a number's digits after a '-'): still no end here.
  if (c == '[' && placeholder_at(t, e, /*email=*/true)) return false;
  if ((c == '.' || c == '-') && (t.digit(e + 1) || placeholder_at(t, e + 1))) return false;
  return true;
}

bool luhn_ok(const Text& t, size_t b, size_t e) {
  unsigned sum = 0;
  bool twice = false;
  for (size_t i = e; i-- > b;) {
    if (!is_digit(t.s[i])) continue;
    unsigned d = t.s[i] - '0';
    if (twice) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    twice = !twice;
  }
  return sum % 10 == 0;
}

// Does the text before p (one optional space skipped) end with `word`, itself at a word start?
bool preceded_by(const Text& t, size_t p, std::string_view word) {
  if (p > 0 && t.s[p - 1] == ' ') --p;
  if (p < word.size() || std::memcmp(t.s + p - word.size(), word.data(), word.size()) != 0) return false;
  const size_t b = p - word.size();
  return b == 0 || !(is_alnum(t.s[b - 1]) || t.s[b - 1] >= 0x80);
}

// Does s[i, n) start with w?
bool bytes_at(const unsigned char* s, size_t n, size_t i, std::string_view w) {
  return i + w.size() <= n && std::memcmp(s + i, w.data(), w.size()) == 0;
}

// Does the text at e start with one of `words`?
bool followed_by(const Text& t, size_t e, std::initializer_list<std::string_view> words) {
  for (const std::string_view w : words)
    if (bytes_at(t.s, t.n, e, w)) return true;
  return false;
}

// A phone label ending at p, itself a whole ASCII word: TEL, Tel, HP, H.P, FAX, Phone, Mobile, Cell.
bool phone_label_before(const Text& t, size_t p) {
  size_t b = p;
  while (b > 0 && (is_alpha(t.s[b - 1]) || t.s[b - 1] == '.') && p - b < 8) --b;
  if (b > 0 && (is_alnum(t.s[b - 1]) || t.s[b - 1] == '_' || t.s[b - 1] == '.')) return false;
  std::string word;
  for (size_t k = b; k < p; ++k) word += static_cast<char>(t.s[k] | 0x20);
  for (const std::string_view label : {"tel", "hp", "h.p", "fax", "phone", "mobile", "mob", "cell"})
    if (word == label) return true;
  return false;
}

// ---- [RRN] --------------------------------------------------------------------------------

// "RRN" (any case) glued to the number at p, itself a word of its own: "RRN900101-1234567".
bool rrn_glued_label(const Text& t, size_t p) {
  if (p < 3 || (t.s[p - 3] | 0x20) != 'r' || (t.s[p - 2] | 0x20) != 'r' || (t.s[p - 1] | 0x20) != 'n') return false;
  return p == 3 || !(is_alnum(t.s[p - 4]) || t.s[p - 4] == '_' || t.s[p - 4] == '[');
}

// YYMMDD at d[0..6) with the sex/century digit `g` (1,2,5,6: 1900s; 3,4,7,8: 2000s; 5-8 are
// registered foreigners).
bool valid_rrn_birth(const unsigned char* d, unsigned char g) {
  if (g < '1' || g > '8') return false;
  const unsigned yy = (d[0] - '0') * 10u + (d[1] - '0');
  const unsigned mm = (d[2] - '0') * 10u + (d[3] - '0');
  const unsigned dd = (d[4] - '0') * 10u + (d[5] - '0');
  const bool c1900 = g == '1' || g == '2' || g == '5' || g == '6';
  const unsigned year = (c1900 ? 1900 : 2000) + yy;
  const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  static constexpr unsigned kDays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (mm < 1 || mm > 12 || dd < 1) return false;
  return dd <= kDays[mm - 1] + (mm == 2 && leap ? 1u : 0u);
}

// Masking characters people use to hide the last digits: * x X # ● ○ and the full-width ＊ that a
// Korean IME types.
size_t mask_char_len(const Text& t, size_t i) {
  const unsigned char c = t.at(i);
  if (c == '*' || c == 'x' || c == 'X' || c == '#') return 1;
  if (c == 0xE2 && t.at(i + 1) == 0x97 && (t.at(i + 2) == 0x8F || t.at(i + 2) == 0x8B)) return 3;
  if (c == 0xEF && t.at(i + 1) == 0xBC && t.at(i + 2) == 0x8A) return 3;
  return 0;
}

// The end of at least `count` mask characters from i (a mask too many is still the mask:
// 9001011*******), or npos.
size_t mask_run_end(const Text& t, size_t i, int count) {
  for (int k = 0; k < count; ++k) {
    const size_t m = mask_char_len(t, i);
    if (m == 0) return npos;
    i += m;
  }
  while (const size_t m = mask_char_len(t, i)) i += m;
  return i;
}

// The mod-11 check digit of numbers issued before Oct 2020: digits d[0..6) and e[0..7).
bool rrn_checksum_ok(const unsigned char* d, const unsigned char* e) {
  static constexpr unsigned kWeights[12] = {2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5};
  unsigned sum = 0;
  for (int k = 0; k < 12; ++k) sum += kWeights[k] * static_cast<unsigned>((k < 6 ? d[k] : e[k - 6]) - '0');
  return (11 - sum % 11) % 10 == static_cast<unsigned>(e[6] - '0');
}

// An ASCII label (RRN, KB, card) at [begin, end) as a word of its own: not after a letter, '[' (our
// placeholders: "[RRN]", so that scrubbing scrubbed text changes nothing) or '(' ("(KB)"), nor after a
// number ("4096 KB": a unit; not the end of the previous match, which the scrubbed text shows as a
// placeholder's ']'), nor followed by a letter (KBS, Cardinality). For the word labels (card, account)
// a camelCase word boundary counts as a word's edge: "cardNumber", "creditCard", "bankAccount" (the
// label's own case tells); not for the abbreviations (maxSizeKB).
bool ascii_label_ok(const Text& t, size_t begin, size_t end) {
  const auto upper = [](unsigned char c) { return c >= 'A' && c <= 'Z'; };
  const auto lower = [](unsigned char c) { return c >= 'a' && c <= 'z'; };
  const bool word = end - begin >= 4;
  if (begin > 0) {
    const unsigned char c = t.s[begin - 1];
    if ((is_alnum(c) && !(word && lower(c) && upper(t.s[begin]))) || c == '[' || c == '(') return false;
    if (c == ' ' && begin >= t.floor + 2 && is_digit(t.s[begin - 2])) return false;
  }
  return !(end < t.n && is_alpha(t.s[end]) && !(word && upper(t.s[end]) && lower(t.s[end - 1])));
}

// Whether t.s[k, p) only separates two items of a list: spaces with a comma, slash, semicolon, 、 or ·,
// or a conjunction (및, 또는, or, and, &), at most 16 bytes ("A, B", "A / B", "A 및 B").
bool list_separator(const Text& t, size_t k, size_t p) {
  if (p < k || p - k > 16) return false;
  bool joined = false;
  for (size_t i = k; i < p;) {
    const unsigned char c = t.s[i];
    if (c == ' ') {
      ++i;
      continue;
    }
    if (c == ',' || c == '/' || c == ';' || c == '&') {
      joined = true;
      ++i;
      continue;
    }
    bool word = false;
    for (const std::string_view w : {std::string_view("및"), std::string_view("또는"), std::string_view("、"),
                                     std::string_view("·"), std::string_view("or"), std::string_view("and")})
      if (p - i >= w.size() && std::memcmp(t.s + i, w.data(), w.size()) == 0 &&
          (is_alpha(static_cast<unsigned char>(w[0])) ? (i == k || t.s[i - 1] == ' ') && t.at(i + w.size()) == ' '
                                                      : true)) {
        i += w.size();
        word = joined = true;
        break;
      }
    if (!word) return false;
  }
  return joined;
}

// Whether one of `labels` stands within the 32 bytes before p, naming a number of `type`: a Korean
// label anywhere in that window, an ASCII one (RRN, KB, card) as a word of its own (ascii_label_ok).
// Or the number continues a list whose previous item was a `type` match: the label before the first
// item names them all ("계좌번호: 110-123-456789, 220-345-678901").
using Labels = std::span<const std::string_view>;
bool labelled(const Text& t, size_t p, Labels labels, PiiType type) {
  // The window never reaches back past the previous match or a placeholder ("[PHONE]"), so that the
  // scrubbed text, whose placeholders have other lengths than what they replaced, sees the same labels:
  // scrubbing twice changes nothing. A list continues across either alike: "A, B" and "[ACCOUNT], B".
  size_t b = std::max(p > 32 ? p - 32 : size_t{0}, t.floor);
  int before = b == t.floor ? t.floor_type : -1;
  for (size_t k = p; k > b; --k)
    if (t.s[k - 1] == ']') {
      const int ph = placeholder_ending_at(t, k);
      if (ph < 0) continue;
      b = k;
      before = ph;
      break;
    }
  if (before == static_cast<int>(type) && list_separator(t, b, p)) return true;
  const std::string_view window(reinterpret_cast<const char*>(t.s) + b, p - b);
  for (const std::string_view label : labels)
    for (size_t at = window.find(label); at != std::string_view::npos; at = window.find(label, at + 1)) {
      const size_t begin = b + at, end = begin + label.size();
      if (!is_alpha(static_cast<unsigned char>(label[0])) || ascii_label_ok(t, begin, end)) return true;
    }
  return false;
}

// Whether one of `others` (labels naming another kind of number: 법인등록번호, 계약번호) names the
// number at p: it ends right before it, with at most a colon, '#', '(' or spaces between
// ("계약번호: 2023-...", "법인등록번호 110111-..."). A label further back names something else
// ("법인번호 없음 / 대표자 800101-...", "주문번호 확인 후 110-123-456789").
bool named_other(const Text& t, size_t p, Labels others) {
  size_t q = p;
  while (q > t.floor && p - q < 4 && (t.s[q - 1] == ' ' || t.s[q - 1] == ':' || t.s[q - 1] == '#' || t.s[q - 1] == '('))
    --q;
  for (const std::string_view label : others)
    if (q >= t.floor + label.size() && std::memcmp(t.s + q - label.size(), label.data(), label.size()) == 0)
      return true;
  return false;
}

// Whether `labels` name the number at p, a `type` (labelled, above), and `others` do not.
bool named_by(const Text& t, size_t p, Labels labels, Labels others, PiiType type) {
  return labelled(t, p, labels, type) && !named_other(t, p, others);
}

// Labels naming a resident registration number: 주민번호, 주민 번호, 주민등록(번호), (외국인)등록번호, RRN.
// Not 주민 alone (주민센터, 주민세).
constexpr std::string_view kRrnLabels[] = {"주민번호", "주민 번호", "주민등록", "등록번호", "RRN"};
// ... and the public numbers of the same layouts: a company's 법인등록번호 (110111-1234567) and
// 사업자등록번호.
constexpr std::string_view kCorporateLabels[] = {"법인등록번호",   "법인 등록번호",   "법인등록 번호", "법인번호",
                                                 "사업자등록번호", "사업자 등록번호", "사업자번호"};

bool rrn_labelled(const Text& t, size_t p) { return named_by(t, p, kRrnLabels, kCorporateLabels, PiiType::kRrn); }

// EAN-13's check digit (weights 1,3,1,3,...): every product barcode passes it.
bool ean13_ok(const Text& t, size_t p) {
  unsigned sum = 0;
  for (int k = 0; k < 12; ++k) sum += (k % 2 ? 3u : 1u) * static_cast<unsigned>(t.s[p + k] - '0');
  return (10 - sum % 10) % 10 == static_cast<unsigned>(t.s[p + 12] - '0');
}

size_t match_rrn_layout(const Text& t, size_t p) {
  const size_t r = t.digits_end(p);
  if (r - p == 13) {
    if (!valid_rrn_birth(t.s + p, t.s[p + 6])) return npos;
    // A product barcode (EAN-13: 8801062123452) passes its own check digit and, one time in ten, the
    // birth-date rule; an RRN issued before Oct 2020 passes the mod-11 one. Passing EAN's alone,
    // unlabelled, it is a barcode.
    if (!rrn_checksum_ok(t.s + p, t.s + p + 6) && ean13_ok(t, p) && !rrn_labelled(t, p)) return npos;
    return r;
  }
  if (r - p > 6 && r - p < 13) {  // 9001011******: the first digits of the 13, the rest masked
    if (!valid_rrn_birth(t.s + p, t.s[p + 6])) return npos;
    return mask_run_end(t, r, 13 - static_cast<int>(r - p));
  }
  if (r - p != 6) return npos;
  // 900101-1234567 (or 900101 - 1234567). Loose, with a space (900101 1234567, as forms and scanned
  // pages write it) or a dot (900101.1234567), only with a valid check digit or a label before it: a
  // date and an amount ("240115 3000000") read the same.
  size_t q = spaced_dash_end(t, r);
  const bool loose = q == npos && (t.at(r) == ' ' || t.at(r) == '.');
  if (q == npos && t.at(r) != '-' && !loose) return npos;
  if (q == npos) q = r + 1;
  const bool labelled = loose && rrn_labelled(t, p);
  if (!t.digit(q)) {  // 900101-*******: the birth date is still there (either century's calendar)
    if (!valid_rrn_birth(t.s + p, '1') && !valid_rrn_birth(t.s + p, '3')) return npos;
    if (loose && !labelled) return npos;
    return mask_run_end(t, q, 7);
  }
  const size_t r2 = t.digits_end(q);
  if (!valid_rrn_birth(t.s + p, t.s[q])) return npos;
  if (r2 - q == 7) {
    // Loose, a unit after the second part makes it an amount: "등록번호 200115 3000000 원", "230115 1234567명".
    if (loose && followed_by(t, r2, {"원", " 원", "명", " 명", "개", "건", "달러"})) return npos;
    return !loose || labelled || rrn_checksum_ok(t.s + p, t.s + q) ? r2 : npos;
  }
  // Partly masked: 900101-1******, 900101-1234***.
  if (r2 - q > 6 || (loose && !labelled)) return npos;
  return mask_run_end(t, r2, 7 - static_cast<int>(r2 - q));
}

size_t match_rrn(const Text& t, size_t p) {
  const size_t e = match_rrn_layout(t, p);
  // 법인등록번호 110111-1234567: a company's, public.
  return e != npos && named_other(t, p, kCorporateLabels) ? npos : e;
}

// Words naming another number of the same layouts: a contract, order, case, registry, shipment,
// application, policy, serial or company number (계약번호 2023-0456-789012) is a document's, not an
// account or a card.
constexpr std::string_view kOtherNumberLabels[] = {
    "계약번호", "주문번호", "사건번호",   "접수번호", "등기번호", "등록번호", "송장번호", "운송장",   "관리번호",
    "문서번호", "고유번호", "출원번호",   "증권번호", "허가번호", "인증번호", "승인번호", "일련번호", "제품번호",
    "모델번호", "거래번호", "사업자번호", "법인번호", "택배",     "시리얼",   "ISBN",     "공시번호"};

// A year 1900-2099, a month and a day that could be a date.
bool plausible_date(unsigned y, unsigned m, unsigned d) {
  return y >= 1900 && y <= 2099 && m >= 1 && m <= 12 && d >= 1 && d <= 31;
}

// The 8 digits at p read as a date YYYYMMDD.
bool date_led(const Text& t, size_t p) {
  return plausible_date(t.value(p, p + 4), t.value(p + 4, p + 6), t.value(p + 6, p + 8));
}

// Groups that read as a row of a table, not one number: all years (2020 2021 2022 2023) or all
// round (1000 2000 3000 4000).
bool table_row(const Text& t, const size_t* begins, const size_t* ends, int groups) {
  bool years = true, round = true;
  for (int g = 0; g < groups; ++g) {
    const unsigned v = t.value(begins[g], ends[g]);
    years &= ends[g] - begins[g] == 4 && v >= 1900 && v <= 2099;
    round &= v % 100 == 0;
  }
  return years || round;
}

// ---- [CARD] -------------------------------------------------------------------------------

size_t card_digits(const size_t* lens, int groups) {
  size_t n = 0;
  for (int k = 0; k < groups; ++k) n += lens[k];
  return n;
}

bool card_layout(const size_t* lens, int groups) {
  if (groups == 4) return lens[0] == 4 && lens[1] == 4 && lens[2] == 4 && lens[3] == 4;
  if (groups == 5) return lens[0] == 4 && lens[1] == 4 && lens[2] == 4 && lens[3] == 4 && lens[4] == 3;
  if (groups == 3) return lens[0] == 4 && lens[1] == 6 && (lens[2] == 5 || lens[2] == 4);  // Amex, Diners
  return false;
}

// A card word: 카드(번호), 신용카드, 체크카드, card. After one, 16 digits (4-4-4-4 or in one piece) are
// a card whether or not they pass Luhn: mistyped and made-up numbers leak as much. Not when another
// label names the number (주문번호, 시리얼), and in groups only as exactly four groups, spaced ones with
// a network first digit (not a row of a table: "카드 승인건수 2019 2020 2021 2022 2023"); in one piece not
// starting with a date (an order or transaction id: 2024011512345678).
constexpr std::string_view kCardLabels[] = {"카드", "card", "Card", "CARD"};

bool card_network(unsigned char c) { return (c >= '2' && c <= '6') || c == '9'; }

// The issuer prefixes and lengths of the networks cards in Korea carry (`d`: the first 4 digits,
// `len` digits in all): Visa 4 (13, 16, 19), Mastercard 51-55 and 2221-2720 (16), Maestro 50, 56-58
// (16-19), Amex 34/37 (15), Diners 36 (14-19), 300-305/38/39 (14-19), JCB 3528-3589 (16-19),
// Discover/UnionPay 6 (16-19), Mir 2200-2204 (16-19), domestic cards 9 (16). Random digits that pass
// Luhn (one in ten) mostly fail these: "20240115123455" (an order), "2000040000000" (an amount).
bool card_iin_ok(const unsigned char* d, size_t len) {
  const int p2 = (d[0] - '0') * 10 + (d[1] - '0');
  const int p4 = p2 * 100 + (d[2] - '0') * 10 + (d[3] - '0');
  switch (d[0]) {
    case '2':
      return (p4 >= 2221 && p4 <= 2720 && len == 16) || (p4 >= 2200 && p4 <= 2204 && len >= 16 && len <= 19);
    case '3':
      if (p2 == 34 || p2 == 37) return len == 15;
      if (p2 == 35) return p4 >= 3528 && p4 <= 3589 && len >= 16 && len <= 19;
      if (p2 == 36 || p2 == 38 || p2 == 39 || (p2 == 30 && d[2] <= '5')) return len >= 14 && len <= 19;
      return false;
    case '4':
      return len == 13 || len == 16 || len == 19;
    case '5':
      return p2 >= 51 && p2 <= 55 ? len == 16 : (p2 == 50 || p2 >= 56) && len >= 16 && len <= 19;
    case '6':
      return len >= 16 && len <= 19;
    case '9':
      return len == 16;
    default:
      return false;
  }
}

size_t match_card(const Text& t, size_t p) {
  const size_t r = t.digits_end(p);
  const size_t len = r - p;
  if (len >= 13 && len <= 19) {
    // Contiguous: only network prefixes (2-6 Visa/MC/Amex/JCB/UnionPay, 9 Korean domestic) so that
    // random long ids, which pass Luhn one time in ten, mostly stay.
    const unsigned char c = t.s[p];
    // An ISBN-13 or a book's EAN-13 (978/979) passes Luhn about one time in ten: not a card (the
    // 13-digit cards are Visa's, which start with 4).
    if (len == 13 && c == '9' && t.s[p + 1] == '7' && (t.s[p + 2] == '8' || t.s[p + 2] == '9')) return npos;
    // Not an amount ("9500000000000원", up to 999조 원: 15 digits) nor a number another label names
    // ("주문번호 4111..."). At 16 digits (1,000조-9,999조 원: a country's figures) "원" after one with a
    // network's prefix that passes Luhn is taken for the next word ("4111111111111111 원본"): a card.
    if (card_iin_ok(t.s + p, len) && luhn_ok(t, p, r) &&
        !(len < 16 && followed_by(t, r, {"원", " 원", "달러", " 달러"})) && !named_other(t, p, kOtherNumberLabels))
      return r;
    if (len == 16 && !date_led(t, p) && named_by(t, p, kCardLabels, kOtherNumberLabels, PiiType::kCard)) return r;
    return npos;
  }
  if (len != 4) return npos;
  const unsigned char sep = t.at(r);
  if (sep != '-' && sep != ' ') return npos;
  size_t lens[5], begins[5], ends[5];
  int groups = 0;
  for (size_t q = p; groups < 5;) {
    const size_t e = t.digits_end(q);
    begins[groups] = q;
    lens[groups] = e - q;
    ends[groups] = e;
    ++groups;
    if (t.at(e) != sep || !t.digit(e + 1)) break;
    q = e + 1;
  }
  // As for accounts: a spaced group that goes on with a dash or a dot starts the next number ("5412
  // 3456 7890 1234 010-1234-5678").
  if (sep == ' ' && groups > 1 && (t.at(ends[groups - 1]) == '-' || t.at(ends[groups - 1]) == '.') &&
      t.digit(ends[groups - 1] + 1))
    --groups;
  // Longest layout first; with ' ' a shorter prefix may be the card and the rest other text.
  for (int k = groups; k >= 3; --k)
    if (card_layout(lens, k) && card_iin_ok(t.s + p, card_digits(lens, k)) && !table_row(t, begins, ends, k) &&
        luhn_ok(t, p, ends[k - 1]))
      return ends[k - 1];
  const bool continues_row = p >= 2 && t.s[p - 1] == sep && is_digit(t.s[p - 2]);
  // A fifth group an earlier scrub replaced ("... 1234 [PHONE]" was "... 1234 010 1234 5678") made the
  // run no card then: nor now.
  const bool went_on = sep == ' ' && t.at(ends[3]) == ' ' && placeholder_at(t, ends[3] + 1);
  if (groups == 4 && card_layout(lens, 4) && (sep == '-' || card_network(t.s[p])) && !continues_row && !went_on &&
      !table_row(t, begins, ends, 4) && named_by(t, p, kCardLabels, kOtherNumberLabels, PiiType::kCard))
    return ends[3];
  return npos;
}

// ---- [PHONE] ------------------------------------------------------------------------------

// A Korean national number at s[p..]: with its trunk '0' (`trunk`), or after +82 without it.
// `paren`: the code was opened by '(' and must be closed by ')'.
size_t match_national(const Text& t, size_t p, bool trunk, bool paren) {
  size_t q = p;
  if (trunk) {
    if (t.at(q) != '0') return npos;
    ++q;
  }
  const unsigned char c1 = t.at(q), c2 = t.at(q + 1);
  bool mobile = false;  // 010, 011, 016-019: may be written without separators
  bool voip = false;    // 070: likewise
  size_t code_end;
  if (c1 == '1' && (c2 == '0' || c2 == '1' || (c2 >= '6' && c2 <= '9'))) {
    mobile = true;
    code_end = q + 2;
  } else if (c1 == '2') {
    code_end = q + 1;  // Seoul
  } else if (c1 >= '3' && c1 <= '6' && c2 >= '1' && c2 <= '5') {
    code_end = q + 2;  // 031-064 area codes
  } else if (c1 == '7' && c2 == '0') {
    voip = true;
    code_end = q + 2;
  } else if ((c1 == '8' || c1 == '6') && c2 == '0') {
    code_end = q + 2;  // 080 toll-free, 060
  } else if (c1 == '5' && c2 == '0' && t.at(q + 2) >= '2' && t.at(q + 2) <= '8') {
    code_end = q + 3;  // 0502-0508 personal numbers
  } else {
    return npos;
  }
  for (size_t i = q; i < code_end; ++i)
    if (!t.digit(i)) return npos;

  bool sep1 = false;
  unsigned char odd_sep = 0;
  q = code_end;
  if (paren) {
    if (t.at(q) != ')') return npos;
    ++q;
    if (t.at(q) == ' ') ++q;
    sep1 = true;
  } else if (t.at(q) == ')' && (t.digit(q + 1) || (t.at(q + 1) == ' ' && t.digit(q + 2)))) {
    q += t.at(q + 1) == ' ' ? 2 : 1;  // "02)123-4567", common in Korean listings
    sep1 = true;
  } else if (mobile && trunk && (t.at(q) == '~' || t.at(q) == '/') && t.digit(q + 1)) {
    odd_sep = t.at(q);  // "010~1234~5678", "010/1234/5678": a mobile number's groups only (not '_': ids)
    ++q;
    sep1 = true;
  } else if (const size_t sep = phone_sep_end(t, q); sep != npos && t.digit(sep)) {
    q = sep;
    sep1 = true;
  }
  if (!t.digit(q)) return npos;
  const size_t mid_end = t.digits_end(q);
  const size_t mid_len = mid_end - q;
  // Subscriber number in one piece: "01012345678", "010-12345678", "+821012345678". Landlines
  // need separators: a bare 10-digit number starting 02/031 is more often some other id.
  const bool one_piece_ok = mobile || voip || !trunk;
  if (mid_len == 7 || mid_len == 8) return one_piece_ok && odd_sep == 0 ? mid_end : npos;
  if (!sep1 || (mid_len != 3 && mid_len != 4)) return npos;
  const size_t last = odd_sep != 0 ? (t.at(mid_end) == odd_sep ? mid_end + 1 : npos) : phone_sep_end(t, mid_end);
  if (last == npos || !t.digit(last)) return npos;
  const size_t last_end = t.digits_end(last);
  if (odd_sep != 0 && t.at(last_end) == odd_sep && t.digit(last_end + 1)) return npos;  // 010~1234~5678~9012
  return last_end - last == 4 ? last_end : npos;
}

// 1588-1234 style representative numbers (15xx, 16xx, 18xx), unless the pair reads as a range of
// years (1592-1598, 1600-1700).
size_t match_representative(const Text& t, size_t p) {
  const size_t r = t.digits_end(p);
  if (r - p != 4 || t.s[p] != '1') return npos;
  const unsigned char c2 = t.s[p + 1];
  if (c2 != '5' && c2 != '6' && c2 != '8') return npos;
  if (t.at(r) != '-' || !t.digit(r + 1)) return npos;
  const size_t r2 = t.digits_end(r + 1);
  if (r2 - (r + 1) != 4) return npos;
  const unsigned a = t.value(p, r), b = t.value(r + 1, r2);
  if (b > a && b <= 2100 && b - a <= 300) return npos;
  // A range with a unit or counter glued on ("1500-3000원", "1800-2500회") is a quantity.
  if (b > a && followed_by(t, r2, {"원", "회", "명", "개", "건", "세", "배", "만", "억", "천", "%"})) return npos;
  return r2;
}

size_t match_plus82(const Text& t, size_t p) {
  if (t.at(p + 1) != '8' || t.at(p + 2) != '2') return npos;
  size_t q = p + 3;
  if (is_phone_sep(t.at(q))) ++q;
  if (t.at(q) == '(' && t.at(q + 1) == '0' && t.at(q + 2) == ')') {  // +82 (0)10-...
    q += 3;
    if (is_phone_sep(t.at(q))) ++q;
  }
  if (t.at(q) == '0') return match_national(t, q, true, false);  // "+82 010-...": the 0 kept
  return match_national(t, q, false, false);
}

// The digit a Sino-Korean digit word at i reads as (공 영 0, 일 1, 이 2, 삼 3, 사 4, 오 5, 육 륙 6,
// 칠 7, 팔 8, 구 9), or -1.
int hangul_digit(const Text& t, size_t i) {
  if (i + 3 > t.n || t.s[i] < 0xEA || t.s[i] > 0xED || (t.s[i + 1] & 0xC0) != 0x80 || (t.s[i + 2] & 0xC0) != 0x80)
    return -1;
  switch (((t.s[i] & 0x0Fu) << 12) | ((t.s[i + 1] & 0x3Fu) << 6) | (t.s[i + 2] & 0x3Fu)) {
    case 0xACF5:  // 공
    case 0xC601:  // 영
      return 0;
    case 0xC77C:  // 일
      return 1;
    case 0xC774:  // 이
      return 2;
    case 0xC0BC:  // 삼
      return 3;
    case 0xC0AC:  // 사
      return 4;
    case 0xC624:  // 오
      return 5;
    case 0xC721:  // 육
    case 0xB959:  // 륙
      return 6;
    case 0xCE60:  // 칠
      return 7;
    case 0xD314:  // 팔
      return 8;
    case 0xAD6C:  // 구
      return 9;
    default:
      return -1;
  }
}

// A digit at i, ASCII or a Hangul digit word: its value and its end in `end`, or -1. Not 일 or 이 right
// after an ASCII digit: there they are a day counter and a particle ("01일 12345678원", "1234567이다").
int spoken_digit(const Text& t, size_t i, size_t& end) {
  if (t.digit(i)) {
    end = i + 1;
    return t.s[i] - '0';
  }
  const int d = hangul_digit(t, i);
  if ((d == 1 || d == 2) && i > 0 && is_digit(t.s[i - 1])) return -1;
  if (d >= 0) end = i + 3;
  return d;
}

// Whether a number written with Hangul digit words may start at p: right after a match (the scrubbed
// text has a placeholder there), or as numeric_start_ok and not right after another digit word
// ("일공일공...": a longer run).
bool spoken_start_ok(const Text& t, size_t p) {
  if (match_ends_at(t, p)) return true;
  if (!numeric_start_ok(t, p) || (p >= 3 && hangul_digit(t, p - 3) >= 0)) return false;
  // ... nor after a digit word and a separator ("...오육칠팔-공일공": the number goes on), as numeric_start_ok
  // refuses after an ASCII digit and one.
  const bool separated = p >= 4 && (t.s[p - 1] == '-' || t.s[p - 1] == '.');
  return !(separated && hangul_digit(t, p - 4) >= 0 && !match_ends_at(t, p - 1));
}

// Whether a number written with Hangul digit words may end at e: as numeric_end_ok, and followed by no
// digit, nor a separator and a digit. 이 may follow ("오육칠팔이에요": a particle).
bool spoken_end_ok(const Text& t, size_t e) {
  if (!numeric_end_ok(t, e)) return false;
  const int next = hangul_digit(t, e);
  if (next >= 0 && next != 2) return false;
  return !((t.at(e) == '-' || t.at(e) == '.') && hangul_digit(t, e + 1) >= 0);
}

// A mobile (010, 011, 016-019) or 070 number at p with some of its digits written as Hangul digit
// words, as people write a number to slip it past a board's filter: "공일공-일이삼사-오육칠팔",
// "010 일이삼사 5678", "영일영일이삼사오육칠팔". The layouts are match_national's for these codes (the
// subscriber number in one piece of 7 or 8 digits, or 3-4 and 4 digits after separators). Its end,
// or npos; npos too when every digit is ASCII (match_national's case).
size_t match_spoken_mobile(const Text& t, size_t p) {
  size_t q = p, e = p;
  int code[3];
  for (int& d : code) {
    if ((d = spoken_digit(t, q, e)) < 0) return npos;
    q = e;
  }
  const bool mobile = code[1] == 1 && (code[2] <= 1 || code[2] >= 6);
  const bool voip = code[1] == 7 && code[2] == 0;
  if (code[0] != 0 || !(mobile || voip)) return npos;
  bool sep1 = false;
  if (const size_t sep = phone_sep_end(t, q); sep != npos && spoken_digit(t, sep, e) >= 0) {
    q = sep;
    sep1 = true;
  }
  // ends[k]: the end of the run's first k + 1 digits (a run may go on into a particle: 이).
  auto run = [&](size_t i, int max, size_t* ends) {
    int count = 0;
    while (count < max && spoken_digit(t, i, e) >= 0) ends[count++] = i = e;
    return count;
  };
  auto spoken = [&](size_t end) {  // the span holds a Hangul digit (every separator is ASCII)
    return std::any_of(t.s + p, t.s + end, [](unsigned char c) { return c >= 0x80; }) ? end : npos;
  };
  size_t ends[9];
  const int mid = run(q, 9, ends);
  for (const int len : {8, 7})
    if (mid >= len && spoken_end_ok(t, ends[len - 1])) return spoken(ends[len - 1]);
  if (!sep1 || (mid != 3 && mid != 4)) return npos;
  const size_t last = phone_sep_end(t, ends[mid - 1]);
  if (last == npos || run(last, 4, ends) != 4 || !spoken_end_ok(t, ends[3])) return npos;
  return spoken(ends[3]);
}

// ---- [IP] ---------------------------------------------------------------------------------

// Dotted quad at p; `outline_ok` accepts four single digits (inside IPv6 only).
size_t match_ipv4(const Text& t, size_t p, bool outline_ok) {
  size_t q = p;
  bool multi_digit = false;
  for (int k = 0; k < 4; ++k) {
    const size_t e = t.digits_end(q);
    const size_t len = e - q;
    if (len < 1 || len > 3 || t.value(q, e) > 255) return npos;
    multi_digit |= len > 1;
    if (k == 3) return multi_digit || outline_ok ? e : npos;
    if (t.at(e) != '.' || !t.digit(e + 1)) return npos;
    q = e + 1;
  }
  return npos;
}

// A dotted quad named as a section, clause, table or figure number ("제3.2.10.1항", "5.2.11.1절",
// "표 4.12.1.3", "Fig. 2.10.3.1") is an outline number, and one named as a version ("버전 2.10.3.1",
// "version: 1.10.0.0") a version, not an address. The label may end in a colon. (Not "build" or
// "release": they name hosts too, "build: 10.0.0.12", "DHCP release 192.168.0.10".)
bool outline_number(const Text& t, size_t p, size_t e) {
  if (p >= 3 && followed_by(t, p - 3, {"제"})) return true;  // glued: 제3.2.10.1
  if (followed_by(t, e, {"항", "절", "조", "장", "편", "관", "목", "호"})) return true;
  // Spaced, "5.2.11.1 절": the counter as a word of its own, or with a particle (절에서, 항의), not the
  // first syllable of another word ("192.168.10.25 호스트", "10.0.0.5 관리자").
  if (t.at(e) == ' ' && followed_by(t, e + 1, {"항", "절", "조", "장", "편", "관", "목", "호"})) {
    const size_t after = e + 4;  // each counter is one 3-byte syllable
    if (after >= t.n || t.s[after] < 0x80 ||
        followed_by(t, after, {"의", "에", "을", "를", "은", "는", "과", "와", "로", "으로", "까지", "부터"}))
      return true;
  }
  size_t label_end = p;
  if (label_end > 0 && t.s[label_end - 1] == ' ') --label_end;
  if (label_end > 0 && t.s[label_end - 1] == ':') --label_end;
  for (const std::string_view label : {"표",    "그림",   "도면",   "식",      "조항",    "항목",    "단락",    "Table",
                                       "table", "Figure", "figure", "Fig.",    "fig.",    "Section", "section", "Sec.",
                                       "§",     "버전",   "버젼",   "version", "Version", "VERSION", "ver.",    "Ver."})
    if (preceded_by(t, label_end, label)) return true;
  // A Korean compound naming a version: 최신버전, 한글버전, 업데이트버전. Known first halves only: any
  // word ending in the syllables would keep an address ("서버전 192.168.0.1", server-side).
  for (const std::string_view first : {"최신", "현재", "이전", "구", "신", "정식", "베타", "한글", "한국어", "영문",
                                       "영어", "업데이트", "설치", "모바일", "안정", "배포", "개발"})
    for (const std::string_view version : {"버전", "버젼"})
      if (preceded_by(t, label_end, std::string(first) + std::string(version))) return true;
  return false;
}

bool hex_run_then_colon(const Text& t, size_t p) {
  size_t e = p;
  while (e < t.n && e - p < 5 && is_hex(t.s[e])) ++e;
  return e - p >= 1 && e - p <= 4 && t.at(e) == ':';
}

size_t match_ipv6(const Text& t, size_t p) {
  int groups = 0;
  bool compressed = false, has_digit = false, has_long_group = false;
  size_t q = p, end = npos;
  if (t.at(p) == ':') {  // leading '::'
    if (t.at(p + 1) != ':') return npos;
    compressed = true;
    q = end = p + 2;
  }
  while (true) {
    size_t e = q;
    while (e < t.n && e - q < 5 && is_hex(t.s[e])) ++e;
    const size_t len = e - q;
    if (len == 0) break;  // "2001:db8::" ends with the '::'
    if (len > 4) return npos;
    if (t.at(e) == '.') {  // embedded IPv4 tail: ::ffff:192.0.2.1
      const size_t v4 = match_ipv4(t, q, true);
      if (v4 == npos) return npos;
      groups += 2;
      has_digit = true;
      end = v4;
      break;
    }
    for (size_t i = q; i < e; ++i) has_digit |= is_digit(t.s[i]);
    has_long_group |= len >= 3;
    ++groups;
    end = e;
    if (t.at(e) == ':' && t.at(e + 1) == ':') {
      if (compressed) return npos;
      compressed = true;
      q = end = e + 2;
      continue;
    }
    if (t.at(e) == ':' && is_hex(t.at(e + 1))) {
      q = e + 1;
      continue;
    }
    break;
  }
  if (compressed ? (groups < 2 || groups > 7) : groups != 8) return npos;
  if (!has_digit || !has_long_group) return npos;
  const unsigned char next = t.at(end);
  if (end < t.n && (is_alnum(next) || next == '_' || next == ':' || (next == '.' && t.digit(end + 1)))) return npos;
  if (next == '[' && placeholder_at(t, end, /*email=*/true)) return npos;  // as numeric_end_ok
  return end;
}

bool ipv6_start_ok(const Text& t, size_t p) {
  if (p == 0 || match_ends_at(t, p)) return true;
  const unsigned char c = t.s[p - 1];
  return !(is_alnum(c) || c == '_' || c == ':' || c == '.');
}

// A dotted quad followed by an hour, minute or second counter is a date and time: "23.01.15.10시".
// So is YY.MM.DD.hh (two digits each, hh <= 24) followed by ":mm", a range '~' or a spaced counter:
// "23.01.15.10:30 회의", "24.03.12.14~16시", "23.01.15.10 시".
bool date_and_hour(const Text& t, size_t p, size_t e) {
  if (followed_by(t, e, {"시", "분", "초"})) return true;
  if (e - p != 11 || t.s[p + 2] != '.' || t.s[p + 5] != '.' || t.s[p + 8] != '.') return false;
  const unsigned mm = t.value(p + 3, p + 5), dd = t.value(p + 6, p + 8), hh = t.value(p + 9, p + 11);
  if (mm < 1 || mm > 12 || dd < 1 || dd > 31 || hh > 24) return false;
  return (t.at(e) == ':' && t.digit(e + 1)) || t.at(e) == '~' ||
         (t.at(e) == ' ' && followed_by(t, e + 1, {"시", "분", "초"}));
}

size_t outline_ipv4(const Text& t, size_t p) {
  const size_t e = match_ipv4(t, p, false);
  if (e == npos || outline_number(t, p, e) || date_and_hour(t, p, e)) return npos;
  return e;
}

// ---- [ACCOUNT] ----------------------------------------------------------------------------

// A bank or account word: 계좌, 은행, 예금주, 입금, 송금, 이체, the banks named without 은행 (뱅크, 농협,
// 신한, 새마을(금고), 우체국, 수협, 신협, KB, IBK, NH), account. Not 국민 or 우리 alone (the people, we).
constexpr std::string_view kAccountLabels[] = {"계좌", "은행", "예금주",  "입금",    "송금",   "이체", "뱅크",
                                               "농협", "신한", "새마을",  "우체국",  "수협",   "신협", "KB",
                                               "IBK",  "NH",   "account", "Account", "ACCOUNT"};

// Words naming an amount, which a bank word before them does not make an account: any word ending in
// 액 (송금액, 잔액, 총액), balances, limits, and a bank's or company's figures.
constexpr std::string_view kAmountWords[] = {"액",     "잔고",   "한도",   "이익",   "수익", "매출", "자산",
                                             "부채",   "자본",   "비용",   "예산",   "가격", "원금", "잔금",
                                             "대출금", "보증금", "배당금", "수수료", "금리"};

// Dashed numbers of account-like layouts that are public or not a number at all: a business
// registration number (3-2-5), a KIPO application number (10-2020-0123456: 2-4-7 with a year in the
// middle), a date and then something (2024-01-15-...).
bool public_dashed_layout(const Text& t, size_t p, const size_t* lens, int groups) {
  if (groups == 3 && lens[0] == 3 && lens[1] == 2 && lens[2] == 5) return true;
  if (groups == 3 && lens[0] == 2 && lens[1] == 4 && lens[2] == 7) {
    const unsigned year = t.value(p + 3, p + 7);
    if (year >= 1940 && year <= 2099) return true;
  }
  return groups >= 3 && lens[0] == 4 && lens[1] == 2 && lens[2] == 2 &&
         plausible_date(t.value(p, p + 4), t.value(p + 5, p + 7), t.value(p + 8, p + 10));
}

size_t match_account(const Text& t, size_t p) {
  constexpr int kMaxGroups = 8;
  size_t lens[kMaxGroups];
  int groups = 0;
  size_t q = p, e;
  while (true) {
    e = t.digits_end(q);
    if (groups == kMaxGroups) return npos;
    lens[groups++] = e - q;
    if (t.at(e) != '-' || !t.digit(e + 1)) break;
    q = e + 1;
  }
  if (groups < 3) return npos;
  size_t total = 0, longest = 0;
  for (int g = 0; g < groups; ++g) {
    if (lens[g] < 2 || lens[g] > 7) return npos;
    total += lens[g];
    longest = std::max(longest, lens[g]);
  }
  if (total < 10 || total > 14) return npos;
  if (longest < 5 && groups < 4) return npos;                           // 010-1234-567, 1000-2000-3000
  if (lens[0] == 3 && t.s[p] == '0' && t.s[p + 1] == '1') return npos;  // 010-1234-56789: a mistyped phone
  if (public_dashed_layout(t, p, lens, groups) || named_other(t, p, kOtherNumberLabels)) return npos;
  return e;
}

// An account number the dashed layouts above do not take, after a bank or account word: in one piece
// (110123456789), in groups separated by spaces (110 123 456789) or with a 1-digit group (9002-1234-
// 5678-9, 508-10-123456-7, 1000-1234-5678). 10-14 digits in all, the whole run of groups (one
// separator throughout). Not an amount (a unit after it), not a row of a table (spaced groups need
// one of 5+ digits and not all years or round numbers, and the run may not continue one: "은행 수:
// 1000 1500 2000 2500"), not a public dashed layout (above), not a timestamp (20240115103045).
size_t match_labelled_account(const Text& t, size_t p) {
  if (p >= 2 && t.s[p - 1] == ' ' && is_digit(t.s[p - 2])) return npos;
  if (!named_by(t, p, kAccountLabels, kOtherNumberLabels, PiiType::kAccount)) return npos;
  // An amount the word right before names: "송금액 1500000000", "이체 한도 1000000000", "은행 총자산 ...".
  if (named_other(t, p, kAmountWords)) return npos;
  const unsigned char sep = t.at(t.digits_end(p));
  constexpr int kMaxGroups = 6;
  size_t begins[kMaxGroups], ends[kMaxGroups], lens[kMaxGroups];
  size_t q = p, e, total = 0, longest = 0;
  int groups = 0;
  while (true) {
    e = t.digits_end(q);
    begins[groups] = q;
    ends[groups] = e;
    lens[groups] = e - q;
    total += e - q;
    longest = std::max(longest, e - q);
    ++groups;
    if ((sep != '-' && sep != ' ') || t.at(e) != sep || !t.digit(e + 1) || groups == kMaxGroups) break;
    q = e + 1;
  }
  // A spaced group that goes on with a dash or a dot starts the next number ("110 123 456789
  // 010-1234-5678": an account, then a phone), not a group of this one.
  if (groups > 1 && sep == ' ' && (t.at(e) == '-' || t.at(e) == '.') && t.digit(e + 1)) {
    --groups;
    total -= lens[groups];
    e = ends[groups - 1];
    longest = *std::max_element(lens, lens + groups);
  }
  if (total < 10 || total > 14 || lens[0] < 2) return npos;
  // A number an earlier scrub replaced may have been the run's next group ("110123456789 [CARD]" was
  // "110123456789 5412345678901234", a run too long for an account): no account, as then.
  if (sep == ' ' && t.at(e) == ' ' && placeholder_at(t, e + 1)) return npos;
  if (groups > 1 && sep == ' ' && (longest < 5 || table_row(t, begins, ends, groups))) return npos;
  if (groups > 1 && sep == '-' && public_dashed_layout(t, p, lens, groups)) return npos;
  if (groups == 1 && total == 14 && date_led(t, p) && t.value(p + 8, p + 10) < 24 && t.value(p + 10, p + 12) < 60 &&
      t.value(p + 12, p + 14) < 60)
    return npos;
  // A round figure in one piece is an amount (one account number in a million ends in six zeros).
  if (groups == 1 && std::all_of(t.s + e - 6, t.s + e, [](unsigned char c) { return c == '0'; })) return npos;
  if (followed_by(t, e,
                  {"원", "달러", "명", "개", "건", "주", "회", "%", " 원", " 달러", "바이트", " 바이트", "byte",
                   " byte", "(천원)", " (천원)", "(백만원)", " (백만원)"}))
    return npos;
  return e;
}

// ---- [EMAIL] ------------------------------------------------------------------------------

inline bool is_local_char(unsigned char c) {
  return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

struct Span {
  size_t begin = npos, end = npos;
};

// The bracket closing an opening one that hides an at-sign or a dot ("(at)", "[dot]", "{at}", "<at>"),
// or 0.
unsigned char closing_bracket(unsigned char open) {
  switch (open) {
    case '(':
      return ')';
    case '[':
      return ']';
    case '{':
      return '}';
    case '<':
      return '>';
    default:
      return 0;
  }
}

// An at-sign at i, as written or as people hide it from address harvesters: '@', the full-width '＠',
// (at) [at] {at} <at> in any case, 골뱅이 (the Korean name of '@') bare or in brackets. Its end, or npos.
size_t at_sign_end(const unsigned char* s, size_t n, size_t i) {
  switch (s[i]) {
    case '@':
      return i + 1;
    case 0xEF:
      return bytes_at(s, n, i, "＠") ? i + 3 : npos;
    case 0xEA:
      return bytes_at(s, n, i, "골뱅이") ? i + 9 : npos;
    case '(':
    case '[':
    case '{':
    case '<': {
      const unsigned char close = closing_bracket(s[i]);
      if (i + 3 < n && (s[i + 1] | 0x20) == 'a' && (s[i + 2] | 0x20) == 't' && s[i + 3] == close) return i + 4;
      if (bytes_at(s, n, i + 1, "골뱅이") && i + 10 < n && s[i + 10] == close) return i + 11;
      return npos;
    }
    default:
      return npos;
  }
}

// The Hangul syllable (U+AC00-U+D7A3, three bytes) at i, or before i.
bool hangul_at(const unsigned char* s, size_t n, size_t i) {
  if (i + 3 > n || s[i] < 0xEA || s[i] > 0xED) return false;
  const unsigned cp = ((s[i] & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
  return (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80 && cp >= 0xAC00 && cp <= 0xD7A3;
}
bool hangul_before(const unsigned char* s, size_t n, size_t i) { return i >= 3 && hangul_at(s, n, i - 3); }

// Hangul after a word ending at e is a particle ("회사.한국으로", "abc@네이버로") or nothing: the word
// ends there, and is not the start of a longer one (한국인, 다음날).
bool word_ends_at(const unsigned char* s, size_t n, size_t e) {
  // Our placeholder glued on stands for what was there before ("회사.한국[PHONE]" was "회사.한국공일공..."),
  // which ended no word then: nor now, so that scrubbing twice changes nothing.
  if (e < n && s[e] == '[' && placeholder_at(Text{s, n}, e, /*email=*/true)) return false;
  if (!hangul_at(s, n, e)) return true;
  for (const std::string_view particle : {"으로", "로", "에", "의", "이", "은", "는", "을", "를", "과", "와", "까지",
                                          "입니다", "이다", "이고", "이며", "만", "도"})
    if (bytes_at(s, n, e, particle)) return true;
  return false;
}

// A top-level domain spelled in Hangul after a label ending at i, in a hidden address ("naver 닷컴",
// "네이버닷컴"): 닷컴 (.com) or 닷넷 (.net), a space before it or none, as a word. [begin, end) of the
// spelling, or npos in begin.
struct Spelled {
  size_t begin = npos, end = npos;
};
Spelled spelled_tld(const unsigned char* s, size_t n, size_t i) {
  const size_t k = i < n && s[i] == ' ' ? i + 1 : i;
  if (!(bytes_at(s, n, k, "닷컴") || bytes_at(s, n, k, "닷넷")) || !word_ends_at(s, n, k + 6)) return {};
  return {k, k + 6};
}

// A dot spelled in Hangul between labels of a hidden address: 닷 or 점, spaced or not, before an
// ASCII label ("naver 닷 com", "naver점com"). Its end, or npos.
size_t spelled_dot_end(const unsigned char* s, size_t n, size_t i) {
  size_t k = i < n && s[i] == ' ' ? i + 1 : i;
  if (!(bytes_at(s, n, k, "닷") || bytes_at(s, n, k, "점"))) return npos;
  k += 3;
  if (k < n && s[k] == ' ') ++k;
  return k < n && is_alpha(s[k]) ? k : npos;
}

// A dot between domain labels at i: '.', or, in a hidden address, (dot) [dot] {dot} <dot> with a
// space on either side or none, or a dot spelled in Hangul (spelled_dot_end). Its end, or npos.
size_t domain_dot_end(const unsigned char* s, size_t n, size_t i, bool hidden) {
  if (i < n && s[i] == '.') return i + 1;
  if (!hidden) return npos;
  if (const size_t e = spelled_dot_end(s, n, i); e != npos) return e;
  size_t k = i < n && s[i] == ' ' ? i + 1 : i;
  const unsigned char close = k < n ? closing_bracket(s[k]) : 0;
  if (k + 4 >= n || close == 0) return npos;
  if ((s[k + 1] | 0x20) != 'd' || (s[k + 2] | 0x20) != 'o' || (s[k + 3] | 0x20) != 't' || s[k + 4] != close)
    return npos;
  k += 5;
  return k < n && s[k] == ' ' ? k + 1 : k;
}

// 한국 (.한국, Korea's own top-level domain) at i as a whole label: followed by no Hangul, or by a
// particle ("회사.한국으로"), not by another syllable of a word (한국인, 한국식당). Its end, or npos.
size_t korean_tld_end(const unsigned char* s, size_t n, size_t i) {
  return bytes_at(s, n, i, "한국") && word_ends_at(s, n, i + 6) ? i + 6 : npos;
}

// Mail providers' Korean names. Not 다음, Daum's: it is the word "next" ("TODO@다음 단계").
constexpr std::string_view kKoreanProviders[] = {"네이버", "지메일", "한메일", "네이트", "카카오", "핫메일", "야후"};

// A mail provider's name as the whole domain of an address in [b, e) (one label), as people write an
// address in chat without its top-level domain ("abc123@naver로", "hong@네이버"). Its end (a Hangul name
// ends at a particle or 메일: "abc@네이버메일"), or npos.
size_t provider_end(const unsigned char* s, size_t n, size_t b, size_t e) {
  static constexpr std::string_view kNames[] = {"naver", "gmail",   "daum",   "hanmail", "nate",  "kakao",   "hotmail",
                                                "yahoo", "outlook", "icloud", "empas",   "paran", "dreamwiz"};
  std::string lower(reinterpret_cast<const char*>(s + b), e - b);
  for (char& c : lower) c = static_cast<char>(c | 0x20);
  // Not a host in a shell prompt or an scp path ("ubuntu@kakao:~$", "user@kakao:repo.git"), nor the
  // start of an identifier ("hong@naver_blog").
  if (std::find(std::begin(kNames), std::end(kNames), lower) != std::end(kNames))
    return e < n && (s[e] == ':' || s[e] == '_' || s[e] == '/' || s[e] == '@') ? npos : e;
  for (const std::string_view name : kKoreanProviders) {
    const size_t end = b + name.size();
    if (end <= e && bytes_at(s, n, b, name) && (word_ends_at(s, n, end) || bytes_at(s, n, end, "메일"))) return end;
  }
  return npos;
}

// The common top-level domains a spaced or hidden address must end in ("hong (at) example.com"), so
// that prose and code with an '@' or "(at)" (".docs", ".weight", ".jpg") stay.
bool common_tld(const unsigned char* s, size_t len) {
  static constexpr std::string_view kTlds[] = {
      "com", "net", "org", "edu", "gov", "mil", "int", "info", "biz", "io", "co", "me", "ai", "app", "dev", "kr", "jp",
      "cn",  "tw",  "hk",  "sg",  "us",  "uk",  "de",  "fr",   "ca",  "au", "ru", "in", "vn", "th",  "id",  "ph", "my",
      "nz",  "br",  "es",  "it",  "nl",  "se",  "ch",  "at",   "be",  "dk", "no", "fi", "pl", "eu",  "xyz"};
  std::string lower(reinterpret_cast<const char*>(s), len);
  for (char& c : lower) c = static_cast<char>(c | 0x20);
  return std::find(std::begin(kTlds), std::end(kTlds), lower) != std::end(kTlds);
}

// Where the at-signs may be, each found with memchr on a rare byte and its search resumed where it
// stopped: '@', '＠' (by its EF), the bracket closing "(at)" ("[at]", "{at}", "<at>"), 골뱅이 (by its B1). A
// byte-by-byte scan for all of them, or memmem, would halve the scrubber's speed on Hangul text. One finder serves a
// whole line, so the cost stays linear however many addresses it holds.
class AtSignFinder {
 public:
  explicit AtSignFinder(std::string_view text)
      : s_(reinterpret_cast<const unsigned char*>(text.data())), n_(text.size()) {}

  // The first possible at-sign starting at or after `from` (n when none).
  size_t next(size_t from) {
    size_t best = n_;
    best = std::min(best, resume(plain_, from, [&](size_t i) { return find_byte(i, '@'); }));
    best = std::min(best, resume(wide_, from, [&](size_t i) { return find_wide(i); }));
    best = std::min(best, resume(korean_, from, [&](size_t i) { return find_korean(i); }));
    // "(골뱅이)" starts at its bracket; "(at)" three bytes before its ')'.
    if (korean_ < n_ && korean_ > from && closing_bracket(s_[korean_ - 1]) != 0) best = std::min(best, korean_ - 1);
    constexpr unsigned char kClose[] = {')', ']', '}', '>'};
    for (int k = 0; k < 4; ++k)
      if (const size_t close = resume(close_[k], from + 3, [&](size_t i) { return find_byte(i, kClose[k]); });
          close < n_)
        best = std::min(best, close - 3);
    return best;
  }

 private:
  // The cached position of one search if it is still at or after `from`, else a fresh search.
  template <class Search>
  size_t resume(size_t& cached, size_t from, Search search) {
    if (cached == kUnset || cached < from) cached = from < n_ ? search(from) : n_;
    return cached;
  }
  size_t find_byte(size_t i, unsigned char c) const {
    if (i >= n_) return n_;
    const void* hit = std::memchr(s_ + i, c, n_ - i);
    return hit ? static_cast<size_t>(static_cast<const unsigned char*>(hit) - s_) : n_;
  }
  size_t find_wide(size_t i) const {  // '＠': EF BC A0, and EF is rare in Korean text
    for (; (i = find_byte(i, 0xEF)) < n_; ++i)
      if (bytes_at(s_, n_, i, "＠")) return i;
    return n_;
  }
  // 골뱅이 (EA B3 A8 EB B1 85 EC 9D B4) by its fifth byte, the rarest of its first six.
  size_t find_korean(size_t i) const {
    for (i += 4; (i = find_byte(i, 0xB1)) < n_; ++i)
      if (bytes_at(s_, n_, i - 4, "골뱅이")) return i - 4;
    return n_;
  }

  static constexpr size_t kUnset = npos;
  const unsigned char* s_;
  size_t n_;
  size_t plain_ = kUnset, wide_ = kUnset, korean_ = kUnset, close_[4] = {kUnset, kUnset, kUnset, kUnset};
};

// The next e-mail address whose at-sign is at or after `from` and whose local part starts at or
// after `floor` (the end of the previous match).
Span next_email(std::string_view text, size_t from, size_t floor, AtSignFinder& finder) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (; (from = finder.next(from)) < n; ++from) {
    size_t at = from, at_end = at_sign_end(s, n, at);
    if (at_end == npos) continue;
    bool hidden = s[at] != '@';
    // "(@)", "[@]", "{@}", "<@>": a plain '@' hidden the same way as "(at)".
    if (!hidden && at > floor && closing_bracket(s[at - 1]) != 0 && at + 1 < n &&
        s[at + 1] == closing_bracket(s[at - 1])) {
      at -= 1;
      at_end = at + 3;
      hidden = true;
    }
    // 골뱅이 bare is a word of its own, not part of one (매운골뱅이무침.jpg: a dish).
    if (s[at] == 0xEA && (hangul_before(s, n, at) || hangul_at(s, n, at_end))) continue;
    // "hong @ example.com": a space on both sides of a plain '@'; either or both of a hidden one.
    size_t local_end = at, q = at_end;
    if (local_end > floor && s[local_end - 1] == ' ' && (hidden || (q < n && s[q] == ' '))) --local_end;
    if (q < n && s[q] == ' ' && (hidden || local_end < at)) ++q;
    // Spaced or hidden, the address must end in a common top-level domain and not be followed by a
    // call or an index: "q @ k.transpose(-2, -1)", "x @ self.weight" are matrix products.
    const bool strict = hidden || local_end < at;
    // "abc123@naver": a provider's name alone may be the domain when the at-sign is written ('@', '＠')
    // and glued on both sides.
    const bool glued = local_end == at && q == at_end && (s[at] == '@' || s[at] == 0xEF);
    // The domain: labels of ASCII letters, digits and '-', or of Hangul syllables (회사.한국).
    constexpr int kMaxLabels = 16;
    size_t starts[kMaxLabels], ends[kMaxLabels];
    bool hangul[kMaxLabels];
    int labels = 0;
    bool spelled = false;  // the last label is a top-level domain spelled in Hangul (닷컴)
    while (labels < kMaxLabels) {
      size_t e = q;
      const bool h = hangul_at(s, n, q);
      // A label has at most 63 bytes (DNS), which also keeps the scan linear.
      if (h) {
        // Hidden, a Hangul label ends where a spelled dot or domain starts ("네이버닷컴", "회사점com").
        while (hangul_at(s, n, e) && e - q <= 63 &&
               !(hidden && e > q && (spelled_tld(s, n, e).begin != npos || spelled_dot_end(s, n, e) != npos)))
          e += 3;
      } else {
        while (e < n && (is_alnum(s[e]) || s[e] == '-') && e - q <= 63) ++e;
        if (e == q || s[q] == '-' || s[e - 1] == '-') break;
      }
      if (e - q > 63) break;
      starts[labels] = q;
      ends[labels] = e;
      hangul[labels++] = h;
      if (const Spelled tld = hidden ? spelled_tld(s, n, e) : Spelled{}; tld.begin != npos && labels < kMaxLabels) {
        starts[labels] = tld.begin;
        ends[labels] = tld.end;
        hangul[labels++] = false;  // a top-level domain, not a Korean one: the local part stays ASCII
        spelled = true;
        break;
      }
      const size_t d = domain_dot_end(s, n, e, hidden);
      if (d == npos || d >= n || !(is_alnum(s[d]) || hangul_at(s, n, d))) break;
      q = d;
    }
    if (labels == 0 || (labels < 2 && !glued)) continue;
    // Spelled in Hangul, a domain is a provider's ("네이버 닷컴"), not any Hangul word: "TOP5 골뱅이 맛집 닷컴"
    // (골뱅이 is also a dish).
    bool word_domain = false;
    for (int k = 0; spelled && k < labels - 1; ++k)
      word_domain = word_domain ||
                    (hangul[k] &&
                     std::none_of(std::begin(kKoreanProviders), std::end(kKoreanProviders), [&](std::string_view name) {
                       return ends[k] - starts[k] == name.size() && bytes_at(s, n, starts[k], name);
                     }));
    if (word_domain) continue;
    // user@192.0.2.1: an address literal (octets <= 255) instead of a domain, the user's part kept.
    const bool literal = labels == 4 && !hidden &&
                         std::all_of(s + at_end, s + ends[3], [](unsigned char c) { return is_digit(c) || c == '.'; });
    size_t end = npos;
    int last = labels - 1;
    bool provider = false;
    if (literal) {
      const Text t{s, ends[3]};
      if (match_ipv4(t, at_end, true) != ends[3]) continue;
      end = ends[3];
    } else {
      // The address ends at its last label that can be a top-level domain: 2+ ASCII letters, or 한국
      // (the particle after it is text: "회사.한국으로"). "a@b.com.123" is a@b.com and ".123", which
      // is also what the address scrubbed leaves ("[EMAIL].123"), so scrubbing twice changes nothing.
      for (; last >= 1; --last) {
        if (spelled && last == labels - 1) {
          end = ends[last];
        } else if (hangul[last]) {
          if (korean_tld_end(s, n, starts[last]) != npos) end = starts[last] + 6;
        } else if (ends[last] - starts[last] >= 2 &&
                   std::all_of(s + starts[last], s + ends[last], [](unsigned char c) { return is_alpha(c); }) &&
                   (!strict || common_tld(s + starts[last], ends[last] - starts[last]))) {
          end = ends[last];
        }
        if (end != npos) break;
      }
      if (end == npos && glued) {
        last = 0;
        end = provider_end(s, n, starts[0], ends[0]);
        // Not glued to our placeholder, which stands for what was there before: no address then either
        // (word_ends_at says the same of the Korean names: "abc@네이버[PHONE]" was "abc@네이버공일칠...").
        if (end != npos && placeholder_at(Text{s, n}, end, /*email=*/true)) end = npos;
        provider = end != npos;
      }
      if (end == npos) continue;
      if (strict && end < n && (s[end] == '(' || s[end] == '[')) continue;
    }
    const bool korean_domain =
        !provider && !spelled && std::any_of(hangul, hangul + last + 1, [](bool h) { return h; });
    // The local part: ASCII, or, before a Korean domain, Hangul too (사람@회사.한국). A Hangul word
    // alone before an ASCII address's '@' is a name written as one (홍길동@naver.com): taken too.
    size_t b = local_end;
    while (b > floor && local_end - b <= 64) {
      if (is_local_char(s[b - 1]))
        --b;
      else if (korean_domain && b >= floor + 3 && hangul_before(s, n, b))
        b -= 3;
      else
        break;
    }
    if (b == local_end && !hidden && !spelled)
      while (b >= floor + 3 && local_end - b < 30 && hangul_before(s, n, b)) b -= 3;
    while (b < local_end && s[b] == '.') ++b;
    if (b == local_end || local_end - b > 64 || s[local_end - 1] == '.') continue;
    // A local part glued to our placeholder: the scrub before found no address here (it would have
    // taken the number's characters into its local part), only the number, which left the rest
    // shorter; scrubbing twice must not find one either.
    if (b > floor && s[b - 1] == ']' && placeholder_ending_at(Text{s, n}, b) >= 0) continue;
    // A URL's user:password@ is one secret: "https://user:pw@host" -> "https://[EMAIL]".
    if (b > floor + 1 && s[b - 1] == ':') {
      size_t u = b - 1;
      while (u > floor && b - u <= 64 && is_local_char(s[u - 1])) --u;
      if (u < b - 1 && u >= 3 && text.compare(u - 3, 3, "://") == 0) b = u;
    }
    return {b, end};
  }
  return {};
}

// ---- the scan -----------------------------------------------------------------------------

// Numeric and IPv6 matches in t.s[from, t.n), reported in order through `sink`.
template <class Sink>
void scan_segment(Text t, size_t from, int from_type, Sink& sink) {
  size_t i = from;
  t.floor = from;
  t.floor_type = from_type;  // an e-mail's, when one ends at `from`
  const size_t n = t.n;
  while (i < n) {
    while (i < n && !kTrigger[t.s[i]]) ++i;
    if (i >= n) break;
    if (t.s[i] >= 0x80) {  // the last byte of 공 or 영: a number in Hangul digit words?
      const size_t p = i - 2;
      const bool zero = i >= t.floor + 2 && (bytes_at(t.s, n, p, "공") || bytes_at(t.s, n, p, "영"));
      const size_t end = zero && spoken_start_ok(t, p) ? match_spoken_mobile(t, p) : npos;
      if (end == npos) {
        ++i;
        continue;
      }
      sink(p, end, PiiType::kPhone);
      i = t.floor = end;
      t.floor_type = static_cast<int>(PiiType::kPhone);
      continue;
    }
    const unsigned char c = t.s[i];
    size_t end = npos;
    PiiType type = PiiType::kPhone;
    auto accept = [&](size_t e, PiiType ty) {
      if (e == npos || !numeric_end_ok(t, e)) return false;
      end = e;
      type = ty;
      return true;
    };
    if (is_digit(c)) {
      if (!numeric_start_ok(t, i)) {
        // "TEL02-123-4567", "HP010-1234-5678", "RRN900101-1234567": a label glued to the number, as
        // listings write it.
        if ((c == '0' && phone_label_before(t, i) && accept(match_national(t, i, true, false), PiiType::kPhone)) ||
            (rrn_glued_label(t, i) && accept(match_rrn(t, i), PiiType::kRrn))) {
          sink(i, end, type);
          i = t.floor = end;
          t.floor_type = static_cast<int>(type);
          continue;
        }
        i = t.digits_end(i);
        continue;
      }
      if (hex_run_then_colon(t, i)) {
        if (ipv6_start_ok(t, i) && (end = match_ipv6(t, i)) != npos) type = PiiType::kIp;
      } else {
        accept(match_rrn(t, i), PiiType::kRrn) || accept(match_card(t, i), PiiType::kCard) ||
            (c == '0' && (accept(match_national(t, i, true, false), PiiType::kPhone) ||
                          (spoken_start_ok(t, i) && accept(match_spoken_mobile(t, i), PiiType::kPhone)))) ||
            (c == '1' && accept(match_representative(t, i), PiiType::kPhone)) ||
            accept(outline_ipv4(t, i), PiiType::kIp) || accept(match_account(t, i), PiiType::kAccount) ||
            accept(match_labelled_account(t, i), PiiType::kAccount);
      }
      if (end == npos) {
        i = t.digits_end(i);
        continue;
      }
    } else if (c == '+') {
      const bool word_start = i == 0 || !is_alnum(t.s[i - 1]) || match_ends_at(t, i);
      if (!(word_start && accept(match_plus82(t, i), PiiType::kPhone))) {
        ++i;
        continue;
      }
    } else if (c == ':') {
      const bool starts_address = t.at(i + 1) == ':' && is_hex(t.at(i + 2)) && ipv6_start_ok(t, i);
      if (!(starts_address && (end = match_ipv6(t, i)) != npos)) {
        ++i;
        continue;
      }
      type = PiiType::kIp;
    } else if (c == '(') {
      if (!(t.at(i + 1) == '0' && accept(match_national(t, i + 1, true, true), PiiType::kPhone))) {
        ++i;
        continue;
      }
    } else {  // a hex letter: only an IPv6 address at a word start ("fe80::1") is of interest
      if (!(ipv6_start_ok(t, i) && hex_run_then_colon(t, i) && (end = match_ipv6(t, i)) != npos)) {
        // Skip the word's letters; a digit run inside it stops the skip only to be refused by
        // numeric_start_ok, unless the letters are a phone label ("Fax031-123-4567").
        while (i < n && (is_alpha(t.s[i]) || t.s[i] == '_')) ++i;
        continue;
      }
      type = PiiType::kIp;
    }
    sink(i, end, type);
    i = t.floor = end;
    t.floor_type = static_cast<int>(type);
  }
}

template <class Sink>
void for_each_pii(std::string_view text, Sink&& sink) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t cursor = 0, search = 0;
  int cursor_type = -1;
  AtSignFinder finder(text);
  while (true) {
    const Span email = next_email(text, search, cursor, finder);
    const size_t segment_end = email.begin == npos ? text.size() : email.begin;
    const Text t{s, segment_end};
    scan_segment(t, cursor, cursor_type, sink);
    if (email.begin == npos) break;
    sink(email.begin, email.end, PiiType::kEmail);
    cursor = search = email.end;
    cursor_type = static_cast<int>(PiiType::kEmail);
  }
}

}  // namespace

std::vector<PiiMatch> find_pii(std::string_view text) {
  std::vector<PiiMatch> out;
  auto sink = [&](size_t b, size_t e, PiiType type) { out.push_back({b, e, type}); };
  for_each_pii(text, sink);
  return out;
}

size_t scrub_pii(std::string_view text, std::string& out, PiiCounts& counts, PiiMatch* last) {
  size_t copied = 0, replaced = 0;
  auto sink = [&](size_t b, size_t e, PiiType type) {
    out.append(text.data() + copied, b - copied);
    out += pii_placeholder(type);
    copied = e;
    ++counts[type];
    ++replaced;
    if (last) *last = {b, e, type};
  };
  for_each_pii(text, sink);
  out.append(text.data() + copied, text.size() - copied);
  return replaced;
}

std::string scrub_pii(std::string_view text, PiiCounts& counts) {
  std::string out;
  out.reserve(text.size());
  scrub_pii(text, out, counts);
  return out;
}

namespace {

// An address glued across a break must end in a common top-level domain or be a mail provider's name
// alone (hong.gildong@|naver.com, kim@korea.ac.|kr, hong@|naver로), so that prose and code glued to the
// next line's first word stay: "postgres@localhost.|Then", "react@18.2.|Then", "@property|@abc.abstractmethod",
// and a break before a capitalised word ends no address.
bool glued_address_ends_well(std::string_view joined, const PiiMatch& m, size_t second_at) {
  const auto* s = reinterpret_cast<const unsigned char*>(joined.data());
  // A capitalised word goes on the sentence, not the domain: "admin@localhost.|It will ask" (.it).
  if (m.end >= second_at + 2 && std::isupper(s[second_at]) && std::islower(s[second_at + 1])) return false;
  const std::string_view address = joined.substr(m.begin, m.end - m.begin);
  const size_t at = address.rfind('@');
  const size_t domain = at == std::string_view::npos ? 0 : at + 1;
  const size_t dot = address.rfind('.');
  if (dot != std::string_view::npos && dot >= domain)
    return common_tld(s + m.begin + dot + 1, address.size() - dot - 1);
  return at != std::string_view::npos && provider_end(s, joined.size(), m.begin + domain, m.end) == m.end;
}

}  // namespace

bool pii_may_continue(std::string_view text, PiiType type) {
  if (text.empty()) return false;
  if (type == PiiType::kEmail) {
    if (text.back() != '.') return false;
    const std::string_view address = text.substr(0, text.size() - 1);
    const size_t dot = address.rfind('.'), at = address.rfind('@');
    const size_t label = dot == std::string_view::npos || (at != std::string_view::npos && dot < at) ? at + 1 : dot + 1;
    if (label == 0 || label > address.size()) return true;  // (no '@' or '.': a provider's name alone)
    // Korea's second-level labels end no address (hong@samsung.co.|kr).
    const std::string_view last = address.substr(label);
    for (const std::string_view second_level : {"co", "ac", "go", "or", "ne", "re", "pe", "mil"})
      if (last == second_level) return true;
    return !common_tld(reinterpret_cast<const unsigned char*>(address.data()) + label, address.size() - label);
  }
  if (text.back() == '-') return true;
  // Dashed digit groups: the last shorter than the one before it.
  const size_t last_dash = text.rfind('-');
  if (last_dash == std::string_view::npos || last_dash == 0) return false;
  const size_t before_dash = text.rfind('-', last_dash - 1);
  const size_t previous = last_dash - (before_dash == std::string_view::npos ? 0 : before_dash + 1);
  const std::string_view last = text.substr(last_dash + 1);
  return !last.empty() && std::all_of(last.begin(), last.end(), [](char c) { return is_digit(c); }) &&
         last.size() < previous;
}

bool scrub_pii_across(std::string& first, std::string& second, PiiCounts& counts) {
  if (first.empty() || second.empty()) return false;
  const auto digit = [](char c) { return is_digit(static_cast<unsigned char>(c)); };
  const char last = first.back(), next = second.front();
  // A number broken by the wrap: the first line ends inside it, the second goes on with it.
  // Or the first line ends with a parenthesised area code, "(02)" | "123-4567" (a wrap at its space).
  const auto area_code_ends = [&] {
    const size_t open = first.rfind('(');
    if (open == std::string::npos || first.size() - open < 4 || first.size() - open > 6 || first[open + 1] != '0')
      return false;
    return std::all_of(first.begin() + static_cast<std::ptrdiff_t>(open) + 1, first.end() - 1, digit);
  };
  const bool broken = ((digit(last) || last == '-' || last == '*') && (digit(next) || next == '*' || next == '-') &&
                       !(last == '-' && next == '-')) ||
                      (last == ')' && digit(next) && area_code_ends());
  // A number at the start of the second line named by a label that ends the first line: it ends
  // with ':' or a label noun (주민등록번호:, 계좌번호, 입금 계좌). Lines that merely contain a label
  // word (송금액, 이체 한도, created account, 단위: KB) are table cells and headings far more often.
  const std::string_view trimmed = std::string_view(first).substr(0, first.find_last_not_of(' ') + 1);
  const bool labelled = digit(next) && (trimmed.ends_with(':') || trimmed.ends_with("：") ||
                                        trimmed.ends_with("번호") || trimmed.ends_with("계좌"));
  // An e-mail address broken by the wrap: the first line's last word holds its '@' (hong.gildong@ |
  // naver.com, hong@na | ver.com), or the second line starts with it after a name that is no plain
  // word (hong.gildong | @naver.com, not "Sign up with your | @gmail.com address", "import pytest |
  // @pytest.mark"). A break before the '@' without it (hong.gil | dong@naver.com) reads like a word
  // and an address the second line scrubbed alone, and is left so.
  const auto email_char = [](char c) {
    return is_alnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
  };
  size_t word = first.size();
  while (word > 0 && (email_char(first[word - 1]) || first[word - 1] == '@')) --word;
  const std::string_view last_word = std::string_view(first).substr(word);
  const bool email_broken =
      (last_word.find('@') != std::string_view::npos &&
       (is_alnum(static_cast<unsigned char>(next)) || next == '.' || next == '-')) ||
      (next == '@' && email_char(last) && last != '.' && std::any_of(last_word.begin(), last_word.end(), [](char c) {
         return !std::isalpha(static_cast<unsigned char>(c));
       }));
  // A name broken after a '-' or '_' whose address the second line scrubbed alone (debian-|
  // boot@lists.debian.org: wrappers break after hyphens): the first part goes into the placeholder.
  if ((last == '-' || last == '_') && second.starts_with(pii_placeholder(PiiType::kEmail)) &&
      std::any_of(last_word.begin(), last_word.end(), [](char c) { return is_alnum(static_cast<unsigned char>(c)); }) &&
      last_word.find('@') == std::string_view::npos) {
    first.erase(word);
    first.erase(first.find_last_not_of(' ') + 1);
    return true;
  }
  if (!broken && !labelled && !email_broken) return false;
  // Windows of up to kWindow bytes on each side (a match and its label are shorter), cut between
  // characters and outside runs of ASCII letters and digits, where no match may start or end.
  constexpr size_t kWindow = 64;
  size_t tail = first.size() > kWindow ? first.size() - kWindow : 0;
  while (tail < first.size() && (static_cast<unsigned char>(first[tail]) & 0xC0) == 0x80) ++tail;
  if (tail > 0)
    while (tail < first.size() && is_alnum(static_cast<unsigned char>(first[tail - 1])) &&
           is_alnum(static_cast<unsigned char>(first[tail])))
      ++tail;
  size_t head = std::min(second.size(), kWindow);
  while (head > 0 && head < second.size() && (static_cast<unsigned char>(second[head]) & 0xC0) == 0x80) --head;
  if (head < second.size())
    while (head > 0 && is_alnum(static_cast<unsigned char>(second[head - 1])) &&
           is_alnum(static_cast<unsigned char>(second[head])))
      --head;
  if (head == 0) return false;  // one unbroken run: nothing a matcher takes
  const std::string_view a = std::string_view(first).substr(tail), b = std::string_view(second).substr(0, head);
  // What followed may now stand alone ("456789+8210..." was no phone), so the rest is scrubbed again.
  const auto rescrub_second = [&] {
    std::string rest;
    if (scrub_pii(second, rest, counts) > 0) second.swap(rest);
  };
  // The break stood for nothing (010-1234-|5678, a wrap inside a token) or for a space (010 1234|5678).
  // Between two digits only a match with a separator before the break is taken as one number glued
  // back (and both sides, but for a few kinds): "201231|1500000" is a date and an amount, not 13
  // digits of an RRN.
  for (const std::string_view separator : {std::string_view(), std::string_view(" ")}) {
    if (separator.empty() && !broken && !email_broken) continue;
    std::string joined;
    joined.reserve(a.size() + separator.size() + b.size());
    joined.append(a).append(separator).append(b);
    const size_t second_at = a.size() + separator.size();
    for (const PiiMatch& m : find_pii(joined)) {
      if (m.end <= second_at) continue;
      if (m.begin >= second_at) {
        // Wholly in the second line, which alone did not match: labelled by the first's end.
        if (separator.empty() || m.begin != second_at || !labelled) break;
        second.replace(0, m.end - second_at, pii_placeholder(m.type));
        ++counts[m.type];
        rescrub_second();
        return true;
      }
      if (!broken && !(email_broken && separator.empty() && m.type == PiiType::kEmail)) break;
      if (!broken && !glued_address_ends_well(joined, m, second_at)) break;
      const std::string_view before(joined.data() + m.begin, a.size() - m.begin),
          after(joined.data() + second_at, m.end - second_at);
      const auto has_separator = [&](std::string_view part) {
        return std::any_of(part.begin(), part.end(), [&](char c) { return !digit(c); });
      };
      // Glued between a digit and a digit or dash: a separator on both sides of the break, and not an
      // address ("3.2.1|4.5" are section numbers, "1644|-1320" two amounts, "201231|1500000" a date and
      // an amount). A wrap at a space glues two numbers ("2003-02-27 | 212원"), so only the numbers of
      // a fixed layout, whose check digits or prefixes a glued pair rarely passes, may be broken inside
      // their last group with a separator before the break alone ("010-1234-56|78", "900101-12|34567",
      // a wrap at a fixed width as `fold` makes); an account's free digit groups may not.
      const bool fixed_layout = m.type == PiiType::kRrn || m.type == PiiType::kPhone || m.type == PiiType::kCard;
      if (separator.empty() && digit(last) && (digit(next) || next == '-') &&
          (m.type == PiiType::kIp || !has_separator(before) || (!fixed_layout && !has_separator(after))))
        break;
      first.replace(tail + m.begin, std::string::npos, pii_placeholder(m.type));
      // What led up to the match may now stand alone too ("계좌번호 41113333 01 2345678|@naver.com": the
      // digits before the address, their tail gone into it, read as the account they are labelled).
      if (std::string rest; scrub_pii(first, rest, counts) > 0) first.swap(rest);
      second.erase(0, m.end - second_at);
      second.erase(0, std::min(second.find_first_not_of(' '), second.size()));
      ++counts[m.type];
      rescrub_second();
      return true;  // matches do not overlap: only one can reach the break
    }
  }
  return false;
}

}  // namespace bert
