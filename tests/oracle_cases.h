// The C++ side of the conformance scripts that compare a reader of ours with Python's (tomllib, json,
// the safetensors package): a hidden Catch test case ("[.toml-oracle]", ...) reads the cases the script
// wrote to the file named by the environment variable `cases_env` (each case as its byte count on a
// line, then its bytes), answers each with `answer` ("ok ..."; a bert::Error thrown becomes "error
// <message>", newlines made spaces), and writes one line a case to the file named by `out_env`.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>

#include "common/error.h"
#include "common/file.h"

namespace bert::testing {

// Returns the number of cases answered; throws bert::Error when a variable is unset or the cases file
// is not in the format above.
inline size_t answer_oracle_cases(const char* cases_env, const char* out_env,
                                  const std::function<std::string(std::string_view)>& answer) {
  const char* in = std::getenv(cases_env);
  const char* out_path = std::getenv(out_env);
  if (!in || !*in || !out_path || !*out_path)
    throw Error(std::string("set ") + cases_env + " and " + out_env + " (the conformance script does)");
  const std::string cases = read_file(in);
  std::string out;
  size_t pos = 0, count = 0;
  while (pos < cases.size()) {
    const size_t eol = cases.find('\n', pos);
    if (eol == std::string::npos) throw Error(std::string(in) + ": a case without its byte count line");
    const size_t length = std::stoul(cases.substr(pos, eol - pos));
    if (eol + 1 + length > cases.size()) throw Error(std::string(in) + ": a case runs past the end of the file");
    const std::string_view text(cases.data() + eol + 1, length);
    pos = eol + 1 + length;
    ++count;
    try {
      out += answer(text) + "\n";
    } catch (const Error& e) {
      std::string message = e.what();
      std::replace(message.begin(), message.end(), '\n', ' ');
      out += "error " + message + "\n";
    }
  }
  write_file_atomic(out_path, out);
  return count;
}

}  // namespace bert::testing
