#include "common/args.h"

#include <cerrno>
#include <cstdlib>

#include "common/error.h"

namespace bert {

Args& Args::flag(const std::string& name, const std::string& help) {
  specs_[name] = {Kind::kFlag, help, {}};
  order_.push_back(name);
  return *this;
}
Args& Args::option(const std::string& name, const std::string& help, std::optional<std::string> fallback) {
  specs_[name] = {Kind::kOption, help, std::move(fallback)};
  order_.push_back(name);
  return *this;
}
Args& Args::list(const std::string& name, const std::string& help) {
  specs_[name] = {Kind::kList, help, {}};
  order_.push_back(name);
  return *this;
}

void Args::fail(const std::string& msg) const { throw Error(program_ + ": " + msg + " (see --help)"); }

namespace {

// "--name" or "--name=value" with a name of letters, digits and dashes: an option (known or mistyped),
// not a value that happens to start with "--".
bool looks_like_option(const std::string& arg) {
  const std::string name = arg.substr(0, arg.find('='));
  return name.size() > 2 && name.compare(0, 2, "--") == 0 &&
         name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", 2) ==
             std::string::npos;
}

}  // namespace

bool Args::parse(const std::vector<std::string>& argv) {
  for (size_t i = 0; i < argv.size(); ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") return false;
    if (a.size() < 2 || a.compare(0, 2, "--") != 0) {
      positional_.push_back(a);
      continue;
    }
    std::optional<std::string> inline_value;
    if (const size_t eq = a.find('='); eq != std::string::npos) {
      inline_value = a.substr(eq + 1);
      a = a.substr(0, eq);
    }
    auto it = specs_.find(a);
    if (it == specs_.end()) {
      // "--> [MASK]" meant as a value: option names are letters, digits and dashes.
      if (!looks_like_option(argv[i]))
        fail("'" + argv[i] + "' starts with '--' and is read as an option; give a value that does as " + "--option='" +
             argv[i] + "'");
      fail("unknown option '" + a + "'");
    }
    auto& dst = given_[a];
    switch (it->second.kind) {
      case Kind::kFlag:
        if (inline_value) fail("option '" + a + "' takes no value");
        dst.push_back("1");
        break;
      case Kind::kOption: {
        if (!inline_value && i + 1 >= argv.size()) fail("option '" + a + "' needs a value");
        const std::string value = inline_value ? *inline_value : argv[++i];
        // Which one was meant is a guess (a script's default and an override?): say so.
        if (!dst.empty()) fail("option '" + a + "' given twice ('" + dst[0] + "' and '" + value + "')");
        dst = {value};
        break;
      }
      case Kind::kList:
        if (inline_value) dst.push_back(*inline_value);
        while (i + 1 < argv.size() && argv[i + 1].compare(0, 2, "--") != 0) dst.push_back(argv[++i]);
        // (A value that cannot be an option's name, "--> [MASK]", rather than a mistyped option.)
        if (dst.empty() && i + 1 < argv.size() && !looks_like_option(argv[i + 1]))
          fail("option '" + a + "' needs at least one value; '" + argv[i + 1] +
               "' starts with '--' and is read as an option (a value that does is given as " + a + "='" + argv[i + 1] +
               "')");
        if (dst.empty()) fail("option '" + a + "' needs at least one value");
        break;
    }
  }
  return true;
}

std::string Args::help() const {
  std::string out = "usage: " + usage_ + "\n\noptions:\n";
  for (const auto& name : order_) {
    const Spec& s = specs_.at(name);
    std::string left = "  " + name + (s.kind == Kind::kFlag ? "" : s.kind == Kind::kList ? " V..." : " V");
    if (left.size() < 26) left.append(26 - left.size(), ' ');
    out += left + " " + s.help;
    if (s.fallback) out += " [default: " + *s.fallback + "]";
    out += "\n";
  }
  return out;
}

bool Args::has(const std::string& name) const { return given_.count(name) != 0; }

std::optional<std::string> Args::maybe(const std::string& name) const {
  auto it = given_.find(name);
  if (it != given_.end() && !it->second.empty()) return it->second.back();
  auto s = specs_.find(name);
  if (s != specs_.end() && s->second.fallback) return s->second.fallback;
  return std::nullopt;
}

std::string Args::str(const std::string& name) const {
  auto v = maybe(name);
  if (!v) fail("missing required option '" + name + "'");
  return *v;
}

int64_t Args::integer(const std::string& name, int64_t min_value, int64_t max_value) const {
  const std::string v = str(name);
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno == ERANGE) fail("option '" + name + "' expects an integer, got '" + v + "'");
  if (x < min_value || x > max_value)
    fail("option '" + name + "' must be " +
         (max_value == INT64_MAX ? "at least " + std::to_string(min_value)
                                 : "between " + std::to_string(min_value) + " and " + std::to_string(max_value)) +
         ", got " + v);
  return x;
}

double Args::number(const std::string& name) const {
  const std::string v = str(name);
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0') fail("option '" + name + "' expects a number, got '" + v + "'");
  return x;
}

const std::vector<std::string>& Args::values(const std::string& name) const {
  static const std::vector<std::string> kEmpty;
  auto it = given_.find(name);
  return it == given_.end() ? kEmpty : it->second;
}

}  // namespace bert
