// bert_prepare clean and its parts: PII scrubber (positives and negatives in Korean formats),
// sentence splitter, line reader (.txt, .gz, directories), and the command end to end through
// prepare_clean_command().
#include <zlib.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file.h"
#include "common/utf8.h"
#include "data/clean.h"
#include "data/pii.h"
#include "data/sentence_splitter.h"
#include "data/text_reader.h"
#include "tests/legacy_text.h"
#include "tokenizer/unicode.h"

using namespace bert;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test case: ctest may run the cases in parallel in one working directory.
std::string temp_dir(const std::string& name) {
  const std::string dir = "test_data_clean_tmp/" + name;
  fs::remove_all(dir);
  make_directories(dir);
  return dir;
}

void write_text(const std::string& path, std::string_view text) { write_file_atomic(path, text); }

void write_gz(const std::string& path, std::string_view text) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!text.empty())
    REQUIRE(gzwrite(f, text.data(), static_cast<unsigned>(text.size())) == static_cast<int>(text.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

std::vector<std::string> read_lines(const std::string& path, uint64_t* invalid_lines = nullptr) {
  LineReader reader(path);
  std::vector<std::string> lines;
  std::string_view line;
  while (reader.next(line)) lines.emplace_back(line);
  if (invalid_lines) *invalid_lines = reader.invalid_lines();
  return lines;
}

struct Run {
  int code;
  std::string out, err;
};

Run clean(std::vector<std::string> args) {
  std::ostringstream out, err;
  const int code = prepare_clean_command(args, out, err);
  return {code, out.str(), err.str()};
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string scrub(const std::string& text, PiiCounts* counts_out = nullptr) {
  PiiCounts counts;
  std::string out = scrub_pii(text, counts);
  if (counts_out) *counts_out = counts;
  return out;
}

}  // namespace

// ---- PII ----------------------------------------------------------------------------------

TEST_CASE("pii: positives in Korean formats are replaced by typed placeholders") {
  struct Case {
    const char* in;
    const char* out;
    PiiType type;
  };
  const Case cases[] = {
      // resident registration numbers
      {"주민번호 900101-1234567 입니다", "주민번호 [RRN] 입니다", PiiType::kRrn},
      {"9001011234567", "[RRN]", PiiType::kRrn},
      {"000229-3123456(2000년 윤일)", "[RRN](2000년 윤일)", PiiType::kRrn},
      {"외국인 850315-5123456", "외국인 [RRN]", PiiType::kRrn},
      {"주민번호: 900101-1******", "주민번호: [RRN]", PiiType::kRrn},
      {"주민번호: 900101-*******", "주민번호: [RRN]", PiiType::kRrn},
      {"000229-xxxxxxx", "[RRN]", PiiType::kRrn},  // a leap day in 2000 (a 3/4 century digit)
      {"211231-4123456.", "[RRN].", PiiType::kRrn},
      // spaced: labelled, or with the mod-11 check digit of numbers issued before Oct 2020
      {"주민번호 900101 1234567 입니다", "주민번호 [RRN] 입니다", PiiType::kRrn},
      {"주민등록번호(외국인등록번호): 850315 5123456", "주민등록번호(외국인등록번호): [RRN]", PiiType::kRrn},
      {"RRN 900101 1******", "RRN [RRN]", PiiType::kRrn},
      {"주민번호 900101 *******", "주민번호 [RRN]", PiiType::kRrn},
      {"주민 번호: 900101 1234567", "주민 번호: [RRN]", PiiType::kRrn},
      {"홍길동 900101 1234568", "홍길동 [RRN]", PiiType::kRrn},
      // a dash with spaces around it, as typed and OCR'd filings write it; masked in part
      {"신청인 주민등록번호 900101 - 1234567", "신청인 주민등록번호 [RRN]", PiiType::kRrn},
      {"주민번호는 900101- 1234567 이에요", "주민번호는 [RRN] 이에요", PiiType::kRrn},
      {"900101 -1234567", "[RRN]", PiiType::kRrn},
      {"주민등록번호 900101-1＊＊＊＊＊＊", "주민등록번호 [RRN]", PiiType::kRrn},
      {"900101-1######", "[RRN]", PiiType::kRrn},
      {"등록번호:900101-1234***", "등록번호:[RRN]", PiiType::kRrn},
      // a glued ASCII label, a dot, the 13 digits partly masked, a barcode-looking one labelled
      {"RRN900101-1234567", "RRN[RRN]", PiiType::kRrn},
      {"주민번호 900101.1234567", "주민번호 [RRN]", PiiType::kRrn},
      {"900101.1234568", "[RRN]", PiiType::kRrn},  // the mod-11 check digit
      {"9001011******", "[RRN]", PiiType::kRrn},
      {"주민등록번호 9001011234560", "주민등록번호 [RRN]", PiiType::kRrn},  // passes EAN-13's check only
      {"대표자 주민번호 900101-1234567", "대표자 주민번호 [RRN]", PiiType::kRrn},
      {"법인번호 없음 / 대표자 800101-2234567", "법인번호 없음 / 대표자 [RRN]", PiiType::kRrn},
      {"9001011*******", "[RRN]", PiiType::kRrn},  // a mask too many is still the mask
      {"법인등록번호 110111-1234567, 대표 주민번호 900101-1234567", "법인등록번호 110111-1234567, 대표 주민번호 [RRN]",
       PiiType::kRrn},  // the nearest label names the number
      // phones
      {"연락처 010-1234-5678 로", "연락처 [PHONE] 로", PiiType::kPhone},
      {"01012345678", "[PHONE]", PiiType::kPhone},
      {"010 1234 5678", "[PHONE]", PiiType::kPhone},
      {"010.1234.5678", "[PHONE]", PiiType::kPhone},
      {"전화010-1234-5678번", "전화[PHONE]번", PiiType::kPhone},
      {"+82-10-1234-5678", "[PHONE]", PiiType::kPhone},
      {"+82 10 1234 5678", "[PHONE]", PiiType::kPhone},
      {"+821012345678", "[PHONE]", PiiType::kPhone},
      {"+82 (0)10-1234-5678", "[PHONE]", PiiType::kPhone},
      {"+82-2-123-4567", "[PHONE]", PiiType::kPhone},
      {"서울 02-123-4567", "서울 [PHONE]", PiiType::kPhone},
      {"02-1234-5678", "[PHONE]", PiiType::kPhone},
      {"031-123-4567", "[PHONE]", PiiType::kPhone},
      {"031-1234-5678", "[PHONE]", PiiType::kPhone},
      {"부산 051-123-4567", "부산 [PHONE]", PiiType::kPhone},
      {"(02) 123-4567", "[PHONE]", PiiType::kPhone},
      {"(031)1234-5678", "[PHONE]", PiiType::kPhone},
      {"대표 02)123-4567", "대표 [PHONE]", PiiType::kPhone},
      {"고객센터 1588-1234", "고객센터 [PHONE]", PiiType::kPhone},
      {"1577-1004번", "[PHONE]번", PiiType::kPhone},
      {"070-1234-5678", "[PHONE]", PiiType::kPhone},
      {"07012345678", "[PHONE]", PiiType::kPhone},
      {"0505-123-4567", "[PHONE]", PiiType::kPhone},
      {"080-123-4567", "[PHONE]", PiiType::kPhone},
      {"011-123-4567", "[PHONE]", PiiType::kPhone},
      {"016-1234-5678", "[PHONE]", PiiType::kPhone},
      {"tel:010-1234-5678", "tel:[PHONE]", PiiType::kPhone},
      {"전화번호 010 - 1234 - 5678", "전화번호 [PHONE]", PiiType::kPhone},
      {"02 - 123 - 4567", "[PHONE]", PiiType::kPhone},
      // digits written as Hangul digit words, wholly or in part, to get past a board's filter
      {"연락처 공일공-일이삼사-오육칠팔 로", "연락처 [PHONE] 로", PiiType::kPhone},
      {"공일공일이삼사오육칠팔", "[PHONE]", PiiType::kPhone},
      {"번호는 010 일이삼사 오육칠팔이에요", "번호는 [PHONE]이에요", PiiType::kPhone},  // 이: a particle
      {"영일영.일이삼사.5678", "[PHONE]", PiiType::kPhone},
      {"폰공1공-1234-오육칠팔", "폰[PHONE]", PiiType::kPhone},
      {"010-일이삼사-5678로 문자", "[PHONE]로 문자", PiiType::kPhone},
      {"공일일-일이삼-사오육칠", "[PHONE]", PiiType::kPhone},
      {"공일칠 일이삼사오육칠", "[PHONE]", PiiType::kPhone},
      {"공칠공 - 일이삼사 - 오륙칠팔", "[PHONE]", PiiType::kPhone},
      {"공일공 1234567이다", "[PHONE]이다", PiiType::kPhone},
      {"카톡 말고 공일공 12345678", "카톡 말고 [PHONE]", PiiType::kPhone},
      // e-mail
      {"hong.gildong@gmail.com", "[EMAIL]", PiiType::kEmail},
      {"kim_01+tag@naver.com 으로", "[EMAIL] 으로", PiiType::kEmail},
      {"메일: test.user@korea.ac.kr입니다.", "메일: [EMAIL]입니다.", PiiType::kEmail},
      {"(abc@def.org)", "([EMAIL])", PiiType::kEmail},
      {"문의 010-1234-5678@hanmail.net", "문의 [EMAIL]", PiiType::kEmail},
      {"메일 hong@123.45.67.89 로", "메일 [EMAIL] 로", PiiType::kEmail},
      {"https://hong:pa55@example.com/x", "https://[EMAIL]/x", PiiType::kEmail},
      {"mailto:hong@example.com", "mailto:[EMAIL]", PiiType::kEmail},
      // hidden from address harvesters, spaced, full-width, Korean domains
      {"hong (at) example.com", "[EMAIL]", PiiType::kEmail},
      {"메일 hong[at]example.co.kr로", "메일 [EMAIL]로", PiiType::kEmail},
      {"hong(AT)example(dot)co(dot)kr", "[EMAIL]", PiiType::kEmail},
      {"hong [at] example [dot] com", "[EMAIL]", PiiType::kEmail},
      {"hong 골뱅이 naver.com", "[EMAIL]", PiiType::kEmail},
      {"hong(골뱅이)naver.com", "[EMAIL]", PiiType::kEmail},
      {"hong @ naver.com 으로", "[EMAIL] 으로", PiiType::kEmail},
      {"hong＠naver.com", "[EMAIL]", PiiType::kEmail},
      {"사람@회사.한국", "[EMAIL]", PiiType::kEmail},
      {"홍길동@naver.com 으로 보내세요", "[EMAIL] 으로 보내세요", PiiType::kEmail},  // a name written as the address
      {"이메일:김철수@daum.net.", "이메일:[EMAIL].", PiiType::kEmail},
      {"hong(@)naver.com", "[EMAIL]", PiiType::kEmail},
      {"hong{at}example{dot}com", "[EMAIL]", PiiType::kEmail},
      {"메일: hong <at> example <dot> co <dot> kr 로", "메일: [EMAIL] 로", PiiType::kEmail},
      {"hong<@>naver.com", "[EMAIL]", PiiType::kEmail},
      {"hong {골뱅이} naver.com", "[EMAIL]", PiiType::kEmail},
      {"문의 hong[@]naver.com 으로", "문의 [EMAIL] 으로", PiiType::kEmail},
      {"메일 kim@회사.한국으로", "메일 [EMAIL]으로", PiiType::kEmail},
      // a provider's name without its top-level domain, the at-sign glued; a domain spelled in Hangul
      {"메일은 abc123@naver로 주세요", "메일은 [EMAIL]로 주세요", PiiType::kEmail},
      {"abc123@네이버로 보내", "[EMAIL]로 보내", PiiType::kEmail},
      {"hong＠gmail 이에요", "[EMAIL] 이에요", PiiType::kEmail},
      {"hong@네이버메일", "[EMAIL]메일", PiiType::kEmail},
      {"hong@naver.", "[EMAIL].", PiiType::kEmail},
      {"hong 골뱅이 naver 닷컴", "[EMAIL]", PiiType::kEmail},
      {"hong 골뱅이 네이버 닷컴으로", "[EMAIL]으로", PiiType::kEmail},
      {"hong 골뱅이 네이버닷컴", "[EMAIL]", PiiType::kEmail},
      {"hong (at) naver 닷 com", "[EMAIL]", PiiType::kEmail},
      {"hong 골뱅이 daum점net", "[EMAIL]", PiiType::kEmail},
      // cards (all Luhn-valid)
      // a phone label glued to the number, as listings write it
      {"HP010-1234-5678", "HP[PHONE]", PiiType::kPhone},
      {"문의 TEL02-123-4567", "문의 TEL[PHONE]", PiiType::kPhone},
      // a mobile number's groups apart by '~', '/' or '_' (the same both times)
      {"연락처 010~1234~5678 입니다", "연락처 [PHONE] 입니다", PiiType::kPhone},
      {"010/1234/5678", "[PHONE]", PiiType::kPhone},
      {"H.P01012345678", "H.P[PHONE]", PiiType::kPhone},
      {"Fax031-123-4567", "Fax[PHONE]", PiiType::kPhone},
      {"카드 4111-1111-1111-1111", "카드 [CARD]", PiiType::kCard},
      {"4111 1111 1111 1111 로 결제", "[CARD] 로 결제", PiiType::kCard},
      {"4111111111111111", "[CARD]", PiiType::kCard},
      {"3782-822463-10005", "[CARD]", PiiType::kCard},
      {"5500 0000 0000 0004", "[CARD]", PiiType::kCard},
      {"6011111111111117", "[CARD]", PiiType::kCard},
      {"4222222222222", "[CARD]", PiiType::kCard},
      {"3056-930902-5904", "[CARD]", PiiType::kCard},
      {"2223000048400011", "[CARD]", PiiType::kCard},  // Mastercard's 2-series
      {"결제 정보 4111111111111111 원본 영수증", "결제 정보 [CARD] 원본 영수증", PiiType::kCard},  // not 원 (won)
      {"3530111333300000", "[CARD]", PiiType::kCard},                                              // JCB
      {"6250941006528599", "[CARD]", PiiType::kCard},                                              // UnionPay
      // after a card word, 16 digits whether or not they pass Luhn
      {"카드번호 5412-3456-7890-1234", "카드번호 [CARD]", PiiType::kCard},
      {"신용카드: 4111111111111112", "신용카드: [CARD]", PiiType::kCard},
      {"card no. 5412 3456 7890 1234", "card no. [CARD]", PiiType::kCard},
      {"카드번호: 1234567890123456", "카드번호: [CARD]", PiiType::kCard},
      {"카드번호: 1234-5678-9012-3456 입력", "카드번호: [CARD] 입력", PiiType::kCard},  // dashed: any first digit
      {"cardNumber: \"5412345678901234\"", "cardNumber: \"[CARD]\"", PiiType::kCard},   // camelCase
      {"creditCard=5412-3456-7890-1234", "creditCard=[CARD]", PiiType::kCard},
      // accounts
      {"계좌 110-123-456789 (신한)", "계좌 [ACCOUNT] (신한)", PiiType::kAccount},
      {"1002-345-678901", "[ACCOUNT]", PiiType::kAccount},
      {"123-456789-01-001", "[ACCOUNT]", PiiType::kAccount},
      {"카카오뱅크 3333-01-1234567", "카카오뱅크 [ACCOUNT]", PiiType::kAccount},
      {"농협 301-0123-4567-11", "농협 [ACCOUNT]", PiiType::kAccount},
      // after a bank or account word: in one piece, in spaced groups, with a 1-digit group
      {"계좌번호 110123456789 (신한)", "계좌번호 [ACCOUNT] (신한)", PiiType::kAccount},
      {"가상계좌 56212345678901 (기업은행)", "가상계좌 [ACCOUNT] (기업은행)", PiiType::kAccount},
      {"신한 110 123 456789", "신한 [ACCOUNT]", PiiType::kAccount},
      {"토스뱅크 1000-1234-5678", "토스뱅크 [ACCOUNT]", PiiType::kAccount},
      {"새마을금고 9002-1234-5678-9", "새마을금고 [ACCOUNT]", PiiType::kAccount},
      {"대구은행 508-10-123456-7로 송금", "대구은행 [ACCOUNT]로 송금", PiiType::kAccount},
      {"주문번호 확인 후 110-123-456789", "주문번호 확인 후 [ACCOUNT]", PiiType::kAccount},  // another thing's label
      {"bank account 110123456789", "bank account [ACCOUNT]", PiiType::kAccount},
      {"bankAccount: 110 123 456789", "bankAccount: [ACCOUNT]", PiiType::kAccount},
      // IP addresses
      {"접속 IP 192.168.0.1 에서", "접속 IP [IP] 에서", PiiType::kIp},
      {"10.0.0.255 서버", "[IP] 서버", PiiType::kIp},
      {"172.16.254.1:8080", "[IP]:8080", PiiType::kIp},
      {"203.0.113.45/24", "[IP]/24", PiiType::kIp},
      {"IP는 192.168.0.1.", "IP는 [IP].", PiiType::kIp},
      {"2001:0db8:85a3:0000:0000:8a2e:0370:7334", "[IP]", PiiType::kIp},
      {"주소 2001:db8::1 입니다", "주소 [IP] 입니다", PiiType::kIp},
      {"fe80::1ff:fe23:4567:890a", "[IP]", PiiType::kIp},
      {"::ffff:192.0.2.1", "[IP]", PiiType::kIp},
      {"버전 확인: 10.20.30.40", "버전 확인: [IP]", PiiType::kIp},  // a version word not naming it
      {"build: 10.0.0.12", "build: [IP]", PiiType::kIp},            // build and release name hosts too
      {"DHCP release 192.168.0.10", "DHCP release [IP]", PiiType::kIp},
      {"서버전 192.168.0.1 접속", "서버전 [IP] 접속", PiiType::kIp},  // a word ending in 버전 names no version
  };
  STATIC_REQUIRE(sizeof(cases) / sizeof(cases[0]) >= 40);
  for (const Case& c : cases) {
    INFO(c.in);
    PiiCounts counts;
    CHECK(scrub(c.in, &counts) == c.out);
    CHECK(counts[c.type] == 1);
    CHECK(counts.total() == 1);
  }
}

TEST_CASE("pii: dates, times, versions, prices and other numbers stay untouched") {
  const char* negatives[] = {
      // dates and times
      "2024-01-15",
      "2024.01.15",
      "2024. 1. 15.",
      "2024년 1월 15일",
      "2024/01/15",
      "15-01-2024",
      "02-10-2024",
      "12:30:45",
      "오후 3:30에",
      "2024-01-15-123456",
      // versions and IP-like strings that are not addresses
      "v1.2.3",
      "7.4.7",
      "버전 10.0.19041.1234",
      "1.2.3.4.5",
      "999.1.1.1",
      "256.256.256.256",
      "1.2.3.4",
      "dead::beef",
      "std::vector<int>",
      "00:1A:2B:3C:4D:5E",
      "요한복음 3:16",
      // prices, percentages, ordinary numbers, article numbers
      "₩1,234,000",
      "12,000원",
      "$3.99",
      "1,234,567,890원",
      "1234567890",
      "3.14159",
      "100%",
      "12.5%",
      "제3조 1항",
      "2024년",
      "1592-1598년",
      "1600-1700년대",
      "총 3,000,000명",
      "우편번호 06234",
      // phone-like but too short / too long / landline without separators
      "010-123-456",
      "010-1234-567",
      "02-12-345",
      "1588-123",
      "010-1234-56789",
      "010-1234-5678-9012",
      "0212345678",
      "전화 1234-5678",
      // long digit runs and Luhn failures
      "12345678901234567890",
      "4111111111111111111111",
      "4111-1111-1111-1112",
      "1234 5678 9012 3456",
      "4111111111111112",
      // ISBNs, business registration numbers, year lists
      "978-89-12345-67-8",
      "ISBN 978-89-6626-123-4",
      "ISBN 9788936434175",  // an ISBN-13 that passes Luhn, unhyphenated
      "사업자등록번호 123-45-67890",
      "2019-2020-2021",
      "1000-2000-3000",
      // invalid RRNs (month 13, 9th-century digit, 2001 is not a leap year)
      "901301-1234567",
      "900101-9234567",
      "010229-3123456",
      "901301-*******",
      "900101-******",
      // spaced without a label or a valid check digit: a date and an amount read the same
      "240115 3000000",
      "900101 1234567",
      "900101 1******",
      "900101 *******",
      "900101.1234567",
      "900101.1******",
      "등록번호 200115 3000000 원",  // a date and an amount, labelled or not
      "주민등록 인구 230115 1234567명",
      // a product barcode (EAN-13: passes its own check digit, not RRN's), and companies'
      // registration numbers, which are public
      "8801062123452",
      "바코드 9001011234560",
      "법인등록번호 110111-1234567",
      "법인등록번호: 1101111234567",
      "법인번호 110111 1234567",
      "사업자등록번호 900101-1234567",
      "주민번호 901301 1234567",
      "주민센터 방문일 240115 3000000원",  // 주민 alone is no label
      "[RRN] 240115 3000000원",            // nor our placeholder: scrubbing scrubbed text changes nothing
      // inside words, other countries, not e-mails
      "A1234-5678-9012",
      "abc010-1234-5678",
      "XTEL010-1234-5678",
      "model HP010-1234-5678-9",
      "+1 415 555 0100",
      "a@b",
      "user@localhost",
      "user@1.2.3",
      "user@300.1.2.3",
      "골뱅이 무침 2인분",
      "look (at) this",
      "hong@ naver.com",
      "[EMAIL] (at) [EMAIL]",
      // matrix products and other '@' in code and prose; hidden forms without a common domain
      "attn = (q @ k.transpose(-2, -1)) * self.scale",
      "y = x @ self.weight + self.bias",
      "out = A @ np.linalg.inv(B)",
      "job finished @ node1.cluster",
      "cc @ john.doe",
      "Look (at) the.docs",
      "Map<at> m = new HashMap<at>();",
      "List<String> xs; {at} most.once",
      "매운골뱅이무침.jpg",
      "통골뱅이소면.png",
      "오늘의 안주는 골뱅이 소면.한국인의 소울푸드",
      "모임장소@강남역.한국식당",
      // a provider's name alone: only glued to a written at-sign, and not inside a longer word
      "meeting @ 다음 주",
      "회의@다음날",
      "hong@naverland",
      "hong @naver",
      "x@y",
      "TOP10 골뱅이 네이버 블로그",
      "매운 골뱅이 네이버 닷컴",
      "TODO@다음 단계로",
      "ubuntu@kakao:~$ ls",
      "git clone user@kakao:repo.git",
      "hong@naver_blog",
      "TOP5 골뱅이 맛집 닷컴",
      "hong 골뱅이 닷컴",
      "닷컴 버블",
      "[PHONE] [EMAIL] [RRN]",
      // public patent, trademark and design application numbers (KIPO: type-year-serial)
      "특허출원 제10-2020-0123456호",
      "상표 40-2020-0012345",
      "디자인 30-2019-0012345",
      "10-2019-7012345",
      // outline numbers named as such, quantities written as ranges
      "제3.2.10.1항",
      "5.2.11.1절",
      "5.2.11.1 절",
      "23.01.15.10시",
      "23.01.15.10시 30분",
      "23.01.15.10:30 회의",
      "24.03.12.14:00~16:00 교육",
      "23.01.15.10 시 회의",
      "회의 23.01.15.10~12시",
      "표 4.12.1.3 참조",
      "그림 2.10.3.1",
      "Fig. 2.10.3.1",
      "Section 10.1.2.3",
      // four-part versions named as such
      "버전 2.10.3.1",
      "버전: 1.10.0.0",
      "version 2.10.3.1 release",
      "ver. 5.15.0.91",
      "최신버전 2.10.3.1",
      "한글버젼: 1.10.0.0",
      "1500-3000원",
      "분당 1800-2500회",
      // after a bank word, but an amount, a date, too few digits, or no bank word (국민 and 우리 alone)
      "은행 대출 1234567890원",
      "은행 영업일 2024-01-15",
      "계좌 1234 5678",
      "우리 회사 1234567890",
      "국민 1234567890",
      "[ACCOUNT] 1234567890",
      "KBS 1234567890",
      // account layouts named as another document's number
      "계약번호 2023-0456-789012",
      "주문번호: 2023-1234-567890",
      "등기번호 1101-2023-012345",
      "입금 확인 후 주문번호 110-123-456789",
      // a card word, but not 16 digits, or Luhn-failing outside the 4-4-4-4 layout
      "카드 1234-5678-9012",
      "카드 승인번호 12345678",
      "카드번호 1234-567890-12345",
      // odd separators only in a mobile number's layout, the same both times
      "2010/12/31",
      "02/123/4567",
      "010~1234-5678",
      "010_1234_5678",  // (an id's underscores)
      "010~1234~5678~9012",
      "골뱅이@ 표시",
      // long numbers that pass Luhn but no network's prefix and length, or an amount, or named otherwise
      "주문번호 20240115123455 확인",  // 14 digits from 2: no network's
      "국가 부채는 2000040000000원이다.",
      "총 자산 9500000000000원 규모",  // a domestic 9 card has 16 digits
      "2619-892719-25701",             // Amex's layout, not its prefix
      "잔액 378282246310005원",        // 15 digits (Amex's layout): 378조 원; 16 would be a card ("원본")
      "거래번호: 4111111111111111",
      "카드 1234 5678 9012 3456",  // spaced: a row of numbers unless a network's first digit
      // rows of a table after a card or bank word; other labels naming the number; units
      "신용카드 이용실적 2020 2021 2022 2023",
      "카드 승인건수 2019 2020 2021 2022 2023",
      "카드 결제 금액 1000 2000 3000 4000원",
      // an amount named right before the number, or a round figure, after a bank word
      "송금액 1500000000 입니다.",
      "은행 총자산 450000000000",
      "이체 한도 1000000000",
      "신한은행 당기순이익 3450000000000 기록.",
      "농협 매출 1234567890 달성.",
      "은행 대출금 3000000000 상환.",
      "계좌 잔액: 1234567890",
      "은행 수신 2000000000000",
      "결제수단: 신용카드 / 주문번호: 2024011512345678",
      "SD카드 시리얼 2023011512345678",
      "Cardinality 2345678901234567",
      "accountant 110123456789",
      "maxSizeKB = 1048576000",
      "diskSizeKB: 1953514584",
      "accountId: 5412345678901234",
      "discardNumbers 1234567890123456",
      "은행 대출 증가율 2021 2022 2023",
      "이체 한도 1000 5000 10000",
      "송금 수수료 500 1000 1500 2000",
      "은행 수: 1000 1500 2000 2500",
      "버퍼 크기(KB): 256 512 1024 2048",
      "최대 4194304 KB (4294967296 바이트)",
      "이체 시각 20240115103045",
      "우체국택배 6012345678901 조회",
      "신한은행(사업자번호 202-81-12345)",
      "신한은행 특허 출원 10-2020-0123456",
      "은행 공시번호 2024-0012-345678",
      // a section number with a spaced counter and a particle
      "5.2.11.1 절에서",
      // Hangul digit words that are no mobile number: a code other than 010, 011, 016-019 and 070, a
      // longer run, a group too long, counting, words
      "공이 일이삼사 오육칠팔",
      "공일공일이삼사오육칠팔구",
      "일공일공일이삼사오육칠팔",
      "공일공-일이삼사-오육칠팔구",
      "공일공-일이삼사-오육칠팔-구",
      "공일이삼사오육칠팔구",
      "공일 공사 일이삼사 오육칠팔",
      // 일 and 이 right after an ASCII digit: a day counter and a particle, not digits
      "매월 01일 12345678원씩 납부",
      "01일 1234567번 주문",
      "010-1234-567이 맞나요",
      "010-123-456이",
      // a separator after a digit word goes on with the number, as after an ASCII digit
      "공일공-일이삼사-오육칠팔-공일공-일이삼사-오육칠팔",
      "영일영",
  };
  STATIC_REQUIRE(sizeof(negatives) / sizeof(negatives[0]) >= 40);
  for (const char* n : negatives) {
    INFO(n);
    PiiCounts counts;
    const std::string in = std::string("값은 ") + n + " 이다";
    CHECK(scrub(in, &counts) == in);
    CHECK(counts.total() == 0);
  }
}

TEST_CASE("pii: several matches in one line, offsets, counts, idempotence") {
  const std::string text =
      "홍길동(900101-1234567)의 연락처는 010-1234-5678, 메일 hong@example.com, 계좌 110-123-456789, "
      "카드 4111-1111-1111-1111, 접속 IP 192.168.0.1 입니다. 2024-01-15 기준 v1.2.3, 12,000원.";
  PiiCounts counts;
  const std::string once = scrub_pii(text, counts);
  CHECK(once ==
        "홍길동([RRN])의 연락처는 [PHONE], 메일 [EMAIL], 계좌 [ACCOUNT], 카드 [CARD], 접속 IP [IP] 입니다. "
        "2024-01-15 기준 v1.2.3, 12,000원.");
  CHECK(counts.rrn == 1);
  CHECK(counts.phone == 1);
  CHECK(counts.email == 1);
  CHECK(counts.account == 1);
  CHECK(counts.card == 1);
  CHECK(counts.ip == 1);
  CHECK(counts.total() == 6);

  // Lists joined by a bare comma: each item is one match (a comma is not part of any PII).
  PiiCounts listed;
  CHECK(scrub_pii("010-1234-5678,010-2345-6789 / 02-123-4567,4568 / 10.0.0.1,10.0.0.2 / "
                  "900101-1234567,900202-2345678 / 4111111111111111,5500000000000004 / 110-123-456789,12,000원",
                  listed) ==
        "[PHONE],[PHONE] / [PHONE],4568 / [IP],[IP] / [RRN],[RRN] / [CARD],[CARD] / [ACCOUNT],12,000원");
  CHECK(listed.total() == 10);
  // A spaced account run stops before a group that goes on with a dash or a dot: the next number's
  // (the phone here would otherwise make the run too long for an account, and only a second scrub,
  // after [PHONE], would find it).
  CHECK(scrub_pii("계좌번호 110 123 456789 010-1234-5678 로", listed) == "계좌번호 [ACCOUNT] [PHONE] 로");
  CHECK(scrub_pii("계좌 3333 01 2345678 192.168.0.1", listed) == "계좌 [ACCOUNT] [IP]");
  // What follows a match is judged as what follows its placeholder, so that scrubbing twice changes
  // nothing: a "+82" number glued to the previous one, a run of spaced groups that went on with a
  // number the scrub replaced.
  CHECK(scrub_pii("Tel 010-1234-5678+821012345678", listed) == "Tel [PHONE][PHONE]");
  CHECK(scrub_pii("Tel [PHONE]+821012345678", listed) == "Tel [PHONE][PHONE]");
  CHECK(scrub_pii("카드 KB 110123456789 5412345678901234", listed) == "카드 KB 110123456789 [CARD]");
  CHECK(scrub_pii("카드 KB 110123456789 [CARD]", listed) == "카드 KB 110123456789 [CARD]");
  CHECK(scrub_pii("카드 5412 3456 7890 1234 010-1234-5678", listed) == "카드 [CARD] [PHONE]");
  CHECK(scrub_pii("카드 5412 3456 7890 1234 010 1234 5678", listed) == "카드 5412 3456 7890 1234 [PHONE]");
  CHECK(scrub_pii("카드 5412 3456 7890 1234 [PHONE]", listed) == "카드 5412 3456 7890 1234 [PHONE]");
  CHECK(scrub_pii("계좌-1234:4567::1256785678", listed) == "계좌-1234:4567::[ACCOUNT]");
  CHECK(scrub_pii("계좌-1234:4567::[ACCOUNT]", listed) == "계좌-1234:4567::[ACCOUNT]");  // no address ends at "::"
  CHECK(scrub_pii("[ACCOUNT]+821012345678010-1234-5678-02-123-4567192.168RRNhong@naver.com", listed) ==
        "[ACCOUNT]+821012345678010-1234-5678-02-123-4567192.168RRNhong@naver.com");  // its local part was longer
  // The label before a list's first item names the others: numbers that need one (an unchecked card,
  // an account in one piece, a loose RRN) are matched after ", ", " / ", " 및 ", " or " as the first
  // was, and so are they after its placeholder (the scrubbed text is its own scrub). Not after an item
  // of another type, nor after words that are no separator.
  CHECK(scrub_pii("계좌번호: 110123456789, 220345678901 및 3020123456789", listed) ==
        "계좌번호: [ACCOUNT], [ACCOUNT] 및 [ACCOUNT]");
  CHECK(scrub_pii("계좌번호: [ACCOUNT], 220345678901", listed) == "계좌번호: [ACCOUNT], [ACCOUNT]");
  CHECK(scrub_pii("카드번호 5412-3456-7890-1234 / 5412-3456-7890-1235 or 9410 1234 5678 9012", listed) ==
        "카드번호 [CARD] / [CARD] or [CARD]");
  CHECK(scrub_pii("주민번호 900101 1234560, 850505 2345671", listed) == "주민번호 [RRN], [RRN]");
  CHECK(scrub_pii("계좌번호 110123456789 확인 후 220345678901", listed) == "계좌번호 [ACCOUNT] 확인 후 220345678901");
  CHECK(scrub_pii("계좌 문의 010-1234-5678, 1234567890 / 5412345678901234", listed) ==
        "계좌 문의 [PHONE], 1234567890 / 5412345678901234");
  CHECK(scrub_pii("[PHONE], 1234567890", listed) == "[PHONE], 1234567890");
  CHECK(scrub_pii("계좌 110-123-456789, 2023, 2024년", listed) == "계좌 [ACCOUNT], 2023, 2024년");
  // Labelled as an address, a dotted quad is one, and a range that is not a quantity stays a number.
  CHECK(scrub_pii("IP 10.1.2.3, 대표번호 1588-1234로", listed) == "IP [IP], 대표번호 [PHONE]로");
  // An address ends at its last label that can be a top-level domain; what follows is text, scrubbed
  // on its own, and the result scrubs to itself.
  CHECK(scrub_pii("hong@naver.com.010-1234-5678 / kim@회사.한국.900101-1234567", listed) ==
        "[EMAIL].[PHONE] / [EMAIL].[RRN]");
  // A dotted quad before a word that merely starts with a counter syllable is an address.
  CHECK(scrub_pii("서버 192.168.10.25 호스트로, 10.0.0.5 관리자 페이지, 203.0.113.7 조회", listed) ==
        "서버 [IP] 호스트로, [IP] 관리자 페이지, [IP] 조회");
  // Labels are looked for after the previous match only, so the shorter or longer placeholders of the
  // scrubbed text bring no label into reach or out of it: these scrub to themselves.
  for (const char* line :
       {"카드 결제 010-1234-5678 문의, 1234 5678 1234 5678", "주민번호 010-1234-5678 문의 900101.1234567",
        "Tel 010-1234-5678 account 110123456789", "card 4111-1111-1111-1111 account 110123456789",
        "계약번호 (확인용) a@b.co 110-123-456789", "계좌 문의 010-1234-5678 또는 1234567890",
        "계좌 110-123-456789, 12345 67890 12, 1234567890123", "카드 4111-1111-1111-1111, 5412 3456 7890 1234 및 1"}) {
    INFO(line);
    PiiCounts first, second;
    const std::string once_more = scrub_pii(line, first);
    CHECK(scrub_pii(once_more, second) == once_more);
    CHECK(second.total() == 0);
  }

  PiiCounts again;
  CHECK(scrub_pii(once, again) == once);
  CHECK(again.total() == 0);

  const auto matches = find_pii("tel 010-1234-5678 / a@b.co");
  REQUIRE(matches.size() == 2);
  CHECK(matches[0].begin == 4);
  CHECK(matches[0].end == 17);
  CHECK(matches[0].type == PiiType::kPhone);
  CHECK(matches[1].begin == 20);
  CHECK(matches[1].type == PiiType::kEmail);

  PiiCounts sum;
  sum += counts;
  sum += counts;
  CHECK(sum.total() == 12);
  CHECK(pii_placeholder(PiiType::kAccount) == "[ACCOUNT]");
  CHECK(pii_name(PiiType::kIp) == "ip");
  CHECK(scrub("", &counts).empty());
}

// Random strings built from the pieces the matchers look for (at-signs hidden or not, dots, labels,
// digits, Hangul, brackets, stray UTF-8 bytes): matches come in order, never overlap, stay inside the
// text, and scrubbing the scrubbed text changes nothing.
// Pieces that make PII, near misses, labels and separators, joined at random by the property tests.
static const std::string_view kPiiPieces[] = {"@",
                                              "＠",
                                              "골뱅이",
                                              "(at)",
                                              "[AT]",
                                              "(dot)",
                                              "{at}",
                                              "<dot>",
                                              ">",
                                              "[dot]",
                                              ".",
                                              " ",
                                              "-",
                                              "hong",
                                              "naver",
                                              "com",
                                              "kr",
                                              "한국",
                                              "회사",
                                              "(",
                                              ")",
                                              "[",
                                              "]",
                                              "1",
                                              "0",
                                              "12",
                                              "가",
                                              "a",
                                              "::",
                                              "8",
                                              "골",
                                              "뱅",
                                              "\xB1",
                                              "\xEF",
                                              "010",
                                              "-",
                                              "1234",
                                              "5678",
                                              "900101",
                                              "4111",
                                              "1111",
                                              "+82",
                                              "계좌",
                                              "주민번호",
                                              "카드",
                                              "법인등록번호",
                                              "RRN",
                                              "fe80",
                                              "192.168",
                                              ".0.1",
                                              ", ",
                                              " 및 ",
                                              "110123456789",
                                              "5412345678901234",
                                              " account ",
                                              "KB",
                                              "size",
                                              "Tel 010-1234-5678",
                                              "110 123 456789",
                                              " 456789",
                                              "계좌번호 ",
                                              ":",
                                              "hong@naver.com",
                                              "10.0.0.1",
                                              "5412 3456 7890 1234",
                                              " 010 1234 5678",
                                              "카드 ",
                                              " 010",
                                              "-1234",
                                              "3333 01 2345678",
                                              "+821012345678",
                                              "a@b.com",
                                              "123",
                                              "4567",
                                              "02-123-4567",
                                              "공일공",
                                              "영",
                                              "공",
                                              "일이삼사",
                                              "오육칠팔",
                                              "이",
                                              "구",
                                              "닷컴",
                                              " 닷 ",
                                              "점",
                                              "네이버",
                                              "다음",
                                              "로",
                                              "kakao",
                                              "@회사.한국",
                                              "01일",
                                              "567이"};

TEST_CASE("pii: random fragments: ordered spans, and scrubbing twice changes nothing") {
  const auto& pieces = kPiiPieces;
  uint64_t state = 12345;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 33);
  };
  uint64_t found = 0;
  for (int it = 0; it < 300000; ++it) {
    std::string text;
    for (int k = static_cast<int>(next() % 12); k > 0; --k) text += pieces[next() % std::size(pieces)];
    INFO(text);
    const auto matches = find_pii(text);
    for (size_t k = 0; k < matches.size(); ++k) {
      REQUIRE(matches[k].begin < matches[k].end);
      REQUIRE(matches[k].end <= text.size());
      if (k > 0) REQUIRE(matches[k - 1].end <= matches[k].begin);
    }
    PiiCounts once, twice;
    const std::string scrubbed = scrub_pii(text, once);
    REQUIRE(once.total() == matches.size());
    REQUIRE(scrub_pii(scrubbed, twice) == scrubbed);
    found += matches.size();
  }
  CHECK(found > 1000);  // the pieces do make matches
}

TEST_CASE("pii: a number broken across two lines is scrubbed across the break") {
  struct Case {
    std::string first, second, first_after, second_after;
    PiiType type;
  };
  const Case cases[] = {
      {"연락처 010-1234-", "5678입니다.", "연락처 [PHONE]", "입니다.", PiiType::kPhone},    // a wrap after a dash
      {"연락처 010-12", "34-5678 로 연락", "연락처 [PHONE]", "로 연락", PiiType::kPhone},   // inside a group
      {"연락처는 010 1234", "5678 입니다", "연락처는 [PHONE]", "입니다", PiiType::kPhone},  // at a space
      {"주민번호 900101-", "1234567", "주민번호 [RRN]", "", PiiType::kRrn},                 // nothing left
      {"주민번호 900101", "1234567 (본인)", "주민번호 [RRN]", "(본인)", PiiType::kRrn},     // labelled, spaced
      {"입금 계좌 110-123-", "456789 (신한)", "입금 계좌 [ACCOUNT]", "(신한)", PiiType::kAccount},
      {"카드 4111 1111", "1111 1111 로 결제", "카드 [CARD]", "로 결제", PiiType::kCard},
      {"마스킹 900101-1", "****** 입니다", "마스킹 [RRN]", "입니다", PiiType::kRrn},
      {"연락처 010-1234", "-5678", "연락처 [PHONE]", "", PiiType::kPhone},  // the dash on the second line
      // Inside the last group (a wrap at a fixed width, as `fold` makes): the groups before are whole.
      {"연락처 010-1234-56", "78 입니다", "연락처 [PHONE]", "입니다", PiiType::kPhone},
      {"주민번호 900101-12", "34567 입니다", "주민번호 [RRN]", "입니다", PiiType::kRrn},
      {"카드 4111-1111-1111-11", "11 결제", "카드 [CARD]", "결제", PiiType::kCard},
      // A parenthesised area code ends the first line.
      {"전화 (02)", "123-4567 입니다", "전화 [PHONE]", "입니다", PiiType::kPhone},
      {"대표 (031)", "1234-5678", "대표 [PHONE]", "", PiiType::kPhone},
      // Not glued (no separator before the break) but read with a space, as on one line.
      {"주민번호 900101", "-1234567 입니다", "주민번호 [RRN]", "입니다", PiiType::kRrn},
      // The label ends the first line, the number starts the second.
      {"주민등록번호:", "900101 1234567", "주민등록번호:", "[RRN]", PiiType::kRrn},
      {"입금 계좌:", "110123456789 (신한)", "입금 계좌:", "[ACCOUNT] (신한)", PiiType::kAccount},
      {"계좌번호", "110 123 456789 로", "계좌번호", "[ACCOUNT] 로", PiiType::kAccount},
      // An e-mail address broken at, after or before its '@'.
      {"문의: hong.gildong@", "naver.com 으로 보내주세요", "문의: [EMAIL]", "으로 보내주세요", PiiType::kEmail},
      {"담당 hong.gildong@naver.", "com", "담당 [EMAIL]", "", PiiType::kEmail},
      {"메일 kim_01@korea.ac.", "kr 로", "메일 [EMAIL]", "로", PiiType::kEmail},
      {"메일 hong@na", "ver.com 입니다", "메일 [EMAIL]", "입니다", PiiType::kEmail},
      {"담당자 hong.gildong", "@naver.com 입니다", "담당자 [EMAIL]", "입니다", PiiType::kEmail},
  };
  for (const Case& c : cases) {
    INFO(c.first << " | " << c.second);
    std::string first = c.first, second = c.second;
    PiiCounts counts;
    CHECK(scrub_pii_across(first, second, counts));
    CHECK(first == c.first_after);
    CHECK(second == c.second_after);
    CHECK(counts.total() == 1);
    CHECK(counts[c.type] == 1);
    CHECK_FALSE(scrub_pii_across(first, second, counts));  // idempotent: a placeholder at the break
  }
  {
    // After a match labelled from the first line, the rest of the second is scrubbed again too.
    std::string first = "계좌번호:", second = "110123456789+821012345678 끝";
    PiiCounts counts;
    CHECK(scrub_pii_across(first, second, counts));
    CHECK(first == "계좌번호:");
    CHECK(second == "[ACCOUNT][PHONE] 끝");
    CHECK(counts.total() == 2);
  }
  {
    // The rest of the second line is scrubbed again: "+8210..." stood behind the account's tail.
    std::string first = "계좌번호 5678010", second = "456789+821012345678, 끝";
    PiiCounts counts;
    CHECK(scrub_pii_across(first, second, counts));
    CHECK(first == "계좌번호 [ACCOUNT]");
    CHECK(second == "[PHONE], 끝");
    CHECK(counts.account == 1);
    CHECK(counts.phone == 1);
  }
  {
    // The first line is scrubbed again as well: its digits before the address (their tail gone into
    // it) are the account their label names. (Found by the cleaner's idempotence property below, with
    // "@회사.한국": a Korean domain glued across a break is now left alone.)
    std::string first = "점계좌번호 41113333 01 2345678", second = "@naver.com, ";
    PiiCounts counts;
    CHECK(scrub_pii_across(first, second, counts));
    CHECK(first == "점계좌번호 [ACCOUNT] [EMAIL]");
    CHECK(second == ", ");
    CHECK(counts.email == 1);
    CHECK(counts.account == 1);
  }
  {
    // A name broken after a '-' whose address the second line scrubbed alone ("debian-" |
    // "boot@lists.debian.org", as wrappers break after hyphens): its first part goes too.
    std::string first = "메일링 리스트(debian-", second = "[EMAIL]) 로 알리십시오";
    PiiCounts counts;
    CHECK(scrub_pii_across(first, second, counts));
    CHECK(first == "메일링 리스트(");
    CHECK(second == "[EMAIL]) 로 알리십시오");
    CHECK(counts.total() == 0);  // (counted when the second line was scrubbed)
    CHECK_FALSE(scrub_pii_across(first, second, counts));
    std::string word = "pre-", rest = "training 은";  // no address: a hyphenated word stays
    CHECK_FALSE(scrub_pii_across(word, rest, counts));
    CHECK(word == "pre-");
  }
  // Left alone: numbers that only read as PII joined, nothing across the break, and edges that
  // cut no number.
  const std::pair<std::string, std::string> stays[] = {
      {"결산 기준일 201231", "1500000 원"},  // a date and an amount, not 13 digits of an RRN
      {"시행일 990101", "2000000 원"},
      {"인구 63002313", "87288736 명"},  // not 16 digits of a card
      {"금액 2076962", "440751465 원"},
      {"증가율은 12.5.", "2.1 연구 방법"},  // a decimal ending a paragraph, then a heading: no address
      {"The sample mean was 101.5.", "2.4 Discussion"},
      {"서버 10.0.", "0.1 에 접속"},        // (so an address broken after a dot is missed)
      {"자세한 내용은 3.2.1", "4.5 결과"},  // section numbers, glued no address
      {"2.1.3", "2.2"},
      {"전기 1644", "-1320"},  // two amounts, not a representative number
      // A line that merely contains a label word names nothing on the next (table cells, headings).
      {"송금액", "1500000000"},
      {"이체 한도", "5000000000"},
      {"농협", "2023 12345 678"},
      {"단위: KB", "1048576 2097152"},
      {"1705312245 INFO created account", "1705312250 INFO charged card"},
      {"주민등록인구", "100512 2345678"},
      {"카드 이용 건수(천건)", "4521 4873 5102 5390"},
      {"설립 2023", "0115 계약"},        // 20230115: a date
      {"수량 1000 2000", "3000 4000"},   // a row of round numbers
      {"1,234", "5678원"},               // a comma separates
      {"전화 [PHONE]", "1234"},          // a placeholder already ends the line
      {"연락처 010-1234-5678", "5678"},  // the first line's number is whole: it would continue it
      {"버전 1.2", "3.4 출시"},          // a version label
      {"페이지 12", "34쪽"},
      {"abc", "1234 입니다"},     // no label at the end of the first, nothing broken
      {"(02)", "2023년"},         // an area code alone, then a year
      {"그림 (12)", "123-4567"},  // not an area code
      {"(2020)", "123-4567"},
      {"그림 비율 2003-02-27", "212원"},  // a wrap at a space glues a date and an amount into no account
      {"계좌 110-123-45", "6789 입금"},   // (so an account broken inside its last group is missed)
      {"010-1234-", "오육칠팔"},          // the second does not start with a digit
      // E-mail-like words that join into no address, or an address whole on one line.
      {"follow @bertforge", "team.com"},  // no local part before the '@'
      {"me@home", "tonight"},
      {"연락처 [EMAIL]", "com"},
      {"hong.gil", "dong 입니다"},
      {"이메일.", "@ 기호"},
      {"문의 hong", "@ 로"},
      // Prose and code glued across a break into no address a wrap would break: a capitalised word,
      // no common top-level domain, a plain word before a line starting with '@'.
      {"Log in as admin@localhost.", "It will ask for a password."},
      {"Connect as postgres@localhost.", "Then create the database."},
      {"    @property", "@abc.abstractmethod"},
      {"import pytest", "@pytest.mark.parametrize(\"x\", [1])"},
      {"Sign up with your", "@gmail.com address."},
      {"npm install react@18.2.", "Then restart."},
      {"", "010"},
      {"010", ""},
  };
  for (const auto& [a, b] : stays) {
    INFO(a << " | " << b);
    std::string first = a, second = b;
    PiiCounts counts;
    CHECK_FALSE(scrub_pii_across(first, second, counts));
    CHECK(first == a);
    CHECK(second == b);
    CHECK(counts.total() == 0);
  }
}

TEST_CASE("clean: a number wrapped across a document's lines is scrubbed, and cleaning twice changes nothing") {
  CleanOptions options;
  DocumentCleaner cleaner(options);
  std::string out;
  CHECK(cleaner.clean("문의는 연락처 010-1234-\n5678로 주세요.\n주민번호 900101-\n1234567\n다음 줄\n", out) == 4);
  CHECK(out == "문의는 연락처 [PHONE]\n로 주세요.\n주민번호 [RRN]\n다음 줄");  // the empty rest is dropped
  CHECK(cleaner.pii().phone == 1);
  CHECK(cleaner.pii().rrn == 1);
  std::string again;
  DocumentCleaner second(options);
  second.clean(out + "\n", again);
  CHECK(again == out);
  CHECK(second.pii().total() == 0);
  // --no-scrub-pii keeps the lines as they were.
  CleanOptions keep = options;
  keep.scrub_pii = false;
  DocumentCleaner keeper(keep);
  out.clear();
  keeper.clean("연락처 010-1234-\n5678\n", out);
  CHECK(out == "연락처 010-1234-\n5678");

  // A line whose end is a match alone ("kim_01@korea.ac." an address of .ac, "4111-1111-1111-11" an
  // account) that the next line continues: the match across takes its place and its count.
  DocumentCleaner tails(options);
  out.clear();
  CHECK(tails.clean("메일 kim_01@samsung.co.\nkr 로\n카드 4111-1111-1111-11\n11 결제\n담당 hong.gildong@naver.\ncom\n"
                    "연락처 010-1234-5678\n5678 입니다\n",
                    out) == 7);
  CHECK(out == "메일 [EMAIL]\n로\n카드 [CARD]\n결제\n담당 [EMAIL]\n연락처 [PHONE]\n5678 입니다");
  CHECK(tails.pii().email == 2);
  CHECK(tails.pii().card == 1);
  CHECK(tails.pii().phone == 1);  // (a whole number then digits: no match across, the line's own stays)
  CHECK(tails.pii().account == 0);
  // Not retried: a whole number or an address with its top-level domain ends the line, and the next
  // line's first word stays its own ("3월", "2.", "12-34 번지", "app"); nor a number in spaced groups,
  // which a match across could only cut ("4111 1111 1111 [EMAIL]").
  DocumentCleaner whole(options);
  out.clear();
  whole.clean(
      "입금 계좌: 신한 110123456789\n3월 15일까지 입금 바랍니다.\n계좌번호 110123456789\n2. 주소: 서울시\n"
      "대표전화 02-123-4567\n12-34 번지\n문의는 help@site.com.\napp 설치 후\n카드 4111 1111 1111 1111\n"
      "@gmail.com 로\n",
      out);
  CHECK(
      out ==
      "입금 계좌: 신한 [ACCOUNT]\n3월 15일까지 입금 바랍니다.\n계좌번호 [ACCOUNT]\n2. 주소: 서울시\n대표전화 [PHONE]\n"
      "12-34 번지\n문의는 [EMAIL].\napp 설치 후\n카드 [CARD]\n@gmail.com 로");
  CHECK(whole.pii().total() == 5);

  // Random documents of 1-6 lines of random pieces: cleaning the output again changes nothing, every
  // line out is non-empty, and nothing is scrubbed the second time. Valid UTF-8 only: the reader
  // replaces invalid bytes before the cleaner sees a line.
  std::vector<std::string_view> valid_pieces;
  for (const std::string_view piece : kPiiPieces)
    if (utf8_valid(piece)) valid_pieces.push_back(piece);
  uint64_t state = 99;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 33);
  };
  uint64_t across = 0;
  CleanOptions split = options;
  split.split_sentences = true;
  for (int it = 0; it < 100000; ++it) {
    std::string document;
    for (int line = static_cast<int>(next() % 5); line >= 0; --line) {
      for (int k = static_cast<int>(next() % 6); k > 0; --k) document += valid_pieces[next() % valid_pieces.size()];
      document += '\n';
    }
    INFO(document);
    DocumentCleaner once(options), twice(options);
    std::string cleaned, recleaned;
    once.clean(document, cleaned);
    // Lines scrubbed on their own, to count what only the breaks made.
    PiiCounts alone;
    for (size_t b = 0, e; b < document.size(); b = e + 1) {
      e = document.find('\n', b);
      std::string line;
      normalize_line(std::string_view(document).substr(b, e - b), line);
      scrub_pii(line, alone);
    }
    across += once.pii().total() - alone.total();
    REQUIRE(cleaned.find("\n\n") == std::string::npos);
    REQUIRE((cleaned.empty() || (cleaned.front() != '\n' && cleaned.back() != '\n')));
    twice.clean(cleaned + "\n", recleaned);
    REQUIRE(recleaned == cleaned);
    REQUIRE(twice.pii().total() == 0);
    // With --split-sentences each sentence is a line of the output, and cleaning that again scrubs
    // nothing new across those lines either.
    DocumentCleaner split_once(split), split_twice(split);
    std::string sentences, resplit;
    split_once.clean(document, sentences);
    split_twice.clean(sentences + "\n", resplit);
    REQUIRE(resplit == sentences);
    REQUIRE(split_twice.pii().total() == 0);
  }
  CHECK(across > 100);  // the pieces do break numbers across lines
}

TEST_CASE("clean --join-wrapped-lines: a paragraph hard-wrapped at a fixed width is one line again") {
  CHECK(sentence_ends_between("목적으로 한다.", "다음 조항"));
  CHECK(sentence_ends_between("끝났다!", "그리고"));
  CHECK(sentence_ends_between("그는 \"간다.\"", "그리고 떠났다."));
  CHECK(sentence_ends_between("「끝。」", "다음"));
  CHECK(sentence_ends_between("Really?", "Yes."));
  CHECK_FALSE(sentence_ends_between("이 법은 국민의", "권리를"));
  CHECK_FALSE(sentence_ends_between("제1조(목적)", "이 법은"));
  CHECK_FALSE(sentence_ends_between("연락처 010-1234-", "5678로"));
  CHECK_FALSE(sentence_ends_between("셀프(Karsten M.", "Self)에 저작권이"));  // an initial
  CHECK_FALSE(sentence_ends_between("그는 \"왜?\"", "라고 물었다."));         // a quotative particle
  CHECK_FALSE(sentence_ends_between("그런데...", "왜 그랬을까"));             // an ellipsis goes on
  CHECK_FALSE(sentence_ends_between("시행일은 2024.", "1. 15.이다."));        // a dotted date
  CHECK_FALSE(sentence_ends_between("", "다음"));
  // Only 64 bytes of each side are looked at, cut between characters.
  CHECK(sentence_ends_between(std::string(300, 'a') + " 한국어 문장이 끝났다.", "다음 " + std::string(300, 'b')));
  CHECK(sentence_ends_between("가" + std::string(100, 'a') + "나다라마바사아자차카타파하 끝났다.",
                              "다음"));  // a cut inside a character is moved
  std::string paragraph;
  join_wrapped_line(paragraph, "이 법은");
  CHECK(paragraph == "이 법은");
  join_wrapped_line(paragraph, "국민의");
  CHECK(paragraph == "이 법은 국민의");
  paragraph = "pre-";
  join_wrapped_line(paragraph, "training");
  CHECK(paragraph == "pre-training");  // a hyphen after a letter: the word goes on
  paragraph = "정보-";
  join_wrapped_line(paragraph, "통신");
  CHECK(paragraph == "정보-통신");
  paragraph = "A -";
  join_wrapped_line(paragraph, "B");
  CHECK(paragraph == "A - B");  // a dash after a space is punctuation

  CleanOptions options;
  options.join_wrapped_lines = true;
  DocumentCleaner cleaner(options);
  std::string out;
  CHECK(cleaner.clean("제1조(목적) 이 법은 국민의\n권리와 의무를 정함을\n목적으로 한다.\n연락처 010-1234-\n5678로 "
                      "문의하십시오.\n끝맺지 않은 마지막 줄\n",
                      out) == 3);
  CHECK(out ==
        "제1조(목적) 이 법은 국민의 권리와 의무를 정함을 목적으로 한다.\n연락처 [PHONE] 로 문의하십시오.\n끝맺지 않은 "
        "마지막 줄");  // (scrubbed across the break first, as without the option, then joined)
  CHECK(cleaner.pii().phone == 1);
  // With --split-sentences the joined paragraph is split.
  CleanOptions split = options;
  split.split_sentences = true;
  DocumentCleaner splitter(split);
  out.clear();
  CHECK(splitter.clean("첫 문장은 여기서 끝난다. 둘째 문장은\n다음 줄에서 끝난다.\n", out) == 2);
  CHECK(out == "첫 문장은 여기서 끝난다.\n둘째 문장은 다음 줄에서 끝난다.");
  // Without sentence ends (a table, a list) a paragraph is let go at kMaxJoinedBytes.
  std::string rows;
  for (int i = 0; i < 1000; ++i) rows += "항목 " + std::to_string(i) + "\n";
  out.clear();
  DocumentCleaner table(options);
  const size_t lines_out = table.clean(rows, out);
  CHECK(lines_out > 1);
  size_t longest = 0;
  for (size_t b = 0, e; b <= out.size(); b = e + 1) {
    e = std::min(out.find('\n', b), out.size());
    longest = std::max(longest, e - b);
  }
  CHECK(longest < kMaxJoinedBytes + 16);
  CHECK(longest >= kMaxJoinedBytes);
  // Off (the default), each line stays a line.
  DocumentCleaner plain{CleanOptions{}};
  out.clear();
  CHECK(plain.clean("이 법은 국민의\n권리를 정한다.\n", out) == 2);

  // Random documents: every line out but a document's last ends a sentence (or a placeholder: a scrub
  // across the break may take a line's end), and cleaning the output again with the option changes
  // nothing where nothing was scrubbed (a scrub may change the end that decided a join).
  std::vector<std::string_view> valid_pieces;
  for (const std::string_view piece : kPiiPieces)
    if (utf8_valid(piece)) valid_pieces.push_back(piece);
  const std::string_view ends[] = {".", "!", "?", "다.", "\"", "", "", "", "-", " ", " M.", "?\" 라고"};
  uint64_t state = 5;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 33);
  };
  size_t joined = 0, checked = 0;
  for (int it = 0; it < 50000; ++it) {
    std::string document;
    for (int line = static_cast<int>(next() % 6); line >= 0; --line) {
      for (int k = static_cast<int>(next() % 4); k > 0; --k) document += valid_pieces[next() % valid_pieces.size()];
      document += ends[next() % std::size(ends)];
      document += '\n';
    }
    INFO(document);
    DocumentCleaner once(options), twice(options), alone(CleanOptions{});
    std::string cleaned, recleaned, unjoined;
    const size_t out_lines = once.clean(document, cleaned);
    const size_t plain_lines = alone.clean(document, unjoined);
    REQUIRE(out_lines <= plain_lines);
    joined += plain_lines - out_lines;
    REQUIRE(cleaned.find("\n\n") == std::string::npos);
    // Each line ends a sentence before the next, as the splitter sees them (unless the paragraph's
    // second scrub changed them: then a placeholder is in one).
    for (size_t b = 0, e; (e = cleaned.find('\n', b)) != std::string::npos; b = e + 1) {
      const size_t after = cleaned.find('\n', e + 1);
      const std::string_view line(cleaned.data() + b, e - b),
          next_line(cleaned.data() + e + 1, (after == std::string::npos ? cleaned.size() : after) - e - 1);
      REQUIRE((sentence_ends_between(line, next_line) || line.find('[') != std::string_view::npos ||
               next_line.find('[') != std::string_view::npos));
    }
    if (once.pii().total() != 0) continue;  // a scrub may have moved a line's end
    twice.clean(cleaned + "\n", recleaned);
    REQUIRE(recleaned == cleaned);
    ++checked;
  }
  CHECK(joined > 10000);
  CHECK(checked > 10000);
}

// ---- sentence splitter -------------------------------------------------------------------

TEST_CASE("sentence splitter: Korean endings, quotes, numbers, abbreviations, URLs, ellipsis") {
  struct Case {
    const char* paragraph;
    std::vector<std::string> sentences;
  };
  const Case cases[] = {
      {"오늘은 날씨가 좋다. 내일은 비가 온다고 한다.", {"오늘은 날씨가 좋다.", "내일은 비가 온다고 한다."}},
      // After a sentence-final ending, a '.' glued to a list number (law text pasted without spaces)
      // ends the sentence; glued to a Latin letter (바다.com) or a bracket (a note on the sentence) not.
      {"준수하여야 한다.1. 첫째 호 2. 둘째 호", {"준수하여야 한다.", "1. 첫째 호", "2. 둘째 호"}},
      {"그러하지 아니하다.<개정 2015. 7. 24.> 제2항에 따른다.",
       {"그러하지 아니하다.<개정 2015. 7. 24.> 제2항에 따른다."}},
      {"모든 행이 반환됩니다.(선택 사항) 다음.", {"모든 행이 반환됩니다.(선택 사항) 다음."}},
      {"바다.com 에 가입했다.", {"바다.com 에 가입했다."}},
      {"제1조.2항", {"제1조.2항"}},  // not after a sentence-final ending
      // A particle standing alone goes with the word before it.
      {"Samsung Co., Ltd. 는 한국 기업이다. 다음 문장.", {"Samsung Co., Ltd. 는 한국 기업이다.", "다음 문장."}},
      {"가. 첫째 나. 둘째 다.1 셋째", {"가. 첫째", "나. 둘째 다.1 셋째"}},  // the marker 다., not an ending
      {"가. 첫째 나. 둘째 다.셋째", {"가. 첫째", "나. 둘째 다.셋째"}},
      {"네.알겠습니다.", {"네.", "알겠습니다."}},
      {"Apple Inc. 의 제품 및 Google Inc. 및 여러 회사. Inc. 이순신.",
       {"Apple Inc. 의 제품 및 Google Inc. 및 여러 회사.", "Inc.", "이순신."}},
      {"예를 들었습니다. 이 예에서 만 19세. 만 원이다.", {"예를 들었습니다.", "이 예에서 만 19세.", "만 원이다."}},
      {"마침표 '.' 를 씁니다. 를 참고합니다.", {"마침표 '.' 를 씁니다.", "를 참고합니다."}},  // (markup stripped)
      {"마침표(.) 를 누릅니다(확장자 제외). 는 설명입니다.", {"마침표(.) 를 누릅니다(확장자 제외).", "는 설명입니다."}},
      {"정말 그렇습니까? 네, 그렇습니다! 알겠어요. 그렇죠. 감사합니다.",
       {"정말 그렇습니까?", "네, 그렇습니다!", "알겠어요.", "그렇죠.", "감사합니다."}},
      {"정말?! 믿을 수 없어!! 진짜야.", {"정말?!", "믿을 수 없어!!", "진짜야."}},
      // quotes and brackets stay with their sentence; a quotative particle continues it
      {"그녀가 말했다. \"정말 좋아요.\" 그리고 웃었다.", {"그녀가 말했다.", "\"정말 좋아요.\"", "그리고 웃었다."}},
      {"그는 \"왜 그랬어?\" 라고 물었다. 나는 답하지 않았다.",
       {"그는 \"왜 그랬어?\" 라고 물었다.", "나는 답하지 않았다."}},
      {"“좋아요.” 그가 답했다.", {"“좋아요.”", "그가 답했다."}},
      {"「안녕하세요.」 그가 말했다.", {"「안녕하세요.」", "그가 말했다."}},
      {"(그는 떠났다.) 그녀는 남았다.", {"(그는 떠났다.)", "그녀는 남았다."}},
      {"\"Why?\" he asked. Nobody knew.", {"\"Why?\" he asked.", "Nobody knew."}},
      // numbers
      {"원주율은 3.14이다. 가격은 1,000.5원이다.", {"원주율은 3.14이다.", "가격은 1,000.5원이다."}},
      {"The price is $3.99. That is cheap.", {"The price is $3.99.", "That is cheap."}},
      {"작성일 2024. 1. 15. 작성자 홍길동이다. 끝.", {"작성일 2024. 1. 15. 작성자 홍길동이다.", "끝."}},
      {"1. 서론 부분이다. 2. 본론은 여기에 있다.", {"1. 서론 부분이다.", "2. 본론은 여기에 있다."}},
      {"2.3. 세부 항목이다.", {"2.3. 세부 항목이다."}},
      {"가. 첫째 항목이다. 나. 둘째 항목이다.", {"가. 첫째 항목이다.", "나. 둘째 항목이다."}},
      // enumerations flattened into one line: split before each next marker
      {"다음 각 호의 자는 될 수 없다. 1. 미성년자 2. 피성년후견인 3. 파산선고를 받은 자",
       {"다음 각 호의 자는 될 수 없다.", "1. 미성년자", "2. 피성년후견인", "3. 파산선고를 받은 자"}},
      {"가. 주거지역 나. 상업지역 다. 공업지역", {"가. 주거지역", "나. 상업지역", "다. 공업지역"}},
      {"i. 첫째 ii. 둘째", {"i. 첫째", "ii. 둘째"}},
      {"Ⅰ. 서론 Ⅱ. 본론 Ⅲ. 결론", {"Ⅰ. 서론", "Ⅱ. 본론", "Ⅲ. 결론"}},
      {"9. 아홉째 10. 열째", {"9. 아홉째", "10. 열째"}},
      // not the next marker: no split ("3." after "1." is a sentence end as before)
      {"1. 점수는 3. 그리고 끝", {"1. 점수는 3.", "그리고 끝"}},
      {"이게 다. 나. 둘째", {"이게 다.", "나. 둘째"}},
      // abbreviations and initials
      {"Mr. Kim met Dr. Lee at 5 p.m. Then they left.", {"Mr. Kim met Dr. Lee at 5 p.m.", "Then they left."}},
      {"J. K. Rowling wrote it. The U.S. Army agreed.", {"J. K. Rowling wrote it.", "The U.S. Army agreed."}},
      {"비타민 C. 다음 문장이다.", {"비타민 C.", "다음 문장이다."}},
      {"그는 Ph.D. 학위를 받았다.", {"그는 Ph.D. 학위를 받았다."}},
      {"Apples, oranges, etc. are fruits. We like them, etc. Then we eat.",
       {"Apples, oranges, etc. are fruits.", "We like them, etc.", "Then we eat."}},
      {"See Fig. 3 for details. No. 5 was chosen.", {"See Fig. 3 for details.", "No. 5 was chosen."}},
      {"i.e. this one. e.g. that one. Kim vs. Lee.", {"i.e. this one.", "e.g. that one.", "Kim vs. Lee."}},
      {"Samsung Inc. is big. Apple Inc. Then more.", {"Samsung Inc. is big.", "Apple Inc.", "Then more."}},
      {"사과, 배 등. 다음 문장이다.", {"사과, 배 등.", "다음 문장이다."}},
      // URLs, e-mails, domains, file names, versions
      {"자세한 내용은 example.com을 참고하세요. 메일은 a.b@example.com입니다.",
       {"자세한 내용은 example.com을 참고하세요.", "메일은 a.b@example.com입니다."}},
      {"Visit https://www.example.com/path?a=1. It is good.",
       {"Visit https://www.example.com/path?a=1.", "It is good."}},
      {"파일 a.txt를 열고 v1.2.3을 설치한다. 끝났다.", {"파일 a.txt를 열고 v1.2.3을 설치한다.", "끝났다."}},
      {"서버는 www.naver.com. 다음은 a@b.co.kr. 끝이다.", {"서버는 www.naver.com.", "다음은 a@b.co.kr.", "끝이다."}},
      // ellipsis
      {"그런데... 왜 그랬을까? 모르겠다... 그래도 간다.", {"그런데... 왜 그랬을까?", "모르겠다...", "그래도 간다."}},
      {"그래서… 결국 했다.", {"그래서… 결국 했다."}},
      {"I waited... Then it came.", {"I waited...", "Then it came."}},
      // glued and CJK terminators, whitespace
      {"했다.그리고 또 했다.", {"했다.", "그리고 또 했다."}},
      {"정말?그럼 가자.", {"정말?", "그럼 가자."}},
      {"버전은 주.부.세부 형식이다.", {"버전은 주.부.세부 형식이다."}},
      {"見た。次の文。", {"見た。", "次の文。"}},
      {"  앞뒤 공백이 있다.   다음.  ", {"앞뒤 공백이 있다.", "다음."}},
      {"마침표 없는 문장", {"마침표 없는 문장"}},
      {"", {}},
      {"   ", {}},
  };
  for (const Case& c : cases) {
    INFO(c.paragraph);
    CHECK(split_sentences(c.paragraph) == c.sentences);
  }
}

// ---- reader ------------------------------------------------------------------------------

TEST_CASE("reader: plain text lines, CRLF, last line without newline, invalid UTF-8") {
  const std::string dir = temp_dir("reader_plain");
  write_text(dir + "/a.txt", "첫 줄\r\n\n둘째 \xff줄\nend");
  uint64_t invalid = 0;
  const auto lines = read_lines(dir + "/a.txt", &invalid);
  REQUIRE(lines.size() == 4);
  CHECK(lines[0] == "첫 줄");
  CHECK(lines[1].empty());
  CHECK(lines[2] == "둘째 \xEF\xBF\xBD줄");  // U+FFFD
  CHECK(lines[3] == "end");
  CHECK(invalid == 1);

  LineReader reader(dir + "/a.txt");
  std::string_view line;
  size_t bad_line = 0;
  while (reader.next(line))
    if (reader.invalid_in_line()) bad_line = reader.line_number();
  CHECK(bad_line == 3);
  CHECK(reader.bytes_read() == file_size(dir + "/a.txt"));
  CHECK_FALSE(reader.compressed());

  CHECK(utf8_valid_prefix("abc\xED\xA0\x80") == 3);  // surrogate
  CHECK(utf8_valid_prefix("한글") == 6);
  CHECK(utf8_valid_prefix("한\xEA\xB8") == 3);  // truncated
}

TEST_CASE("reader: a lone CR ends a line (classic Mac files), CRLF and CRCRLF end one, across buffer refills") {
  const std::string dir = temp_dir("reader_cr");
  // As Python's universal newlines read it, except that "\r\r\n" is one ending (a CRLF file converted
  // twice would otherwise get a blank line, a document boundary, after every line).
  const auto reference = [](const std::string& text) {
    std::vector<std::string> lines;
    std::string line;
    for (size_t i = 0; i < text.size();) {
      if (text[i] == '\n') {
        lines.push_back(line), line.clear(), ++i;
      } else if (text[i] == '\r') {
        lines.push_back(line), line.clear();
        if (text.compare(i, 2, "\r\n") == 0) {
          i += 2;
        } else if (text.compare(i, 3, "\r\r\n") == 0) {
          i += 3;
        } else {
          ++i;
        }
      } else {
        line += text[i++];
      }
    }
    if (!line.empty()) lines.push_back(line);
    return lines;
  };
  CHECK(reference("a\rb\r\nc\r\r\nd\r\re\r\r\r\nf") == std::vector<std::string>{"a", "b", "c", "d", "", "e", "", "f"});
  write_text(dir + "/mac.txt", "첫 줄\r둘째 줄\r\r셋째 문서\r");
  CHECK(read_lines(dir + "/mac.txt") == std::vector<std::string>{"첫 줄", "둘째 줄", "", "셋째 문서"});
  write_text(dir + "/twice.txt", "첫 줄\r\r\n둘째 줄\r\r\n");
  CHECK(read_lines(dir + "/twice.txt") == std::vector<std::string>{"첫 줄", "둘째 줄"});
  write_text(dir + "/trailing.txt", "끝\r\r");
  CHECK(read_lines(dir + "/trailing.txt") == std::vector<std::string>{"끝", ""});

  // Each ending split by the first read (1 MiB) at each of its bytes, plain and gzip.
  const char* endings[] = {"\n", "\r\n", "\r", "\r\r\n", "\r\r", "\r\r\r\n", "\r\r\r"};
  for (const char* ending : endings)
    for (size_t before = 1; before <= 3; ++before) {
      const std::string text = std::string((size_t{1} << 20) - before, 'x') + ending + "next\rlast";
      INFO("ending of " << std::strlen(ending) << " bytes starting " << before << " before the first read's end");
      const std::vector<std::string> expected = reference(text);
      write_text(dir + "/split.txt", text);
      CHECK(read_lines(dir + "/split.txt") == expected);
      write_gz(dir + "/split.txt.gz", text);
      CHECK(read_lines(dir + "/split.txt.gz") == expected);
    }

  // Random lines and endings, and a long run of CRs (linear: each is a line).
  std::mt19937 rng(17);
  std::string text;
  while (text.size() < (size_t{5} << 19)) {
    const size_t n = rng() % 300;
    for (size_t k = 0; k < n; ++k) text += rng() % 5 ? static_cast<char>('a' + rng() % 26) : ' ';
    if (rng() % 7 == 0) text += "한국어";
    text += endings[rng() % std::size(endings)];
  }
  text += std::string(200000, '\r') + "end\n";
  write_text(dir + "/mixed.txt", text);
  const std::vector<std::string> expected = reference(text);
  CHECK(read_lines(dir + "/mixed.txt") == expected);
  LineReader reader(dir + "/mixed.txt");
  std::string_view line;
  while (reader.next(line)) {
  }
  CHECK(reader.line_number() == expected.size());
  CHECK(reader.bytes_read() == text.size());
}

TEST_CASE("reader: .gz round trip, multi-member, gzip under another name, long lines") {
  const std::string dir = temp_dir("reader_gz");
  std::string text;
  for (int i = 0; i < 3000; ++i) text += "문장 번호 " + std::to_string(i) + "입니다.\n";
  write_gz(dir + "/one.txt.gz", text);
  CHECK(read_lines(dir + "/one.txt.gz").size() == 3000);
  CHECK(read_lines(dir + "/one.txt.gz")[2999] == "문장 번호 2999입니다.");
  {
    LineReader r(dir + "/one.txt.gz");
    CHECK(r.compressed());
  }

  // Two gzip members back to back (what `cat a.gz b.gz` makes) read as one stream.
  write_gz(dir + "/m1.gz", "첫째 멤버\n");
  write_gz(dir + "/m2.gz", "둘째 멤버\n");
  write_text(dir + "/multi.gz", read_file(dir + "/m1.gz") + read_file(dir + "/m2.gz"));
  CHECK(read_lines(dir + "/multi.gz") == std::vector<std::string>{"첫째 멤버", "둘째 멤버"});

  // Gzip content is recognised by its magic, whatever the name.
  write_text(dir + "/disguised.txt", read_file(dir + "/m1.gz"));
  CHECK(read_lines(dir + "/disguised.txt") == std::vector<std::string>{"첫째 멤버"});

  // A line longer than the initial 1 MiB buffer.
  const std::string long_line(3 << 20, 'x');
  write_gz(dir + "/long.gz", "a\n" + long_line + "\nb");
  const auto lines = read_lines(dir + "/long.gz");
  REQUIRE(lines.size() == 3);
  CHECK(lines[1] == long_line);
  CHECK(lines[2] == "b");

  write_gz(dir + "/empty.gz", "");
  CHECK(read_lines(dir + "/empty.gz").empty());
}

TEST_CASE("reader: corrupt, truncated and fake .gz files are errors naming the file") {
  const std::string dir = temp_dir("reader_bad_gz");
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "줄 " + std::to_string(i * 7919 % 10007) + "\n";
  write_gz(dir + "/good.gz", text);
  const std::string bytes = read_file(dir + "/good.gz");
  REQUIRE(bytes.size() > 1000);

  write_text(dir + "/truncated.gz", bytes.substr(0, bytes.size() / 2));
  REQUIRE_THROWS_WITH(read_lines(dir + "/truncated.gz"),
                      Catch::Contains(dir + "/truncated.gz:") && Catch::Contains("truncated gzip"));

  std::string corrupt = bytes;
  for (size_t i = 100; i < 140; ++i) corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5A);
  write_text(dir + "/corrupt.gz", corrupt);
  REQUIRE_THROWS_WITH(read_lines(dir + "/corrupt.gz"),
                      Catch::Contains(dir + "/corrupt.gz:") && Catch::Contains("gzip"));

  write_text(dir + "/fake.gz", "plain text\n");
  REQUIRE_THROWS_WITH(LineReader(dir + "/fake.gz"), Catch::Contains("fake.gz: not a gzip file"));
  REQUIRE_THROWS_WITH(LineReader(dir + "/missing.txt"), Catch::Contains("missing.txt: cannot open"));
  REQUIRE_THROWS_WITH(LineReader(dir), Catch::Contains("is a directory"));
}

TEST_CASE("reader: a file that is not UTF-8 text is an error naming it and the fix, compressed or not") {
  const std::string dir = temp_dir("reader_not_text");
  const std::string cp949 = cp949_korean(100);
  write_text(dir + "/korean.txt", cp949);
  write_gz(dir + "/korean.txt.gz", cp949);
  write_text(dir + "/utf16.txt", std::string("\xff\xfe\x00\xb3", 4));
  write_text(dir + "/shard.bin", std::string("BERTSHRD\x01\0\0\0", 12));
  for (const char* name : {"korean.txt", "korean.txt.gz"}) {
    INFO(name);
    LineReader reader(dir + "/" + name);
    std::string_view line;
    REQUIRE_THROWS_WITH(reader.next(line), Catch::StartsWith(dir + "/" + name + ": not UTF-8 text (") &&
                                               Catch::EndsWith("iconv -f CP949 -t UTF-8"));
  }
  REQUIRE_THROWS_WITH(read_lines(dir + "/utf16.txt"), Catch::StartsWith(dir + "/utf16.txt: UTF-16 text"));
  REQUIRE_THROWS_WITH(read_lines(dir + "/shard.bin"), dir + "/shard.bin: a bert_prepare shard (binary), not text");
}

TEST_CASE("reader: directories expand recursively to sorted *.txt and *.gz, hidden entries skipped") {
  const std::string dir = temp_dir("reader_dir");
  make_directories(dir + "/corpus/sub");
  make_directories(dir + "/corpus/.git");
  write_text(dir + "/corpus/b.txt", "b\n");
  write_gz(dir + "/corpus/a.txt.gz", "a\n");
  write_text(dir + "/corpus/sub/c.txt", "c\n");
  write_text(dir + "/corpus/.hidden.txt", "hidden\n");
  write_text(dir + "/corpus/.git/x.txt", "git\n");
  write_text(dir + "/corpus/notes.md", "md\n");
  write_text(dir + "/single.md", "named explicitly\n");

  const auto files = expand_inputs({dir + "/single.md", dir + "/corpus"});
  const std::vector<std::string> expected = {dir + "/single.md", dir + "/corpus/a.txt.gz", dir + "/corpus/b.txt",
                                             dir + "/corpus/sub/c.txt"};
  CHECK(files == expected);

  make_directories(dir + "/empty");
  REQUIRE_THROWS_WITH(expand_inputs({dir + "/empty"}), Catch::Contains("empty: directory has no .txt or .gz files"));
  REQUIRE_THROWS_WITH(expand_inputs({dir + "/nope.txt"}), Catch::Contains("nope.txt: input not found"));
  CHECK(is_corpus_file_name("x.txt.gz"));
  CHECK_FALSE(is_corpus_file_name("x.json"));
}

// ---- normalisation -----------------------------------------------------------------------

TEST_CASE("clean: line normalisation collapses whitespace and drops controls and BOM") {
  auto norm = [](std::string_view s) {
    std::string out;
    normalize_line(s, out);
    return out;
  };
  CHECK(norm("  가\t\t나   다  ") == "가 나 다");
  CHECK(norm("\xEF\xBB\xBF첫 줄") == "첫 줄");  // BOM
  CHECK(norm("a\x01\x02"
             "b\x7F"
             "c") == "abc");  // C0 controls, DEL
  CHECK(norm("a\xC2\xA0"
             "b\xE3\x80\x80"
             "c") == "a b c");  // NBSP, ideographic space
  CHECK(norm("a\xE2\x80\x8B"
             "b\xC2\x85"
             "c") == "ab c");  // ZWSP dropped, NEL is a space
  CHECK(norm("\t \xE2\x80\x83 ").empty());
  CHECK(is_blank_line(" \t\xE3\x80\x80\xEF\xBB\xBF"));
  CHECK_FALSE(is_blank_line("  .  "));
  CHECK_FALSE(is_blank_line("한"));

  // Every code point: a space, dropped or kept exactly as the tokenizer's clean_text (HF's tables).
  size_t spaces = 0, dropped = 0;
  for (char32_t c = 0x80; c <= 0x10FFFF; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    std::string ch;
    utf8_append(ch, c);
    const std::string got = norm("a" + ch + "b");
    if (unicode::is_whitespace(c)) {
      ++spaces;
      if (got != "a b") FAIL_CHECK("U+" << std::hex << static_cast<uint32_t>(c) << " is whitespace: " << got);
    } else if (c == 0xFFFD || unicode::is_control(c)) {
      ++dropped;
      if (got != "ab") FAIL_CHECK("U+" << std::hex << static_cast<uint32_t>(c) << " is dropped: " << got);
    } else if (c >= 0xFF10 && c <= 0xFF19) {  // fullwidth digits: folded to ASCII
      if (got != "a" + std::string(1, static_cast<char>('0' + (c - 0xFF10))) + "b") FAIL_CHECK("fullwidth digit");
    } else if (c == 0xFF0D || c == 0xFF0B || c == 0xFF0E || c == 0xFF20 || c == 0xFF08 || c == 0xFF09) {
      if (got != "a" + std::string(1, static_cast<char>(c - 0xFEE0)) + "b") FAIL_CHECK("fullwidth - + . @ ( )");
    } else if (got != "a" + ch + "b") {
      FAIL_CHECK("U+" << std::hex << static_cast<uint32_t>(c) << " is kept: " << got);
    }
  }
  // Fullwidth numbers and the dashes between digits become the ASCII the scrubber reads.
  CHECK(norm("\xEF\xBC\x90\xEF\xBC\x91\xEF\xBC\x90\xEF\xBC\x8D\xEF\xBC\x91\xEF\xBC\x92") == "010-12");
  CHECK(norm("900101\xE2\x80\x93\x31\x32 1990\xE2\x88\x92\xEF\xBC\x92") == "900101-12 1990-2");
  CHECK(norm("서울\xE2\x80\x93부산 1990 \xE2\x80\x93 2000 a\xE2\x80\x90"
             "1") ==
        "서울\xE2\x80\x93부산 1990 \xE2\x80\x93 2000 a\xE2\x80\x90"
        "1");               // not between two digits
  CHECK(spaces >= 17);      // U+0085, U+00A0, U+1680, U+2000-200A, U+2028/9, U+202F, U+205F, U+3000
  CHECK(dropped > 130000);  // C1, Cf, and the private use planes

  CleanOptions options;
  options.split_sentences = true;
  DocumentCleaner cleaner(options);
  std::string out;
  // An invisible character or an invalid byte inside a number is dropped before the scrub, so the
  // number the tokenizer would rebuild is scrubbed: soft hyphen, word joiner, ZWJ, LRM, U+FFFD.
  DocumentCleaner scrubber(options);
  for (const char* hidden : {"\xC2\xAD", "\xE2\x81\xA0", "\xE2\x80\x8D", "\xE2\x80\x8E", "\xEF\xBF\xBD"}) {
    out.clear();
    INFO(hidden);
    CHECK(scrubber.clean(std::string("연락처 010-1234-") + hidden + "5678, 주민번호 900101-1234" + hidden + "567\n",
                        out) == 1);
    CHECK(out == "연락처 [PHONE], 주민번호 [RRN]");
  }
  out.clear();
  CHECK(scrubber.clean("전화 ０１０－１２３４－５６７８, 주민 900101–1234567, ｈｏｎｇ＠example.com\n", out) == 1);
  CHECK(out == "전화 [PHONE], 주민 [RRN], ｈｏｎｇ@example.com");  // fullwidth letters stay
  // The other dashes between digits: em dash, horizontal bar, small dash and hyphen-minus, Hangul ㅡ;
  // not between a digit and a letter.
  for (const char* dash : {"\xE2\x80\x94", "\xE2\x80\x95", "\xEF\xB9\x98", "\xEF\xB9\xA3", "ㅡ"}) {
    INFO(dash);
    out.clear();
    CHECK(scrubber.clean(std::string("주민번호 900101") + dash + "1234567, 전화 010" + dash + "1234" + dash +
                             "5678, 1" + dash + "a\n",
                         out) == 1);
    CHECK(out == std::string("주민번호 [RRN], 전화 [PHONE], 1") + dash + "a");
  }
  out.clear();
  CHECK(cleaner.clean("첫 문장이다.  둘째 문장, 전화 010-1234-5678.\n\x01\n  셋째 줄\n", out) == 3);
  CHECK(out == "첫 문장이다.\n둘째 문장, 전화 [PHONE].\n셋째 줄");
  CHECK(cleaner.pii().phone == 1);
}

// ---- the command end to end --------------------------------------------------------------

TEST_CASE("clean: blank-line documents become the NSP input format") {
  const std::string dir = temp_dir("cmd_basic");
  write_text(dir + "/in.txt",
             "\n\n"
             "\xEF\xBB\xBF첫 문서의   첫 줄이다.\n"
             "첫 문서의\t둘째 줄이다.\n"
             "   \t \n"
             "\n"
             "둘째 문서. 연락처 010-1234-5678.\r\n"
             "\n"
             "셋째 문서, 메일 kim@example.com\n"
             "\n\n");
  const Run r = clean({"--input", dir + "/in.txt", "--out", dir + "/out.txt"});
  REQUIRE(r.code == 0);
  CHECK(read_file(dir + "/out.txt") ==
        "첫 문서의 첫 줄이다.\n첫 문서의 둘째 줄이다.\n"
        "\n"
        "둘째 문서. 연락처 [PHONE].\n"
        "\n"
        "셋째 문서, 메일 [EMAIL]\n");
  CHECK(contains(r.out, "documents   3 in, 3 out\n"));
  CHECK(contains(r.out, "sentences   4 (one per input line)"));
  CHECK(contains(r.out, "pii         2 replaced: rrn 0, phone 1, email 1, card 0, account 0, ip 0"));
  CHECK(contains(r.out, "bytes       " + std::to_string(file_size(dir + "/in.txt")) + " in, " +
                            std::to_string(file_size(dir + "/out.txt")) + " out"));
  CHECK(r.err.empty());

  const Run keep = clean({"--input", dir + "/in.txt", "--out", dir + "/keep.txt", "--no-scrub-pii"});
  REQUIRE(keep.code == 0);
  CHECK(contains(read_file(dir + "/keep.txt"), "연락처 010-1234-5678."));
  CHECK(contains(keep.out, "pii         not scrubbed"));
}

TEST_CASE("clean: --split-sentences and --dedupe") {
  const std::string dir = temp_dir("cmd_split_dedupe");
  write_text(dir + "/in.txt",
             "오늘은 맑다. 내일은 비가 온다? 모레는 모른다!\n"
             "\n"
             "같은 문서다. 두 번 나온다.\n"
             "\n"
             "다른 문서다.\n"
             "\n"
             "같은 문서다.   두 번 나온다.\n");  // identical after whitespace normalisation
  const Run r =
      clean({"--input", dir + "/in.txt", "--out", dir + "/out.txt", "--split-sentences", "--dedupe", "--threads", "1"});
  REQUIRE(r.code == 0);
  CHECK(read_file(dir + "/out.txt") ==
        "오늘은 맑다.\n내일은 비가 온다?\n모레는 모른다!\n"
        "\n"
        "같은 문서다.\n두 번 나온다.\n"
        "\n"
        "다른 문서다.\n");
  CHECK(contains(r.out, "documents   4 in, 3 out (1 duplicates dropped)"));
  CHECK(contains(r.out, "sentences   6 (split by the sentence splitter)"));

  const Run no_dedupe = clean({"--input", dir + "/in.txt", "--out", dir + "/all.txt", "--split-sentences"});
  REQUIRE(no_dedupe.code == 0);
  CHECK(contains(no_dedupe.out, "documents   4 in, 4 out\n"));
}

TEST_CASE("clean: directories and .gz inputs, output independent of --threads") {
  const std::string dir = temp_dir("cmd_threads");
  make_directories(dir + "/corpus/part2");
  std::string a, b;
  for (int d = 0; d < 700; ++d) {
    std::string& text = d % 2 ? a : b;
    text += "문서 " + std::to_string(d % 450) + "의 첫 문장이다. 전화 010-" + std::to_string(1000 + d % 450) +
            "-5678 입니다.\n둘째 줄, IP 10.0." + std::to_string(d % 200) + ".1.\n\n";
  }
  write_text(dir + "/corpus/a.txt", a);
  write_gz(dir + "/corpus/part2/b.txt.gz", b);
  const std::vector<std::string> base = {"--input", dir + "/corpus", "--split-sentences", "--dedupe"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return clean(args);
  };
  const Run one = with({"--out", dir + "/one.txt", "--threads", "1"});
  const Run three = with({"--out", dir + "/three.txt", "--threads", "3"});
  REQUIRE(one.code == 0);
  REQUIRE(three.code == 0);
  const std::string out1 = read_file(dir + "/one.txt");
  CHECK(out1 == read_file(dir + "/three.txt"));
  CHECK(contains(one.out, "2 file(s)"));
  CHECK(contains(one.out, "documents   700 in, 450 out (250 duplicates dropped)"));
  CHECK(contains(one.out, "phone 700"));  // counted before dedupe: every input document has one
  CHECK(contains(one.out, "ip 700"));
  CHECK(out1.rfind("문서 1의 첫 문장이다.\n전화 [PHONE] 입니다.\n둘째 줄, IP [IP].\n\n", 0) == 0);
  CHECK(out1.find("\n\n\n") == std::string::npos);
  CHECK(out1.back() == '\n');
  CHECK(out1[out1.size() - 2] != '\n');

  // A rerun with the output inside the input directory skips it.
  const Run rerun = with({"--out", dir + "/corpus/out.txt", "--threads", "2"});
  REQUIRE(rerun.code == 0);
  const Run rerun2 = with({"--out", dir + "/corpus/out.txt", "--threads", "2"});
  REQUIRE(rerun2.code == 0);
  CHECK(contains(rerun2.err, "skipping the --out file"));
  CHECK(read_file(dir + "/corpus/out.txt") == out1);
}

TEST_CASE("clean: invalid UTF-8 is dropped and reported with file:line") {
  const std::string dir = temp_dir("cmd_utf8");
  write_text(dir + "/in.txt", "좋은 줄\n나쁜 \xC3\x28 줄\n");
  const Run r = clean({"--input", dir + "/in.txt", "--out", dir + "/out.txt", "--threads", "1"});
  REQUIRE(r.code == 0);
  CHECK(contains(r.err, dir + "/in.txt:2: warning: invalid UTF-8"));
  CHECK(read_file(dir + "/out.txt") == "좋은 줄\n나쁜 ( 줄\n");  // U+FFFD dropped, as the tokenizer drops it
  CHECK(contains(r.out, "utf-8       1 line(s) with invalid bytes"));
}

TEST_CASE("clean: user mistakes are one-line errors and leave no output behind") {
  const std::string dir = temp_dir("cmd_errors");
  write_text(dir + "/ok.txt", "문장이다.\n");
  write_text(dir + "/blank.txt", "\n   \n\t\n");
  std::string gz_text;
  for (int i = 0; i < 5000; ++i) gz_text += "줄 " + std::to_string(i) + "\n";
  write_gz(dir + "/good.gz", gz_text);
  const std::string gz = read_file(dir + "/good.gz");
  write_text(dir + "/broken.gz", gz.substr(0, gz.size() - 20));

  auto error_of = [&](std::vector<std::string> args) -> std::string {
    try {
      clean(args);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  const std::string out = dir + "/out.txt";
  CHECK(contains(error_of({"--input", dir + "/missing.txt", "--out", out}), "missing.txt: input not found"));
  const std::string corrupt = error_of({"--input", dir + "/ok.txt", dir + "/broken.gz", "--out", out});
  CHECK(contains(corrupt, dir + "/broken.gz:"));
  CHECK(contains(corrupt, "gzip"));
  CHECK(contains(error_of({"--input", dir + "/blank.txt", "--out", out}), "blank.txt: no documents"));
  CHECK(contains(error_of({"--out", out}), "missing required option '--input'"));
  CHECK(contains(error_of({"--input", dir + "/ok.txt"}), "missing required option '--out'"));
  CHECK(contains(error_of({"--input", dir + "/ok.txt", "--out", out, "--scrub-pii", "--no-scrub-pii"}), "contradict"));
  CHECK(contains(error_of({"--input", dir + "/ok.txt", "--out", dir + "/no/such/dir/out.txt"}), "does not exist"));
  CHECK(contains(error_of({"--input", dir + "/ok.txt", "--out", dir}), "is a directory"));
  CHECK(contains(error_of({"--input", dir + "/ok.txt", "--out", out, "--threads", "x"}), "--threads"));
  CHECK(contains(error_of({"--input", dir + "/ok.txt", "--out", out, "--bogus"}), "unknown option '--bogus'"));
  write_text(out, "old\n");
  CHECK(contains(error_of({"--input", out, "--out", out}), "is also the --out file"));
  CHECK(read_file(out) == "old\n");  // a failed run leaves the previous output as it was

  // Nothing half-written is left behind.
  for (const auto& entry : fs::directory_iterator(dir))
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);

  const Run help = clean({"--help"});
  CHECK(help.code == 0);
  CHECK(contains(help.out, "--split-sentences"));
}
