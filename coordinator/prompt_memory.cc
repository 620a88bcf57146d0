#include "coordinator/prompt_memory.h"

#include <malloc.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "sharding/capacity.h"

namespace flotilla {

namespace {
// How often a waiting request checks whether its client is still there.
constexpr auto kCancelPoll = std::chrono::milliseconds(50);
}  // namespace

PromptMemory::Lease& PromptMemory::Lease::operator=(Lease&& other) noexcept {
  if (this == &other) return *this;
  Reset();
  owner_ = other.owner_;
  bytes_ = other.bytes_;
  uploading_ = other.uploading_;
  upload_bytes_ = other.upload_bytes_;
  other.owner_ = nullptr;
  other.bytes_ = 0;
  other.uploading_ = false;
  other.upload_bytes_ = 0;
  return *this;
}

absl::Status PromptMemory::Lease::Resize(int64_t bytes, const std::function<bool()>& cancelled,
                                         const std::string& what) {
  if (owner_ == nullptr || bytes == bytes_) return absl::OkStatus();
  if (bytes < bytes_) {
    owner_->Shrink(bytes_ - bytes, /*request_ends=*/false);
    bytes_ = bytes;
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(owner_->Grow(bytes - bytes_, bytes, cancelled, what));
  bytes_ = bytes;
  return absl::OkStatus();
}

void PromptMemory::Lease::SetUploadBytes(int64_t bytes) {
  if (owner_ == nullptr) return;
  std::lock_guard<std::mutex> lock(owner_->mu_);
  if (!uploading_) ++owner_->stats_.uploads;
  uploading_ = true;
  owner_->stats_.upload_bytes += bytes - upload_bytes_;
  upload_bytes_ = bytes;
}

void PromptMemory::Lease::EndUpload() {
  if (owner_ == nullptr || !uploading_) return;
  std::lock_guard<std::mutex> lock(owner_->mu_);
  --owner_->stats_.uploads;
  owner_->stats_.upload_bytes -= upload_bytes_;
  uploading_ = false;
  upload_bytes_ = 0;
}

void PromptMemory::Lease::Reset() {
  if (owner_ == nullptr) return;
  EndUpload();
  owner_->Shrink(bytes_, /*request_ends=*/true);
  bytes_ = 0;
}

absl::Status PromptMemory::Grow(int64_t delta, int64_t total,
                                const std::function<bool()>& cancelled, const std::string& what) {
  std::unique_lock<std::mutex> lock(mu_);
  if (total > budget_) {
    ++stats_.refused;
    return absl::ResourceExhaustedError(absl::StrCat(
        what, " needs ", FormatBytes(uint64_t(total)), " of prompt memory, more than the whole ",
        FormatBytes(uint64_t(budget_)), " budget (--prompt-memory); send a shorter prompt"));
  }
  const auto deadline = std::chrono::steady_clock::now() + max_wait_;
  while (stats_.reserved_bytes + delta > budget_) {
    if (cancelled && cancelled()) {
      return absl::CancelledError(absl::StrCat(what, ": the client went away"));
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      ++stats_.refused;
      return absl::ResourceExhaustedError(absl::StrCat(
          what, " refused: the prompt memory budget (--prompt-memory ",
          FormatBytes(uint64_t(budget_)),
          ") is held by other prompts being received or "
          "tokenized (",
          FormatBytes(uint64_t(stats_.reserved_bytes)), " in use, ", FormatBytes(uint64_t(delta)),
          " more needed) and did not free up within ", max_wait_.count(), " ms; retry later"));
    }
    freed_.wait_for(lock,
                    std::min<std::chrono::steady_clock::duration>(kCancelPoll, deadline - now));
  }
  stats_.reserved_bytes += delta;
  stats_.total_reserved_bytes += delta;
  stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
  return absl::OkStatus();
}

void PromptMemory::Shrink(int64_t delta, bool request_ends) {
  bool trim = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.reserved_bytes -= delta;
    released_since_trim_ += delta;
    const auto now = std::chrono::steady_clock::now();
    if (request_ends && released_since_trim_ >= kTrimAfterBytes &&
        (stats_.reserved_bytes == 0 || now - last_trim_ >= kTrimInterval)) {
      trim = true;
      released_since_trim_ = 0;
      last_trim_ = now;
    }
  }
  if (delta > 0) freed_.notify_all();
  // The buffers of big prompts go back to the system, not just to the heap.
  if (trim) malloc_trim(0);
}

PromptMemoryStats PromptMemory::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PromptMemoryStats s = stats_;
  s.budget_bytes = budget_;
  return s;
}

}  // namespace flotilla
