// The MPI communicator (engine/communicator.h); built only when CMake finds MPI (BERT_HAVE_MPI).
// The training thread makes every call but one (the loader's prefetch thread and OpenMP's workers
// never call MPI): set_timeout's watchdog thread calls MPI_Abort while that thread waits in a
// collective, so MPI_Init_thread asks for MPI_THREAD_MULTIPLE (Open MPI 4.1 gives it; a 2-rank
// all-reduce of 110 MB or of one double took the same time as with MPI_THREAD_FUNNELED, within this
// VM's noise). A library that gives less gets no call from the watchdog: it exits, and the launcher
// ends the job. MPI_Finalize runs when the communicator is destroyed.
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>

#include "common/error.h"
#include "engine/communicator.h"

namespace bert {

namespace {

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}

void check(int code, const char* what) {
  if (code != MPI_SUCCESS) throw Error(std::string("MPI: ") + what + " failed: " + mpi_error_string(code));
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
      owns_mpi_ = true;
    }
    int level = MPI_THREAD_SINGLE;
    check(MPI_Query_thread(&level), "MPI_Query_thread");
    any_thread_ = level == MPI_THREAD_MULTIPLE;
    // Errors come back as codes (checked here) instead of ending the job inside the library.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    if (MPI_Get_library_version(version, &length) == MPI_SUCCESS) {
      library_.assign(version, static_cast<size_t>(length));
      library_ = library_.substr(0, library_.find_first_of(",\n"));  // "Open MPI v4.1.4, package: ..."
    }
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_mpi_ && !finalized) {
      const Watchdog::Guard guard = watch("MPI_Finalize");  // waits for every rank
      MPI_Finalize();
    }
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string description() const override {
    return "MPI (" + (library_.empty() ? std::string("unknown library") : library_) + ")";
  }
  void allreduce_sum(std::span<float> data) override { allreduce(data.data(), data.size(), MPI_FLOAT); }
  void allreduce_sum(std::span<double> data) override { allreduce(data.data(), data.size(), MPI_DOUBLE); }
  void broadcast(std::span<std::byte> data, int root) override {
    const Watchdog::Guard guard = watch("MPI_Bcast");
    for (size_t done = 0; done < data.size();) {
      const int count = chunk(data.size() - done);
      check(MPI_Bcast(data.data() + done, count, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
      done += static_cast<size_t>(count);
    }
  }
  std::vector<uint64_t> allgather(uint64_t value) override {
    std::vector<uint64_t> all(static_cast<size_t>(size_));
    const Watchdog::Guard guard = watch("MPI_Allgather");
    check(MPI_Allgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD), "MPI_Allgather");
    return all;
  }
  [[noreturn]] void abort(int exit_code) override {
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }
  void set_timeout_note(const std::string& note) override {
    const std::lock_guard<std::mutex> lock(note_->mutex);
    note_->text = note;
  }
  void set_timeout(int seconds, const std::string& setting) override {
    watchdog_.reset();
    if (seconds <= 0) return;
    const std::string prefix = "error: rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": ";
    const std::string reason = " has waited " + std::to_string(seconds) + " s (" + setting +
                               ") for the other ranks: one of them stopped, froze or cannot be reached; "
                               "ending the job";
    const bool any_thread = any_thread_;
    const std::shared_ptr<Note> note = note_;
    watchdog_ = std::make_unique<Watchdog>(std::chrono::seconds(seconds), [=](const char* operation) {
      std::string line = prefix + operation + reason;
      // The training thread waits in a collective, not in set_timeout_note: the lock is free (try_lock
      // all the same: the line goes out whatever happens).
      if (std::unique_lock<std::mutex> lock(note->mutex, std::try_to_lock); lock.owns_lock()) line += note->text;
      line += "\n";
      // One write: ranks' lines do not interleave.
      [[maybe_unused]] const ssize_t written = ::write(STDERR_FILENO, line.data(), line.size());
      if (any_thread) {
        // The launcher ends every rank, the frozen one too (srun as well as mpirun: a plain exit
        // leaves the others to srun's KillOnBadExit). An abort that hangs in its turn still ends this
        // process: SIGALRM's default action.
        ::alarm(30);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      std::_Exit(1);
    });
  }

 private:
  // MPI counts are int: large buffers go in pieces of at most 2^30 elements.
  static int chunk(size_t left) { return static_cast<int>(std::min<size_t>(left, size_t{1} << 30)); }
  Watchdog::Guard watch(const char* operation) {
    if (watchdog_) return watchdog_->watch(operation);
    return Watchdog::Guard(nullptr);
  }
  template <typename T>
  void allreduce(T* data, size_t n, MPI_Datatype type) {
    const Watchdog::Guard guard = watch("MPI_Allreduce");
    for (size_t done = 0; done < n;) {
      const int count = chunk(n - done);
      check(MPI_Allreduce(MPI_IN_PLACE, data + done, count, type, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
      done += static_cast<size_t>(count);
    }
  }

  int rank_ = 0, size_ = 1;
  bool owns_mpi_ = false;
  bool any_thread_ = false;  // MPI_THREAD_MULTIPLE: any thread may call MPI
  std::string library_;
  std::unique_ptr<Watchdog> watchdog_;  // set_timeout's
  // set_timeout_note's text, read by the watchdog's thread.
  struct Note {
    std::mutex mutex;
    std::string text;
  };
  std::shared_ptr<Note> note_ = std::make_shared<Note>();
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace bert
