#pragma once
// Where tests find model files: KVLM_MODELS_DIR from the environment (ctest sets it from the
// resolver, scripts/models-dir), else the folder CMake resolved at configure time.
// A missing file fails the test under CI (CI set) and skips it, loudly, elsewhere.

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace kvlm::test {

inline std::string models_dir() {
  const char* env = std::getenv("KVLM_MODELS_DIR");
  return (env != nullptr && *env != '\0') ? env : KVLM_DEFAULT_MODELS_DIR;
}

inline bool under_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && *ci != '\0' && std::string(ci) != "false";
}

}  // namespace kvlm::test

// Sets `var` to the full path of `relative` under the models folder, or ends the test: a failure
// under CI, a skip with a message elsewhere.
#define KVLM_REQUIRE_MODEL(var, relative)                                                   \
  const std::string var = ::kvlm::test::models_dir() + "/" + (relative);                    \
  if (!std::ifstream(var).good()) {                                                         \
    if (::kvlm::test::under_ci()) {                                                         \
      FAIL() << "model file missing under CI: " << var;                                     \
    } else {                                                                                \
      GTEST_SKIP() << "\n*** SKIPPED: model file not found: " << var                        \
                   << "\n*** set KVLM_MODELS_DIR or run scripts/models-dir to fetch it\n"; \
    }                                                                                       \
  }
