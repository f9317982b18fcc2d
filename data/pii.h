// PII scrubber for Korean text: replaces personal identifiers with typed placeholders before the
// text reaches pretraining (a BERT memorises rare strings; see REFERENCES.md, "Privacy"):
//
//   [RRN]      resident registration number YYMMDD-NNNNNNN / 13 digits: valid month, day (leap
//              years from the century the 7th digit encodes), 7th digit 1-8. The old mod-11
//              checksum is not required (numbers issued since Oct 2020 do not satisfy it). Masked
//              forms that still show birth date and sex (900101-1******) or the birth date alone
//              (900101-*******) count too. Spaced or dotted, 900101 1234567 / 900101.1234567,
//              with a valid check digit or a label within 32 bytes before it (주민번호, 주민 번호,
//              주민등록, 등록번호, RRN, not our [RRN]; also glued, RRN900101-...); masked and spaced,
//              with the label. A dash with spaces on either side is a dash (900101 - 1234567);
//              masks are * x X # ● ○ ＊, for the last 6 or 7 digits or fewer (900101-1234***,
//              9001011******; a mask too many is still the mask). Not 13 digits passing a product
//              barcode's EAN-13 check but not the RRN one, unlabelled (8801062123452); not when a
//              company's label names the number, right before it (법인등록번호 110111-1234567,
//              법인번호: ..., 사업자등록번호; "법인번호 없음 / 대표자 800101-..." is a person's).
//   [PHONE]    mobile 010/011/016-019, area codes 02/031-064, 070/080/060/050x, with '-', '.', ' ',
//              a spaced dash (010 - 1234 - 5678) or "(02) " / "02)" separators; mobile and 070 also without separators;
//              +82 forms
//              (+82-10-..., +82 (0)10 ..., +821012345678), also behind a glued label (TEL02-...,
//              HP010-..., Fax031-...); representative numbers 15xx/16xx/18xx-xxxx
//              (not when the pair reads as a year range, 1592-1598, or a quantity, 1500-3000원).
//              Mobile and 070 numbers with some digits written as Hangul digit words (공 or 영 0, 일 1,
//              이 2, 삼 3, 사 4, 오 5, 육 or 륙 6, 칠 7, 팔 8, 구 9), as people write them to get past a
//              board's filter: 공일공-일이삼사-오육칠팔, 010 일이삼사 5678, 영일영12345678, in the same
//              layouts; not inside a longer run of digit words (공일공일이삼사오육칠팔구 is twelve
//              digits); 이 may follow (오육칠팔이에요: a particle), and 일 or 이 right after an ASCII digit
//              is a day counter or a particle, not a digit (01일 12345678원, 1234567이다).
//   [EMAIL]    local@domain.tld (ASCII; the TLD is 2+ letters, and the address ends at the last
//              label that can be one: "a@b.com.123" is a@b.com) or local@192.0.2.1; a URL's
//              user:password@host whole ("https://[EMAIL]"); Korean domains (회사.한국, 한국 as a
//              word of its own or before a particle, not 한국인; the local part then Hangul too);
//              hidden from harvesters: '＠', (at) [at] {at} <at> (@) [@] {@} <@>, 골뱅이 as a word of its
//              own (not 매운골뱅이무침) or in brackets, (dot) [dot] {dot} <dot> between labels, and a plain '@' with a
//              space on both sides ("hong @ naver.com"). Hidden or spaced, the TLD must be a common
//              one (com, net, org, kr, io, ...) and no '(' or '[' may follow, so that code and prose
//              stay ("q @ k.transpose(-2, -1)", "x @ self.weight", "Look (at) the.docs"). Hidden, the
//              domain may be spelled in Hangul: 닷컴 / 닷넷 for .com / .net ("hong 골뱅이 네이버 닷컴"), 닷
//              or 점 for a dot before an ASCII label ("naver 점 com"); the local part stays ASCII. A
//              mail provider's name may be the whole domain, as chat writes an address, when the
//              at-sign is '@' or '＠' glued on both sides: abc123@naver, hong@네이버로 (naver, gmail,
//              daum, hanmail, nate, kakao, ..., not before ':', '_' or '/': "ubuntu@kakao:~$"; 네이버,
//              지메일, 한메일, ... before a particle or 메일; not 다음, the word "next"), the local part
//              ASCII; spelled in Hangul, the domain is such a name (네이버 닷컴, not 골뱅이 맛집 닷컴).
//              Labels have at most 63 bytes and local parts 64.
//   [CARD]     13-19 digits passing Luhn: 4-4-4-4(-3), 4-6-5 or 4-6-4 groups ('-' or ' '; not a
//              row of years or round numbers, 1000 2000 3000 4000), or contiguous with a
//              card-network first digit (2-6, 9; not 13 digits led by 978/979, an ISBN-13). After a
//              card word within 32 bytes (카드, card as a word) and no other label right before the
//              number (주문번호, 시리얼, ...), without Luhn: exactly four groups of four with a
//              network first digit (not continuing a row of numbers, not years or round numbers),
//              or 16 contiguous digits not led by a date (2024011512345678 is an order id).
//   [ACCOUNT]  bank-account-like: 3+ dash-separated groups of 2-7 digits, 10-14 digits in all, with
//              a group of 5+ digits or 4+ groups (real layouts: 110-123-456789, 1002-345-678901,
//              3333-01-1234567, 123-456789-01-001, 301-0123-4567-11). Not a date-led chain
//              (2024-01-15-...), not 3-2-5 (a business registration number, which is public), not a
//              KIPO application number (10-2020-0123456: 2-4-7 with a year in the middle), and
//              not led by a mobile prefix (010-1234-56789 is a mistyped phone), and only when
//              nothing above matched. After a bank or account word within 32 bytes (계좌, 은행, 예금주,
//              입금, 송금, 이체, 뱅크, 농협, 신한, 새마을, 우체국, 수협, 신협, KB, IBK, NH, account; not 국민 or
//              우리 alone) also 10-14 digits in one piece (110123456789), in space-separated groups
//              (110 123 456789) or in dashed layouts the rule above refuses (1000-1234-5678,
//              9002-1234-5678-9, 508-10-123456-7); not an amount (1234567890원, 4294967296 바이트,
//              (천원)), not a timestamp (20240115103045), not a public dashed layout (above), not a
//              row of a table (spaced groups need one of 5+ digits and not all years or round
//              numbers, and may not continue a row: "은행 수: 1000 1500 2000 2500"). Neither form
//              when another document's label stands right before the number (계약번호, 주문번호,
//              사건번호, 등기번호, 송장번호, 택배, 사업자번호, ISBN, ...: 계약번호: 2023-0456-789012).
//              ASCII labels (KB, IBK, NH, card, account, RRN) count as words of their own only: not
//              after a letter, a number ("4096 KB") or '(' or '[', not before a letter; the word
//              labels (card, account) also at a camelCase edge (cardNumber, bankAccount).
//              Label windows start after the previous match and after any placeholder, so that
//              scrubbed text, whose placeholders are longer or shorter than what they replaced,
//              sees the same labels: scrubbing twice changes nothing. A label before a list's first
//              item names the items after it: a number joined to a match (or placeholder) of its
//              type by a list separator (, / ; & 、 · 및 또는 or and) counts as labelled.
//   [IP]       IPv4 (octets <= 255; not four single digits, which reads as an outline number 1.2.3.4
//              and otherwise only hits public resolvers like 8.8.8.8; not when named as a section,
//              clause, table or figure: 제3.2.10.1항, 5.2.11.1 절 (a word of its own or with a
//              particle; "10.0.0.5 관리자" is an address), 표 4.12.1.3, Fig. 2.10.3.1; not a date and
//              hour, 23.01.15.10시, 23.01.15.10:30, 24.03.12.14~16시; or
//              as a version: 버전 2.10.3.1, 최신버전 2.10.3.1, version: 1.10.0.0, ver. 5.15.0.91; a
//              four-part version not so named, "Python 3.11.4.1", reads as an address, and so does
//              a real address after such a label, "Version: 10.20.30.40") and
//              IPv6 (8 groups, or '::' compressed with 2+ groups, an IPv4 tail allowed:
//              ::ffff:192.0.2.1; a group of 3+ hex
//              digits and at least one decimal digit, so "dead::beef", "std::map", MAC addresses
//              and times stay).
//
// Precision rules shared by every numeric type: a match never starts or ends inside a longer run
// of digits or ASCII letters ("v1.2.3", a 20-digit number), and never continues a numeric token
// ("1.2.3.4.5", "2024-01-15" tails); a comma separates ("010-1234-5678,010-2345-6789" is two
// matches; no matcher takes a comma, so "1,234,000" stays). So dates, times, versions, prices,
// percentages, ISBNs (their 1-digit group fails the account rule, unless a bank word precedes them),
// article numbers and short numbers stay.
// scrub_pii reads ASCII digits only: `bert_prepare clean` folds full-width digits (０１０) and dashes
// between digits to ASCII first (data/clean.h).
//
// Speed: one pass over the bytes with a 256-entry trigger table; only digits, '+', '(', "::",
// word-initial hex letters and the last bytes of 공 and 영 (B5, 81; one byte in ~100 of Korean text,
// checked for the syllable) start a (short, bounded) hand-written matcher; at-signs ('@', '＠', the
// ')' of "(at)", 골뱅이) are found with memchr on a rare byte each. Every matcher looks at a bounded
// number of groups and a failed start skips its digit run, so the cost is linear in the input
// whatever it holds (e-mail labels and local parts are bounded too: a line of 골뱅이 x 50,000 takes
// a millisecond). Measured single-threaded (g++ 12 -O2, shared 2-core VM, scrub_pii line by line over
// the demo corpus x10, best of 7): 485 MB/s, against 575 MB/s before hidden at-signs and the label
// rules were added (2026-12-06); 490-498 MB/s with Hangul digit words, against 513-518 MB/s before,
// interleaved runs (2026-12-07).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace bert {

enum class PiiType { kRrn, kPhone, kEmail, kCard, kAccount, kIp };
inline constexpr int kPiiTypeCount = 6;

// "[RRN]", "[PHONE]", ...
std::string_view pii_placeholder(PiiType type);
// "rrn", "phone", ...
std::string_view pii_name(PiiType type);

struct PiiCounts {
  uint64_t rrn = 0, phone = 0, email = 0, card = 0, account = 0, ip = 0;

  uint64_t& operator[](PiiType type);
  uint64_t operator[](PiiType type) const;
  uint64_t total() const { return rrn + phone + email + card + account + ip; }
  PiiCounts& operator+=(const PiiCounts& other);
};

struct PiiMatch {
  size_t begin, end;  // byte offsets into the scanned text
  PiiType type;
};

// Every match in `text`, in order, non-overlapping.
std::vector<PiiMatch> find_pii(std::string_view text);

// Appends `text` with every match replaced by its placeholder to `out`; adds to `counts`.
// Returns the number of replacements (and the last match in `last`, when given and there is one).
// Idempotent: placeholders contain nothing that matches.
size_t scrub_pii(std::string_view text, std::string& out, PiiCounts& counts, PiiMatch* last = nullptr);

// Convenience form for tests and small inputs.
std::string scrub_pii(std::string_view text, PiiCounts& counts);

// A number broken across two lines, as hard-wrapped text breaks it (PDF extractions, fixed-width
// mail): `first` and `second` are consecutive lines, each already scrubbed. The last 64 bytes of one
// and the first 64 of the other are scanned joined:
//   - where `first` ends with a digit, '-' or '*' and `second` starts with one (not '-' on both
//     sides), or `first` ends with an area code "(0N)"/"(0NN)" and `second` starts with a digit,
//     directly (010-1234-|5678, 010-12|34-5678, 010-1234|-5678, (02)|123-4567; after a digit only a
//     match with a separator on both sides of the break, or before it for an RRN, phone or card
//     (010-1234-56|78, 900101-12|34567), and no address: "201231|1500000" stays a date and an
//     amount, "2003-02-27|212" a date and an amount, "1644|-1320" two amounts, "3.2.1|4.5" section
//     numbers) or else by a space
//     (010 1234|5678): a match across the break becomes its placeholder at the end of `first`, and
//     its part of `second` is removed with the spaces after it (the line may end empty);
//   - where `second` starts with a digit and `first` ends with ':' or a label noun (번호, 계좌), by a
//     space: a match at the very start of `second` that its label names (주민등록번호:|900101
//     1234567, 계좌번호|110 123 456789) becomes its placeholder there. A line that merely contains a
//     label word (송금액, 이체 한도, 단위: KB) is a table cell or heading too often to name the next.
//   - an e-mail address broken directly: `first`'s last word holds its '@' (hong.gildong@|naver.com,
//     kim@korea.ac.|kr) or `second` starts with it after a name that is no plain word
//     (hong.gildong|@naver.com); the address must end in a common top-level domain or be a
//     provider's name, and not before a capitalised word (admin@localhost.|It stays); as a number is;
//   - a name broken after '-' or '_' whose address `second` scrubbed alone (debian-|[EMAIL]): the
//     name's first part is removed.
// The rest of `second` (and `first`, after a match across) is then scrubbed again, as what followed
// (or led up to it) may now stand alone. Returns whether
// it replaced one (all counted in `counts`). Idempotent on its result. Not handled: a break after
// '.' (12.5.|2.1 reads as an address), an account broken inside its last group (110-123-45|6789:
// a wrap at a space glues numbers into accounts), inside an area code ("(0" | "2)"), a Hangul digit word, an e-mail
// address broken before its '@' (hong.gil|dong@naver.com reads as a word and an address, which `second` scrubbed
// alone), and numbers over three lines.
bool scrub_pii_across(std::string& first, std::string& second, PiiCounts& counts);

// Whether a match that ends a line may be the first part of a longer one that the next line
// completes, so that scrub_pii_across should see its raw text (the cleaner's retry): `text` is the
// match and what follows it on the line (at most one '.' or '-'). An address before a '.' whose last
// label is no common top-level domain (kim@korea.ac.|kr, hong@naver.|com; not help@site.com.|app), a
// number before a '-' (4111-1111-1111-|1111), or one in dashed groups whose last is shorter than the
// one before it (4111-1111-1111-11|11; not 110-123-456789|3월, 02-123-4567|12).
bool pii_may_continue(std::string_view text, PiiType type);

}  // namespace bert
