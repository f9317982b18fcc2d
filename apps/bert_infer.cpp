// bert_infer: fill-mask (HF pipeline("fill-mask")-identical) and LAMA [MASK] probes on a checkpoint
// dir. Logic: engine/infer.cpp.
#include <iostream>
#include <string>
#include <vector>

#include "engine/infer.h"

int main(int argc, char** argv) {
  std::ios::sync_with_stdio(false);
  try {
    return bert::infer_main(std::vector<std::string>(argv + 1, argv + argc), std::cin, std::cout, std::cerr);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
