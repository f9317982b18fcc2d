// A scratch directory per test case, named after it, emptied on first use. CTest runs test cases
// as separate processes in parallel (-j), so cases must never share files.
#pragma once

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>

inline const std::string& test_dir() {
  static std::string current_test, current_dir;
  const std::string name = Catch::getResultCapture().getCurrentTestName();
  if (name != current_test) {
    std::string safe = "tmp_";
    for (char c : name) safe.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
    if (safe.size() > 80) safe.resize(80);
    std::filesystem::remove_all(safe);
    std::filesystem::create_directories(safe);
    current_test = name;
    current_dir = safe;
  }
  return current_dir;
}
