#include "data/masking.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace bert {

size_t apply_mlm_masking(std::span<int32_t> ids, std::span<int32_t> labels, const MaskingVocab& vocab,
                         const MaskingOptions& o, Rng& rng, std::vector<int32_t>* positions,
                         std::vector<int32_t>* position_labels, int32_t position_base) {
  const size_t n = ids.size();
  std::fill(labels.begin(), labels.end(), kIgnoreIndex);
  // Units = words (whole-word) or single tokens; each unit is [begin, end) of candidate tokens.
  thread_local std::vector<std::pair<uint32_t, uint32_t>> units;
  thread_local std::vector<uint8_t> selected;
  units.clear();
  selected.assign(n, 0);
  size_t candidates = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab.vocab_size) throw Error("masking: token id " + std::to_string(id) + " out of vocabulary");
    if (vocab.is_special[static_cast<size_t>(id)]) continue;
    ++candidates;
    if (o.whole_word && !units.empty() && vocab.is_continuation[static_cast<size_t>(id)] && units.back().second == i) {
      units.back().second = i + 1;
    } else {
      units.emplace_back(i, i + 1);
    }
  }
  if (o.fixed_count) {
    const size_t target = std::max<size_t>(candidates ? 1 : 0, static_cast<size_t>(std::lround(o.mlm_probability * static_cast<double>(candidates))));
    rng.shuffle(units.data(), units.size());
    size_t count = 0;
    for (const auto& [b, e] : units) {
      if (count >= target) break;
      if (count + (e - b) > target && count > 0) continue;  // keep whole words whole, do not overshoot
      for (uint32_t i = b; i < e; ++i) selected[i] = 1;
      count += e - b;
    }
  } else {
    for (const auto& [b, e] : units)
      if (rng.uniform() < o.mlm_probability)
        for (uint32_t i = b; i < e; ++i) selected[i] = 1;
  }
  size_t count = 0;
  for (uint32_t i = 0; i < n; ++i) {
    if (!selected[i]) continue;
    ++count;
    labels[i] = ids[i];
    if (positions) positions->push_back(position_base + static_cast<int32_t>(i));
    if (position_labels) position_labels->push_back(ids[i]);
    const double u = rng.uniform();
    if (u < o.mask_replace_prob) {
      ids[i] = vocab.mask_id;
    } else if (u < o.mask_replace_prob + o.random_replace_prob) {
      ids[i] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab.vocab_size)));
    }
  }
  return count;
}

}  // namespace bert
