#include "coordinator/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "coordinator/kv_pages.h"
#include "coordinator/request_validation.h"
#include "tokenizer/text_stream.h"
#include "sharding/capacity.h"

// Life of a request: Submit puts it in the queue (ordered by priority, then arrival) and admits
// what fits; admission picks a DP group and reserves the request's pages there; NextStep plans
// its prompt chunks and then its decodes; OnStepDone feeds the sampled tokens through its text
// stream; finishing, cancelling or failing returns the pages and, when the workers ever saw the
// sequence, puts its id on the next plan's release list.

namespace flotilla {
namespace {

using SteadyClock = std::chrono::steady_clock;

// The scheduler whose events this thread is delivering (re-entrant calls leave theirs to it).
thread_local const void* t_delivering = nullptr;

double Seconds(SteadyClock::duration d) { return std::chrono::duration<double>(d).count(); }

StepSampling ToStepSampling(const SamplingOptions& s) {
  StepSampling out;
  out.greedy = s.greedy ? 1 : 0;
  out.temperature = s.temperature;
  out.top_p = s.top_p;
  out.top_k = s.top_k;
  out.seed = s.seed;
  out.logprobs = s.logprobs ? 1 : 0;
  out.top_logprobs = s.logprobs ? uint8_t(s.top_logprobs) : 0;
  out.experts_per_token = uint8_t(s.experts_per_token);
  return out;
}

}  // namespace

absl::Status SchedulerOptions::Validate(const ModelConfig& config) const {
  auto at_least = [](const char* name, int64_t value, int64_t min) -> absl::Status {
    if (value >= min) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("scheduler option ", name, " is ", value, " (expected at least ", min, ")"));
  };
  RETURN_IF_ERROR(at_least("num_dp_groups", num_dp_groups, 1));
  if (num_dp_groups > (int64_t(1) << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scheduler option num_dp_groups is ", num_dp_groups, " (at most 2^20)"));
  }
  RETURN_IF_ERROR(at_least("step_token_budget", step_token_budget, 1));
  RETURN_IF_ERROR(at_least("max_queued", max_queued, 0));
  RETURN_IF_ERROR(at_least("max_running_per_group", max_running_per_group, 1));
  RETURN_IF_ERROR(at_least("max_head_bypass", max_head_bypass, 0));
  absl::StatusOr<KvPageGeometry> g = KvPageGeometry::Make(config, kv_page_bytes);
  if (!g.ok()) return absl::InvalidArgumentError(absl::StrCat("--kv-page: ", g.status().message()));
  // A pool that cannot hold the smallest request (one prompt token, one new token) would
  // refuse every request.
  const int64_t tokens = std::min<int64_t>(2, config.max_position_embeddings);
  if (g->PagesInPool(kv_pool_bytes_per_group) < g->PagesFor(tokens)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV pool per DP group (--kv-pool) is ", kv_pool_bytes_per_group, " bytes (",
        g->PagesInPool(kv_pool_bytes_per_group), " pages of ", g->page_bytes,
        " bytes); one sequence of ", tokens, " tokens needs ", g->PagesFor(tokens),
        " pages: give at least ", g->ReservationBytes(tokens), " bytes"));
  }
  return absl::OkStatus();
}

struct Scheduler::Sequence {
  Sequence(GenerateRequest r, EventSink s, const Tokenizer* tokenizer)
      : request(std::move(r)),
        sink(std::make_shared<const EventSink>(std::move(s))),
        text(tokenizer, request.sampling.stop, request.sampling.skip_special_tokens) {}

  int64_t prompt_len() const { return int64_t(request.prompt.size()); }
  bool queued() const { return group < 0; }

  GenerateRequest request;
  std::shared_ptr<const EventSink> sink;  // shared with events still in the outbox
  uint64_t arrival = 0;                   // FCFS order
  int64_t pages = 0;                      // reservation (held once admitted)
  int32_t group = -1;                     // DP group; -1 while queued
  int64_t prompt_done = 0;                // prompt tokens the workers have processed
  int64_t position = 0;                   // KV positions the workers hold
  bool has_next_token = false;            // sampled, to be fed by the next decode
  int32_t next_token = 0;
  bool seen_by_workers = false;  // appeared in a plan: needs a release when it ends
  int64_t bypassed = 0;          // times admitted past while first blocked in the queue
  bool cancel_requested = false;
  bool notify = true;  // false: the client is gone, no more events
  int64_t completion_tokens = 0;
  SteadyClock::time_point submit_time, first_token_time, last_token_time;
  TextStream text;
};

struct Scheduler::Impl {
  struct Planned {
    uint64_t seq_id;
    int64_t prompt_tokens;  // 0 for a decode
    bool sample;
  };
  struct Outgoing {
    std::shared_ptr<const EventSink> sink;
    RequestEvent event;
  };

  Impl(const ModelConfig& c, const SchedulerOptions& o, const Tokenizer* t, KvPageGeometry g)
      : config(c), options(o), tokenizer(t), geometry(g) {
    pools.assign(size_t(o.num_dp_groups), KvPagePool(g.PagesInPool(o.kv_pool_bytes_per_group)));
    group_running.assign(size_t(o.num_dp_groups), 0);
  }

  SteadyClock::time_point Now() const {
    return options.clock ? options.clock() : SteadyClock::now();
  }
  void Emit(const Sequence& s, RequestEvent event) {
    if (s.notify && *s.sink) outbox.push_back({s.sink, std::move(event)});
  }

  // Group with the most free pages among those that can take `pages` and one more sequence
  // (ties: lowest group), or -1.
  int32_t ChooseGroup(int64_t pages) const {
    int32_t best = -1;
    for (size_t g = 0; g < pools.size(); ++g) {
      if (group_running[g] >= options.max_running_per_group || pools[g].free() < pages) continue;
      if (best < 0 || pools[g].free() > pools[size_t(best)].free()) best = int32_t(g);
    }
    return best;
  }

  void Enqueue(Sequence* s) {
    auto before = [](const Sequence* a, const Sequence* b) {
      if (a->request.priority != b->request.priority) {
        return a->request.priority > b->request.priority;
      }
      return a->arrival < b->arrival;
    };
    queue.insert(std::upper_bound(queue.begin(), queue.end(), s, before), s);
  }

  // Admits queued requests in queue order. The first one that does not fit may be passed by
  // later ones that do at most max_head_bypass times; then admission waits for it.
  void Admit() {
    Sequence* blocked = nullptr;
    for (size_t i = 0; i < queue.size();) {
      Sequence* s = queue[i];
      const int32_t g = ChooseGroup(s->pages);
      if (g < 0) {
        if (blocked == nullptr) blocked = s;
        ++i;
        continue;
      }
      if (blocked != nullptr) {
        if (blocked->bypassed >= options.max_head_bypass) return;
        ++blocked->bypassed;
      }
      FLOTILLA_CHECK(pools[size_t(g)].TryReserve(s->pages));
      ++group_running[size_t(g)];
      s->group = g;
      queue.erase(queue.begin() + ptrdiff_t(i));
    }
  }

  // Takes `s` out of the queue or its group (pages back, release list) and forgets it.
  void Remove(Sequence* s) {
    if (s->queued()) {
      queue.erase(std::find(queue.begin(), queue.end(), s));
    } else {
      pools[size_t(s->group)].Release(s->pages);
      --group_running[size_t(s->group)];
      if (s->seen_by_workers) pending_release.push_back(s->request.id);
    }
    seqs.erase(s->request.id);
  }

  void Finish(Sequence* s, FinishReason reason) {
    RequestEvent e;
    e.kind = RequestEvent::Kind::kFinished;
    e.reason = reason;
    e.usage.prompt_tokens = s->prompt_len();
    e.usage.completion_tokens = s->completion_tokens;
    if (s->completion_tokens > 0) {
      e.usage.time_to_first_token_s = Seconds(s->first_token_time - s->submit_time);
    }
    if (s->completion_tokens > 1) {
      e.usage.time_per_output_token_s =
          Seconds(s->last_token_time - s->first_token_time) / double(s->completion_tokens - 1);
    }
    Emit(*s, std::move(e));
    Remove(s);
  }

  void Fail(Sequence* s, const absl::Status& status) {
    RequestEvent e;
    e.kind = RequestEvent::Kind::kError;
    e.reason = FinishReason::kError;
    e.error = status;
    Emit(*s, std::move(e));
    Remove(s);
  }

  void ApplyCancels() {
    std::vector<Sequence*> cancelled;
    for (auto& [id, s] : seqs) {
      if (s->cancel_requested) cancelled.push_back(s.get());
    }
    for (Sequence* s : cancelled) Finish(s, FinishReason::kCancelled);
  }

  // `prompt_tokens`: the chunk's length for a prompt chunk, 0 for a decode.
  StepSequence Plan(Sequence* s, int64_t start_pos, std::vector<int32_t> tokens,
                    int64_t prompt_tokens, bool sample) {
    StepSequence out;
    out.seq_id = s->request.id;
    out.dp_group = s->group;
    out.start_pos = start_pos;
    out.tokens = std::move(tokens);
    out.sample = sample ? 1 : 0;
    out.sampling = ToStepSampling(s->request.sampling);
    s->seen_by_workers = true;
    in_flight.push_back({s->request.id, prompt_tokens, sample});
    return out;
  }

  // Decodes first, then prompt chunks, each in priority / arrival order while the budget lasts.
  // The decodes always fit: a sequence starts decoding only after a step in which it used at
  // least one token of the budget, so there are never more decoding sequences than the budget.
  std::vector<StepSequence> BuildSequences() {
    std::vector<Sequence*> decodes, prefills;
    for (auto& [id, s] : seqs) {
      if (s->queued()) continue;
      if (s->prompt_done < s->prompt_len()) {
        prefills.push_back(s.get());
      } else if (s->has_next_token) {
        decodes.push_back(s.get());
      }
    }
    auto by_priority = [](const Sequence* a, const Sequence* b) {
      if (a->request.priority != b->request.priority) {
        return a->request.priority > b->request.priority;
      }
      return a->arrival < b->arrival;
    };
    std::sort(decodes.begin(), decodes.end(), by_priority);
    std::sort(prefills.begin(), prefills.end(), by_priority);

    std::vector<StepSequence> out;
    int64_t budget = options.step_token_budget;
    for (Sequence* s : decodes) {
      if (budget == 0) break;
      out.push_back(Plan(s, s->position, {s->next_token}, /*prompt_tokens=*/0, /*sample=*/true));
      s->has_next_token = false;
      --budget;
    }
    for (Sequence* s : prefills) {
      if (budget == 0) break;
      const int64_t n = std::min(s->prompt_len() - s->prompt_done, budget);
      const auto first = s->request.prompt.begin() + s->prompt_done;
      out.push_back(Plan(s, s->prompt_done, std::vector<int32_t>(first, first + n), n,
                         s->prompt_done + n == s->prompt_len()));
      budget -= n;
    }
    return out;
  }

  // One sampled token: Token event (ids + settled text), then Finished when it ends the request.
  void OnToken(Sequence* s, const StepToken& sampled) {
    const int32_t token = sampled.token;
    const SteadyClock::time_point now = Now();
    if (++s->completion_tokens == 1) s->first_token_time = now;
    s->last_token_time = now;
    ++tokens_generated;

    RequestEvent e;
    e.kind = RequestEvent::Kind::kToken;
    e.token_ids = {token};
    if (s->request.sampling.logprobs && sampled.has_logprob) {
      e.logprobs.push_back({token, sampled.logprob, sampled.top});
    }
    const bool eos = token == config.eos_token_id && !s->request.sampling.ignore_eos;
    bool stopped = false;
    if (!eos) stopped = s->text.Push(token, &e.text);  // EOS: in the ids, not in the text
    const bool last = eos || stopped || s->completion_tokens >= s->request.sampling.max_new_tokens;
    if (last && !stopped) stopped = s->text.Finish(&e.text);
    Emit(*s, std::move(e));
    if (!last) {
      s->next_token = token;
      s->has_next_token = true;
      return;
    }
    Finish(s, stopped ? FinishReason::kStopString
              : eos   ? FinishReason::kStop
                      : FinishReason::kLength);
  }

  void Flush() {
    if (t_delivering == this) return;  // a sink called back in: the loop below delivers
    std::lock_guard<std::mutex> deliver(deliver_mu);
    t_delivering = this;
    for (;;) {
      std::vector<Outgoing> batch;
      {
        std::lock_guard<std::mutex> lock(mu);
        batch.swap(outbox);
      }
      if (batch.empty()) break;
      for (const Outgoing& o : batch) (*o.sink)(o.event);
    }
    t_delivering = nullptr;
  }

  const ModelConfig config;
  const SchedulerOptions options;
  const Tokenizer* const tokenizer;
  const KvPageGeometry geometry;

  std::mutex deliver_mu;  // held while sinks run (taken before mu, never while holding it)
  std::mutex mu;          // guards everything below
  std::map<uint64_t, std::unique_ptr<Sequence>> seqs;  // queued and running, by id
  std::vector<Sequence*> queue;                        // priority desc, then arrival
  std::vector<KvPagePool> pools;                       // per DP group
  std::vector<int64_t> group_running;
  std::vector<uint64_t> pending_release;  // ended sequences the workers saw
  std::vector<Planned> in_flight;         // the outstanding plan, in plan order
  bool plan_outstanding = false;
  bool draining = false;
  absl::Status unavailable;  // SetUnavailable
  uint64_t next_arrival = 0;
  int64_t steps = 0;
  int64_t tokens_generated = 0;
  std::vector<Outgoing> outbox;  // events in the order they happened
};

Scheduler::Scheduler(const ModelConfig& config, const SchedulerOptions& options,
                     const Tokenizer* tokenizer) {
  FLOTILLA_CHECK(tokenizer != nullptr);
  const absl::Status valid = options.Validate(config);
  if (!valid.ok()) {
    std::fprintf(stderr, "Scheduler: invalid options (call SchedulerOptions::Validate first): %s\n",
                 std::string(valid.message()).c_str());
    std::abort();
  }
  impl_ = std::make_unique<Impl>(config, options, tokenizer,
                                 *KvPageGeometry::Make(config, options.kv_page_bytes));
}

Scheduler::~Scheduler() = default;

absl::Status Scheduler::Submit(GenerateRequest request, EventSink sink) {
  Impl& m = *impl_;
  RETURN_IF_ERROR(ValidateRequest(request, m.config));  // before the lock: a long prompt
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (m.draining) {
      return absl::UnavailableError(
          absl::StrCat("request ", request.id, " refused: the server is draining"));
    }
    if (!m.unavailable.ok()) {
      return absl::UnavailableError(
          absl::StrCat("request ", request.id, " refused: ", m.unavailable.message()));
    }
    const uint64_t id = request.id;
    if (m.seqs.count(id) != 0 || std::find(m.pending_release.begin(), m.pending_release.end(),
                                           id) != m.pending_release.end()) {
      return absl::AlreadyExistsError(absl::StrCat("request id ", id, " is already in use"));
    }
    const int64_t tokens = int64_t(request.prompt.size()) + request.sampling.max_new_tokens;
    const int64_t pages = m.geometry.PagesFor(tokens);
    const uint64_t bytes = m.geometry.ReservationBytes(tokens);
    const int64_t pool_pages = m.pools[0].total();
    if (pages > pool_pages) {
      const uint64_t pool_bytes = uint64_t(pool_pages) * m.geometry.page_bytes;
      return absl::ResourceExhaustedError(absl::StrCat(
          "request ", id, " needs ", FormatBytes(bytes), " of KV (", bytes, " B = ", pages,
          " pages of ", m.geometry.page_bytes, " B for ", request.prompt.size(), " prompt + ",
          request.sampling.max_new_tokens, " new tokens), more than a DP group's whole pool of ",
          FormatBytes(pool_bytes), " (", pool_bytes, " B = ", pool_pages, " pages)"));
    }

    auto owned = std::make_unique<Sequence>(std::move(request), std::move(sink), m.tokenizer);
    Sequence* s = owned.get();
    s->pages = pages;
    s->arrival = m.next_arrival++;
    s->submit_time = m.Now();
    m.seqs.emplace(id, std::move(owned));
    m.Enqueue(s);
    m.Admit();
    int64_t position = 0;
    if (s->queued()) {
      if (int64_t(m.queue.size()) > m.options.max_queued) {
        m.Remove(s);
        return absl::ResourceExhaustedError(
            absl::StrCat("request ", id, " refused: the queue is full (", m.options.max_queued,
                         " requests waiting for KV pages or a running slot)"));
      }
      position = (std::find(m.queue.begin(), m.queue.end(), s) - m.queue.begin()) + 1;
    }
    RequestEvent e;
    e.kind = RequestEvent::Kind::kAdmitted;
    e.kv_bytes_reserved = bytes;
    e.queue_position = position;
    m.Emit(*s, std::move(e));
  }
  m.Flush();
  return absl::OkStatus();
}

void Scheduler::Cancel(uint64_t id, bool notify) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto it = impl_->seqs.find(id);
  if (it == impl_->seqs.end()) return;
  it->second->cancel_requested = true;
  it->second->notify = it->second->notify && notify;
}

void Scheduler::Drain() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->draining = true;
}

void Scheduler::SetUnavailable(const absl::Status& status) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->unavailable = status;
}

void Scheduler::FailAll(const absl::Status& status) {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    const absl::Status error =
        status.ok() ? absl::InternalError("FailAll called with an OK status") : status;
    std::vector<Sequence*> all;
    for (auto& [id, s] : m.seqs) all.push_back(s.get());
    for (Sequence* s : all) m.Fail(s, error);
    m.in_flight.clear();
    m.plan_outstanding = false;
  }
  m.Flush();
}

StepPlan Scheduler::NextStep() {
  Impl& m = *impl_;
  StepPlan plan;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (m.plan_outstanding) {
      std::fprintf(stderr, "Scheduler::NextStep: step %lld was not answered by OnStepDone\n",
                   static_cast<long long>(m.steps - 1));
      std::abort();
    }
    m.ApplyCancels();
    m.Admit();
    plan.step = m.steps;
    plan.release.swap(m.pending_release);
    plan.seqs = m.BuildSequences();
    if (!plan.seqs.empty() || !plan.release.empty()) ++m.steps;
    m.plan_outstanding = !plan.seqs.empty();
  }
  m.Flush();
  return plan;
}

void Scheduler::OnStepDone(const std::vector<StepToken>& tokens) {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    if (!m.plan_outstanding) return;
    m.plan_outstanding = false;
    const int64_t step = m.steps - 1;
    m.ApplyCancels();
    std::map<uint64_t, const StepToken*> sampled;
    for (const StepToken& t : tokens) sampled.emplace(t.seq_id, &t);
    for (const Impl::Planned& p : m.in_flight) {
      auto it = m.seqs.find(p.seq_id);
      if (it == m.seqs.end()) continue;  // ended meanwhile
      Sequence* s = it->second.get();
      if (p.prompt_tokens > 0) {
        s->prompt_done += p.prompt_tokens;
        s->position = s->prompt_done;
        RequestEvent e;
        e.kind = RequestEvent::Kind::kProgress;
        e.prefill_done = s->prompt_done;
        e.prefill_total = s->prompt_len();
        m.Emit(*s, std::move(e));
      } else {
        ++s->position;
      }
      if (!p.sample) continue;
      auto t = sampled.find(p.seq_id);
      if (t == sampled.end()) {
        m.Fail(s, absl::InternalError(absl::StrCat("step ", step,
                                                   ": the workers returned no token "
                                                   "for sequence ",
                                                   p.seq_id)));
      } else if (t->second->token < 0 || t->second->token >= m.config.vocab_size) {
        m.Fail(s, absl::InternalError(absl::StrCat("step ", step, ": the workers returned token ",
                                                   t->second->token, " for sequence ", p.seq_id,
                                                   ", outside [0, vocab_size ", m.config.vocab_size,
                                                   ")")));
      } else {
        m.OnToken(s, *t->second);
      }
    }
    m.in_flight.clear();
    m.Admit();
  }
  m.Flush();
}

bool Scheduler::Idle() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->seqs.empty() && impl_->pending_release.empty() && !impl_->plan_outstanding;
}

SchedulerStats Scheduler::Stats() const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(impl_->mu);
  SchedulerStats st;
  st.queued = int64_t(m.queue.size());
  st.running = int64_t(m.seqs.size()) - st.queued;
  for (size_t g = 0; g < m.pools.size(); ++g) {
    SchedulerStats::Group group;
    group.pages_total = m.pools[g].total();
    group.pages_used = m.pools[g].used();
    group.page_bytes = m.geometry.page_bytes;
    group.sequences = m.group_running[g];
    st.groups.push_back(group);
  }
  st.steps = m.steps;
  st.tokens_generated = m.tokens_generated;
  return st;
}

uint64_t Scheduler::ReservationBytes(int64_t tokens) const {
  return impl_->geometry.ReservationBytes(tokens);
}

}  // namespace flotilla
