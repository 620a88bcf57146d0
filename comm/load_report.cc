#include "comm/load_report.h"

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace flotilla {

namespace {
struct LoadReport {
  int32_t ok;
  int32_t pad;
  uint64_t fingerprint;
  char message[496];
};

}  // namespace

absl::Status AgreeOnLoad(Comm& world, const absl::Status& loaded, uint64_t fingerprint,
                         bool participates_only) {
  LoadReport mine{};
  mine.ok = participates_only || loaded.ok();
  mine.pad = participates_only;  // marks a rank that loads nothing (excluded from fingerprints)
  mine.fingerprint = participates_only ? 0 : fingerprint;
  if (!mine.ok) {
    std::snprintf(mine.message, sizeof(mine.message), "%s",
                  std::string(loaded.message()).c_str());
  }
  std::vector<LoadReport> all(world.size());
  absl::Status st = world.AllGather(&mine, sizeof(mine), all.data(), {"load report", -1});
  if (!st.ok()) return st;
  for (int r = 0; r < world.size(); ++r) {
    if (!all[r].ok) {
      return absl::FailedPreconditionError(
          absl::StrCat("rank ", r, " could not load: ", all[r].message));
    }
  }
  int first = -1;
  for (int r = 0; r < world.size(); ++r) {
    if (all[r].pad) continue;
    if (first < 0) {
      first = r;
    } else if (all[r].fingerprint != all[first].fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat(
          "rank ", r, " loaded a different checkpoint or config than rank ", first,
          " (fingerprint ", absl::Hex(all[r].fingerprint), " vs ",
          absl::Hex(all[first].fingerprint), "); every rank must be started with the same --model"));
    }
  }
  return absl::OkStatus();
}


}  // namespace flotilla
