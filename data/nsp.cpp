#include "data/nsp.h"

#include <algorithm>

#include "common/error.h"

namespace bert {

namespace {

struct Instance {
  uint64_t begin;  // into the instance token buffer
  uint32_t a_len, b_len;
  bool random_next;
};

// Google's truncate_seq_pair on two deques represented as [begin, end) windows.
void truncate_seq_pair(size_t& a_begin, size_t& a_end, size_t& b_begin, size_t& b_end, size_t max_num_tokens, Rng& rng,
                       bool& truncated) {
  while (true) {
    const size_t total = (a_end - a_begin) + (b_end - b_begin);
    if (total <= max_num_tokens) return;
    truncated = true;
    const bool trim_a = (a_end - a_begin) > (b_end - b_begin);
    size_t& front = trim_a ? a_begin : b_begin;
    size_t& back = trim_a ? a_end : b_end;
    if (rng.uniform() < 0.5) ++front;
    else --back;
  }
}

}  // namespace

void create_nsp_instances(const DocumentPool& pool, const NspOptions& options, Rng& rng, const NspSink& sink,
                          NspStats& stats) {
  if (options.max_seq_len < 5) throw Error("max_seq_len must be at least 5 ([CLS] A [SEP] B [SEP])");
  const size_t n_docs = pool.documents();
  if (n_docs == 0) return;
  const size_t max_num_tokens = options.max_seq_len - 3;
  std::vector<int32_t> buffer;
  std::vector<Instance> instances;
  std::vector<int32_t> a, b;

  for (uint32_t dupe = 0; dupe < options.dupe_factor; ++dupe) {
    for (size_t d = 0; d < n_docs; ++d) {
      const size_t s_begin = pool.doc_begin[d], s_end = pool.doc_begin[d + 1];
      const size_t n_sent = s_end - s_begin;
      size_t target = max_num_tokens;
      if (rng.uniform() < options.short_seq_prob) target = static_cast<size_t>(rng.randint(2, static_cast<int64_t>(max_num_tokens)));
      size_t chunk_first = 0, chunk_count = 0, chunk_len = 0;  // current chunk = sentences [first, first+count)
      for (size_t i = 0; i < n_sent; ++i) {
        if (chunk_count == 0) chunk_first = i;
        ++chunk_count;
        chunk_len += pool.sentence(s_begin + i).size();
        if (i + 1 != n_sent && chunk_len < target) continue;
        size_t a_end = 1;
        if (chunk_count >= 2) a_end = static_cast<size_t>(rng.randint(1, static_cast<int64_t>(chunk_count) - 1));
        a.clear();
        b.clear();
        for (size_t j = 0; j < a_end; ++j) {
          const auto s = pool.sentence(s_begin + chunk_first + j);
          a.insert(a.end(), s.begin(), s.end());
        }
        bool random_next = false;
        if (chunk_count == 1 || rng.uniform() < options.nsp_prob) {
          if (n_docs < 2) {
            if (chunk_count == 1) {
              ++stats.skipped_no_other_document;
              chunk_count = chunk_len = 0;
              continue;
            }
            // No other document to draw from: keep the actual continuation.
            ++stats.kept_next_no_other_document;
            for (size_t j = a_end; j < chunk_count; ++j) {
              const auto s = pool.sentence(s_begin + chunk_first + j);
              b.insert(b.end(), s.begin(), s.end());
            }
          } else {
            random_next = true;
            const size_t target_b = target > a.size() ? target - a.size() : 0;
            size_t other = static_cast<size_t>(rng.below(n_docs - 1));
            if (other >= d) ++other;
            const size_t o_begin = pool.doc_begin[other], o_count = pool.doc_begin[other + 1] - o_begin;
            const size_t start = static_cast<size_t>(rng.below(o_count));
            for (size_t j = start; j < o_count; ++j) {
              const auto s = pool.sentence(o_begin + j);
              b.insert(b.end(), s.begin(), s.end());
              if (b.size() >= target_b) break;
            }
            const size_t unused = chunk_count - a_end;
            i -= unused;  // put the unused sentences back
          }
        } else {
          for (size_t j = a_end; j < chunk_count; ++j) {
            const auto s = pool.sentence(s_begin + chunk_first + j);
            b.insert(b.end(), s.begin(), s.end());
          }
        }
        size_t ab = 0, ae = a.size(), bb = 0, be = b.size();
        bool truncated = false;
        truncate_seq_pair(ab, ae, bb, be, max_num_tokens, rng, truncated);
        if (ae > ab && be > bb) {
          Instance inst{buffer.size(), static_cast<uint32_t>(ae - ab), static_cast<uint32_t>(be - bb), random_next};
          buffer.insert(buffer.end(), a.begin() + static_cast<std::ptrdiff_t>(ab), a.begin() + static_cast<std::ptrdiff_t>(ae));
          buffer.insert(buffer.end(), b.begin() + static_cast<std::ptrdiff_t>(bb), b.begin() + static_cast<std::ptrdiff_t>(be));
          instances.push_back(inst);
          stats.truncated += truncated;
        }
        chunk_count = chunk_len = 0;
      }
    }
  }
  rng.shuffle(instances.data(), instances.size());
  for (const Instance& inst : instances) {
    const int32_t* p = buffer.data() + inst.begin;
    sink(std::span<const int32_t>(p, inst.a_len), std::span<const int32_t>(p + inst.a_len, inst.b_len), inst.random_next);
    ++stats.instances;
    stats.random_next += inst.random_next;
  }
}

}  // namespace bert
