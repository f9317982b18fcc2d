// bert_train: pre-train BERT on the CPU from a TOML run config; `bert_train plot` draws metrics.jsonl.
// Logic: engine/trainer.cpp.
#include <iostream>
#include <string>
#include <vector>

#include "engine/trainer.h"

int main(int argc, char** argv) {
  bert::reexec_with_thread_settings(argv);
  bert::set_program_path(argv[0]);
  std::ios::sync_with_stdio(false);
  try {
    return bert::train_main(std::vector<std::string>(argv + 1, argv + argc), std::cout, std::cerr);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
