#include "data/loader.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <tuple>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "tokenizer/tokenizer.h"

namespace bert {

uint64_t vocabulary_hash(const Vocab& vocab) {
  const std::string text = vocab.text();
  return hash64(text.data(), text.size());
}

namespace {

// A 64-bit hash the manifest writes as a decimal string (JSON numbers are doubles): none when absent.
std::optional<uint64_t> decimal_field(const Json& object, const char* key, const std::string& where) {
  const Json* field = object.find(key);
  if (!field) return std::nullopt;
  const std::optional<uint64_t> value = field->is_string() ? parse_decimal_u64(field->as_string()) : std::nullopt;
  if (!value) throw Error(where + ": \"" + key + "\" must be a string of decimal digits (a 64-bit hash)");
  return value;
}

// A count (a non-negative integer): none when absent.
std::optional<uint64_t> count_field(const Json& object, const char* key, const std::string& where) {
  const Json* field = object.find(key);
  if (!field) return std::nullopt;
  if (!(field->is_number() && field->as_number() >= 0 && field->as_number() < 0x1p53 &&
        field->as_number() == std::floor(field->as_number())))
    throw Error(where + ": \"" + key + "\" must be a count");
  return static_cast<uint64_t>(field->as_number());
}

}  // namespace

std::optional<uint64_t> manifest_vocab_hash(const Json& manifest, const std::string& manifest_path) {
  return decimal_field(manifest, "vocab_hash", manifest_path);
}

void check_manifest_entry(const Json& entry, size_t index, const Shard& shard, const std::string& manifest_path) {
  const std::string where = manifest_path + " shard entry " + std::to_string(index);
  const std::optional<uint64_t> checksum = decimal_field(entry, "checksum", where);
  const std::optional<uint64_t> examples = count_field(entry, "examples", where);
  if (const Json* split = entry.find("split");
      split && split->is_string() && split->as_string() != split_name(shard.header().split))
    throw Error(shard.path() + ": its header says split '" + split_name(shard.header().split) + "', " + where +
                " says '" + split->as_string() + "'");
  const bool checksum_differs = checksum && *checksum != shard.header().checksum;
  if (checksum_differs || (examples && *examples != shard.size()))
    throw Error(shard.path() + ": " + (checksum_differs ? "checksum" : "example count") + " differs from " + where +
                "'s: the shard was rewritten after the manifest (an interrupted bert_prepare build into the same "
                "directory?); rebuild the shards");
}

void check_vocab_hash(std::optional<uint64_t> recorded, const std::string& manifest_path, const Vocab& vocab,
                      const std::string& tokenizer_dir) {
  if (!recorded) return;
  const uint64_t actual = vocabulary_hash(vocab);
  if (*recorded == actual) return;
  const std::filesystem::path dir = std::filesystem::path(manifest_path).parent_path();
  const std::string copy = (dir.empty() ? std::filesystem::path(".") : dir).string() + "/tokenizer";
  throw Error(manifest_path + ": the shards were built with another vocabulary than " + tokenizer_dir +
              "/vocab.txt (vocab_hash " + std::to_string(*recorded) + ", the tokenizer's " + std::to_string(actual) +
              "; " + std::to_string(vocab.size()) + " tokens in it): use the tokenizer they were built with" +
              (is_directory(copy) ? " (" + copy + ")" : std::string()) + " or rebuild them with this one");
}

Dataset::Dataset(const std::string& dir_arg, Split split, uint32_t expected_vocab_size)
    : manifest_path_(without_trailing_slashes(dir_arg) + "/manifest.json") {
  const std::string dir = without_trailing_slashes(dir_arg);
  const std::string& manifest_path = manifest_path_;
  if (file_exists(dir) && !is_directory(dir)) {
    const std::string parent = std::filesystem::path(dir).parent_path().string();
    throw Error(dir +
                ": a file; shards are read by directory, the bert_prepare build output that holds "
                "manifest.json" +
                (parent.empty() ? std::string() : " ('" + parent + "'?)"));
  }
  if (!file_exists(manifest_path))
    throw Error(manifest_path + ": not found (is '" + dir + "' a bert_prepare build output?)");
  const Json manifest = Json::parse(read_file(manifest_path), manifest_path);
  vocab_hash_ = manifest_vocab_hash(manifest, manifest_path);
  // What bert_prepare build records for the whole set; each shard's header must agree (an absent field
  // is not checked).
  const std::optional<uint64_t> manifest_vocab_size = count_field(manifest, "vocab_size", manifest_path);
  const std::optional<uint64_t> manifest_max_seq_len = count_field(manifest, "max_seq_len", manifest_path);
  const Json* list = manifest.find("shards");
  if (!list || !list->is_array()) throw Error(manifest_path + ": missing 'shards' list");
  for (size_t k = 0; k < list->as_array().size(); ++k) {
    const Json& entry = list->as_array()[k];
    const Json* file = entry.find("file");
    const Json* sp = entry.find("split");
    if (!file || !file->is_string() || !sp || !sp->is_string())
      throw Error(manifest_path + ": shard entry " + std::to_string(k) + " needs string fields 'file' and 'split'");
    if (sp->as_string() != split_name(Split::kTrain) && sp->as_string() != split_name(Split::kValid))
      throw Error(manifest_path + ": shard entry " + std::to_string(k) + " has split '" + sp->as_string() +
                  "'; expected 'train' or 'valid'");
    if (sp->as_string() != split_name(split)) continue;
    auto shard = std::make_unique<Shard>(dir + "/" + file->as_string(), expected_vocab_size);
    check_manifest_entry(entry, k, *shard, manifest_path);
    for (const auto& [key, recorded, header] :
         {std::tuple{"vocab_size", manifest_vocab_size, shard->header().vocab_size},
          std::tuple{"max_seq_len", manifest_max_seq_len, shard->header().max_seq_len}})
      if (recorded && *recorded != header)
        throw Error(shard->path() + ": its header says " + key + " " + std::to_string(header) + ", " + manifest_path +
                    " says " + std::to_string(*recorded) + ": the shard is not from this build; rebuild the shards");
    if (vocab_size_ && shard->header().vocab_size != vocab_size_)
      throw Error(shard->path() + ": vocabulary size differs from the other shards");
    vocab_size_ = shard->header().vocab_size;
    max_seq_len_ = std::max(max_seq_len_, shard->header().max_seq_len);
    starts_.push_back(total_);
    total_ += shard->size();
    shards_.push_back(std::move(shard));
  }
  if (total_ >= UINT32_MAX) throw Error(dir + ": more than 4G examples in one split is not supported");
}

void Dataset::check_vocabulary(const Vocab& vocab, const std::string& tokenizer_dir) const {
  check_vocab_hash(vocab_hash_, manifest_path_, vocab, tokenizer_dir);
}

uint64_t Dataset::fingerprint() const {
  std::vector<uint64_t> words;
  for (const auto& shard : shards_) {
    words.push_back(shard->header().checksum);
    words.push_back(static_cast<uint64_t>(shard->size()));
  }
  return hash64(words.data(), words.size() * sizeof(uint64_t));
}

const Shard& Dataset::shard_of(size_t i, size_t& local) const {
  const size_t s = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), i) - starts_.begin()) - 1;
  local = i - starts_[s];
  return *shards_[s];
}

size_t Batch::real_tokens() const {
  size_t n = 0;
  for (int32_t m : attention_mask) n += static_cast<size_t>(m);
  return n;
}

MaskingVocab masking_vocab(const Tokenizer& tokenizer) {
  MaskingVocab v;
  v.mask_id = tokenizer.mask_id();
  v.vocab_size = static_cast<int32_t>(tokenizer.vocab().size());
  v.is_special.assign(tokenizer.vocab().size(), 0);
  v.is_continuation.assign(tokenizer.vocab().size(), 0);
  // HF's collator skips tokenizer.all_special_ids: [UNK] and [MASK] (a literal "[MASK]" in the text) and
  // the additional special tokens too, not only the [CLS] [SEP] [PAD] around and after the text.
  for (const std::string& token : tokenizer.config().special_tokens())
    if (const int32_t id = tokenizer.vocab().id(token); id >= 0) v.is_special[static_cast<size_t>(id)] = 1;
  for (int32_t id :
       {tokenizer.cls_id(), tokenizer.sep_id(), tokenizer.pad_id(), tokenizer.unk_id(), tokenizer.mask_id()})
    if (id >= 0) v.is_special[static_cast<size_t>(id)] = 1;
  const std::string& prefix = tokenizer.config().continuing_subword_prefix;
  for (size_t i = 0; i < tokenizer.vocab().size(); ++i) {
    const std::string& t = tokenizer.vocab().tokens()[i];
    if (!prefix.empty() && t.size() > prefix.size() && t.compare(0, prefix.size(), prefix) == 0)
      v.is_continuation[i] = 1;
  }
  return v;
}

Loader::Loader(const Dataset& dataset, MaskingVocab vocab, int32_t cls_id, int32_t sep_id, int32_t pad_id,
               LoaderOptions options)
    : dataset_(dataset),
      vocab_(std::move(vocab)),
      cls_id_(cls_id),
      sep_id_(sep_id),
      pad_id_(pad_id),
      options_(options) {
  if (options_.batch_size <= 0) throw Error("loader: batch size must be positive");
  if (options_.world_size <= 0 || options_.rank < 0 || options_.rank >= options_.world_size)
    throw Error("loader: rank must be in [0, world_size)");
  if (options_.fixed_length && static_cast<uint32_t>(options_.fixed_length) < dataset_.max_seq_len())
    throw Error("loader: fixed length " + std::to_string(options_.fixed_length) +
                " is shorter than the shards' max_seq_len " + std::to_string(dataset_.max_seq_len()));
  if (vocab_.vocab_size != static_cast<int32_t>(dataset_.vocab_size()) && dataset_.size() > 0)
    throw Error("loader: tokenizer has " + std::to_string(vocab_.vocab_size) +
                " tokens but the shards were built with " + std::to_string(dataset_.vocab_size()));
}

Loader::~Loader() { stop_worker(); }

size_t Loader::batches_per_epoch() const {
  const size_t global = static_cast<size_t>(options_.batch_size) * static_cast<size_t>(options_.world_size);
  if (options_.drop_last) return dataset_.size() / global;
  return (dataset_.size() + global - 1) / global;
}

const std::vector<uint32_t>& Loader::permutation(uint64_t epoch) const {
  // Called with perm_mutex_ held.
  if (perm_epoch_ != epoch) {
    perm_.resize(dataset_.size());
    for (uint32_t i = 0; i < perm_.size(); ++i) perm_[i] = i;
    if (options_.shuffle) {
      Rng rng(mix_seed(options_.seed, 0x5EED5EEDull, epoch));
      rng.shuffle(perm_.data(), perm_.size());
    }
    perm_epoch_ = epoch;
  }
  return perm_;
}

std::vector<uint64_t> Loader::batch_examples(uint64_t epoch, size_t index) const {
  std::vector<uint64_t> out;
  const size_t world = static_cast<size_t>(options_.world_size), rank = static_cast<size_t>(options_.rank);
  std::lock_guard<std::mutex> lock(perm_mutex_);
  const auto& perm = permutation(epoch);
  for (size_t i = 0; i < static_cast<size_t>(options_.batch_size); ++i) {
    const size_t pos = (index * world + rank) * static_cast<size_t>(options_.batch_size) + i;
    if (pos >= perm.size()) break;
    out.push_back(perm[pos]);
  }
  return out;
}

void Loader::make_batch(uint64_t epoch, size_t index, Batch& out) const {
  out.example_ids = batch_examples(epoch, index);
  const int rows = static_cast<int>(out.example_ids.size());
  int seq_len = options_.fixed_length;
  if (!seq_len) {
    for (uint64_t e : out.example_ids) {
      size_t local;
      const Shard& s = dataset_.shard_of(e, local);
      seq_len = std::max(seq_len, static_cast<int>(s.length(local) + 3));
    }
  }
  out.batch_size = rows;
  out.seq_len = seq_len;
  out.epoch = epoch;
  out.index = index;
  const size_t cells = static_cast<size_t>(rows) * static_cast<size_t>(seq_len);
  out.input_ids.assign(cells, pad_id_);
  out.token_type_ids.assign(cells, 0);
  out.attention_mask.assign(cells, 0);
  out.labels.assign(cells, kIgnoreIndex);
  out.nsp_labels.assign(static_cast<size_t>(rows), 0);
  out.masked_positions.clear();
  out.masked_labels.clear();
  for (int r = 0; r < rows; ++r) {
    size_t local;
    const uint64_t example = out.example_ids[static_cast<size_t>(r)];
    const Shard& s = dataset_.shard_of(example, local);
    const uint32_t len = s.length(local), a_len = s.a_length(local);
    int32_t* ids = out.input_ids.data() + static_cast<size_t>(r) * static_cast<size_t>(seq_len);
    int32_t* types = out.token_type_ids.data() + static_cast<size_t>(r) * static_cast<size_t>(seq_len);
    int32_t* mask = out.attention_mask.data() + static_cast<size_t>(r) * static_cast<size_t>(seq_len);
    size_t t = 0;
    ids[t++] = cls_id_;
    for (uint32_t j = 0; j < a_len; ++j) ids[t++] = s.token(local, j);
    ids[t++] = sep_id_;
    const size_t b_start = t;
    for (uint32_t j = a_len; j < len; ++j) ids[t++] = s.token(local, j);
    ids[t++] = sep_id_;
    for (size_t k = b_start; k < t; ++k) types[k] = 1;
    for (size_t k = 0; k < t; ++k) mask[k] = 1;
    out.nsp_labels[static_cast<size_t>(r)] = s.nsp_label(local);
    Rng rng(mix_seed(options_.seed, epoch, example));
    apply_mlm_masking(std::span<int32_t>(ids, t),
                      std::span<int32_t>(out.labels.data() + static_cast<size_t>(r) * static_cast<size_t>(seq_len), t),
                      vocab_, options_.masking, rng, &out.masked_positions, &out.masked_labels, r * seq_len);
  }
}

void Loader::advance(uint64_t& epoch, size_t& index) const {
  if (++index >= batches_per_epoch()) {
    index = 0;
    ++epoch;
  }
}

void Loader::stop_worker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
  stop_ = false;
}

void Loader::start(uint64_t epoch, size_t index) {
  stop_worker();
  if (batches_per_epoch() == 0) throw Error("loader: fewer examples than one global batch");
  ready_.clear();
  next_epoch_ = consume_epoch_ = epoch;
  next_index_ = consume_index_ = index;
  if (options_.prefetch <= 0) return;
  worker_ = std::thread([this] {
    while (true) {
      uint64_t e;
      size_t i;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [this] { return stop_ || ready_.size() < static_cast<size_t>(options_.prefetch); });
        if (stop_) return;
        e = next_epoch_;
        i = next_index_;
        advance(next_epoch_, next_index_);
      }
      Batch b;
      make_batch(e, i, b);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stop_) return;
        ready_.push_back(std::move(b));
      }
      cv_.notify_all();
    }
  });
}

void Loader::next(Batch& out) {
  if (options_.prefetch <= 0 || !worker_.joinable()) {
    if (batches_per_epoch() == 0) throw Error("loader: fewer examples than one global batch");
    make_batch(consume_epoch_, consume_index_, out);
    advance(consume_epoch_, consume_index_);
    return;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [this] { return !ready_.empty(); });
  out = std::move(ready_.front());
  ready_.pop_front();
  lock.unlock();
  cv_.notify_all();
  advance(consume_epoch_, consume_index_);
}

}  // namespace bert
