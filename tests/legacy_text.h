// Korean text in code page 949 (EUC-KR's superset), the encoding older Korean corpora come in, for
// the tests of the readers that must refuse it: "대한민국 헌법 제1조 대한민국은 민주공화국이다." and a
// newline, `lines` times (25 invalid UTF-8 sequences a line, 32 non-ASCII characters in all).
#pragma once

#include <string>

inline std::string cp949_korean(int lines) {
  std::string text;
  for (int i = 0; i < lines; ++i)
    text +=
        "\xb4\xeb\xc7\xd1\xb9\xce\xb1\xb9 \xc7\xe5\xb9\xfd \xc1\xa6"
        "1\xc1\xb6 \xb4\xeb\xc7\xd1\xb9\xce\xb1\xb9\xc0\xba "
        "\xb9\xce\xc1\xd6\xb0\xf8\xc8\xad\xb1\xb9\xc0\xcc\xb4\xd9.\n";
  return text;
}
