// The Catch2 main of every test executable CTest runs case by case (catch_discover_tests). A test name
// CTest passes back that matches no case is a FAILURE here, not Catch's default "No tests ran" with
// exit 0: discovery splits names at ';', and such a case would otherwise pass without running.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (const int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  Catch::ConfigData& config = session.configData();
  config.warnings = static_cast<Catch::WarnAbout::What>(config.warnings | Catch::WarnAbout::NoTests);
  return session.run();
}
