#include "common/file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "common/error.h"

namespace bert {

static std::string os_error() { return std::strerror(errno); }

std::string read_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw Error(path + ": is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open: " + os_error());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(path + ": read error: " + os_error());
  return std::move(ss).str();
}

namespace {

// Writes all of `content` to fd; false (errno set) on failure.
bool write_all(int fd, std::string_view content) {
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t w = ::write(fd, content.data() + done, content.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

void write_file_atomic(const std::string& path_arg, std::string_view content) {
  std::string path = path_arg;
  struct stat link_st {};
  if (::lstat(path.c_str(), &link_st) == 0 && S_ISLNK(link_st.st_mode)) {
    // A symlink: the file it points to is replaced, not the link.
    std::error_code ec;
    const std::filesystem::path target = std::filesystem::canonical(path, ec);
    if (!ec) path = target.string();
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    if (S_ISDIR(st.st_mode)) throw Error(path_arg + ": is a directory, expected a file to write");
    // A device, FIFO or socket (/dev/stdout, /dev/null, a pipe): written in place, as a rename would
    // replace the special file itself with a regular one.
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) throw Error(path_arg + ": cannot open for writing: " + os_error());
    const bool written = write_all(fd, content);
    const std::string reason = written ? std::string() : os_error();
    ::close(fd);
    if (!written) throw Error(path_arg + ": write failed: " + reason);
    return;
  }
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  // Errors name the file asked for; the temporary one only in parentheses.
  const std::string via = " (via " + tmp + ")";
  if (fd < 0) throw Error(path_arg + ": cannot write: " + os_error() + via);
  if (!write_all(fd, content)) {
    const std::string reason = os_error();
    ::close(fd);
    ::unlink(tmp.c_str());
    throw Error(path_arg + ": write failed: " + reason + via);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const std::string reason = os_error();
    ::unlink(tmp.c_str());
    throw Error(path_arg + ": fsync/close failed: " + reason + via);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = os_error();
    ::unlink(tmp.c_str());
    throw Error(path_arg + ": rename failed: " + reason + via);
  }
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

bool is_directory(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec);
}

std::string without_trailing_slashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

size_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(path + ": cannot stat: " + os_error());
  return static_cast<size_t>(st.st_size);
}

void make_directories(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) throw Error(path + ": cannot create directory: " + ec.message());
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  if (is_directory(path)) throw Error(path + ": is a directory, expected a file");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + os_error());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string reason = os_error();
    ::close(fd);
    throw Error(path + ": cannot stat: " + reason);
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    data_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (data_ == MAP_FAILED) {
      const std::string reason = os_error();
      data_ = nullptr;
      ::close(fd);
      throw Error(path + ": cannot map: " + reason);
    }
    ::madvise(data_, size_, MADV_SEQUENTIAL);
  }
  ::close(fd);
}

void MappedFile::release(size_t begin, size_t end) const {
  if (!data_ || end <= begin) return;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t first = (begin + page - 1) / page * page;  // only whole pages inside the range
  const size_t last = std::min(end, size_) / page * page;
  if (last > first) ::madvise(static_cast<char*>(data_) + first, last - first, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)), path_(std::move(other.path_)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    path_ = std::move(other.path_);
  }
  return *this;
}

}  // namespace bert
