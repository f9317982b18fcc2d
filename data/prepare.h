// `bert_prepare build` (tokenised NSP shards from cleaned text) and `bert_prepare inspect`.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace bert {

int prepare_build_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
int prepare_inspect_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
int prepare_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace bert
