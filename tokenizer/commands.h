// `bert_tokenizer train` and `bert_tokenizer encode`: argument handling and orchestration live here
// (not in apps/) so tests can drive them. Each returns the process exit code.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace bert {

int tokenizer_train_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);
int tokenizer_encode_command(const std::vector<std::string>& args, std::istream& in, std::ostream& out,
                             std::ostream& err);
int tokenizer_main(const std::vector<std::string>& args, std::istream& in, std::ostream& out, std::ostream& err);

}  // namespace bert
