// Streaming line reader for corpus files: plain text or gzip (multi-member too), and directories
// expanded into their text files. Lines end at "\n", "\r\n" or a lone "\r" (a classic Mac file; Python's
// universal newlines), "\r\r\n" (CRLF converted twice) being one ending too; they come back without it and
// always as valid UTF-8:
// each maximal invalid byte sequence is replaced by U+FFFD (as Python's and Rust's lossy decoders
// do) and counted, so the caller can warn with file:line and keep going. A corrupt or truncated
// .gz is a bert::Error naming the file and the line reached.
//
// Speed: one memchr per line plus a UTF-8 check with an 8-byte ASCII fast path, so reading runs at
// memory speed for plain text; gzip costs zlib's inflate (~300-500 MB/s of output per core).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

struct gzFile_s;  // zlib's handle (gzFile is `struct gzFile_s*`); keeps zlib.h out of this header

namespace bert {

// Files to read, in order: each input that is a file is taken as named (any extension); each
// directory is searched recursively for *.txt and *.gz (so *.txt.gz too), hidden entries skipped,
// sorted by path so the order never depends on the file system. Errors: a missing input, or a
// directory with no text files in it.
std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs);

// True for names that directory expansion picks up (*.txt, *.gz).
bool is_corpus_file_name(std::string_view name);

class LineReader {
 public:
  // Opens `path`. Gzip is recognised by its magic bytes, so a compressed file is decompressed
  // whatever its name; a file named *.gz that is not gzip is an error (it is almost always a broken
  // download, and reading it as text would feed binary garbage to the corpus). So is a file whose
  // first bytes (decompressed) are not text: a shard, another compressor, UTF-16, EUC-KR (see
  // utf8_text_problem), reported by the first next().
  explicit LineReader(const std::string& path);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // The next line, without its line ending; the view is valid until the next call. False at the
  // end of the file (a last line without '\n' is still returned).
  bool next(std::string_view& line);

  // 1-based number of the line last returned by next().
  size_t line_number() const { return line_number_; }
  // Invalid UTF-8 sequences replaced in the line last returned (0 for a clean line).
  size_t invalid_in_line() const { return invalid_in_line_; }
  // Lines with at least one invalid sequence, so far.
  uint64_t invalid_lines() const { return invalid_lines_; }
  // Text bytes delivered so far (decompressed, line endings included).
  uint64_t bytes_read() const { return bytes_read_; }
  bool compressed() const { return compressed_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  gzFile_s* gz_ = nullptr;
  bool compressed_ = false;
  std::vector<char> buf_;
  size_t begin_ = 0, end_ = 0;  // unread bytes are buf_[begin_, end_)
  bool eof_ = false;
  bool sniffed_ = false;  // the first bytes were checked for being text (utf8_text_problem)
  std::string fixed_;  // a line after U+FFFD replacement
  size_t line_number_ = 0;
  size_t invalid_in_line_ = 0;
  uint64_t invalid_lines_ = 0;
  uint64_t bytes_read_ = 0;

  // Reads more bytes into buf_ (compacting or growing it); false when nothing more could be read.
  bool fill();
  [[noreturn]] void fail(const std::string& what) const;
};

// Length of the longest valid UTF-8 prefix of `s` (== s.size() when all of it is valid). Same
// acceptance rules as common/utf8.h (no overlongs, no surrogates, nothing above U+10FFFF).
size_t utf8_valid_prefix(std::string_view s);

}  // namespace bert
