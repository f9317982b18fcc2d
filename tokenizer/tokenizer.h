// The tokenizer pipeline, explicit as in HF tokenizers:
//   added-token split -> BertNormalizer -> normalised added-token split -> BertPreTokenizer -> WordPiece
//   -> post-processor.
// Special tokens (and added tokens written "normalized": false) are matched in the raw text before
// normalisation (HF adds them as non-normalised added tokens), so "이순신은 [MASK] 중기의" keeps its
// [MASK]; added tokens written "normalized": true (what tokenizer.add_tokens(["법률가"]) makes) in each
// piece's normalised text, as their own normalised form, also inside words ("hello법률가" -> hello,
// 법률가), as tokenizers' AddedVocabulary does. Only special tokens are special: never masked, skipped
// by a decode that skips specials.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/normalizer.h"
#include "tokenizer/vocab.h"
#include "tokenizer/wordpiece.h"

namespace bert {

// What tokenizer_config.json / special_tokens_map.json hold.
struct TokenizerConfig {
  NormalizerOptions normalizer;
  size_t model_max_length = 512;
  std::string unk_token = "[UNK]", sep_token = "[SEP]", pad_token = "[PAD]", cls_token = "[CLS]",
              mask_token = "[MASK]";
  std::string bos_token, eos_token;  // BERT has none; a hand-made config may name them
  std::vector<std::string> additional_special_tokens;
  std::string continuing_subword_prefix = "##";
  // tokenizer_config.json's added_tokens_decoder (transformers >= 4.34), as read, or without that
  // field added_tokens.json's tokens as transformers' legacy path makes them (special if a special
  // token field names them, normalized otherwise): checked against vocab.txt by Tokenizer::from_dir,
  // which registers the special ones as special tokens; after from_dir, also tokenizer.json's added
  // tokens. The tokenizer matches each as its flags say.
  struct AddedToken {
    int64_t id = 0;
    std::string content;
    bool special = false, normalized = false, lstrip = false, rstrip = false, single_word = false;
    // Where it was read (for messages): kDecoderSource, kJsonSource or kLegacySource.
    const char* source = kDecoderSource;
    // added_tokens.json's: a special token that transformers' legacy path reads as a normalised
    // non-special one (refused by from_dir unless tokenizer.json's entry at its id replaces it).
    bool unseen_special = false;
  };
  static constexpr const char* kDecoderSource = "tokenizer_config.json: added_tokens_decoder";
  static constexpr const char* kJsonSource = "tokenizer.json: added_tokens";
  // added_tokens.json {"token": id}: transformers' legacy file, read without added_tokens_decoder.
  static constexpr const char* kLegacySource = "added_tokens.json";
  std::vector<AddedToken> added_tokens;
  bool has_added_tokens_decoder = false;  // the field is there (even empty: transformers' non-legacy path)
  // A slip of transformers' legacy path (a stale loop variable): a special token field equal to the last
  // of special_tokens_map.json's additional_special_tokens becomes added_tokens.json's last token,
  // unless tokenizer.json lists that token. load() notes it (the field, the token it would become);
  // from_dir refuses it.
  std::string legacy_renamed_field, legacy_renamed_from, legacy_renamed_to;
  // How transformers turns ids back into text: tokenizer.json's "decoder" (a vocab.txt tokenizer has
  // the WordPiece one, which glues "##" pieces and cleans up " ." and the like in each token; with none,
  // the tokens are joined by spaces as they are).
  struct Decoder {
    bool wordpiece = true;
    bool cleanup = true;
  } decoder;
  // "tokenizer_file": null or "from_slow": true: transformers builds the tokenizer from vocab.txt and
  // ignores a tokenizer.json beside it.
  bool ignores_tokenizer_json = false;

  std::vector<std::string> special_tokens() const;
  // Reads DIR/tokenizer_config.json; when it is absent, HF BertTokenizer's defaults apply
  // (do_lower_case true), exactly what BertTokenizerFast.from_pretrained(DIR) would use.
  static TokenizerConfig load(const std::string& dir);
  // Writes tokenizer_config.json and special_tokens_map.json into DIR.
  void save(const std::string& dir) const;
};

// Per-thread scratch space so encoding allocates nothing once warmed up.
struct EncodeScratch {
  std::u32string decoded, normalized;
};

struct Encoding {
  std::vector<int32_t> ids;
  std::vector<int32_t> type_ids;
};

// The special tokens of BERT's inputs, by their tokenizer_config.json field.
enum class SpecialToken { kCls, kSep, kPad, kMask };

class Tokenizer {
 public:
  Tokenizer(Vocab vocab, TokenizerConfig config);
  // Loads vocab.txt + tokenizer_config.json (+ special_tokens_map.json) from DIR (errors name the file
  // and line), or tokenizer.json instead of vocab.txt when there is one, as transformers does (a
  // vocab.txt beside it must agree; its pipeline must be BERT's, read_tokenizer_json). As
  // BertTokenizerFast.from_pretrained does, a special token the vocabulary lacks is appended after
  // its last id (in transformers' order: bos, eos, unk, sep, pad, cls, mask, then the additional
  // ones), so ids match transformers'; require() still asks for the ones a purpose needs in the file
  // itself. added_tokens_decoder's tokens must be the file's at their ids (or the next ids after it),
  // not single_word, and special ones not normalised; a normalised one must normalise alike under
  // tokenizer.json's normalizer and tokenizer_config.json's settings.
  static Tokenizer from_dir(const std::string& dir);
  // vocab.txt's own size (tokenizer.json's: its model's vocabulary and added tokens): vocab().size()
  // less the appended special tokens.
  size_t file_vocab_size() const { return file_vocab_size_; }
  // The word pieces: the first ids, WordPiece's (vocab.txt's, or tokenizer.json's model's); the ids
  // after them are added or appended special tokens.
  size_t piece_count() const { return pieces_; }
  // Where the vocabulary came from: "vocab.txt", or "tokenizer.json" (which transformers prefers).
  const std::string& vocab_file() const { return vocab_file_; }
  // Writes DIR/vocab.txt (the word pieces only) and tokenizer_config.json + special_tokens_map.json,
  // the tokens after the pieces (appended specials, added tokens) and the non-special added tokens
  // among the pieces as the config's added_tokens_decoder with their flags, so that the directory
  // tokenizes as this tokenizer does, here and in transformers (in vocab.txt they would become word
  // pieces). model_max_length at most `max_length`.
  void save(const std::string& dir, size_t max_length = SIZE_MAX) const;

  const Vocab& vocab() const { return vocab_; }
  const TokenizerConfig& config() const { return config_; }
  const BertNormalizer& normalizer() const { return normalizer_; }

  // Appends the ids of `text` (no [CLS]/[SEP]) to `out`. Invalid UTF-8 is decoded lossily (each bad
  // sequence becomes U+FFFD, which clean_text removes); returns the number of bad sequences.
  size_t encode(std::string_view text, std::vector<int32_t>& out, EncodeScratch& scratch) const;
  // Same for text already decoded to code points.
  void encode(std::u32string_view text, std::vector<int32_t>& out, EncodeScratch& scratch) const;

  // [CLS] A [SEP] (B [SEP]); type ids 0 through the first [SEP], 1 after. When max_length is set,
  // truncates LongestFirst (HF's default) so the result including specials fits.
  Encoding post_process(std::vector<int32_t> a, const std::vector<int32_t>* b,
                        std::optional<size_t> max_length) const;

  int32_t cls_id() const { return cls_id_; }
  int32_t sep_id() const { return sep_id_; }
  int32_t pad_id() const { return pad_id_; }
  int32_t mask_id() const { return mask_id_; }
  int32_t unk_id() const { return wordpiece_.unk_id(); }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  // Throws unless vocab.txt holds each of `needed` (as tokenizer_config.json names it), one line
  // naming every missing one and its field: "DIR/vocab.txt: has no cls_token '[X]' (set by
  // DIR/tokenizer_config.json, else HF's default); PURPOSE needs it". `dir`: where this was loaded from.
  void require(std::initializer_list<SpecialToken> needed, const std::string& dir, std::string_view purpose) const;

 private:
  Vocab vocab_;
  TokenizerConfig config_;
  BertNormalizer normalizer_;
  WordPiece wordpiece_;
  // Leftmost-longest matching of added tokens (the longest of those that start at a position).
  class AddedMatcher {
   public:
    void add(std::u32string text, int32_t id);  // the first text added wins over a later same one
    bool empty() const { return entries_.empty(); }
    // The token starting at text[i], longest first; nullptr when none does.
    const std::pair<std::u32string, int32_t>* match(std::u32string_view text, size_t i) const;

   private:
    std::vector<std::pair<std::u32string, int32_t>> entries_;
    std::unordered_map<char32_t, std::vector<size_t>> by_first_;  // entries_ indexes, longest first
    std::vector<uint64_t> bmp_first_;  // a bit per BMP code point that starts a token: most miss on it
  };
  AddedMatcher raw_added_;         // special tokens and normalized: false added tokens, on the raw text
  AddedMatcher normalized_added_;  // normalized: true added tokens, by their normalised text
  int32_t cls_id_ = -1, sep_id_ = -1, pad_id_ = -1, mask_id_ = -1;
  size_t file_vocab_size_ = 0;
  size_t pieces_ = 0;  // the first ids, WordPiece's; the rest are added tokens
  std::string vocab_file_ = "vocab.txt";

  // `pieces`: how many of the vocabulary's first ids WordPiece may use (from_dir: the file's or
  // tokenizer.json model's own; the tokens after them are added tokens).
  Tokenizer(Vocab vocab, TokenizerConfig config, size_t pieces);
  void encode_plain(std::u32string_view text, std::vector<int32_t>& out, EncodeScratch& scratch) const;
  void encode_words(std::u32string_view normalized, std::vector<int32_t>& out) const;
};

// LongestFirst truncation of a pair to `budget` tokens (HF tokenizers' rule).
void truncate_longest_first(std::vector<int32_t>& a, std::vector<int32_t>* b, size_t budget);

}  // namespace bert
