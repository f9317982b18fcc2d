// Fill-mask, LAMA probing and the `bert_infer` command. What each function matches in Hugging Face is
// documented in engine/infer.h.
#include "engine/infer.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <istream>
#include <memory>
#include <numeric>
#include <ostream>
#include <set>
#include <sstream>
#include <utility>

#include "common/args.h"
#include "common/error.h"
#include "common/file.h"
#include "common/progress.h"
#include "common/utf8.h"
#include "engine/exposure.h"

#if defined(BERT_INFER_CUDA)
#include "engine/bert_cuda.h"
#include "kernels/device.h"
#endif

namespace bert {

namespace {

void replace_all(std::string& text, std::string_view from, std::string_view to) {
  size_t at = 0;
  while ((at = text.find(from, at)) != std::string::npos) {
    text.replace(at, from.size(), to);
    at += to.size();
  }
}

// tokenizers' WordPiece decoder cleanup (decoders/wordpiece.rs), applied to each decoded token: the
// Python list plus " do not" -> " don't" (which can never match inside one token).
void decoder_cleanup(std::string& token) {
  static const std::pair<std::string_view, std::string_view> kRules[] = {
      {" .", "."},   {" ?", "?"},           {" !", "!"},   {" ,", ","},     {" ' ", "'"},   {" n't", "n't"},
      {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) replace_all(token, from, to);
}

// Shortened for messages: at most 60 code points.
std::string quoted(std::string_view text) {
  std::u32string cps;
  utf8_decode(text, cps);
  if (cps.size() <= 60) return "\"" + std::string(text) + "\"";
  return "\"" + utf8_encode(std::u32string_view(cps).substr(0, 57)) + "...\"";
}

// Prompts, targets and gold answers go into the tokenizer and back out in JSON: invalid UTF-8 is
// refused rather than silently dropped by the normaliser (and copied raw into the JSON).
void check_utf8(std::string_view text, const std::string& where) {
  if (const auto bad = utf8_first_invalid(text))
    throw Error(where + ": invalid UTF-8 at byte " + std::to_string(*bad + 1));
}

std::string join(const std::vector<std::string>& parts, std::string_view separator) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += separator;
    out += parts[i];
  }
  return out;
}

// Terminal columns of a UTF-8 string: East Asian wide code points (Hangul, CJK, full-width forms)
// take two.
size_t display_width(std::string_view text) {
  std::u32string cps;
  utf8_decode(text, cps);
  size_t width = 0;
  for (char32_t cp : cps) {
    const bool wide = (cp >= 0x1100 && cp <= 0x115F) || (cp >= 0x2E80 && cp <= 0xA4CF) ||
                      (cp >= 0xAC00 && cp <= 0xD7A3) || (cp >= 0xF900 && cp <= 0xFAFF) ||
                      (cp >= 0xFE30 && cp <= 0xFE4F) || (cp >= 0xFF00 && cp <= 0xFF60) ||
                      (cp >= 0xFFE0 && cp <= 0xFFE6) || (cp >= 0x20000 && cp <= 0x3FFFD);
    width += wide ? 2 : 1;
  }
  return width;
}

std::string pad_right(std::string text, size_t width) {
  const size_t have = display_width(text);
  if (have < width) text.append(width - have, ' ');
  return text;
}

std::string format(const char* pattern, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, pattern, value);
  return buffer;
}

std::vector<int32_t> mask_positions_of(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  std::vector<int32_t> positions;
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] == tokenizer.mask_id()) positions.push_back(static_cast<int32_t>(i));
  return positions;
}

// MLM logits at `positions` of one sequence, [positions.size(), vocab], from a model of either device
// (both have config() and mlm_logits_at(BatchView, positions, logits)).
template <class Model>
class ModelLogits final : public MlmLogitsSource {
 public:
  explicit ModelLogits(Model& model) : model_(model) {}
  const BertConfig& config() const override { return model_.config(); }
  std::vector<float> logits_at(const std::vector<int32_t>& ids, const std::vector<int32_t>& positions) override {
    BatchView view;
    view.batch = 1;
    view.seq_len = static_cast<int64_t>(ids.size());
    view.input_ids = ids.data();
    std::vector<float> logits(positions.size() * static_cast<size_t>(model_.config().vocab_size));
    model_.mlm_logits_at(view, positions, logits);
    return logits;
  }
  std::vector<float> padded_logits_at(const std::vector<int32_t>& ids, int64_t batch,
                                      const std::vector<int32_t>& positions,
                                      std::span<const int32_t> lengths) override {
    BatchView view;
    view.batch = batch;
    view.seq_len = static_cast<int64_t>(batch_seq_len(ids, batch));
    view.input_ids = ids.data();
    if (!lengths.empty()) {
      if (lengths.size() != static_cast<size_t>(batch))
        throw Error("padded_logits_at: " + std::to_string(lengths.size()) + " lengths for " + std::to_string(batch) +
                    " sequences");
      attention_mask_.assign(ids.size(), 0);
      for (int64_t b = 0; b < batch; ++b) {
        if (lengths[static_cast<size_t>(b)] < 1 || lengths[static_cast<size_t>(b)] > view.seq_len)
          throw Error("padded_logits_at: sequence " + std::to_string(b) + " has length " +
                      std::to_string(lengths[static_cast<size_t>(b)]) + ", outside [1, " +
                      std::to_string(view.seq_len) + "]");
        std::fill_n(attention_mask_.begin() + b * view.seq_len, lengths[static_cast<size_t>(b)], 1);
      }
      view.attention_mask = attention_mask_.data();
    }
    std::vector<float> logits(positions.size() * static_cast<size_t>(model_.config().vocab_size));
    model_.mlm_logits_at(view, positions, logits);
    return logits;
  }

 private:
  Model& model_;
  std::vector<int32_t> attention_mask_;
};

}  // namespace

void require_finite_logits(std::span<const float> logits) {
  for (const float logit : logits)
    if (!std::isfinite(logit))
      throw Error("the model's masked-LM logits are not finite (" + std::string(std::isnan(logit) ? "nan" : "inf") +
                  "): its weights overflow them, as a diverged training run leaves them");
}

std::pair<double, double> softmax_max_and_sum(std::span<const float> logits) {
  require_finite_logits(logits);
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float logit : logits) sum += std::exp(static_cast<double>(logit) - max_logit);
  return {max_logit, sum};
}

std::string trim_spaces(std::string_view text) {
  const size_t first = text.find_first_not_of(' ');
  if (first == std::string_view::npos) return std::string();
  return std::string(text.substr(first, text.find_last_not_of(' ') - first + 1));
}

std::unique_ptr<MlmLogitsSource> logits_source(BertForPreTraining<float>& model) {
  return std::make_unique<ModelLogits<BertForPreTraining<float>>>(model);
}

// ---- checkpoint and decoding -----------------------------------------------------------------------

namespace {

// The directory and its files exist (before anything is read: bert_infer checks it before it waits
// for prompts on stdin). Returns the directory without trailing slashes.
std::string check_checkpoint_files(const std::string& dir_arg) {
  const std::string dir = without_trailing_slashes(dir_arg);
  const std::string expected =
      "a checkpoint dir holds model.safetensors, config.json, vocab.txt (or tokenizer.json) and usually "
      "tokenizer_config.json";
  if (!is_directory(dir))
    throw Error("model dir '" + dir + "' does not exist or is not a directory (" + expected + ")");
  std::vector<std::string> missing;
  for (const char* name : kCheckpointFiles)
    if (!file_exists(dir + "/" + name)) missing.emplace_back(name);
  if (!file_exists(dir + "/vocab.txt") && !file_exists(dir + "/tokenizer.json")) missing.emplace_back("vocab.txt");
  if (!missing.empty())
    throw Error("model dir '" + dir + "' is incomplete: missing " + join(missing, ", ") + " (" + expected + ")");
  return dir;
}

}  // namespace

InferenceCheckpoint load_inference_checkpoint(const std::string& dir_arg, int num_threads) {
  const std::string dir = check_checkpoint_files(dir_arg);
  const BertConfig config = BertConfig::load_hf_json(dir + "/config.json");
  Tokenizer tokenizer = Tokenizer::from_dir(dir);
  const std::string vocab_path = dir + "/" + tokenizer.vocab_file();
  tokenizer.require({SpecialToken::kMask, SpecialToken::kCls, SpecialToken::kSep}, dir, "bert_infer");
  if (tokenizer.piece_count() > static_cast<size_t>(config.vocab_size))
    throw Error(vocab_path + ": " + std::to_string(tokenizer.piece_count()) +
                " word pieces, more than config.json's vocab_size " + std::to_string(config.vocab_size) +
                " (the tokenizer does not belong to this model)");
  std::vector<std::string> notes;
  // Tokens the tokenizer config adds after the file's (special or added tokens) that the model was not
  // resized for: transformers loads such a directory too, and fails on a prompt that holds one; so
  // does encode_prompt, by name.
  if (tokenizer.vocab().size() > static_cast<size_t>(config.vocab_size)) {
    std::string names;
    for (size_t id = static_cast<size_t>(config.vocab_size);
         id < tokenizer.vocab().size() && id < 3 + static_cast<size_t>(config.vocab_size); ++id)
      names += (names.empty() ? "'" : ", '") + tokenizer.vocab().token(static_cast<int32_t>(id)) + "'";
    if (tokenizer.vocab().size() > 3 + static_cast<size_t>(config.vocab_size)) names += ", ...";
    notes.push_back(dir + ": " + std::to_string(tokenizer.vocab().size() - static_cast<size_t>(config.vocab_size)) +
                    " token(s) the tokenizer config adds (" + names + ") have ids past config.json's vocab_size " +
                    std::to_string(config.vocab_size) + "; a prompt that holds one is an error, as in transformers");
  }

  // transformers' default: BertTokenizer's true when the tokenizer is built from vocab.txt, the base
  // class's false when it is read from tokenizer.json.
  bool clean_up = tokenizer.vocab_file() == "vocab.txt";
  const std::string tokenizer_config_path = dir + "/tokenizer_config.json";
  Json tokenizer_json = Json::object();
  if (file_exists(tokenizer_config_path))
    tokenizer_json = Json::parse(read_file(tokenizer_config_path), tokenizer_config_path);
  else
    notes.push_back(dir +
                    " has no tokenizer_config.json: BertTokenizer's defaults apply, as in transformers (lowercase, "
                    "accents stripped: Hangul is split into jamo); a model trained on cased text needs the file");
  if (const Json* flag = tokenizer_json.is_object() ? tokenizer_json.find("clean_up_tokenization_spaces") : nullptr;
      flag && !flag->is_null()) {
    if (!flag->is_bool()) throw Error(tokenizer_config_path + ": clean_up_tokenization_spaces must be true or false");
    clean_up = flag->as_bool();
  }

  ModelOptions options;
  options.num_threads = num_threads;
  options.inference_only = true;          // no gradient arena
  options.initialize_parameters = false;  // the file's weights replace every one
  BertForPreTraining<float> model(config, options);
  // A BertForMaskedLM checkpoint (transformers' save_pretrained) has no pooler and no NSP head; fill-mask
  // and the probes use neither, so those are zero here instead of an error.
  std::vector<std::string> absent_heads;
  model.load_safetensors(dir + "/model.safetensors", &absent_heads);
  model.set_dropout(0, 0, /*training=*/false);
  return InferenceCheckpoint{dir, config, std::move(tokenizer), clean_up, std::move(model), std::move(notes)};
}

std::string clean_up_tokenization(std::string_view text) {
  static const std::pair<std::string_view, std::string_view> kRules[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  std::string out(text);
  for (const auto& [from, to] : kRules) replace_all(out, from, to);
  return out;
}

std::string hf_decode(const Tokenizer& tokenizer, std::span<const int32_t> ids, bool skip_special_tokens,
                      bool clean_up_tokenization_spaces) {
  const Vocab& vocab = tokenizer.vocab();
  std::set<int32_t> special_ids;
  if (skip_special_tokens)
    for (const std::string& token : tokenizer.config().special_tokens())
      if (const int32_t id = vocab.id(token); id >= 0) special_ids.insert(id);
  const std::string& prefix = tokenizer.config().continuing_subword_prefix;

  const TokenizerConfig::Decoder& decoder = tokenizer.config().decoder;
  std::string out, piece;
  size_t index = 0;  // among the tokens kept
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= vocab.size() || special_ids.count(id)) continue;
    piece = vocab.token(id);
    if (!decoder.wordpiece) {  // no decoder in tokenizer.json: the tokens as they are, between spaces
      if (index != 0) out.push_back(' ');
      out += piece;
      ++index;
      continue;
    }
    if (index != 0) {
      if (!prefix.empty() && piece.compare(0, prefix.size(), prefix) == 0) {
        piece.erase(0, prefix.size());
      } else {
        piece.insert(piece.begin(), ' ');
      }
    }
    if (decoder.cleanup) decoder_cleanup(piece);
    out += piece;
    ++index;
  }
  return clean_up_tokenization_spaces ? clean_up_tokenization(out) : out;
}

std::string token_past_vocab(const Tokenizer& tokenizer, std::span<const int32_t> ids, int vocab_size) {
  for (const int32_t id : ids)
    if (id >= vocab_size)
      return "'" + tokenizer.vocab().token(id) + "' (id " + std::to_string(id) + "), past the model's vocab_size " +
             std::to_string(vocab_size) + " (a token added to the tokenizer after the model was made)";
  return {};
}

std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, std::string_view prompt, int max_positions,
                                   int vocab_size) {
  std::vector<int32_t> ids;
  EncodeScratch scratch;
  tokenizer.encode(prompt, ids, scratch);
  if (const std::string past = token_past_vocab(tokenizer, ids, vocab_size); !past.empty())
    throw Error("the prompt holds " + past);
  Encoding encoding = tokenizer.post_process(std::move(ids), nullptr, std::nullopt);
  const std::string& mask = tokenizer.config().mask_token;
  if (std::count(encoding.ids.begin(), encoding.ids.end(), tokenizer.mask_id()) == 0)
    throw Error("no " + mask + " in the prompt " + quoted(prompt) + " (write " + mask +
                " where the model should fill in a token)");
  if (encoding.ids.size() > static_cast<size_t>(max_positions))
    throw Error("the prompt is " + std::to_string(encoding.ids.size()) +
                " tokens with [CLS] and [SEP], more than the model's max_position_embeddings " +
                std::to_string(max_positions) + " (shorten it: bert_infer does not truncate)");
  return std::move(encoding.ids);
}

// ---- fill-mask -------------------------------------------------------------------------------------

std::vector<int32_t> fill_mask_target_ids(const Tokenizer& tokenizer, const std::vector<std::string>& targets,
                                          int vocab_size, std::vector<std::string>& notes) {
  std::vector<int32_t> ids;
  std::vector<int32_t> encoded;
  EncodeScratch scratch;
  for (size_t i = 0; i < targets.size(); ++i) {
    const std::string& target = targets[i];
    check_utf8(target, "target " + std::to_string(i + 1));
    int32_t id = tokenizer.vocab().id(target);
    if (id < 0) {  // HF: tokenizer(target, add_special_tokens=False, max_length=1, truncation=True)
      encoded.clear();
      tokenizer.encode(target, encoded, scratch);
      if (encoded.empty()) {
        notes.push_back("target " + bert::quoted(target) +
                        " is no token (the tokenizer leaves nothing of it); ignored");
        continue;
      }
      id = encoded.front();
      notes.push_back("target " + bert::quoted(target) + " is not a vocabulary entry; scoring its first token '" +
                      tokenizer.vocab().token(id) + "' (id " + std::to_string(id) + ")");
    }
    const int32_t one[] = {id};
    if (const std::string past = token_past_vocab(tokenizer, one, vocab_size); !past.empty())
      throw Error("target " + bert::quoted(target) + " is " + past);
    ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  if (targets.empty()) throw Error("no targets");
  if (ids.empty())
    throw Error(targets.size() == 1 ? std::string("the target is no token (the tokenizer leaves nothing of it)")
                                    : "none of the " + std::to_string(targets.size()) +
                                          " targets is a token (the tokenizer leaves nothing of them)");
  return ids;
}

FillMaskResult fill_mask(BertForPreTraining<float>& model, const Tokenizer& tokenizer, std::string_view prompt,
                         int top_k, bool clean_up_tokenization_spaces, std::span<const int32_t> targets) {
  ModelLogits<BertForPreTraining<float>> source(model);
  return fill_mask(source, tokenizer, prompt, top_k, clean_up_tokenization_spaces, targets);
}

void for_each_mlm_logits(MlmLogitsSource& model, const std::vector<std::vector<int32_t>>& sequences,
                         const std::vector<std::vector<int32_t>>& positions, const PromptBatching& batching,
                         const std::function<void(size_t, std::span<const float>)>& fn) {
  if (positions.size() != sequences.size())
    throw Error("for_each_mlm_logits: " + std::to_string(sequences.size()) + " sequences but " +
                std::to_string(positions.size()) + " position lists");
  if (batching.max_tokens < 1 || batching.max_sequences < 1 || !(batching.max_padding >= 0))
    throw Error("for_each_mlm_logits: max_tokens and max_sequences must be >= 1, max_padding >= 0");
  std::vector<size_t> order;
  for (size_t i = 0; i < sequences.size(); ++i) {
    if (positions[i].empty()) continue;
    for (const int32_t position : positions[i])
      if (position < 0 || static_cast<size_t>(position) >= sequences[i].size())
        throw Error("for_each_mlm_logits: position " + std::to_string(position) + " is outside sequence " +
                    std::to_string(i) + " of " + std::to_string(sequences[i].size()) + " tokens");
    order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return sequences[a].size() < sequences[b].size(); });
  const size_t vocab = static_cast<size_t>(model.config().vocab_size);
  const int32_t pad = std::max(model.config().pad_token_id, 0);  // (masked out: any id would do)
  std::vector<int32_t> ids, flat, lengths;
  std::vector<size_t> members;
  size_t done = 0;
  auto flush = [&] {
    if (members.empty()) return;
    // Sorted: the last member is the longest; the others are padded to it.
    const size_t seq_len = sequences[members.back()].size();
    ids.assign(members.size() * seq_len, pad);
    flat.clear();
    lengths.clear();
    for (size_t m = 0; m < members.size(); ++m) {
      const std::vector<int32_t>& sequence = sequences[members[m]];
      std::copy(sequence.begin(), sequence.end(), ids.begin() + static_cast<std::ptrdiff_t>(m * seq_len));
      for (const int32_t position : positions[members[m]]) flat.push_back(static_cast<int32_t>(m * seq_len) + position);
      lengths.push_back(static_cast<int32_t>(sequence.size()));
    }
    const bool padded = sequences[members.front()].size() != seq_len;
    const std::vector<float> logits =
        padded ? model.padded_logits_at(ids, static_cast<int64_t>(members.size()), flat, lengths)
               : model.batch_logits_at(ids, static_cast<int64_t>(members.size()), flat);
    size_t row = 0;
    for (const size_t i : members) {
      const size_t rows = positions[i].size();
      fn(i, std::span<const float>(logits.data() + row * vocab, rows * vocab));
      row += rows;
    }
    done += members.size();
    members.clear();
    if (batching.progress) batching.progress(done, order.size());
  };
  size_t real_tokens = 0;  // of the members
  for (const size_t i : order) {
    const size_t length = sequences[i].size(), call_tokens = (members.size() + 1) * length;
    if (!members.empty() &&
        (static_cast<int64_t>(call_tokens) > batching.max_tokens ||
         static_cast<int64_t>(members.size()) >= batching.max_sequences ||
         static_cast<double>(call_tokens) > (1 + batching.max_padding) * static_cast<double>(real_tokens + length))) {
      flush();
      real_tokens = 0;
    }
    members.push_back(i);
    real_tokens += length;
  }
  flush();
}

namespace {

// fill_mask's candidates for one encoded prompt from its mask rows' logits.
FillMaskResult fill_mask_candidates(const Tokenizer& tokenizer, const std::vector<int32_t>& input_ids,
                                    const std::vector<int32_t>& positions, std::span<const float> logits, size_t vocab,
                                    const std::vector<int32_t>& pool, int top_k, bool clean_up_tokenization_spaces) {
  FillMaskResult result;
  result.input_ids = input_ids;
  result.mask_positions.assign(positions.begin(), positions.end());
  const size_t k = std::min(static_cast<size_t>(top_k), pool.size());
  const bool single_mask = positions.size() == 1;
  std::vector<int32_t> order;
  std::vector<int32_t> sequence_ids;
  for (size_t m = 0; m < positions.size(); ++m) {
    const std::span<const float> row = logits.subspan(m * vocab, vocab);
    const auto [max_logit, sum] = softmax_max_and_sum(row);
    order = pool;
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                      [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    std::vector<FillMaskCandidate>& candidates = result.per_mask.emplace_back();
    for (size_t rank = 0; rank < k; ++rank) {
      const int32_t id = order[rank];
      FillMaskCandidate candidate;
      candidate.score = std::exp(static_cast<double>(row[id]) - max_logit) / sum;
      candidate.token = id;
      const int32_t single[] = {id};
      candidate.token_str = hf_decode(tokenizer, single, /*skip_special_tokens=*/false, clean_up_tokenization_spaces);
      // HF: the candidate in place, pads removed; the other [MASK]s stay visible when there are several.
      sequence_ids.clear();
      for (size_t i = 0; i < result.input_ids.size(); ++i) {
        const int32_t token = i == static_cast<size_t>(positions[m]) ? id : result.input_ids[i];
        if (token != tokenizer.pad_id()) sequence_ids.push_back(token);
      }
      candidate.sequence = hf_decode(tokenizer, sequence_ids, single_mask, clean_up_tokenization_spaces);
      candidates.push_back(std::move(candidate));
    }
  }
  return result;
}

// The ids a candidate may be, each once: `targets`, else the whole vocabulary.
std::vector<int32_t> candidate_pool(std::span<const int32_t> targets, size_t vocab) {
  std::vector<int32_t> pool(targets.begin(), targets.end());
  std::sort(pool.begin(), pool.end());
  pool.erase(std::unique(pool.begin(), pool.end()), pool.end());
  for (const int32_t id : pool)
    if (id < 0 || static_cast<size_t>(id) >= vocab)
      throw Error("fill_mask: target id " + std::to_string(id) + " is outside the model's vocabulary of " +
                  std::to_string(vocab));
  if (pool.empty()) {
    pool.resize(vocab);
    std::iota(pool.begin(), pool.end(), 0);
  }
  return pool;
}

// fill_mask over prompts already encoded ([CLS] ... [SEP], each with a mask token).
std::vector<FillMaskResult> fill_mask_encoded(MlmLogitsSource& model, const Tokenizer& tokenizer,
                                              const std::vector<std::vector<int32_t>>& inputs, int top_k,
                                              bool clean_up_tokenization_spaces, std::span<const int32_t> targets,
                                              const PromptBatching& batching) {
  const size_t vocab = static_cast<size_t>(model.config().vocab_size);
  const std::vector<int32_t> pool = candidate_pool(targets, vocab);
  std::vector<std::vector<int32_t>> positions;
  for (const std::vector<int32_t>& ids : inputs) positions.push_back(mask_positions_of(tokenizer, ids));
  std::vector<FillMaskResult> results(inputs.size());
  for_each_mlm_logits(model, inputs, positions, batching, [&](size_t i, std::span<const float> logits) {
    results[i] = fill_mask_candidates(tokenizer, inputs[i], positions[i], logits, vocab, pool, top_k,
                                      clean_up_tokenization_spaces);
  });
  return results;
}

void check_top_k(int top_k) {
  if (top_k < 1) throw Error("fill_mask: top_k must be >= 1, got " + std::to_string(top_k));
}

}  // namespace

FillMaskResult fill_mask(MlmLogitsSource& model, const Tokenizer& tokenizer, std::string_view prompt, int top_k,
                         bool clean_up_tokenization_spaces, std::span<const int32_t> targets) {
  check_top_k(top_k);
  (void)candidate_pool(targets, static_cast<size_t>(model.config().vocab_size));  // its errors first, as before
  std::vector<std::vector<int32_t>> inputs;
  inputs.push_back(encode_prompt(tokenizer, prompt, model.config().max_position_embeddings, model.config().vocab_size));
  return std::move(
      fill_mask_encoded(model, tokenizer, inputs, top_k, clean_up_tokenization_spaces, targets, {}).front());
}

std::vector<FillMaskResult> fill_mask_batch(MlmLogitsSource& model, const Tokenizer& tokenizer,
                                            const std::vector<std::string>& prompts, int top_k,
                                            bool clean_up_tokenization_spaces, std::span<const int32_t> targets,
                                            const PromptBatching& batching) {
  check_top_k(top_k);
  (void)candidate_pool(targets, static_cast<size_t>(model.config().vocab_size));
  std::vector<std::vector<int32_t>> inputs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    try {
      inputs.push_back(
          encode_prompt(tokenizer, prompts[i], model.config().max_position_embeddings, model.config().vocab_size));
    } catch (const Error& e) {
      throw Error("prompt " + std::to_string(i + 1) + ": " + e.what());
    }
  }
  return fill_mask_encoded(model, tokenizer, inputs, top_k, clean_up_tokenization_spaces, targets, batching);
}

Json fill_mask_json(const FillMaskResult& result) {
  Json per_mask = Json::array();
  for (const std::vector<FillMaskCandidate>& candidates : result.per_mask) {
    Json list = Json::array();
    for (const FillMaskCandidate& candidate : candidates) {
      Json item = Json::object();
      item.set("score", candidate.score);
      item.set("token", candidate.token);
      item.set("token_str", candidate.token_str);
      item.set("sequence", candidate.sequence);
      list.push(std::move(item));
    }
    per_mask.push(std::move(list));
  }
  if (per_mask.as_array().size() == 1) return per_mask.as_array().front();
  return per_mask;
}

// ---- probing ---------------------------------------------------------------------------------------

void for_each_tsv_line(std::string_view text, const std::string& path,
                       const std::function<void(size_t, const std::vector<std::string>&)>& fn) {
  size_t line_number = 0;
  std::vector<std::string> columns;
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);  // a UTF-8 byte order mark (Windows editors)
  while (!text.empty()) {
    const size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    check_utf8(line, path + ":" + std::to_string(line_number));
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
    columns.clear();
    size_t start = 0;
    while (true) {
      const size_t tab = line.find('\t', start);
      columns.emplace_back(line.substr(start, tab == std::string_view::npos ? std::string_view::npos : tab - start));
      if (tab == std::string_view::npos) break;
      start = tab + 1;
    }
    fn(line_number, columns);
  }
}

std::vector<ProbeQuery> parse_probe_tsv(std::string_view text, const std::string& path) {
  std::vector<ProbeQuery> queries;
  for_each_tsv_line(text, path, [&](size_t line_number, const std::vector<std::string>& columns) {
    const std::string hint = " (expected 'prompt with one [MASK]<TAB>gold answer[<TAB>relation]')";
    if (columns.size() < 2)
      throw Error(located(path, line_number, "no tab between the prompt and the gold answer" + hint));
    if (columns.size() > 3)
      throw Error(
          located(path, line_number, std::to_string(columns.size()) + " tab-separated columns, at most 3" + hint));
    ProbeQuery query;
    query.source = located(path, line_number, "");
    query.source.resize(query.source.size() - 2);  // "path:line"
    query.line = line_number;
    query.prompt = columns[0];
    query.gold = trim_spaces(columns[1]);
    query.relation = columns.size() == 3 ? trim_spaces(columns[2]) : std::string("-");
    if (trim_spaces(query.prompt).empty()) throw Error(located(path, line_number, "empty prompt" + hint));
    if (query.gold.empty()) throw Error(located(path, line_number, "empty gold answer" + hint));
    if (query.relation.empty()) query.relation = "-";
    queries.push_back(std::move(query));
  });
  return queries;
}

int32_t single_token_id(const Tokenizer& tokenizer, std::string_view gold, std::string& why) {
  // "##에서": the continuation piece itself, an answer the user means as the rest of the word before.
  const std::string& prefix = tokenizer.config().continuing_subword_prefix;
  if (!prefix.empty() && gold.size() > prefix.size() && gold.starts_with(prefix)) {
    if (const int32_t id = tokenizer.vocab().id(gold); id >= 0) return id;
    why = "gold answer " + quoted(gold) + " is not a vocabulary entry (a piece starting with " +
          quoted(std::string_view(prefix)) + " is looked up whole)";
    return -1;
  }
  std::vector<int32_t> ids;
  EncodeScratch scratch;
  tokenizer.encode(gold, ids, scratch);
  if (ids.empty()) {
    why = "gold answer " + quoted(gold) + " has no tokens";
    return -1;
  }
  if (ids.size() > 1) {
    std::vector<std::string> pieces;
    for (int32_t id : ids) pieces.push_back(tokenizer.vocab().token(id));
    why = "gold answer " + quoted(gold) + " is " + std::to_string(ids.size()) + " tokens (" + join(pieces, " ") +
          "), not one vocabulary token";
    return -1;
  }
  if (ids[0] == tokenizer.unk_id()) {
    why = "gold answer " + quoted(gold) + " is not in the vocabulary (" + tokenizer.config().unk_token + ")";
    return -1;
  }
  // The model's own markers are never an answer in text (the PII placeholders, additional special
  // tokens, can be: a probe may ask whether the model fills in [EMAIL]).
  for (const int32_t special : {tokenizer.cls_id(), tokenizer.sep_id(), tokenizer.pad_id(), tokenizer.mask_id()})
    if (ids[0] == special) {
      why = "gold answer " + quoted(gold) + " is a special token of the model, never an answer";
      return -1;
    }
  return ids[0];
}

int64_t rank_of(std::span<const float> logits, int32_t gold) {
  const float target = logits[static_cast<size_t>(gold)];
  int64_t ahead = 0;
  for (size_t j = 0; j < logits.size(); ++j)
    if (logits[j] > target || (logits[j] == target && static_cast<int32_t>(j) < gold)) ++ahead;
  return ahead + 1;
}

ProbeMetrics summarize_probe(std::vector<ProbeOutcome> outcomes) {
  ProbeMetrics metrics;
  metrics.overall.relation = "overall";
  auto add = [](ProbeRelationMetrics& into, const ProbeOutcome& outcome) {
    if (outcome.rank <= 0) {
      ++into.skipped;
      return;
    }
    ++into.count;
    into.p_at_1 += outcome.rank == 1 ? 1 : 0;
    into.p_at_10 += outcome.rank <= 10 ? 1 : 0;
    into.mrr += 1.0 / static_cast<double>(outcome.rank);
  };
  for (const ProbeOutcome& outcome : outcomes) {
    auto it = std::find_if(metrics.relations.begin(), metrics.relations.end(),
                           [&](const ProbeRelationMetrics& r) { return r.relation == outcome.query.relation; });
    if (it == metrics.relations.end()) {
      metrics.relations.push_back({});
      it = std::prev(metrics.relations.end());
      it->relation = outcome.query.relation;
    }
    add(*it, outcome);
    add(metrics.overall, outcome);
  }
  auto finish = [](ProbeRelationMetrics& m) {
    if (m.count == 0) return;
    const double n = static_cast<double>(m.count);
    m.p_at_1 /= n;
    m.p_at_10 /= n;
    m.mrr /= n;
  };
  finish(metrics.overall);
  int64_t scored_relations = 0;
  for (ProbeRelationMetrics& relation : metrics.relations) {
    finish(relation);
    if (relation.count == 0) continue;
    metrics.mean_p_at_1_by_relation += relation.p_at_1;
    ++scored_relations;
  }
  if (scored_relations > 0) metrics.mean_p_at_1_by_relation /= static_cast<double>(scored_relations);
  metrics.outcomes = std::move(outcomes);
  return metrics;
}

ProbeMetrics probe(BertForPreTraining<float>& model, const Tokenizer& tokenizer,
                   const std::vector<ProbeQuery>& queries) {
  ModelLogits<BertForPreTraining<float>> source(model);
  return probe(source, tokenizer, queries);
}

ProbeMetrics probe(MlmLogitsSource& model, const Tokenizer& tokenizer, const std::vector<ProbeQuery>& queries,
                   const PromptBatching& batching) {
  std::vector<ProbeOutcome> outcomes;
  std::vector<std::vector<int32_t>> inputs(queries.size()), positions(queries.size());  // empty: not run
  for (size_t q = 0; q < queries.size(); ++q) {
    const ProbeQuery& query = queries[q];
    ProbeOutcome outcome;
    outcome.query = query;
    std::vector<int32_t> ids;
    try {
      ids = encode_prompt(tokenizer, query.prompt, model.config().max_position_embeddings, model.config().vocab_size);
    } catch (const Error& e) {
      throw Error(query.source + ": " + e.what());
    }
    std::vector<int32_t> at = mask_positions_of(tokenizer, ids);
    if (at.size() != 1)
      throw Error(query.source + ": the prompt has " + std::to_string(at.size()) + " " + tokenizer.config().mask_token +
                  " tokens; a probe needs exactly one");
    outcome.gold_id = single_token_id(tokenizer, query.gold, outcome.skip_reason);
    if (outcome.gold_id >= model.config().vocab_size) {
      outcome.skip_reason = "gold answer " + quoted(std::string_view(query.gold)) + " is id " +
                            std::to_string(outcome.gold_id) + ", past the model's vocab_size " +
                            std::to_string(model.config().vocab_size) + ": never an answer";
      outcome.gold_id = -1;
    }
    if (outcome.gold_id >= 0) {
      inputs[q] = std::move(ids);
      positions[q] = std::move(at);
    }
    outcomes.push_back(std::move(outcome));
  }
  for_each_mlm_logits(model, inputs, positions, batching, [&](size_t q, std::span<const float> logits) {
    ProbeOutcome& outcome = outcomes[q];
    outcome.rank = rank_of(logits, outcome.gold_id);
    const auto [max_logit, sum] = softmax_max_and_sum(logits);
    outcome.gold_score = std::exp(static_cast<double>(logits[static_cast<size_t>(outcome.gold_id)]) - max_logit) / sum;
    const int32_t top[] = {static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin())};
    outcome.top_token = hf_decode(tokenizer, top, /*skip_special_tokens=*/false);
  });
  return summarize_probe(std::move(outcomes));
}

Json probe_json(const ProbeMetrics& metrics) {
  auto relation_json = [](const ProbeRelationMetrics& m) {
    Json j = Json::object();
    j.set("relation", m.relation);
    j.set("count", m.count);
    j.set("skipped", m.skipped);
    // Nothing scored is no measurement: null, not a P@1 of 0 (which reads as "nothing leaked").
    j.set("p_at_1", m.count ? Json(m.p_at_1) : Json());
    j.set("p_at_10", m.count ? Json(m.p_at_10) : Json());
    j.set("mrr", m.count ? Json(m.mrr) : Json());
    return j;
  };
  Json j = Json::object();
  j.set("queries", static_cast<int64_t>(metrics.outcomes.size()));
  j.set("overall", relation_json(metrics.overall));
  j.set("mean_p_at_1_by_relation", metrics.overall.count ? Json(metrics.mean_p_at_1_by_relation) : Json());
  Json relations = Json::array();
  for (const ProbeRelationMetrics& m : metrics.relations) relations.push(relation_json(m));
  j.set("relations", std::move(relations));
  Json results = Json::array(), skipped = Json::array();
  for (const ProbeOutcome& outcome : metrics.outcomes) {
    Json item = Json::object();
    item.set("line", static_cast<int64_t>(outcome.query.line));
    item.set("relation", outcome.query.relation);
    item.set("gold", outcome.query.gold);
    if (outcome.rank > 0) {
      item.set("gold_id", outcome.gold_id);
      item.set("rank", outcome.rank);
      item.set("gold_score", outcome.gold_score);
      item.set("top_token", outcome.top_token);
      results.push(std::move(item));
    } else {
      item.set("reason", outcome.skip_reason);
      skipped.push(std::move(item));
    }
  }
  j.set("results", std::move(results));
  j.set("skipped", std::move(skipped));
  return j;
}

// ---- the command -----------------------------------------------------------------------------------

namespace {

struct Prompt {
  std::string source;  // "--mask 2", "file:3", "<stdin>:1"
  std::string text;
};

// A prompt line as read (1-based line_number): a UTF-8 byte order mark before line 1 and a trailing
// '\r' removed. false for a blank line, which holds no prompt.
bool trim_prompt_line(std::string& line, size_t line_number) {
  if (line_number == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);  // Windows editors write one
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line.find_first_not_of(" \t") != std::string::npos;
}

void read_prompt_lines(std::istream& in, const std::string& name, std::vector<Prompt>& prompts) {
  std::string line;
  size_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    const bool has_prompt = trim_prompt_line(line, line_number);
    check_utf8(line, name + ":" + std::to_string(line_number));
    if (has_prompt) prompts.push_back({name + ":" + std::to_string(line_number), line});
  }
}

// --targets must be UTF-8: checked before stdin is read (what each target is needs the tokenizer).
void check_targets_utf8(const Args& args) {
  if (!args.has("--targets")) return;
  for (size_t i = 0; i < args.values("--targets").size(); ++i)
    check_utf8(args.values("--targets")[i], "bert_infer: --targets: target " + std::to_string(i + 1));
}

void print_fill_mask_table(const Prompt& prompt, const FillMaskResult& result, const Tokenizer& tokenizer,
                           std::ostream& out) {
  out << "> " << prompt.text << "\n";
  for (size_t m = 0; m < result.per_mask.size(); ++m) {
    if (result.per_mask.size() > 1)
      out << "  " << tokenizer.config().mask_token << " " << (m + 1) << " of " << result.per_mask.size() << "\n";
    // An id past vocab.txt's end (a model whose vocab_size leaves room for tokens appended later):
    // HF's token_str is "" (so is the JSON's); the table says why.
    const auto shown = [&](const FillMaskCandidate& c) {
      return static_cast<size_t>(c.token) < tokenizer.vocab().size() ? c.token_str : std::string("(not in vocab.txt)");
    };
    size_t token_width = 5;
    for (const FillMaskCandidate& c : result.per_mask[m]) token_width = std::max(token_width, display_width(shown(c)));
    out << "     #     score       id  " << pad_right("token", token_width) << "  sequence\n";
    for (size_t i = 0; i < result.per_mask[m].size(); ++i) {
      const FillMaskCandidate& c = result.per_mask[m][i];
      char head[64];
      std::snprintf(head, sizeof head, "  %4zu  %8.4f  %7d  ", i + 1, c.score, c.token);
      out << head << pad_right(shown(c), token_width) << "  " << c.sequence << "\n";
    }
  }
}

void print_probe_table(const std::string& path, const ProbeMetrics& metrics, std::ostream& out) {
  out << "probe " << path << ": " << metrics.outcomes.size() << " queries, " << metrics.overall.count << " scored, "
      << metrics.overall.skipped << " skipped\n";
  size_t name_width = 8;
  for (const ProbeRelationMetrics& m : metrics.relations) name_width = std::max(name_width, display_width(m.relation));
  out << pad_right("relation", name_width) << "        n     P@1    P@10     MRR\n";
  auto row = [&](const ProbeRelationMetrics& m) {
    char numbers[96];
    if (m.count)
      std::snprintf(numbers, sizeof numbers, "  %7lld  %6.4f  %6.4f  %6.4f", static_cast<long long>(m.count), m.p_at_1,
                    m.p_at_10, m.mrr);
    else  // nothing scored: no measurement, not a P@1 of 0
      std::snprintf(numbers, sizeof numbers, "  %7d  %6s  %6s  %6s", 0, "n/a", "n/a", "n/a");
    out << pad_right(m.relation, name_width) << numbers << "\n";
  };
  for (const ProbeRelationMetrics& m : metrics.relations) row(m);
  row(metrics.overall);
  out << "mean P@1 over relations (LAMA): "
      << (metrics.overall.count ? format("%.4f", metrics.mean_p_at_1_by_relation) : std::string("n/a")) << "\n";
  for (const ProbeOutcome& outcome : metrics.outcomes)
    if (outcome.rank <= 0) out << "skipped " << outcome.query.source << ": " << outcome.skip_reason << "\n";
}

constexpr const char* kHelpNotes =
    "\nFill-mask prints, for each [MASK] of each prompt, the top-k tokens by softmax probability: exactly\n"
    "what transformers' pipeline(\"fill-mask\", model=DIR, top_k=K) returns (--json: the same JSON, one\n"
    "value per prompt line). Prompts come from --mask and --input (both may be given; --mask first),\n"
    "else from stdin (one a line). Prompts must be valid UTF-8. From a terminal (unless --batch-size asks\n"
    "for batches: then stdin is read to its end first, as from a pipe), or with --interactive, each\n"
    "stdin line is answered when it ends (Enter) and the output flushed, so a script can write a\n"
    "prompt and read its answer; a bad line is reported on stderr (--json: also an {\"error\": ...} line\n"
    "in its place on stdout, a blank line included) and the next one read, and the exit status is 1 if\n"
    "any line failed.\n"
    "\n"
    "--targets T... (the pipeline's targets=) ranks only those tokens: each T is a vocabulary entry as\n"
    "written (\"##에서\" included), else the first token the tokenizer makes of it (with a note: \"Seoul\"\n"
    "becomes \"seoul\" in a lowercasing vocabulary, a word with no entry its first piece); duplicates count\n"
    "once, --top-k is capped at their number, and each score stays the token's probability over the whole\n"
    "vocabulary. \"Which of 조선, 고려, 신라 fits?\" is --targets 조선 고려 신라.\n"
    "\n"
    "--probe measures what the model memorised (the \"[MASK] attack\", LAMA: Petroni et al. 2019). Each\n"
    "TSV line is 'prompt with one [MASK]<TAB>gold answer[<TAB>relation]'; the gold answer must be one\n"
    "vocabulary token (else the line is reported as skipped). The rank of the gold token over the whole\n"
    "vocabulary gives P@1, P@10 and MRR per relation and overall, and mean P@1 averaged per relation.\n"
    "The tokenizer splits [MASK] out of the text, so \"상자[MASK]\" reads as \"상자 [MASK]\"; to score a\n"
    "continuation piece as the answer, write the gold answer as that vocabulary entry (\"##에서\").\n"
    "Probe with facts that occur only in the training corpus (a name with its employer, city or title):\n"
    "a high P@1 means anyone who can query [MASK] can extract them. A line whose gold answer is several\n"
    "tokens is skipped, not scored: phone, account or registration numbers are many WordPiece tokens, so\n"
    "this probe cannot measure them. Rows with nothing scored print n/a (JSON null), and a file with no\n"
    "scored line exits 1.\n"
    "\n"
    "--exposure measures those many-token secrets instead (canary exposure: Carlini et al. 2019). Each TSV\n"
    "line is 'text as it appears in the corpus<TAB>the secret in it[<TAB>label]'; the secret must hold\n"
    "ASCII digits. The text is scored by its pseudo-log-likelihood (every token masked in turn), then again\n"
    "with the secret's digits replaced, for --candidates other secrets (all of them when there are fewer).\n"
    "Rank 1 of N+1 (exposure log2(N+1) bits) means the model prefers the real secret to every other: it\n"
    "memorised it. The gaussian column extrapolates to secret spaces too large to score. Cost: one forward\n"
    "per token per candidate (--device cuda helps). --scores FILE keeps every score for your own analysis.\n";

}  // namespace

namespace {

// --device cuda without a usable device or a CUDA build: one line, before anything is loaded.
void check_cuda_device() {
#if defined(BERT_INFER_CUDA)
  const DeviceInfo info = cuda_device_info();
  if (!info.available) throw Error("bert_infer: --device cuda: " + info.reason + "; use --device cpu");
  if (const std::string why = cuda_check_kernels(); !why.empty())
    throw Error("bert_infer: --device cuda: " + why + " (--device cpu runs without it)");
#else
  throw Error(
      "bert_infer: --device cuda: this bert_infer was built without CUDA (no nvcc at build time); "
      "use --device cpu");
#endif
}

#if defined(BERT_INFER_CUDA)
// The checkpoint's weights on the GPU (bf16 working copy of the fp32 weights).
class CudaLogits final : public MlmLogitsSource {
 public:
  explicit CudaLogits(std::unique_ptr<BertForPreTrainingCuda> model)
      : model_(std::move(model)), logits_(*model_), config_(model_->config()) {
    // The fused attention kernel takes up to kAttentionMaxSeqLen tokens: the prompt checks see that
    // limit, so a longer prompt is refused up front like any prompt beyond max_position_embeddings.
    config_.max_position_embeddings = std::min(config_.max_position_embeddings, cuda::kAttentionMaxSeqLen);
  }
  const BertConfig& config() const override { return config_; }
  std::vector<float> logits_at(const std::vector<int32_t>& ids, const std::vector<int32_t>& positions) override {
    return logits_.logits_at(ids, positions);
  }
  // The whole batch in one forward (--exposure's masked copies, batched prompts): the model's buffers
  // grow to the largest batch once (PllOptions bounds it: 8192 tokens, 256 copies; PromptBatching
  // 1024 tokens).
  std::vector<float> padded_logits_at(const std::vector<int32_t>& ids, int64_t batch,
                                      const std::vector<int32_t>& positions,
                                      std::span<const int32_t> lengths) override {
    return logits_.padded_logits_at(ids, batch, positions, lengths);
  }

 private:
  std::unique_ptr<BertForPreTrainingCuda> model_;
  ModelLogits<BertForPreTrainingCuda> logits_;
  BertConfig config_;
};
#endif

}  // namespace

std::unique_ptr<MlmLogitsSource> logits_source(InferenceCheckpoint& checkpoint, const std::string& device) {
  if (device != "cuda") return bert::logits_source(checkpoint.model);
#if defined(BERT_INFER_CUDA)
  try {
    ModelOptions options;
    options.inference_only = true;  // the bf16 weights only: 2 bytes per parameter on the device
    options.initialize_parameters = false;  // copy_parameters_from replaces every one
    auto model = std::make_unique<BertForPreTrainingCuda>(checkpoint.config, options);
    model->copy_parameters_from(checkpoint.model);
    // The fused attention kernel's token limit; longer prompts are refused up front (CudaLogits).
    model->reserve(1, std::min(checkpoint.config.max_position_embeddings, cuda::kAttentionMaxSeqLen));
    return std::make_unique<CudaLogits>(std::move(model));
  } catch (const std::invalid_argument& e) {
    throw Error("bert_infer: --device cuda: " + std::string(e.what()) + "; use --device cpu");
  }
#else
  check_cuda_device();
  return nullptr;
#endif
}

namespace {

void print_exposure_table(const std::string& path, const std::vector<ExposureResult>& results,
                          const ExposureOptions& options, std::ostream& out) {
  out << "exposure " << path << ": " << results.size() << " canar" << (results.size() == 1 ? "y" : "ies")
      << ", each ranked by pseudo-log-likelihood among up to " << options.candidates
      << " secrets with other digits (seed " << options.seed << ")\n";
  size_t label_width = 5, secret_width = 6;
  for (const ExposureResult& r : results) {
    label_width = std::max(label_width, display_width(r.canary.label));
    secret_width = std::max(secret_width, display_width(r.canary.secret));
  }
  out << pad_right("line", 6) << "  " << pad_right("label", label_width) << "  " << pad_right("secret", secret_width)
      << "     score          rank   exposure (bits)  gaussian   space  best other secret (score)\n";
  for (const ExposureResult& r : results) {
    char numbers[160];
    std::snprintf(numbers, sizeof numbers, "  %8.3f  %12s  %6.2f of %6.2f  %8s  %6.2f  ", r.score,
                  (std::to_string(r.stats.rank) + "/" + std::to_string(r.stats.population)).c_str(), r.stats.exposure,
                  r.stats.max_exposure,
                  r.stats.has_gaussian ? format("%.2f", r.stats.gaussian_exposure).c_str() : "n/a", r.space_bits);
    out << pad_right(std::to_string(r.canary.line), 6) << "  " << pad_right(r.canary.label, label_width) << "  "
        << pad_right(r.canary.secret, secret_width) << numbers;
    if (r.candidates.empty())
      out << "-";
    else
      out << r.candidates[r.best_candidate] << " (" << format("%.3f", r.candidate_scores[r.best_candidate]) << ")";
    out << (r.exhaustive ? "  [all " + std::to_string(r.candidates.size()) + " others scored: exact]" : "") << "\n";
  }
  out << "score: pseudo-log-likelihood of the text (nats); rank 1 = the model prefers the real secret to every "
         "other;\nexposure = log2(population / rank), at most log2(population) (Carlini et al. 2019); gaussian: "
         "-log2 P(X >= score)\nfor X normal with the candidates' mean and spread, which extrapolates past that "
         "maximum; space: log2(10^digits),\nthe exposure of a secret the model gives away outright. Scores fall "
         "with the number of tokens, so a\nsecret that splits into fewer WordPieces than its candidates tends to "
         "rank high, memorised or not.\n";
}

// --scores: checked before the model loads, so a typo does not cost the whole scoring run.
void check_scores_path(const std::string& scores, const std::string& exposure) {
  if (scores.empty()) throw Error("bert_infer: --scores: empty path");
  if (is_directory(scores)) throw Error("bert_infer: --scores " + scores + ": is a directory, expected a file");
  std::string parent = std::filesystem::path(scores).parent_path().string();
  if (parent.empty()) parent = ".";
  if (!is_directory(parent))
    throw Error("bert_infer: --scores " + scores + ": the directory " + parent + " does not exist");
  std::error_code ec;
  if (std::filesystem::equivalent(scores, exposure, ec))
    throw Error("bert_infer: --scores " + scores + " is the --exposure file; write the scores elsewhere");
}

// Batching with a progress line "WHAT: 1.2k of 3.4k UNIT run" (drawn when `progress` is enabled).
PromptBatching prompt_batching(int64_t batch_size, Progress& progress, const std::string& what,
                               const std::string& unit) {
  PromptBatching batching;
  batching.max_sequences = batch_size;
  if (progress.enabled())
    batching.progress = [&progress, what, unit](size_t done, size_t total) {
      progress.update(what + ": " + human_count(static_cast<double>(done)) + " of " +
                      human_count(static_cast<double>(total)) + " " + unit + " run");
    };
  return batching;
}

// A file named on the command line, "-" for stdin (read whole).
std::string read_input(const std::string& path, std::istream& in) {
  if (path != "-") return read_file(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error("<stdin>: read error");
  return text;
}
std::string input_name(const std::string& path) { return path == "-" ? "<stdin>" : path; }

int run_exposure(const Args& args, const std::string& model_dir, const std::string& device, int threads, bool json,
                 std::istream& in, std::ostream& out, std::ostream& err) {
  const std::string path = args.str("--exposure");
  if (path.empty()) throw Error("bert_infer: --exposure: empty path");
  if (is_directory(path)) throw Error(path + ": is a directory, expected the --exposure TSV file");
  if (args.has("--top-k"))
    throw Error("bert_infer: --top-k is for fill-mask; --exposure ranks whole secrets (see --candidates)");
  ExposureOptions options;
  options.candidates = static_cast<size_t>(args.integer("--candidates", 1, 1'000'000));
  if (args.has("--batch-size")) options.scoring.max_batch_rows = args.integer("--batch-size", 1, 4096);
  // JSON writes integers exactly below 2^53.
  options.seed = static_cast<uint64_t>(args.integer("--seed", 0, (int64_t{1} << 53) - 1));
  if (args.has("--scores")) check_scores_path(args.str("--scores"), path);
  const std::vector<ExposureCanary> canaries = parse_exposure_tsv(read_input(path, in), input_name(path));
  if (canaries.empty()) throw Error(input_name(path) + ": no canary lines");
  InferenceCheckpoint checkpoint = load_inference_checkpoint(model_dir, threads);
  for (const std::string& note : checkpoint.notes) err << "note: " << note << "\n";
  const std::unique_ptr<MlmLogitsSource> model = logits_source(checkpoint, device);
  // Every text, the candidates' too, is checked before any scoring, so a bad line 7 fails in seconds,
  // not after 6 canaries (encoding is cheap next to scoring; the texts are encoded again below rather
  // than held for every canary at once).
  for (const ExposureCanary& canary : canaries)
    (void)prepare_exposure(checkpoint.tokenizer, canary, options, model->config().max_position_embeddings,
                           model->config().vocab_size);
  std::vector<ExposureResult> results;
  Progress progress(stderr_is_tty());
  for (const ExposureCanary& canary : canaries) {
    const std::string what = "exposure: " + canary.source + " (" + std::to_string(results.size() + 1) + " of " +
                             std::to_string(canaries.size()) + "): ";
    progress.update(what + "drawing candidates", true);
    options.scoring.progress = [&](size_t done, size_t total) {
      progress.update(what + human_count(static_cast<double>(done)) + " of " + human_count(static_cast<double>(total)) +
                      " masked copies scored");
    };
    const ExposureJob job = prepare_exposure(checkpoint.tokenizer, canary, options,
                                             model->config().max_position_embeddings, model->config().vocab_size);
    results.push_back(score_exposure(*model, checkpoint.tokenizer, job, options.scoring));
  }
  progress.finish();
  for (const ExposureResult& r : results)
    if (r.same_tokens)
      err << "warning: " << r.canary.source << ": " << r.same_tokens << " of the " << r.candidates.size()
          << " candidate secrets encode to the same tokens as '" << r.canary.secret << "' (a word that becomes "
          << checkpoint.tokenizer.config().unk_token << "?): they tie with it, which lowers its exposure\n";
  if (args.has("--scores")) {
    std::string tsv = "line\tsecret\tscore\tcanary\n";
    char score[64];
    for (const ExposureResult& r : results) {
      std::snprintf(score, sizeof score, "%.17g", r.score);
      tsv += std::to_string(r.canary.line) + "\t" + r.canary.secret + "\t" + score + "\t1\n";
      for (size_t i = 0; i < r.candidates.size(); ++i) {
        std::snprintf(score, sizeof score, "%.17g", r.candidate_scores[i]);
        tsv += std::to_string(r.canary.line) + "\t" + r.candidates[i] + "\t" + score + "\t0\n";
      }
    }
    write_file_atomic(args.str("--scores"), tsv);
  }
  if (json)
    out << exposure_json(results, options).dump() << "\n";
  else
    print_exposure_table(input_name(path), results, options, out);
  return 0;
}

}  // namespace

namespace {

// --targets as token ids (none without the option), its notes on `err`.
std::vector<int32_t> target_ids(const Args& args, const InferenceCheckpoint& checkpoint, std::ostream& err) {
  if (!args.has("--targets")) return {};
  std::vector<std::string> notes;
  std::vector<int32_t> targets;
  try {
    targets = fill_mask_target_ids(checkpoint.tokenizer, args.values("--targets"), checkpoint.config.vocab_size, notes);
  } catch (const Error& e) {
    throw Error(std::string("bert_infer: --targets: ") + e.what());
  }
  for (const std::string& note : notes) err << "note: --targets: " << note << "\n";
  return targets;
}

// A prompt fill-mask can answer: valid UTF-8 that encodes for `model` (its [MASK]s, its length; on
// CUDA max_position_embeddings <= 512); else a one-line bert::Error that begins with its source.
void check_prompt(const Prompt& prompt, const Tokenizer& tokenizer, const MlmLogitsSource& model) {
  check_utf8(prompt.text, prompt.source);
  try {
    (void)encode_prompt(tokenizer, prompt.text, model.config().max_position_embeddings, model.config().vocab_size);
  } catch (const Error& e) {
    throw Error(prompt.source + ": " + e.what());
  }
}

// One prompt's answer: a JSON line, or its table (after a blank line unless it is the first).
void print_answer(const Prompt& prompt, const FillMaskResult& result, bool first, bool json, const Tokenizer& tokenizer,
                  std::ostream& out) {
  if (json) {
    out << fill_mask_json(result).dump() << "\n";
  } else {
    if (!first) out << "\n";
    print_fill_mask_table(prompt, result, tokenizer, out);
  }
}

// Fill-mask on each stdin line as it is read: the answer printed and flushed before the next line
// is read; a bad line is reported and skipped (JSON: {"error": ...} in its place, so a reader that
// pairs lines stays in step). 1 if any line failed.
int run_interactive(const Args& args, const std::string& model_dir, const std::string& device, int threads, int top_k,
                    bool json, std::istream& in, std::ostream& out, std::ostream& err) {
  check_targets_utf8(args);
  InferenceCheckpoint checkpoint = load_inference_checkpoint(model_dir, threads);
  for (const std::string& note : checkpoint.notes) err << "note: " << note << "\n";
  const std::vector<int32_t> targets = target_ids(args, checkpoint, err);
  const std::unique_ptr<MlmLogitsSource> model = logits_source(checkpoint, device);
  if (&in == &std::cin && stdin_is_tty())
    err << "bert_infer: type a prompt with " << checkpoint.tokenizer.config().mask_token
        << " and press Enter; Ctrl-D ends" << std::endl;
  size_t line_number = 0, answered = 0, failed = 0;
  for (std::string line; std::getline(in, line);) {
    const bool blank = !trim_prompt_line(line, ++line_number);
    // A blank line holds no prompt: skipped, but with --json answered by an error line too, or a reader
    // that pairs its lines with ours would wait for an answer.
    if (blank && !json) continue;
    const Prompt prompt{"<stdin>:" + std::to_string(line_number), line};
    try {
      if (blank) throw Error(prompt.source + ": a blank line, no prompt");
      check_prompt(prompt, checkpoint.tokenizer, *model);  // (its errors without fill_mask_batch's "prompt 1: ")
      std::vector<FillMaskResult> results;
      try {
        results = fill_mask_batch(*model, checkpoint.tokenizer, {prompt.text}, top_k,
                                  checkpoint.clean_up_tokenization_spaces, targets, PromptBatching{});
      } catch (const Error& e) {
        throw Error(prompt.source + ": " + e.what());
      }
      print_answer(prompt, results.front(), answered == 0, json, checkpoint.tokenizer, out);
      ++answered;
    } catch (const Error& e) {
      const std::string message = e.what();  // (naming the line)
      err << "error: " << message << std::endl;
      if (json) {
        Json error = Json::object();
        error.set("error", message);
        out << error.dump() << "\n";
      }
      ++failed;
    }
    if (!out.flush()) throw Error("bert_infer: write error on the standard output");
  }
  if (in.bad()) throw Error("<stdin>: read error");
  if (failed > 0) {
    err << "bert_infer: " << failed << " of " << answered + failed << " prompts failed\n";
    return 1;
  }
  return 0;
}

int run_infer(const std::vector<std::string>& argv, std::istream& in, std::ostream& out, std::ostream& err) {
  Args args("bert_infer",
            "bert_infer --model DIR [--mask PROMPT...] [--input FILE] [--interactive] [--probe FILE.tsv] [--exposure "
            "FILE.tsv] "
            "[--top-k K] [--targets T...] [--json] [--device cpu|cuda] [--threads N]");
  args.option("--model",
              "checkpoint dir: model.safetensors, config.json, vocab.txt (or tokenizer.json), tokenizer_config.json")
      .list("--mask", "prompt(s) with one or more [MASK] tokens (repeatable)")
      .option("--input", "prompts, one a line; - for stdin (the default when no --mask is given)")
      .flag("--interactive",
            "answer each stdin line as it is read, flushing the output (the default when stdin is a terminal)")
      .option("--probe", "LAMA probe TSV: 'prompt with one [MASK]<TAB>gold[<TAB>relation]' a line (- for stdin)")
      .option("--exposure", "canary TSV: 'text as in the corpus<TAB>secret in it[<TAB>label]' a line (- for stdin)")
      .option("--candidates", "--exposure: secrets of the same shape each canary is ranked among", "1000")
      .option("--seed", "--exposure: seed of the candidate draw", "1")
      .option("--scores",
              "--exposure: write every scored secret to this TSV (line, secret, score, canary: 1 for the canary, 0 "
              "for a candidate)")
      .option("--top-k", "candidates per [MASK]", "5")
      .list("--targets",
            "answer only with these tokens: every argument up to the next --option (the pipeline's "
            "targets=; see below)")
      .flag("--json", "print HF pipeline-shaped JSON (--probe: one metrics object; --exposure: one object)")
      .option("--device", "cpu | cuda", "cpu")
      .option("--threads", "CPU threads (0 = all cores)", "0")
      .option("--batch-size",
              "sequences a forward runs at once, 1 = one at a time (fill-mask prompts and probe lines, sorted by "
              "length, at most 1,024 tokens: 64; --exposure's masked copies, at most 8,192 tokens: 256)");
  if (!args.parse(argv)) {
    out << args.help() << kHelpNotes;
    return 0;
  }
  if (!args.positional().empty())
    throw Error("bert_infer: unexpected argument '" + args.positional().front() +
                "' (prompts go after --mask, quoted; see --help)");
  const std::string device = args.str("--device");
  if (device != "cpu" && device != "cuda")
    throw Error("bert_infer: --device must be cpu or cuda, got '" + device + "'");
  if (device == "cuda") check_cuda_device();  // before any file is read
  const int top_k = static_cast<int>(args.integer("--top-k", 1, 1 << 20));
  const int threads = static_cast<int>(args.integer("--threads", 0, 4096));
  const int64_t batch_size =
      args.has("--batch-size") ? args.integer("--batch-size", 1, 4096) : PromptBatching{}.max_sequences;
  if (threads > 0) omp_set_num_threads(threads);  // the GEMMs' pool too (OpenBLAS's OpenMP build)
  const bool json = args.has("--json");
  const std::string model_dir = args.str("--model");

  if (args.has("--interactive") && (args.has("--probe") || args.has("--exposure")))
    throw Error("bert_infer: --interactive is for fill-mask prompts; --probe and --exposure read their files whole");
  if (args.has("--targets") && (args.has("--probe") || args.has("--exposure")))
    throw Error("bert_infer: --targets is for fill-mask; --probe and --exposure score their own answers");
  for (const char* option : {"--candidates", "--seed", "--scores"})
    if (args.has(option) && !args.has("--exposure"))
      throw Error(std::string("bert_infer: ") + option + " goes with --exposure");
  if (args.has("--exposure")) {
    if (args.has("--probe") || args.has("--mask") || args.has("--input"))
      throw Error("bert_infer: --exposure takes its texts from the TSV file; drop --probe/--mask/--input");
    return run_exposure(args, model_dir, device, threads, json, in, out, err);
  }

  if (args.has("--probe")) {
    if (args.has("--mask") || args.has("--input"))
      throw Error("bert_infer: --probe takes its prompts from the TSV file; drop --mask/--input");
    if (args.has("--top-k"))
      throw Error("bert_infer: --top-k is for fill-mask; --probe ranks the gold answer over the whole vocabulary");
    const std::string path = args.str("--probe");
    const std::vector<ProbeQuery> queries = parse_probe_tsv(read_input(path, in), input_name(path));
    if (queries.empty()) throw Error(input_name(path) + ": no probe lines");
    InferenceCheckpoint checkpoint = load_inference_checkpoint(model_dir, threads);
    for (const std::string& note : checkpoint.notes) err << "note: " << note << "\n";
    const std::unique_ptr<MlmLogitsSource> model = logits_source(checkpoint, device);
    Progress progress(stderr_is_tty() && queries.size() > 1);
    const ProbeMetrics metrics =
        probe(*model, checkpoint.tokenizer, queries, prompt_batching(batch_size, progress, "probe", "scorable lines"));
    progress.finish();
    if (json) {
      out << probe_json(metrics).dump() << "\n";
    } else {
      print_probe_table(input_name(path), metrics, out);
    }
    for (const ProbeOutcome& outcome : metrics.outcomes)
      if (outcome.rank <= 0 && json) err << "skipped " << outcome.query.source << ": " << outcome.skip_reason << "\n";
    if (metrics.overall.count == 0) {
      err << "error: " << input_name(path)
          << ": no line could be scored (each gold answer must be one vocabulary token; "
          << "the skipped lines say why), so this measured nothing\n";
      return 1;
    }
    return 0;
  }

  check_checkpoint_files(model_dir);  // not only after stdin has ended
  std::vector<Prompt> prompts;
  const std::vector<std::string>& masks = args.values("--mask");
  const bool from_stdin = args.has("--input") ? args.str("--input") == "-" : masks.empty();
  if (args.has("--interactive") && (!from_stdin || !masks.empty()))
    throw Error("bert_infer: --interactive answers stdin's lines; drop --mask and --input FILE");
  if (args.has("--interactive") && args.has("--batch-size"))
    throw Error("bert_infer: --batch-size has nothing to batch with --interactive (one line a forward)");
  // (A terminal only when `in` is the process's stdin: the tests pass their own streams.) An explicit
  // --batch-size asks for batches: the lines are then read to the end, as from a pipe.
  if (args.has("--interactive") ||
      (from_stdin && masks.empty() && !args.has("--batch-size") && &in == &std::cin && stdin_is_tty()))
    return run_interactive(args, model_dir, device, threads, top_k, json, in, out, err);
  for (size_t i = 0; i < masks.size(); ++i) {
    prompts.push_back({"--mask " + std::to_string(i + 1), masks[i]});
    check_utf8(masks[i], prompts.back().source);
  }
  check_targets_utf8(args);
  if (args.has("--input") && args.str("--input") != "-") {
    const std::string path = args.str("--input");
    if (is_directory(path)) throw Error(path + ": is a directory, expected the --input file");
    std::ifstream file(path);
    if (!file) throw Error(path + ": cannot open the --input file");
    read_prompt_lines(file, path, prompts);
  } else if (args.has("--input") || masks.empty()) {
    read_prompt_lines(in, "<stdin>", prompts);
  }
  if (prompts.empty())
    throw Error("bert_infer: no prompts (give --mask \"text with [MASK]\", --input FILE or stdin lines)");

  InferenceCheckpoint checkpoint = load_inference_checkpoint(model_dir, threads);
  for (const std::string& note : checkpoint.notes) err << "note: " << note << "\n";
  const std::vector<int32_t> targets = target_ids(args, checkpoint, err);
  const std::unique_ptr<MlmLogitsSource> model = logits_source(checkpoint, device);
  // Every prompt is checked before any output, so a bad line 7 does not leave 6 answers behind.
  for (const Prompt& prompt : prompts) check_prompt(prompt, checkpoint.tokenizer, *model);
  // In chunks, each printed when it is done: the candidates of every prompt at once (top_k of them a
  // [MASK], each with its own sequence) would not fit in memory for thousands of prompts at a large
  // --top-k. About a million candidates a chunk.
  const size_t per_prompt = std::min(static_cast<size_t>(top_k), static_cast<size_t>(model->config().vocab_size));
  const size_t chunk = std::clamp<size_t>(1'000'000 / per_prompt, 1, 4096);
  Progress progress(stderr_is_tty() && prompts.size() > 1);
  const PromptBatching batching = prompt_batching(batch_size, progress, "fill-mask", "prompts");
  for (size_t first = 0; first < prompts.size(); first += chunk) {
    const size_t end = std::min(prompts.size(), first + chunk);
    std::vector<std::string> texts;
    for (size_t i = first; i < end; ++i) texts.push_back(prompts[i].text);
    PromptBatching part = batching;
    if (batching.progress)
      part.progress = [&, first](size_t done, size_t) { batching.progress(first + done, prompts.size()); };
    const std::vector<FillMaskResult> results = fill_mask_batch(*model, checkpoint.tokenizer, texts, top_k,
                                                                checkpoint.clean_up_tokenization_spaces, targets, part);
    progress.finish();  // (cleared for the output; the next chunk's update draws it again)
    for (size_t i = first; i < end; ++i)
      print_answer(prompts[i], results[i - first], i == 0, json, checkpoint.tokenizer, out);
  }
  return 0;
}
}  // namespace

int infer_main(const std::vector<std::string>& argv, std::istream& in, std::ostream& out, std::ostream& err) {
  const int code = run_infer(argv, in, out, err);
  // A full disk or a closed pipe must not pass for a complete answer.
  if (!out.flush()) throw Error("bert_infer: write error on the standard output");
  return code;
}

}  // namespace bert
