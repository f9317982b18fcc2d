// The distributed communicator: data parallelism across processes (ARCHITECTURE.md, "Distributed").
//
//   mpirun -np N bert_train --config run.toml        (Open MPI; srun --mpi=pmix under Slurm)
//
// One process per rank. Each rank trains on its own slice of every global batch (data/loader.h: batch
// b of rank r is batch b * N + r of one rank), the gradients are summed across ranks before the
// gradient norm, and every rank applies the same AdamW update to the same weights, so the replicas
// never differ. N ranks with per_device_train_batch_size b and gradient_accumulation_steps a train the
// same model as one rank with b and a * N (HF semantics: the step's loss is the mean of its
// micro-batches' means), up to the order of floating-point sums.
//
// Implementations: a single process (every collective is the identity), and MPI (engine/
// communicator_mpi.cpp, built when CMake finds MPI). make_communicator() picks MPI when the process was
// started by an MPI launcher (its environment says so); a build without MPI started as one of several
// processes is an error, not N independent runs writing the same output_dir.
//
// Collectives are blocking and must be called by every rank in the same order with the same sizes;
// set_timeout bounds how long one may wait (a frozen rank ends the job instead of hanging it).
// Napkin math: the CPU trainer sums BERT-base's 110M fp32 gradients (440 MB) once per optimizer step;
// over shared memory on one machine that is ~0.1-0.3 s against a ~3 s step, and over a network it is
// bandwidth-bound (2 x 440 MB per rank for a ring).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace bert {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "single process" or e.g. "MPI (Open MPI v4.1.4)".
  virtual std::string description() const = 0;

  // Element-wise sums over the ranks, in place; every rank receives the same values.
  virtual void allreduce_sum(std::span<float> data) = 0;
  virtual void allreduce_sum(std::span<double> data) = 0;
  // Rank `root`'s bytes to every rank.
  virtual void broadcast(std::span<std::byte> data, int root) = 0;
  // Every rank's value, in rank order.
  virtual std::vector<uint64_t> allgather(uint64_t value) = 0;
  // Ends the whole job at once (after an error on one rank, which the others would wait for forever).
  [[noreturn]] virtual void abort(int exit_code) = 0;
  // From now on, a collective that waits more than `seconds` for the other ranks ends the job with
  // one line on stderr naming `setting` (the config key, "ddp_timeout") and exit code 1: a rank that
  // froze or vanished would otherwise hold the others in it for ever. MPI_Abort from the watchdog's
  // thread has the launcher end every rank, the frozen one too (a library without
  // MPI_THREAD_MULTIPLE: this process exits, and mpirun ends the rest). The single process has
  // nobody to wait for.
  virtual void set_timeout([[maybe_unused]] int seconds, [[maybe_unused]] const std::string& setting) {}
  // Appended to that line from now on (the trainer: its latest checkpoint and the command that resumes
  // from it). May be called at any time from the thread that makes the collectives.
  virtual void set_timeout_note([[maybe_unused]] const std::string& note) {}

  // Whether any rank passes true.
  bool any(bool flag);
  // Whether every rank passes the same 64-bit value (e.g. a hash of its weights).
  bool all_equal(uint64_t value);
  // Rank `root`'s text to every rank (the others' `text` is ignored).
  std::string broadcast_string(const std::string& text, int root);
};

// A thread that watches one operation at a time (a blocking collective) and calls `expired` with its
// name, on the watchdog's thread, when it has lasted longer than `limit`: at most once per operation,
// and never after it ended. watch() costs an uncontended lock and, when the thread is idle, a wake;
// the thread sleeps until the deadline of the operation it knows, so it wakes about once per `limit`
// however many operations start and end in between.
class Watchdog {
 public:
  using Expired = std::function<void(const char* operation)>;
  Watchdog(std::chrono::milliseconds limit, Expired expired);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // The operation `name` (a string literal) lasts as long as the guard.
  class Guard {
   public:
    explicit Guard(Watchdog* dog) : dog_(dog) {}
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard() {
      if (dog_ != nullptr) dog_->end();
    }

   private:
    Watchdog* dog_;
  };
  [[nodiscard]] Guard watch(const char* name);

 private:
  void end();
  void run();

  const std::chrono::milliseconds limit_;
  const Expired expired_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false, active_ = false, idle_ = false;
  uint64_t operation_ = 0, reported_ = 0;  // operations started; the last one reported
  const char* name_ = "";
  std::chrono::steady_clock::time_point started_;
  std::thread thread_;
};

// The world size an MPI launcher gave this process, read from its environment (Open MPI's
// OMPI_COMM_WORLD_SIZE, MPICH/Slurm PMI's PMI_SIZE, or Slurm's task count under PMIx); nullopt when it was not
// started by one. `variable` receives the name of the variable it came from.
std::optional<int> launcher_world_size(std::string* variable = nullptr);
// This process's rank in that world (OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK), known before MPI
// starts; nullopt when not started by a launcher.
std::optional<int> launcher_world_rank();

std::unique_ptr<Communicator> make_single_communicator();
// MPI when launched by an MPI launcher with more than one process, else the single process. Throws
// bert::Error (one line) when launched as several processes by a build without MPI, or when MPI fails
// to start.
std::unique_ptr<Communicator> make_communicator();

// Whether this build has the MPI communicator.
bool communicator_has_mpi();

// Where this rank runs relative to the others. A collective (two allgathers of hashed host names
// and CPU affinity masks).
struct RankPlacement {
  // How many ranks (this one included) run on this host with the same CPU affinity as this one: an
  // unbound `mpirun -np 4` on one machine gives 4, `--bind-to core` gives 1. bert_train's default
  // thread count (threads = 0) divides the cores it may use by this, so ranks do not oversubscribe
  // them.
  int cpu_sharers = 1;
  // This rank's index among the ranks on its host (in rank order), and their number: rank r's GPU is
  // its host's visible device `host_rank` (bert_train device = "cuda").
  int host_rank = 0;
  int host_ranks = 1;
};
RankPlacement place_ranks(Communicator& comm);

}  // namespace bert
