#pragma once
// throws_error: the check every error test makes, that a call throws kvlm::Error with a given
// code and a message naming what went wrong.

#include <gtest/gtest.h>

#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "kvlm/error.hpp"

namespace kvlm::test {

// Calls f and reports whether it threw a kvlm::Error with `code` whose message contains every
// one of `needles`.
inline ::testing::AssertionResult throws_error(const std::function<void()>& f, ErrorCode code,
                                               const std::vector<std::string>& needles) {
  try {
    f();
  } catch (const Error& e) {
    const std::string what = e.what();
    if (e.code() != code) {
      return ::testing::AssertionFailure() << "code " << to_string(e.code()) << ", expected "
                                           << to_string(code) << "; message: " << what;
    }
    for (const std::string& needle : needles) {
      if (what.find(needle) == std::string::npos) {
        return ::testing::AssertionFailure()
               << "message \"" << what << "\" does not contain \"" << needle << "\"";
      }
    }
    return ::testing::AssertionSuccess() << what;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-kvlm exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

}  // namespace kvlm::test
