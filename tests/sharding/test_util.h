// Helpers for tests of sharding/: the shipped configs and interval coverage.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "common/model_config.h"
#include "gtest/gtest.h"

namespace flotilla::testing {

// configs/<model>/config.json, parsed and validated (a test failure when it is not).
inline ModelConfig ShippedConfig(const std::string& model) {
  const std::string path = std::string(FLOTILLA_CONFIGS_DIR) + "/" + model + "/config.json";
  absl::StatusOr<ModelConfig> c = ModelConfig::FromFile(path);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) return ModelConfig();
  EXPECT_TRUE(c->Validate().ok()) << c->Validate();
  return *c;
}

// A fresh directory under the test temp dir, removed with its contents on destruction.
class ScopedTempDir {
 public:
  ScopedTempDir() {
    std::string tmpl = ::testing::TempDir() + "flotilla_sharding_XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) std::abort();
    path_ = tmpl;
  }
  ~ScopedTempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// True when the half-open intervals tile [0, total) exactly once (no gap, no overlap); `what`
// and the first problem go to the failure message.
inline ::testing::AssertionResult TilesExactly(std::vector<std::pair<uint64_t, uint64_t>> spans,
                                               uint64_t total) {
  std::sort(spans.begin(), spans.end());
  uint64_t at = 0;
  for (const auto& [begin, end] : spans) {
    if (begin != at) {
      return ::testing::AssertionFailure() << (begin < at ? "overlap" : "gap") << " at " << at
                                           << " (next span [" << begin << ", " << end << "))";
    }
    if (end < begin) return ::testing::AssertionFailure() << "reversed span at " << begin;
    at = end;
  }
  if (at != total) return ::testing::AssertionFailure() << "covers [0, " << at << ") of " << total;
  return ::testing::AssertionSuccess();
}

}  // namespace flotilla::testing
