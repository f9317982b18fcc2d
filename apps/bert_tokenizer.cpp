// bert_tokenizer: train a WordPiece vocabulary, or encode text with one. Logic: tokenizer/commands.cpp.
#include <iostream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/signal_cleanup.h"
#include "tokenizer/commands.h"

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  bert::install_signal_cleanup();  // Ctrl-C leaves no half-written output behind
  try {
    return bert::tokenizer_main(std::vector<std::string>(argv + 1, argv + argc), std::cin, std::cout, std::cerr);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
