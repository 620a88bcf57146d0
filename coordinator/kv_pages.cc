#include "coordinator/kv_pages.h"


namespace flotilla {
absl::StatusOr<KvPageGeometry> KvPageGeometry::Make(const ModelConfig& config,
                                                    int64_t page_bytes) {
  KvPageGeometry g;
  ASSIGN_OR_RETURN(g.layout, KvPoolLayout::Make(config, page_bytes));
  g.page_bytes = uint64_t(page_bytes);
  g.fixed_pages = g.layout.SequencePages(0).Total();
  return g;
}

bool KvPagePool::TryReserve(int64_t pages) {
  FLOTILLA_CHECK(pages >= 0);
  if (pages > free()) return false;
  used_ += pages;
  return true;
}

void KvPagePool::Release(int64_t pages) {
  FLOTILLA_CHECK(pages >= 0 && pages <= used_);
  used_ -= pages;
}

}  // namespace flotilla
