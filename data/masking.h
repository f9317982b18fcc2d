// Dynamic MLM masking, Hugging Face DataCollatorForLanguageModeling semantics by default:
// each token that is not special (masking_vocab: the tokenizer's special tokens, as HF's
// all_special_ids: [CLS] [SEP] [PAD] [UNK] [MASK] and any additional ones) is selected with p = 0.15; a
// selected token becomes [MASK] with probability 0.8, a uniformly random id from the whole
// vocabulary with 0.1 (HF draws from len(tokenizer), specials included), and stays itself with 0.1.
// Labels are the original id at selected positions and -100 elsewhere.
// Options: whole-word masking (a word = a token plus its following "##" pieces, selected together),
// a fixed count per sequence (round(p * candidates), at least 1; Cramming's choice), and the
// selected positions as a list for a sparse MLM head.
// Every decision comes from Rng(mix(seed, epoch, example)), so a resumed run masks identically.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "data/rng.h"

namespace bert {

inline constexpr int32_t kIgnoreIndex = -100;

struct MaskingOptions {
  double mlm_probability = 0.15;
  double mask_replace_prob = 0.8;    // -> [MASK]
  double random_replace_prob = 0.1;  // -> random id; the rest stays unchanged
  bool whole_word = false;
  bool fixed_count = false;
};

struct MaskingVocab {
  int32_t mask_id = -1;
  int32_t vocab_size = 0;
  std::vector<uint8_t> is_special;       // per id: never selected
  std::vector<uint8_t> is_continuation;  // per id: a "##" piece (whole-word masking)
};

// Masks `ids` in place; writes labels (same length). Appends selected positions (offset by
// `position_base`) and their labels to the optional sparse outputs. Returns how many were selected.
size_t apply_mlm_masking(std::span<int32_t> ids, std::span<int32_t> labels, const MaskingVocab& vocab,
                         const MaskingOptions& options, Rng& rng, std::vector<int32_t>* positions = nullptr,
                         std::vector<int32_t>* position_labels = nullptr, int32_t position_base = 0);

}  // namespace bert
