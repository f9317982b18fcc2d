// A small command-line parser: declare options, parse, get typed values. Unknown options, missing
// values and bad numbers are bert::Error with the option's name and a pointer to --help.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace bert {

class Args {
 public:
  Args(std::string program, std::string usage) : program_(std::move(program)), usage_(std::move(usage)) {}

  // Declarations. A "list" option takes every following argument up to the next "--option".
  Args& flag(const std::string& name, const std::string& help);
  Args& option(const std::string& name, const std::string& help, std::optional<std::string> fallback = {});
  Args& list(const std::string& name, const std::string& help);

  // Returns false when --help was given (the help text is then in help()).
  bool parse(const std::vector<std::string>& argv);
  std::string help() const;

  bool has(const std::string& name) const;
  std::string str(const std::string& name) const;  // throws if absent and no fallback
  std::optional<std::string> maybe(const std::string& name) const;
  int64_t integer(const std::string& name, int64_t min_value = INT64_MIN, int64_t max_value = INT64_MAX) const;
  double number(const std::string& name) const;
  const std::vector<std::string>& values(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  enum class Kind { kFlag, kOption, kList };
  struct Spec {
    Kind kind;
    std::string help;
    std::optional<std::string> fallback;
  };
  std::string program_, usage_;
  std::map<std::string, Spec> specs_;
  std::vector<std::string> order_;
  std::map<std::string, std::vector<std::string>> given_;
  std::vector<std::string> positional_;
  [[noreturn]] void fail(const std::string& msg) const;
};

}  // namespace bert
