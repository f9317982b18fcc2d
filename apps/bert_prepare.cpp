// bert_prepare: clean raw text, build NSP shards, inspect shards. Logic: data/prepare.cpp, data/clean.cpp.
#include <iostream>
#include <string>
#include <vector>

#include "common/signal_cleanup.h"
#include "data/prepare.h"

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  bert::install_signal_cleanup();  // Ctrl-C leaves no half-written output behind
  try {
    return bert::prepare_main(std::vector<std::string>(argv + 1, argv + argc), std::cout, std::cerr);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
