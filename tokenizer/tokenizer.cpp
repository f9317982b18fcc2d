#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cstdlib>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "common/utf8.h"
#include "tokenizer/pretokenizer.h"

namespace bert {

std::vector<std::string> TokenizerConfig::special_tokens() const {
  std::vector<std::string> out = {pad_token, unk_token, cls_token, sep_token, mask_token};
  for (const std::string* t : {&bos_token, &eos_token})
    if (!t->empty()) out.push_back(*t);
  out.insert(out.end(), additional_special_tokens.begin(), additional_special_tokens.end());
  return out;
}

namespace {

// A special token's value: a string, or an AddedToken's serialisation {"content": ...}. Of its flags,
// lstrip and rstrip change no BERT id (the pre-tokenizer drops the blanks anyway); normalized and
// single_word change where the token matches, which this tokenizer does not do: refused by name.
std::string token_text(const Json& v, const std::string& path, const std::string& key) {
  if (v.is_string()) return v.as_string();
  if (v.is_object() && v.find("content") && v.find("content")->is_string()) {
    for (const char* flag : {"normalized", "single_word"})
      if (const Json* f = v.find(flag); f && f->is_bool() && f->as_bool())
        throw Error(path + ": field '" + key + "' has " + flag +
                    " = true: only tokens matched as written are supported (set it to false)");
    return v.find("content")->as_string();
  }
  throw Error(path + ": field '" + key + "' must be a string");
}

}  // namespace

TokenizerConfig TokenizerConfig::load(const std::string& dir) {
  TokenizerConfig c;
  const std::string path = dir + "/tokenizer_config.json";
  Json j = Json::object();
  if (file_exists(path)) {
    j = Json::parse(read_file(path), path);
    if (!j.is_object()) throw Error(path + ": expected a JSON object");
  }
  auto get_bool = [&](const char* key, bool fallback) {
    const Json* v = j.find(key);
    if (!v || v->is_null()) return fallback;
    if (!v->is_bool()) throw Error(path + ": field '" + key + "' must be true, false or null");
    return v->as_bool();
  };
  auto get_token = [&](const Json& from, const std::string& from_path, const char* key, std::string& dst) {
    const Json* v = from.find(key);
    if (v && !v->is_null()) dst = token_text(*v, from_path, key);
  };
  // Without the file, BertTokenizer's defaults: lowercase, accents stripped, Chinese characters split.
  c.normalizer.lowercase = get_bool("do_lower_case", true);
  c.normalizer.strip_accents = get_bool("strip_accents", c.normalizer.lowercase);
  c.normalizer.handle_chinese_chars = get_bool("tokenize_chinese_chars", true);
  c.normalizer.clean_text = get_bool("clean_text", true);
  if (const Json* v = j.find("model_max_length"); v && v->is_number()) {
    const double m = v->as_number();
    if (!(m >= 1)) throw Error(path + ": field 'model_max_length' must be a positive number");
    c.model_max_length = m > 1e15 ? static_cast<size_t>(1) << 50 : static_cast<size_t>(m);
  }
  const char* const kTokenKeys[] = {"unk_token",  "sep_token", "pad_token", "cls_token",
                                    "mask_token", "bos_token", "eos_token"};
  std::string* const token_fields[] = {&c.unk_token,  &c.sep_token, &c.pad_token, &c.cls_token,
                                       &c.mask_token, &c.bos_token, &c.eos_token};
  for (size_t k = 0; k < std::size(kTokenKeys); ++k) get_token(j, path, kTokenKeys[k], *token_fields[k]);
  if (const Json* v = j.find("additional_special_tokens"); v && v->is_array()) {
    for (const Json& t : v->as_array()) {
      if (!t.is_string()) throw Error(path + ": additional_special_tokens must hold strings");
      c.additional_special_tokens.push_back(t.as_string());
    }
  }
  // BertTokenizerFast ignores this field and always continues words with "##": another prefix would
  // give other ids than transformers'.
  if (const Json* v = j.find("wordpieces_prefix"); v && !v->is_null()) {
    if (!v->is_string() || v->as_string() != "##")
      throw Error(path + ": wordpieces_prefix = " + v->dump() +
                  ": only \"##\" is supported (transformers' BertTokenizerFast ignores this field and uses \"##\")");
  }
  if (const Json* v = j.find("added_tokens_decoder"); v && !v->is_null()) {
    if (!v->is_object()) throw Error(path + ": added_tokens_decoder must be an object {\"id\": {\"content\": ...}}");
    for (const auto& [key, entry] : v->as_object()) {
      const std::string where = path + ": added_tokens_decoder[\"" + key + "\"]";
      AddedToken added;
      char* end = nullptr;
      added.id = std::strtoll(key.c_str(), &end, 10);
      if (key.empty() || *end != '\0' || added.id < 0) throw Error(where + ": the key must be a token id");
      if (!entry.is_object() || !entry.find("content") || !entry.find("content")->is_string())
        throw Error(where + ": expected {\"content\": \"...\", ...}");
      added.content = entry.find("content")->as_string();
      const auto flag = [&](const char* name, bool fallback) {
        const Json* f = entry.find(name);
        if (!f || f->is_null()) return fallback;
        if (!f->is_bool()) throw Error(where + ": " + name + " must be true or false");
        return f->as_bool();
      };
      added.special = flag("special", false);
      added.normalized = flag("normalized", !added.special);
      added.lstrip = flag("lstrip", false);
      added.rstrip = flag("rstrip", false);
      added.single_word = flag("single_word", false);
      c.added_tokens.push_back(std::move(added));
    }
  }
  // transformers' legacy path (a tokenizer_config.json without added_tokens_decoder, or none):
  // special_tokens_map.json's tokens override the config's, and its additional_special_tokens are
  // added to the config's.
  const std::string map_path = dir + "/special_tokens_map.json";
  if (!j.find("added_tokens_decoder") && file_exists(map_path)) {
    const Json map = Json::parse(read_file(map_path), map_path);
    if (!map.is_object()) throw Error(map_path + ": expected a JSON object");
    for (size_t k = 0; k < std::size(kTokenKeys); ++k) get_token(map, map_path, kTokenKeys[k], *token_fields[k]);
    if (const Json* v = map.find("additional_special_tokens"); v && v->is_array())
      for (const Json& t : v->as_array()) {
        const std::string token = token_text(t, map_path, "additional_special_tokens");
        if (std::find(c.additional_special_tokens.begin(), c.additional_special_tokens.end(), token) ==
            c.additional_special_tokens.end())
          c.additional_special_tokens.push_back(token);
      }
  }
  return c;
}

void TokenizerConfig::save(const std::string& dir) const {
  Json specials = Json::object();
  specials.set("unk_token", unk_token);
  specials.set("sep_token", sep_token);
  specials.set("pad_token", pad_token);
  specials.set("cls_token", cls_token);
  specials.set("mask_token", mask_token);
  if (!bos_token.empty()) specials.set("bos_token", bos_token);
  if (!eos_token.empty()) specials.set("eos_token", eos_token);
  if (!additional_special_tokens.empty()) {
    Json extra = Json::array();
    for (const auto& t : additional_special_tokens) extra.push(t);
    specials.set("additional_special_tokens", extra);
  }
  Json cfg = Json::object();
  cfg.set("tokenizer_class", "BertTokenizer");
  cfg.set("do_lower_case", normalizer.lowercase);
  cfg.set("strip_accents", normalizer.strip_accents);
  cfg.set("tokenize_chinese_chars", normalizer.handle_chinese_chars);
  cfg.set("clean_text", normalizer.clean_text);
  cfg.set("model_max_length", static_cast<uint64_t>(model_max_length));
  cfg.set("wordpieces_prefix", continuing_subword_prefix);
  for (const auto& [k, v] : specials.as_object()) cfg.set(k, v);
  write_file_atomic(dir + "/tokenizer_config.json", cfg.dump(2) + "\n");
  write_file_atomic(dir + "/special_tokens_map.json", specials.dump(2) + "\n");
}

Tokenizer::Tokenizer(Vocab vocab, TokenizerConfig config)
    : vocab_(std::move(vocab)),
      config_(std::move(config)),
      normalizer_(config_.normalizer),
      wordpiece_(vocab_, config_.unk_token, config_.continuing_subword_prefix) {
  for (const auto& t : config_.special_tokens()) {
    const int32_t id = vocab_.id(t);
    if (id < 0) continue;  // HF only registers special tokens the vocabulary has
    std::u32string cps;
    utf8_decode(t, cps);
    if (!cps.empty()) specials_.push_back({cps, id});
  }
  std::stable_sort(specials_.begin(), specials_.end(),
                   [](const Special& x, const Special& y) { return x.text.size() > y.text.size(); });
  cls_id_ = vocab_.id(config_.cls_token);
  sep_id_ = vocab_.id(config_.sep_token);
  pad_id_ = vocab_.id(config_.pad_token);
  mask_id_ = vocab_.id(config_.mask_token);
  file_vocab_size_ = vocab_.size();
}

Tokenizer Tokenizer::from_dir(const std::string& dir_arg) {
  const std::string dir = without_trailing_slashes(dir_arg);
  if (!is_directory(dir)) throw Error(dir + ": tokenizer directory not found (expected vocab.txt inside)");
  const std::string vocab_path = dir + "/vocab.txt";
  if (!file_exists(vocab_path)) throw Error(vocab_path + ": missing (is this a tokenizer directory?)");
  TokenizerConfig config = TokenizerConfig::load(dir);
  Vocab vocab = Vocab::load(vocab_path);
  if (vocab.id(config.unk_token) < 0)
    throw Error(vocab_path + ": has no unknown token '" + config.unk_token + "' (unk_token, set by " + dir +
                "/tokenizer_config.json or [UNK] when that file is absent)");
  // What BertTokenizerFast.from_pretrained adds to vocab.txt's tokens: added_tokens_decoder's (by id),
  // then every special token it still lacks, each at the next id.
  const size_t file_size = vocab.size();
  std::vector<std::string> appended;
  const auto id_of = [&](const std::string& token) -> int64_t {
    if (const int32_t id = vocab.id(token); id >= 0) return id;
    const auto at = std::find(appended.begin(), appended.end(), token);
    return at == appended.end() ? -1 : static_cast<int64_t>(file_size + (at - appended.begin()));
  };
  std::sort(config.added_tokens.begin(), config.added_tokens.end(),
            [](const TokenizerConfig::AddedToken& a, const TokenizerConfig::AddedToken& b) { return a.id < b.id; });
  for (const TokenizerConfig::AddedToken& added : config.added_tokens) {
    const std::string where = dir + "/tokenizer_config.json: added_tokens_decoder[\"" + std::to_string(added.id) +
                              "\"] '" + added.content + "'";
    if (!added.special || added.normalized || added.lstrip || added.rstrip || added.single_word)
      throw Error(where + ": only special, non-normalised added tokens are supported (special: true; normalized, " +
                  "lstrip, rstrip, single_word: false); put a plain word into vocab.txt instead");
    if (const int64_t id = id_of(added.content); id >= 0) {
      if (id != added.id) throw Error(where + ": vocab.txt has it as id " + std::to_string(id));
    } else if (added.id != static_cast<int64_t>(file_size + appended.size())) {
      throw Error(where + ": not in vocab.txt, nor the next id after it (" +
                  std::to_string(file_size + appended.size()) + ")");
    } else {
      appended.push_back(added.content);
    }
    const std::vector<std::string> named = config.special_tokens();
    if (std::find(named.begin(), named.end(), added.content) == named.end())
      config.additional_special_tokens.push_back(added.content);
  }
  std::vector<std::string> specials = {config.bos_token, config.eos_token, config.unk_token, config.sep_token,
                                       config.pad_token, config.cls_token, config.mask_token};
  specials.insert(specials.end(), config.additional_special_tokens.begin(), config.additional_special_tokens.end());
  for (const std::string& token : specials)
    if (!token.empty() && id_of(token) < 0) appended.push_back(token);
  if (!appended.empty()) {
    std::vector<std::string> tokens = vocab.tokens();
    tokens.insert(tokens.end(), appended.begin(), appended.end());
    vocab = Vocab(std::move(tokens));
  }
  Tokenizer tokenizer(std::move(vocab), std::move(config));
  tokenizer.file_vocab_size_ = file_size;
  return tokenizer;
}

void Tokenizer::require(std::initializer_list<SpecialToken> needed, const std::string& dir_arg,
                        std::string_view purpose) const {
  struct Field {
    SpecialToken which;
    const char* name;
    const std::string& token;
    int32_t id;
  };
  const Field fields[] = {{SpecialToken::kCls, "cls_token", config_.cls_token, cls_id_},
                          {SpecialToken::kSep, "sep_token", config_.sep_token, sep_id_},
                          {SpecialToken::kPad, "pad_token", config_.pad_token, pad_id_},
                          {SpecialToken::kMask, "mask_token", config_.mask_token, mask_id_}};
  std::string missing;
  size_t count = 0;
  for (const SpecialToken which : needed)
    for (const Field& field : fields)
      if (field.which == which && (field.id < 0 || static_cast<size_t>(field.id) >= file_vocab_size_)) {
        missing += (missing.empty() ? "" : ", ") + std::string(field.name) + " '" + field.token + "'";
        ++count;
      }
  if (count == 0) return;
  const std::string dir = without_trailing_slashes(dir_arg);
  const std::string config_path = dir + "/tokenizer_config.json", map_path = dir + "/special_tokens_map.json";
  std::string source;
  if (file_exists(config_path)) source = config_path;
  // special_tokens_map.json is read only without added_tokens_decoder (transformers' legacy path).
  if (file_exists(map_path) && config_.added_tokens.empty())
    source += source.empty() ? map_path : " or special_tokens_map.json";
  throw Error(dir + "/vocab.txt: has no " + missing +
              (source.empty() ? " (HF's default: " + dir + " has no tokenizer_config.json)"
                              : " (set by " + source + ", else HF's default)") +
              "; " + std::string(purpose) + (count > 1 ? " needs them" : " needs it"));
}

void Tokenizer::encode_plain(std::u32string_view text, std::vector<int32_t>& out, EncodeScratch& scratch) const {
  normalizer_.normalize(text, scratch.normalized);
  const std::u32string_view norm = scratch.normalized;
  bert_pre_tokenize(norm, [&](WordSpan w) { wordpiece_.encode_word(norm.substr(w.begin, w.end - w.begin), out); });
}

void Tokenizer::encode(std::u32string_view text, std::vector<int32_t>& out, EncodeScratch& scratch) const {
  if (specials_.empty()) {
    encode_plain(text, out, scratch);
    return;
  }
  // Leftmost-longest match of the special tokens on the raw text; the pieces between them go
  // through the normal pipeline separately (HF's AddedVocabulary split).
  size_t start = 0, i = 0;
  const size_t n = text.size();
  while (i < n) {
    const Special* hit = nullptr;
    for (const Special& s : specials_) {
      if (s.text[0] == text[i] && text.compare(i, s.text.size(), s.text) == 0) {
        hit = &s;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    if (i > start) encode_plain(text.substr(start, i - start), out, scratch);
    out.push_back(hit->id);
    i += hit->text.size();
    start = i;
  }
  if (n > start) encode_plain(text.substr(start), out, scratch);
}

size_t Tokenizer::encode(std::string_view text, std::vector<int32_t>& out, EncodeScratch& scratch) const {
  const size_t bad = utf8_decode(text, scratch.decoded);
  encode(std::u32string_view(scratch.decoded), out, scratch);
  return bad;
}

void truncate_longest_first(std::vector<int32_t>& a, std::vector<int32_t>* b, size_t budget) {
  if (!b) {
    if (a.size() > budget) a.resize(budget);
    return;
  }
  if (a.size() + b->size() <= budget) return;
  size_t n1 = a.size(), n2 = b->size();
  const bool swap = n1 > n2;
  if (swap) std::swap(n1, n2);
  if (n1 > budget) {
    n2 = n1;
  } else {
    n2 = std::max(n1, budget - n1);
  }
  if (n1 + n2 > budget) {
    n1 = budget / 2;
    n2 = n1 + budget % 2;
  }
  if (swap) std::swap(n1, n2);
  if (a.size() > n1) a.resize(n1);
  if (b->size() > n2) b->resize(n2);
}

Encoding Tokenizer::post_process(std::vector<int32_t> a, const std::vector<int32_t>* b,
                                 std::optional<size_t> max_length) const {
  if (cls_id_ < 0 || sep_id_ < 0) throw Error("vocabulary lacks [CLS] or [SEP]; cannot add special tokens");
  std::vector<int32_t> b_copy;
  if (b) b_copy = *b;
  if (max_length) {
    const size_t added = b ? 3 : 2;
    const size_t budget = *max_length > added ? *max_length - added : 0;
    truncate_longest_first(a, b ? &b_copy : nullptr, budget);
  }
  Encoding e;
  e.ids.reserve(a.size() + b_copy.size() + 3);
  e.ids.push_back(cls_id_);
  e.ids.insert(e.ids.end(), a.begin(), a.end());
  e.ids.push_back(sep_id_);
  e.type_ids.assign(e.ids.size(), 0);
  if (b) {
    e.ids.insert(e.ids.end(), b_copy.begin(), b_copy.end());
    e.ids.push_back(sep_id_);
    e.type_ids.resize(e.ids.size(), 1);
  }
  return e;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  // HF's WordPiece decoder: join with spaces, then glue "##" continuations to the previous piece.
  std::string out;
  const std::string& prefix = config_.continuing_subword_prefix;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= vocab_.size()) continue;
    if (skip_special && (id == cls_id_ || id == sep_id_ || id == pad_id_)) continue;
    const std::string& t = vocab_.token(id);
    if (!prefix.empty() && t.compare(0, prefix.size(), prefix) == 0 && !out.empty()) {
      out.append(t, prefix.size());
    } else {
      if (!out.empty()) out.push_back(' ');
      out += t;
    }
  }
  return out;
}

}  // namespace bert
