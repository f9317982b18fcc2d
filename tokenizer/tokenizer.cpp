#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <unordered_map>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "common/utf8.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/unicode.h"

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
// lstrip and rstrip change no BERT id here (the pre-tokenizer drops the blanks anyway, and they are not
// kept to meet an added token that holds whitespace); normalized and single_word change where the token
// matches, which this tokenizer does not follow for a special token named here: refused by name.
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

// tokenizer.json: the `tokenizers` serialisation that BertTokenizerFast.save_pretrained writes beside
// vocab.txt (or alone, with legacy_format=False) and BertWordPieceTokenizer.save writes, and that
// transformers reads instead of vocab.txt when both are there. What it holds for BERT's ids: the
// WordPiece vocabulary and the added tokens past it, and the normaliser's clean_text (BertTokenizerFast
// replaces lowercase, strip_accents and handle_chinese_chars by tokenizer_config.json's values, or
// their defaults: TokenizerConfig::load's, but only after it has made the normalised added tokens'
// patterns with tokenizer.json's own: from_dir refuses a token the two would make differently).
// Everything else must be BERT's pipeline; anything other is refused by name, as are added tokens we
// do not match as transformers does.
struct FastTokenizerFile {
  std::vector<std::string> tokens;  // model.vocab by id, then the added tokens past it
  size_t model_size = 0;            // model.vocab's size
  std::vector<TokenizerConfig::AddedToken> added;  // "added_tokens", with their flags
  // Its own normaliser, which BertTokenizerFast replaces by the config's only after its added tokens'
  // normalised forms are made with this one.
  NormalizerOptions normalizer;
};

// Why transformers would match an added token where this tokenizer does not; empty when it is one we
// match as it does.
std::string unsupported_added_token(const TokenizerConfig::AddedToken& added) {
  if (added.single_word) return "single_word = true (a match only as a whole word) is not supported";
  if (added.special && added.normalized)
    return "a special token with normalized = true (matched in the normalised text) is not supported; special "
           "tokens are matched as written";
  return {};
}

[[noreturn]] void fail_field(const std::string& path, const std::string& field, const std::string& what) {
  throw Error(path + ": " + field + ": " + what);
}

// A JSON value for a message: its first 40 bytes or so, cut between characters, "..." when cut.
std::string excerpt(const Json& v) {
  std::string text = v.dump();
  if (text.size() <= 40) return text;
  size_t cut = 40;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut) + "...";
}

// tokenizer.json's "added_tokens", as written: {"id": N, "content": "...", flags...} entries, in order.
std::vector<TokenizerConfig::AddedToken> json_added_tokens(const Json& root, const std::string& path) {
  std::vector<TokenizerConfig::AddedToken> out;
  const Json* added = root.find("added_tokens");
  if (!added) return out;
  if (!added->is_array()) fail_field(path, "added_tokens", excerpt(*added) + ": expected an array");
  for (const Json& entry : added->as_array()) {
    if (!entry.is_object() || !entry.find("content") || !entry.find("content")->is_string() || !entry.find("id") ||
        !entry.find("id")->is_number())
      fail_field(path, "added_tokens", "expected {\"id\": N, \"content\": \"...\", ...} entries");
    TokenizerConfig::AddedToken token;
    token.source = TokenizerConfig::kJsonSource;
    token.content = entry.find("content")->as_string();
    token.id = entry.find("id")->as_int();
    const auto flag = [&](const char* name) {
      const Json* f = entry.find(name);
      return f && f->is_bool() && f->as_bool();
    };
    token.special = flag("special");
    token.normalized = flag("normalized");
    token.lstrip = flag("lstrip");
    token.rstrip = flag("rstrip");
    token.single_word = flag("single_word");
    out.push_back(std::move(token));
  }
  return out;
}

FastTokenizerFile read_tokenizer_json(const std::string& path, TokenizerConfig& config) {
  const Json root = Json::parse(read_file(path), path);
  if (!root.is_object()) throw Error(path + ": expected a JSON object");
  const auto fail = [&](const std::string& field, const std::string& what) { fail_field(path, field, what); };
  const auto type_of = [&](const char* field) -> std::string {
    const Json* v = root.find(field);
    if (!v || v->is_null()) return "null";
    if (!v->is_object()) fail(field, excerpt(*v) + ": expected an object with a \"type\"");
    const Json* t = v->find("type");
    if (!t || t->is_null())
      fail(std::string(field) + ".type",
           "missing: name it (tokenizers would guess it from the other keys; we read only a named BERT pipeline)");
    if (!t->is_string()) fail(std::string(field) + ".type", t->dump() + ": expected a string");
    return t->as_string();
  };
  const auto string_field = [&](const Json& obj, const std::string& where, const char* key) -> std::string {
    const Json* v = obj.find(key);
    if (!v || !v->is_string()) fail(where + "." + key, "expected a string");
    return v->as_string();
  };
  // A key that tokenizers requires (it refuses the file without it, and so transformers cannot load it).
  const auto required = [&](const Json& obj, const std::string& where, const char* key) -> const Json& {
    const Json* v = obj.find(key);
    if (!v) fail(where + "." + key, "missing (tokenizers requires it: transformers cannot load this file)");
    return *v;
  };
  const auto required_bool = [&](const Json& obj, const std::string& where, const char* key) {
    const Json& v = required(obj, where, key);
    if (!v.is_bool()) fail(where + "." + key, v.dump() + ": must be true or false");
    return v.as_bool();
  };

  if (const Json* v = root.find("version"); v && !(v->is_string() && v->as_string() == "1.0"))
    fail("version", v->dump() + ": tokenizers reads version \"1.0\" only");
  // truncation and padding change no id (transformers sets both per call), but tokenizers refuses the
  // file where they are malformed, and so transformers cannot load it.
  const auto one_of = [&](const Json& obj, const std::string& where, const char* key,
                          std::initializer_list<const char*> names) {
    const Json& v = required(obj, where, key);
    for (const char* name : names)
      if (v.is_string() && v.as_string() == name) return;
    std::string list;
    for (const char* name : names) list += (list.empty() ? "" : ", ") + std::string(name);
    fail(where + "." + key, excerpt(v) + ": expected one of " + list);
  };
  const auto count = [&](const Json& v, const std::string& field, double max) {
    if (!(v.is_number() && v.as_number() >= 0 && v.as_number() <= max && v.as_number() == std::floor(v.as_number())))
      fail(field, excerpt(v) + ": expected an integer from 0");
  };
  if (const Json* t = root.find("truncation"); t && !t->is_null()) {
    if (!t->is_object()) fail("truncation", excerpt(*t) + ": expected an object or null");
    if (t->find("direction")) one_of(*t, "truncation", "direction", {"Left", "Right"});
    one_of(*t, "truncation", "strategy", {"LongestFirst", "OnlyFirst", "OnlySecond"});
    for (const char* key : {"max_length", "stride"})
      count(required(*t, "truncation", key), "truncation." + std::string(key), 18446744073709551615.0);
  }
  if (const Json* p = root.find("padding"); p && !p->is_null()) {
    if (!p->is_object()) fail("padding", excerpt(*p) + ": expected an object or null");
    const Json& strategy = required(*p, "padding", "strategy");
    if (strategy.is_object() && strategy.as_object().size() == 1 && strategy.find("Fixed"))
      count(*strategy.find("Fixed"), "padding.strategy.Fixed", 18446744073709551615.0);
    else if (!(strategy.is_string() && strategy.as_string() == "BatchLongest"))
      fail("padding.strategy", excerpt(strategy) + ": expected \"BatchLongest\" or {\"Fixed\": N}");
    one_of(*p, "padding", "direction", {"Left", "Right"});
    if (const Json* v = p->find("pad_to_multiple_of"); v && !v->is_null())
      count(*v, "padding.pad_to_multiple_of", 18446744073709551615.0);
    for (const char* key : {"pad_id", "pad_type_id"})
      count(required(*p, "padding", key), "padding." + std::string(key), 4294967295.0);
    if (!required(*p, "padding", "pad_token").is_string()) fail("padding.pad_token", "expected a string");
  }
  // The model: WordPiece with BertTokenizerFast's settings.
  if (const std::string type = type_of("model"); type != "WordPiece")
    fail("model.type", "'" + type + "': only a WordPiece model is a BERT tokenizer");
  const Json& model = *root.find("model");
  if (const std::string unk = string_field(model, "model", "unk_token"); unk != config.unk_token)
    fail("model.unk_token", "'" + unk + "' is not the tokenizer's unk_token '" + config.unk_token +
                                "' (tokenizer_config.json, or [UNK] without it)");
  if (const Json& v = required(model, "model", "continuing_subword_prefix"); !(v.is_string() && v.as_string() == "##"))
    fail("model.continuing_subword_prefix", v.dump() + ": only \"##\" is supported");
  if (const Json& v = required(model, "model", "max_input_chars_per_word"); !(v.is_number() && v.as_number() == 100))
    fail("model.max_input_chars_per_word",
         v.dump() + ": only 100 is supported (what transformers uses for a vocab.txt, which our checkpoints carry)");
  const Json* vocab = model.find("vocab");
  if (!vocab || !vocab->is_object()) fail("model.vocab", "expected an object {\"token\": id, ...}");
  FastTokenizerFile out;
  out.model_size = vocab->as_object().size();
  if (out.model_size == 0) fail("model.vocab", "no tokens");
  out.tokens.resize(out.model_size);
  std::vector<bool> seen(out.model_size, false);
  for (const auto& [token, id] : vocab->as_object()) {
    const double v = id.is_number() ? id.as_number() : -1;
    if (!(v >= 0 && v < static_cast<double>(out.model_size) && v == static_cast<double>(static_cast<size_t>(v))))
      fail("model.vocab[\"" + token + "\"]",
           id.dump() + ": ids must be 0.." + std::to_string(out.model_size - 1) + ", one a token");
    const size_t i = static_cast<size_t>(v);
    if (seen[i])
      fail("model.vocab[\"" + token + "\"]", "id " + std::to_string(i) + " is taken by '" + out.tokens[i] + "'");
    if (token.empty()) fail("model.vocab", "an empty token (id " + std::to_string(i) + ")");
    seen[i] = true;
    out.tokens[i] = token;
  }

  // BERT's pipeline around it.
  if (const std::string type = type_of("normalizer"); type != "BertNormalizer")
    fail("normalizer", "'" + type + "': transformers' BertTokenizerFast needs a BertNormalizer");
  // clean_text, handle_chinese_chars and lowercase are required; strip_accents may be left out or
  // null (None: it follows lowercase), as tokenizers reads them.
  const Json& normalizer = *root.find("normalizer");
  config.normalizer.clean_text = required_bool(normalizer, "normalizer", "clean_text");
  out.normalizer = config.normalizer;
  out.normalizer.lowercase = required_bool(normalizer, "normalizer", "lowercase");
  out.normalizer.handle_chinese_chars = required_bool(normalizer, "normalizer", "handle_chinese_chars");
  out.normalizer.strip_accents = out.normalizer.lowercase;
  if (const Json* v = normalizer.find("strip_accents"); v && !v->is_null()) {
    if (!v->is_bool()) fail("normalizer.strip_accents", v->dump() + ": must be true, false or null");
    out.normalizer.strip_accents = v->as_bool();
  }
  if (const std::string type = type_of("pre_tokenizer"); type != "BertPreTokenizer")
    fail("pre_tokenizer", "'" + type + "': only BertPreTokenizer is supported");
  if (const std::string type = type_of("decoder"); type != "WordPiece" && type != "null")
    fail("decoder", "'" + type + "': only the WordPiece decoder is supported");
  if (const Json* d = root.find("decoder"); d && d->is_object()) {
    if (const Json& v = required(*d, "decoder", "prefix"); !(v.is_string() && v.as_string() == "##"))
      fail("decoder.prefix", v.dump() + ": only \"##\" is supported");
    config.decoder.cleanup = required_bool(*d, "decoder", "cleanup");
  } else {
    config.decoder.wordpiece = false;  // tokenizers joins the tokens with spaces
  }
  // [CLS] A [SEP] (B [SEP]) with type ids 0 (1), as BertProcessing or the TemplateProcessing that
  // transformers' converter writes, with the tokenizer's cls_token and sep_token.
  const std::string post = type_of("post_processor");
  const Json& processor = post == "null" ? root : *root.find("post_processor");
  std::string cls, sep;
  // The ids it adds, as written in it (tokenizers uses them verbatim): checked against the vocabulary
  // once it is complete, below.
  std::vector<std::pair<std::string, int64_t>> post_ids;
  if (post == "BertProcessing") {
    for (auto [key, dst] : {std::pair{"cls", &cls}, std::pair{"sep", &sep}}) {
      const Json* v = processor.find(key);
      if (!v || !v->is_array() || v->as_array().size() != 2 || !v->as_array()[0].is_string() ||
          !v->as_array()[1].is_number())
        fail(std::string("post_processor.") + key, "expected [\"token\", id]");
      *dst = v->as_array()[0].as_string();
      post_ids.emplace_back(*dst, v->as_array()[1].as_int());
    }
  } else if (post == "TemplateProcessing") {
    // Each piece: {"SpecialToken": {"id": "[CLS]", "type_id": 0}} or {"Sequence": {"id": "A", "type_id": 0}}.
    const auto pieces = [&](const char* key) {
      std::string shape;
      const Json* v = processor.find(key);
      if (!v || !v->is_array()) fail(std::string("post_processor.") + key, "expected an array");
      for (const Json& piece : v->as_array()) {
        const Json* special = piece.is_object() ? piece.find("SpecialToken") : nullptr;
        const Json* sequence = piece.is_object() ? piece.find("Sequence") : nullptr;
        const Json* body = special ? special : sequence;
        if (!body || !body->is_object() || !body->find("id") || !body->find("id")->is_string() ||
            !body->find("type_id") || !body->find("type_id")->is_number())
          fail(std::string("post_processor.") + key, "expected SpecialToken or Sequence pieces");
        shape += (shape.empty() ? "" : " ") + body->find("id")->as_string() + ":" +
                 std::to_string(body->find("type_id")->as_int()) + (special ? "!" : "");
      }
      return shape;
    };
    const std::string single = pieces("single"), pair = pieces("pair");
    const std::string want_single = config.cls_token + ":0! A:0 " + config.sep_token + ":0!";
    const std::string want_pair = want_single + " B:1 " + config.sep_token + ":1!";
    if (single != want_single || pair != want_pair)
      fail("post_processor", "the template '" + single + "' / '" + pair + "' is not BERT's '" + want_single + "' / '" +
                                 want_pair + "' (with the tokenizer's cls_token and sep_token)");
    cls = config.cls_token;
    sep = config.sep_token;
    const Json* table = processor.find("special_tokens");
    for (const std::string& token : {cls, sep}) {
      const Json* entry = table && table->is_object() ? table->find(token) : nullptr;
      const Json* ids = entry && entry->is_object() ? entry->find("ids") : nullptr;
      if (!ids || !ids->is_array() || ids->as_array().size() != 1 || !ids->as_array()[0].is_number())
        fail("post_processor.special_tokens", "expected {\"" + token + "\": {\"ids\": [id], ...}}");
      post_ids.emplace_back(token, ids->as_array()[0].as_int());
    }
  } else {
    fail("post_processor",
         "'" + post + "': only BERT's [CLS] A [SEP] B [SEP] (BertProcessing or " + "TemplateProcessing) is supported");
  }
  if (cls != config.cls_token || sep != config.sep_token)
    fail("post_processor", "adds '" + cls + "' and '" + sep + "', not the tokenizer's cls_token '" + config.cls_token +
                               "' and sep_token '" + config.sep_token + "'");

  // Added tokens: those in model.vocab at their ids, the others past it in the array's order; the
  // special ones become additional special tokens (as tokenizer_config.json's added_tokens_decoder,
  // Tokenizer::from_dir).
  {
    std::vector<std::pair<int64_t, std::string>> past;
    for (const TokenizerConfig::AddedToken& added : json_added_tokens(root, path)) {
      const std::string& content = added.content;
      const int64_t id = added.id;
      const std::string where = "added_tokens '" + content + "'";
      if (const std::string why = unsupported_added_token(added); !why.empty()) fail(where, why);
      if (content.empty()) fail("added_tokens", "an empty token (id " + std::to_string(id) + ")");
      if (id < 0) fail(where, "a negative id");
      if (static_cast<size_t>(id) < out.model_size) {
        if (out.tokens[static_cast<size_t>(id)] != content)
          fail(where, "id " + std::to_string(id) + " is '" + out.tokens[static_cast<size_t>(id)] + "' in model.vocab");
      } else {
        // tokenizers numbers the tokens past its model in the order of this array, whatever their
        // "id" fields say: a file whose ids disagree is not one it wrote.
        if (static_cast<size_t>(id) != out.model_size + past.size())
          fail(where, "id " + std::to_string(id) + " where tokenizers gives it " +
                          std::to_string(out.model_size + past.size()) +
                          " (the ids past model.vocab follow the array's order, without gaps)");
        past.emplace_back(id, content);
      }
      const std::vector<std::string> named = config.special_tokens();
      if (added.special && std::find(named.begin(), named.end(), content) == named.end())
        config.additional_special_tokens.push_back(content);
      out.added.push_back(added);
    }
    for (const auto& entry : past) out.tokens.push_back(entry.second);
  }
  for (const auto& [token, id] : post_ids)
    if (id < 0 || static_cast<size_t>(id) >= out.tokens.size() || out.tokens[static_cast<size_t>(id)] != token)
      fail("post_processor",
           "adds '" + token + "' as id " + std::to_string(id) + ", which is " +
               (id >= 0 && static_cast<size_t>(id) < out.tokens.size() ? "'" + out.tokens[static_cast<size_t>(id)] + "'"
                                                                       : std::string("no token")) +
               " in the vocabulary (a post-processor left from another vocabulary)");
  return out;
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
  // The special token fields transformers' legacy path sees when it reads added_tokens.json (below):
  // set in special_tokens_map.json, or in tokenizer_config.json as a string (its AddedToken objects
  // are still dicts then, whose str() names no token), not left to a default.
  std::vector<const std::string*> named, present;  // (present: set by either file, in any form)
  // null: transformers then has no such token at all, which BERT's five cannot do without (refused
  // below unless special_tokens_map.json, read after, names the token after all).
  std::vector<std::string> null_fields;
  const auto null_token = [](const std::string& file, const std::string& key) {
    return Error(file + ": field '" + key + "' is null: transformers then has no " + key +
                 ", which BERT needs; name the token or remove the field");
  };
  auto get_token = [&](const Json& from, const std::string& from_path, const char* key, std::string& dst) {
    const Json* v = from.find(key);
    if (v && v->is_null() && !(std::string_view(key) == "bos_token" || std::string_view(key) == "eos_token")) {
      if (&from != &j) throw null_token(from_path, key);
      null_fields.emplace_back(key);
    }
    if (v && !v->is_null()) {
      dst = token_text(*v, from_path, key);
      std::erase(named, &dst);
      std::erase(null_fields, std::string(key));
      if (&from != &j || v->is_string()) named.push_back(&dst);
      if (std::find(present.begin(), present.end(), &dst) == present.end()) present.push_back(&dst);
    }
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
  if (const Json* v = j.find("tokenizer_file"); v && v->is_null()) c.ignores_tokenizer_json = true;
  if (const Json* v = j.find("from_slow"); v && v->is_bool() && v->as_bool()) c.ignores_tokenizer_json = true;
  if (const Json* v = j.find("added_tokens_decoder"); v && v->is_null())
    throw Error(path +
                ": added_tokens_decoder is null, which transformers fails to read; remove the field or "
                "make it an object {\"id\": {\"content\": ...}}");
  if (const Json* v = j.find("added_tokens_decoder"); v && !v->is_null()) {
    c.has_added_tokens_decoder = true;
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
  std::string last_map_additional;
  if (!j.find("added_tokens_decoder") && file_exists(map_path)) {
    const Json map = Json::parse(read_file(map_path), map_path);
    if (!map.is_object()) throw Error(map_path + ": expected a JSON object");
    for (size_t k = 0; k < std::size(kTokenKeys); ++k) get_token(map, map_path, kTokenKeys[k], *token_fields[k]);
    if (const Json* v = map.find("additional_special_tokens"); v && v->is_array())
      for (const Json& t : v->as_array()) {
        const std::string token = token_text(t, map_path, "additional_special_tokens");
        last_map_additional = token;
        if (std::find(c.additional_special_tokens.begin(), c.additional_special_tokens.end(), token) ==
            c.additional_special_tokens.end())
          c.additional_special_tokens.push_back(token);
      }
  }
  if (!null_fields.empty()) throw null_token(path, null_fields.front());
  // The same legacy path reads added_tokens.json ({"token": id}) as added_tokens_decoder: a token a
  // special token field names (as above) is special (not normalised), any other is normalised. A
  // special token it then misses becomes a normalised added token besides (tokenizers keeps both
  // patterns: "[mask]" in lowercased text matches [MASK]): refused by name.
  const std::string legacy_path = dir + "/added_tokens.json";
  if (!j.find("added_tokens_decoder") && file_exists(legacy_path)) {
    const Json legacy = Json::parse(read_file(legacy_path), legacy_path);
    if (!legacy.is_object()) throw Error(legacy_path + ": expected a JSON object {\"token\": id, ...}");
    const std::vector<std::string> specials = c.special_tokens();
    std::string last_content;
    std::map<int64_t, std::string> ids;
    for (const auto& [content, id] : legacy.as_object()) {
      if (!id.is_number() || id.as_number() < 0 || id.as_number() != std::floor(id.as_number()) ||
          id.as_number() > 2147483647.0)
        throw Error(legacy_path + ": \"" + content + "\": " + id.dump() + ": expected a token id");
      last_content = content;
      // One id twice: transformers keeps the last token.
      if (const auto same = ids.find(id.as_int()); same != ids.end())
        throw Error(legacy_path + ": id " + std::to_string(id.as_int()) + " is given twice ('" + same->second +
                    "' and '" + content + "'; transformers keeps the last): remove one");
      ids.emplace(id.as_int(), content);
      if (content.empty()) continue;  // (tokenizers adds no empty token)
      AddedToken added;
      added.source = kLegacySource;
      added.id = id.as_int();
      added.content = content;
      added.special = std::find(c.additional_special_tokens.begin(), c.additional_special_tokens.end(), content) !=
                          c.additional_special_tokens.end() ||
                      std::any_of(named.begin(), named.end(), [&](const std::string* t) { return *t == content; });
      added.normalized = !added.special;
      added.unseen_special = !added.special && std::find(specials.begin(), specials.end(), content) != specials.end();
      c.added_tokens.push_back(std::move(added));
    }
    // The slip (TokenizerConfig::legacy_renamed_field): noted here, refused by from_dir.
    if (!last_map_additional.empty() && !legacy.as_object().empty())
      for (size_t k = 0; k < std::size(kTokenKeys); ++k)
        if (std::find(present.begin(), present.end(), token_fields[k]) != present.end() &&
            *token_fields[k] == last_map_additional && last_content != last_map_additional) {
          c.legacy_renamed_field = kTokenKeys[k];
          c.legacy_renamed_from = last_map_additional;
          c.legacy_renamed_to = last_content;
          break;
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
  // Always (an empty object too): transformers' legacy path would otherwise read an added_tokens.json
  // left beside what we write, and let special_tokens_map.json override this file.
  {
    Json decoder = Json::object();
    for (const AddedToken& t : added_tokens) {
      Json entry = Json::object();
      entry.set("content", t.content);
      entry.set("lstrip", t.lstrip);
      entry.set("normalized", t.normalized);
      entry.set("rstrip", t.rstrip);
      entry.set("single_word", t.single_word);
      entry.set("special", t.special);
      decoder.set(std::to_string(t.id), entry);
    }
    cfg.set("added_tokens_decoder", decoder);
  }
  write_file_atomic(dir + "/tokenizer_config.json", cfg.dump(2) + "\n");
  write_file_atomic(dir + "/special_tokens_map.json", specials.dump(2) + "\n");
}

Tokenizer::Tokenizer(Vocab vocab, TokenizerConfig config) : Tokenizer(std::move(vocab), std::move(config), SIZE_MAX) {}

Tokenizer::Tokenizer(Vocab vocab, TokenizerConfig config, size_t pieces)
    : vocab_(std::move(vocab)),
      config_(std::move(config)),
      normalizer_(config_.normalizer),
      wordpiece_(vocab_, config_.unk_token, config_.continuing_subword_prefix, 100, pieces),
      pieces_(std::min(pieces, vocab_.size())) {
  // A named special token whose added-token entry says normalized = true (tokenizer.add_tokens(["[MASK]"])
  // writes one) is matched as that entry says, in the normalised text.
  const auto normalized_entry = [&](const std::string& token) {
    return std::any_of(config_.added_tokens.begin(), config_.added_tokens.end(),
                       [&](const TokenizerConfig::AddedToken& a) { return a.content == token && a.normalized; });
  };
  for (const auto& t : config_.special_tokens()) {
    const int32_t id = vocab_.id(t);
    if (id < 0 || normalized_entry(t)) continue;  // HF only registers special tokens the vocabulary has
    std::u32string cps;
    utf8_decode(t, cps);
    raw_added_.add(std::move(cps), id);
  }
  for (const TokenizerConfig::AddedToken& added : config_.added_tokens) {
    const int32_t id = vocab_.id(added.content);
    if (id < 0) continue;  // from_dir has appended every one; a config made by hand may name others
    std::u32string cps;
    utf8_decode(added.content, cps);
    if (added.normalized) {
      // Matched as its own normalised form (tokenizers' AddedVocabulary::refresh_added_tokens).
      std::u32string normalized;
      normalizer_.normalize(cps, normalized);
      normalized_added_.add(std::move(normalized), id);
    } else {
      raw_added_.add(std::move(cps), id);
    }
  }
  cls_id_ = vocab_.id(config_.cls_token);
  sep_id_ = vocab_.id(config_.sep_token);
  pad_id_ = vocab_.id(config_.pad_token);
  mask_id_ = vocab_.id(config_.mask_token);
  file_vocab_size_ = vocab_.size();
}

Tokenizer Tokenizer::from_dir(const std::string& dir_arg) {
  const std::string dir = without_trailing_slashes(dir_arg);
  if (!is_directory(dir))
    throw Error(dir + ": tokenizer directory not found (expected vocab.txt or tokenizer.json inside)");
  const std::string txt_path = dir + "/vocab.txt", json_path = dir + "/tokenizer.json";
  const bool has_json = file_exists(json_path);
  if (!has_json && !file_exists(txt_path))
    throw Error(txt_path + ": missing, and so is tokenizer.json (is this a tokenizer directory?)");
  TokenizerConfig config = TokenizerConfig::load(dir);
  // transformers reads tokenizer.json when there is one (a vocab.txt beside it must agree), unless
  // tokenizer_config.json says "tokenizer_file": null or "from_slow": true: then it builds the
  // tokenizer from vocab.txt, as if tokenizer.json were not there.
  const bool use_json = has_json && !config.ignores_tokenizer_json;
  if (!use_json && !file_exists(txt_path))
    throw Error(txt_path + ": missing; " + dir + "/tokenizer_config.json sets " +
                "\"tokenizer_file\": null or \"from_slow\": true, so transformers builds the tokenizer from it");
  const std::string vocab_path = use_json ? json_path : txt_path;
  const std::string vocab_name = use_json ? "tokenizer.json" : "vocab.txt";
  Vocab vocab;
  size_t pieces = 0;  // the ids WordPiece may use: vocab.txt's, or tokenizer.json's model's
  std::optional<NormalizerOptions> json_normalizer;  // tokenizer.json's own, when it is read
  // tokenizer.json's added tokens, with their flags, beside added_tokens_decoder's: one token's two
  // entries must agree on how it is matched. (transformers' legacy path lets tokenizer.json's replace
  // added_tokens.json's at the same id.)
  const auto take_json_added = [&](std::vector<TokenizerConfig::AddedToken>&& json_added) {
    for (TokenizerConfig::AddedToken& added : json_added) {
      const auto same = std::find_if(config.added_tokens.begin(), config.added_tokens.end(),
                                     [&](const TokenizerConfig::AddedToken& t) { return t.id == added.id; });
      if (same == config.added_tokens.end()) {
        config.added_tokens.push_back(std::move(added));
      } else if (same->source == TokenizerConfig::kLegacySource) {
        *same = std::move(added);
      } else if (same->content != added.content || same->special != added.special ||
                 same->normalized != added.normalized) {
        const auto describe = [](const TokenizerConfig::AddedToken& t) {
          return "'" + t.content + "' (special " + (t.special ? "true" : "false") + ", normalized " +
                 (t.normalized ? "true" : "false") + ")";
        };
        throw Error(dir + "/tokenizer_config.json: added_tokens_decoder[\"" + std::to_string(added.id) + "\"] is " +
                    describe(*same) + " where tokenizer.json's added_tokens has " + describe(added) +
                    "; make them agree");
      }
    }
  };
  if (use_json) {
    FastTokenizerFile fast = read_tokenizer_json(json_path, config);
    if (file_exists(txt_path)) {
      const std::vector<std::string> txt = Vocab::load(txt_path).tokens();
      const bool agree = (txt.size() == fast.model_size || txt.size() == fast.tokens.size()) &&
                         std::equal(txt.begin(), txt.end(), fast.tokens.begin());
      if (!agree) {
        size_t i = 0;
        while (i < txt.size() && i < fast.tokens.size() && txt[i] == fast.tokens[i]) ++i;
        const auto at = [](const std::vector<std::string>& v, size_t k) {
          return k < v.size() ? "'" + v[k] + "'" : std::string("nothing");
        };
        throw Error(txt_path + ": differs from tokenizer.json at id " + std::to_string(i) + " (" + at(txt, i) +
                    " against " + at(fast.tokens, i) + "); transformers reads tokenizer.json: remove the stale one");
      }
    }
    pieces = fast.model_size;
    json_normalizer = fast.normalizer;
    vocab = Vocab(std::move(fast.tokens));
    take_json_added(std::move(fast.added));
  } else {
    vocab = Vocab::load(txt_path);
    pieces = vocab.size();
    // Built from vocab.txt beside a tokenizer.json: transformers' legacy path (no added_tokens_decoder
    // in the config) still takes tokenizer.json's added tokens as if they were that field (replacing
    // added_tokens.json's at the same id).
    if (has_json && !config.has_added_tokens_decoder)
      take_json_added(json_added_tokens(Json::parse(read_file(json_path), json_path), json_path));
  }
  // added_tokens.json's entries that tokenizer.json did not replace (TokenizerConfig::AddedToken).
  for (const TokenizerConfig::AddedToken& added : config.added_tokens)
    if (added.source == TokenizerConfig::kLegacySource && added.unseen_special)
      throw Error(dir + "/added_tokens.json: '" + added.content +
                  "' is a special token that transformers' legacy path reads as a normalised added token "
                  "here (it names special tokens by tokenizer_config.json's strings and special_tokens_map.json, "
                  "not by defaults or AddedToken objects), and tokenizers then matches it in normalised text too; "
                  "name it as a string in tokenizer_config.json or special_tokens_map.json, or remove it here");
  if (!config.legacy_renamed_field.empty() &&
      std::none_of(config.added_tokens.begin(), config.added_tokens.end(), [&](const TokenizerConfig::AddedToken& t) {
        return t.source == TokenizerConfig::kJsonSource && t.content == config.legacy_renamed_from;
      }))
    throw Error(dir + "/added_tokens.json: with it, transformers' legacy path makes " + config.legacy_renamed_field +
                " '" + config.legacy_renamed_to + "' instead of '" + config.legacy_renamed_from +
                "' (a slip of transformers: that is also special_tokens_map.json's last additional special token); "
                "move the added tokens into tokenizer_config.json's added_tokens_decoder, or reorder the lists");
  if (vocab.id(config.unk_token) < 0 || static_cast<size_t>(vocab.id(config.unk_token)) >= pieces)
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
  // lstrip and rstrip extend a match over the whitespace beside it, which changes ids only where
  // another added token holds whitespace (as matched: normalised ones in their normalised form); that
  // meeting transformers handles in ways we do not follow (tokenizers even fails on some), so it is
  // refused by name.
  const BertNormalizer normalizer(config.normalizer);
  // DIR/FILE: FIELD["id"], in the file that lists the token.
  const auto entry_of = [&](const TokenizerConfig::AddedToken& added) {
    if (added.source == TokenizerConfig::kLegacySource)
      return dir + "/" + added.source + ": id " + std::to_string(added.id);
    return dir + "/" + added.source + "[\"" + std::to_string(added.id) + "\"]";
  };
  const TokenizerConfig::AddedToken* stripping = nullptr;
  const TokenizerConfig::AddedToken* spaced = nullptr;
  for (const TokenizerConfig::AddedToken& added : config.added_tokens) {
    if (added.content.empty()) throw Error(entry_of(added) + " '': an empty token");
    if (added.lstrip || added.rstrip) stripping = stripping ? stripping : &added;
    std::u32string form;
    utf8_decode(added.content, form);
    if (added.normalized) {
      std::u32string normalized;
      normalizer.normalize(form, normalized);
      // tokenizers keeps a pattern that normalises to nothing, and it matches everywhere: every
      // character outside a real match becomes a word of its own.
      if (normalized.empty())
        throw Error(entry_of(added) + " '" + added.content +
                    "': normalized = true, and it normalises to nothing (transformers would then split the text "
                    "into single characters); remove it or set normalized to false");
      // BertTokenizerFast makes the pattern with tokenizer.json's normaliser and then replaces that by
      // tokenizer_config.json's (do_lower_case, strip_accents, tokenize_chinese_chars) without remaking
      // it: where the two disagree on this token, transformers looks for the first form in text
      // normalised the second way (a jamo form it never finds there; a lowercased one only where the
      // text was written in lower case), and so misses the token as written.
      if (json_normalizer) {
        std::u32string json_form;
        BertNormalizer(*json_normalizer).normalize(form, json_form);
        // (Jamo print as the syllables they spell: say so, or the two forms read the same.)
        const auto shown = [](const std::u32string& text, const NormalizerOptions& o) {
          const bool jamo =
              std::any_of(text.begin(), text.end(), [](char32_t c) { return c >= 0x1100 && c <= 0x11FF; });
          return "'" + utf8_encode(text) + "'" + (jamo ? " (Hangul decomposed into jamo)" : "") + " (lowercase " +
                 (o.lowercase ? "true" : "false") + ", strip_accents " + (o.strip_accents ? "true" : "false") +
                 ", handle_chinese_chars " + (o.handle_chinese_chars ? "true" : "false") + ")";
        };
        if (json_form != normalized)
          throw Error(entry_of(added) + " '" + added.content +
                      "': normalized = true, and tokenizer.json's normalizer makes it " +
                      shown(json_form, *json_normalizer) + " where tokenizer_config.json's settings make it " +
                      shown(normalized, config.normalizer) +
                      "; transformers looks for the first in text normalised the second way, so it does not match "
                      "the token as written: set tokenizer.json's normalizer to tokenizer_config.json's settings "
                      "(which transformers normalises text with; save_pretrained writes them so), or set the "
                      "token's normalized to false");
      }
      form = std::move(normalized);
    }
    if (std::any_of(form.begin(), form.end(), [](char32_t c) { return unicode::is_whitespace(c); }))
      spaced = spaced ? spaced : &added;
  }
  if (stripping && spaced)
    throw Error(dir + "/" + stripping->source + ": '" + stripping->content + "' has " +
                (stripping->lstrip ? "lstrip" : "rstrip") + " = true and '" + spaced->content +
                "' holds whitespace as matched: how the two meet is not supported (set lstrip and rstrip to false; "
                "they change no id otherwise)");
  for (const TokenizerConfig::AddedToken& added : config.added_tokens) {
    const std::string where = entry_of(added) + " '" + added.content + "'";
    // lstrip and rstrip change no BERT id otherwise (the pre-tokenizer drops the blanks anyway).
    if (const std::string why = unsupported_added_token(added); !why.empty()) throw Error(where + ": " + why);
    if (const int64_t id = id_of(added.content); id >= 0) {
      if (id != added.id) throw Error(where + ": " + vocab_name + " has it as id " + std::to_string(id));
    } else if (added.id != static_cast<int64_t>(file_size + appended.size())) {
      throw Error(where + ": not in " + vocab_name + ", nor the next id after it (" +
                  std::to_string(file_size + appended.size()) + ")");
    } else {
      appended.push_back(added.content);
    }
    const std::vector<std::string> named = config.special_tokens();
    if (added.special && std::find(named.begin(), named.end(), added.content) == named.end())
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
  Tokenizer tokenizer(std::move(vocab), std::move(config), pieces);
  tokenizer.file_vocab_size_ = file_size;
  tokenizer.vocab_file_ = vocab_name;
  return tokenizer;
}

void Tokenizer::save(const std::string& dir, size_t max_length) const {
  const std::vector<std::string>& tokens = vocab_.tokens();
  Vocab(std::vector<std::string>(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(pieces_)))
      .save(dir + "/vocab.txt");
  TokenizerConfig config = config_;
  config.model_max_length = std::min(config.model_max_length, max_length);
  // The tokens past the pieces (as read, or special: the appended ones), and the non-special added
  // tokens among the pieces, which nothing else would make added tokens again.
  config.added_tokens.clear();
  std::unordered_map<std::string_view, const TokenizerConfig::AddedToken*> as_read;
  for (const TokenizerConfig::AddedToken& t : config_.added_tokens) as_read.emplace(t.content, &t);
  for (size_t id = 0; id < tokens.size(); ++id) {
    const auto found = as_read.find(tokens[id]);
    const TokenizerConfig::AddedToken* read = found == as_read.end() ? nullptr : found->second;
    if (id < pieces_ && (!read || read->special)) continue;
    TokenizerConfig::AddedToken token;
    if (read) token = *read;
    token.id = static_cast<int64_t>(id);
    token.content = tokens[id];
    if (!read) token.special = true, token.normalized = false;
    config.added_tokens.push_back(std::move(token));
  }
  config.save(dir);
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
  // In the files: vocab.txt's (tokenizer.json's) tokens, and added_tokens_decoder's after them.
  const auto listed = [&](const std::string& token) {
    return std::any_of(config_.added_tokens.begin(), config_.added_tokens.end(),
                       [&](const TokenizerConfig::AddedToken& a) { return a.content == token; });
  };
  for (const SpecialToken which : needed)
    for (const Field& field : fields)
      if (field.which == which &&
          (field.id < 0 || (static_cast<size_t>(field.id) >= file_vocab_size_ && !listed(field.token)))) {
        missing += (missing.empty() ? "" : ", ") + std::string(field.name) + " '" + field.token + "'";
        ++count;
      }
  if (count == 0) return;
  const std::string dir = without_trailing_slashes(dir_arg);
  const std::string config_path = dir + "/tokenizer_config.json", map_path = dir + "/special_tokens_map.json";
  std::string source;
  if (file_exists(config_path)) source = config_path;
  // special_tokens_map.json is read only without added_tokens_decoder (transformers' legacy path).
  if (file_exists(map_path) && !config_.has_added_tokens_decoder)
    source += source.empty() ? map_path : " or special_tokens_map.json";
  throw Error(dir + "/" + vocab_file_ + ": has no " + missing +
              (source.empty() ? " (HF's default: " + dir + " has no tokenizer_config.json)"
                              : " (set by " + source + ", else HF's default)") +
              "; " + std::string(purpose) + (count > 1 ? " needs them" : " needs it"));
}

void Tokenizer::AddedMatcher::add(std::u32string text, int32_t id) {
  if (text.empty()) return;
  const char32_t first = text[0];
  std::vector<size_t>& list = by_first_[first];
  for (const size_t k : list)
    if (entries_[k].first == text) return;
  const size_t length = text.size();
  entries_.emplace_back(std::move(text), id);
  // Longest first; after the ones of its length already there.
  const auto at = std::find_if(list.begin(), list.end(), [&](size_t k) { return entries_[k].first.size() < length; });
  list.insert(at, entries_.size() - 1);
  if (first < 0x10000) {
    if (bmp_first_.empty()) bmp_first_.assign(0x10000 / 64, 0);
    bmp_first_[first / 64] |= uint64_t{1} << (first % 64);
  }
}

const std::pair<std::u32string, int32_t>* Tokenizer::AddedMatcher::match(std::u32string_view text, size_t i) const {
  const char32_t c = text[i];
  if (c < 0x10000 && (bmp_first_.empty() || !(bmp_first_[c / 64] >> (c % 64) & 1))) return nullptr;
  const auto found = by_first_.find(c);
  if (found == by_first_.end()) return nullptr;
  for (const size_t k : found->second) {
    const auto& entry = entries_[k];
    if (text.compare(i, entry.first.size(), entry.first) == 0) return &entry;
  }
  return nullptr;
}

namespace {
// Splits `text` at the leftmost-longest matches of `matcher` (HF's AddedVocabulary split): each match
// becomes its id, each piece between them goes to `piece`.
template <typename Matcher, typename Piece>
void split_added(std::u32string_view text, const Matcher& matcher, std::vector<int32_t>& out, Piece&& piece) {
  size_t start = 0, i = 0;
  const size_t n = text.size();
  while (i < n) {
    const auto* hit = matcher.match(text, i);
    if (!hit) {
      ++i;
      continue;
    }
    if (i > start) piece(text.substr(start, i - start));
    out.push_back(hit->second);
    i += hit->first.size();
    start = i;
  }
  if (n > start) piece(text.substr(start));
}
}  // namespace

void Tokenizer::encode_words(std::u32string_view norm, std::vector<int32_t>& out) const {
  bert_pre_tokenize(norm, [&](WordSpan w) { wordpiece_.encode_word(norm.substr(w.begin, w.end - w.begin), out); });
}

void Tokenizer::encode_plain(std::u32string_view text, std::vector<int32_t>& out, EncodeScratch& scratch) const {
  normalizer_.normalize(text, scratch.normalized);
  const std::u32string_view norm = scratch.normalized;
  if (normalized_added_.empty()) {
    encode_words(norm, out);
    return;
  }
  split_added(norm, normalized_added_, out, [&](std::u32string_view piece) { encode_words(piece, out); });
}

void Tokenizer::encode(std::u32string_view text, std::vector<int32_t>& out, EncodeScratch& scratch) const {
  if (raw_added_.empty()) {
    encode_plain(text, out, scratch);
    return;
  }
  // The pieces between raw matches go through the normal pipeline separately.
  split_added(text, raw_added_, out, [&](std::u32string_view piece) { encode_plain(piece, out, scratch); });
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
