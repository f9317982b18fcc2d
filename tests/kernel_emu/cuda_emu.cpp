// The block scheduler behind cuda_emu.h: one fiber per CUDA thread, switched cooperatively at the
// synchronisation points, on the host thread that runs the stream's work (tests/emulated/
// emulated_runtime.cpp). See cuda_emu.h for the model and what it checks, and mutants.py for the
// barrier bugs it is known to catch.
//
// Fibers: on x86-64 a 15-instruction stack switch (the callee-saved registers; not MXCSR or the x87
// control word, which no kernel changes; no signal mask, so no system call per switch); elsewhere
// ucontext. Under AddressSanitizer each switch is announced through its fiber interface. Each fiber stack is 256 KiB
// of lazily committed memory with a guard page below it: an overflow is a segfault, never silent
// corruption. Stacks are kept for the next block.
#include "tests/kernel_emu/cuda_emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "tests/emulated/emulated_runtime.h"

#if defined(__x86_64__)
#define EMU_ASM_SWITCH 1
#else
#define EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

// Under AddressSanitizer every switch is announced (its fiber API), so it tracks which stack is live.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN_FIBERS 1
#else
#define EMU_ASAN_FIBERS 0
#endif

namespace emu {

constinit thread_local ThreadCoords coords{};

namespace {

using bert::emulated::detail::device_fault;

constexpr size_t kStackBytes = size_t{256} << 10;
constexpr size_t kDefaultDynamicShared = 48 << 10;  // without the opt-in attribute
constexpr size_t kMaxShared = 227 << 10;            // per block on sm_90 with it (232,448 bytes)
constexpr unsigned kMaxThreads = 1024;

// 128-byte aligned bytes (shared memory: wmma needs 32, __align__(128) declarations 128), exactly as
// many as asked for, so an AddressSanitizer build reports an access past the end.
struct FreeBytes {
  void operator()(unsigned char* p) const noexcept { ::operator delete(p, std::align_val_t(128)); }
};
using SharedBytes = std::unique_ptr<unsigned char, FreeBytes>;
SharedBytes shared_bytes(size_t bytes) {
  auto* p = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t(128)));
  std::memset(p, 0xFF, bytes);  // poison: NaN in bf16 and fp32
  return SharedBytes(p);
}

enum class Wait { kNone, kBlock, kWarp, kDone };

// One cp.async: the bytes it will write, read from global memory when it was issued.
struct AsyncCopy {
  unsigned char* destination = nullptr;
  unsigned bytes = 0;
  bool landed = false;
  unsigned char data[16] = {};
};

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out (x86-64)
#if !EMU_ASM_SWITCH
  ucontext_t context;
#endif
  unsigned char* stack = nullptr;  // guard page + kStackBytes
  Wait wait = Wait::kNone;
  const char* point = nullptr;  // the collective it waits in (__syncthreads, __syncwarp, a shuffle, ...)
  std::vector<AsyncCopy> open_copies;               // issued since the last commit
  std::vector<std::vector<AsyncCopy>> copy_groups;  // committed, oldest first, not yet waited for
};

struct Block {
  const char* kernel = nullptr;
  const std::function<void()>* body = nullptr;
  dim3 grid, block, index;
  unsigned threads = 0;
  std::vector<Fiber> fibers;
  std::vector<ThreadCoords> coords;    // of each thread, for the switch
  std::vector<unsigned> exited_lanes;  // per warp
  unsigned current = 0;
  void* scheduler_sp = nullptr;
  const void* scheduler_stack_bottom = nullptr;  // AddressSanitizer's record of the host thread's stack
  size_t scheduler_stack_bytes = 0;
#if !EMU_ASM_SWITCH
  ucontext_t scheduler_context;
#endif
  // Shared memory: the launch's dynamic bytes, then the static __shared__ objects by key.
  SharedBytes dynamic;
  size_t dynamic_bytes = 0;
  size_t shared_limit = 0;  // static + dynamic bytes a block may have (48 KiB without the opt-in)
  struct StaticObject {
    SharedBytes bytes;
    size_t size = 0;
  };
  std::map<const void*, StaticObject> statics;
  size_t static_bytes = 0;
  // Warp collectives and __syncthreads_or: two buffers per warp (or block), alternating by barrier
  // generation, so a slot is never rewritten before every lane has read it.
  std::vector<uint64_t> warp_slots;  // [warps][2][32][kWarpExchangeWords]
  std::vector<unsigned> warp_generation;
  std::vector<int> block_flags;  // [2][threads]
  unsigned block_generation = 0;
  bool copies_land_early = false;  // cp.async: written when issued (or only at the wait)
};

thread_local Block* current_block = nullptr;

// The first block's warp order and the first launch's block order: forward, reversed by
// BERT_KERNEL_EMU_ORDER=reverse and in the AddressSanitizer build (kernel_emu_asan/*), so the two
// suites see both orders even where a launch has one block and a test one launch.
unsigned start_parity() {
  static const unsigned parity = [] {
    const char* order = std::getenv("BERT_KERNEL_EMU_ORDER");
    const unsigned reverse = order != nullptr && std::string(order) == "reverse" ? 1u : 0u;
    return reverse ^ (EMU_ASAN_FIBERS ? 1u : 0u);
  }();
  return parity;
}
thread_local std::vector<unsigned char*> stack_pool;

std::map<const void*, size_t>& dynamic_shared_limits() {
  static std::map<const void*, size_t> limits;  // cudaFuncSetAttribute, per kernel
  return limits;
}

std::string where(const Block& b) {
  const auto& c = coords;
  char text[160];
  std::snprintf(text, sizeof(text), "%s: block (%u, %u, %u) thread (%u, %u, %u)", b.kernel, c.block_idx.x,
                c.block_idx.y, c.block_idx.z, c.thread_idx.x, c.thread_idx.y, c.thread_idx.z);
  return text;
}

size_t page_bytes() {
  static const size_t bytes = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return bytes;
}

unsigned char* take_stack() {
  if (!stack_pool.empty()) {
    unsigned char* stack = stack_pool.back();
    stack_pool.pop_back();
#if EMU_ASAN_FIBERS
    // A finished fiber never returns from fiber_main: its frame's redzones are still poisoned.
    ASAN_UNPOISON_MEMORY_REGION(stack + page_bytes(), kStackBytes);
#endif
    return stack;
  }
  const size_t page = page_bytes();
  void* memory =
      mmap(nullptr, page + kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (memory == MAP_FAILED) device_fault("kernel emulation: out of memory for fiber stacks");
  mprotect(memory, page, PROT_NONE);  // the guard page: stacks grow down into it
  return static_cast<unsigned char*>(memory);
}

void set_coords(const Block& b, unsigned t) { coords = b.coords[t]; }

// ---- context switch ------------------------------------------------------------------------------------

#if EMU_ASM_SWITCH
extern "C" void emu_switch_stack(void** save_sp, void* load_sp);
asm(R"(
  .text
  .p2align 4
  .type emu_switch_stack, @function
emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch_stack, .-emu_switch_stack
)");
#endif

[[noreturn]] void fiber_main();

// AddressSanitizer's view of a switch: announced before it with the destination stack (nullptr
// save slot: the fiber leaving is finished for good), completed on the other side.
void before_switch(void** fake_stack, const void* bottom, size_t bytes) {
#if EMU_ASAN_FIBERS
  __sanitizer_start_switch_fiber(fake_stack, bottom, bytes);
#else
  (void)fake_stack, (void)bottom, (void)bytes;
#endif
}
void after_switch(void* fake_stack, const void** old_bottom, size_t* old_bytes) {
#if EMU_ASAN_FIBERS
  __sanitizer_finish_switch_fiber(fake_stack, old_bottom, old_bytes);
#else
  (void)fake_stack, (void)old_bottom, (void)old_bytes;
#endif
}

void switch_to_scheduler(bool finished = false) {
  Block& b = *current_block;
  void* fake_stack = nullptr;
  before_switch(finished ? nullptr : &fake_stack, b.scheduler_stack_bottom, b.scheduler_stack_bytes);
#if EMU_ASM_SWITCH
  emu_switch_stack(&b.fibers[b.current].sp, b.scheduler_sp);
#else
  swapcontext(&b.fibers[b.current].context, &b.scheduler_context);
#endif
  after_switch(fake_stack, nullptr, nullptr);
}

void resume(Block& b, unsigned t) {
  b.current = t;
  set_coords(b, t);
  void* fake_stack = nullptr;
  before_switch(&fake_stack, b.fibers[t].stack + page_bytes(), kStackBytes);
#if EMU_ASM_SWITCH
  emu_switch_stack(&b.scheduler_sp, b.fibers[t].sp);
#else
  swapcontext(&b.scheduler_context, &b.fibers[t].context);
#endif
  after_switch(fake_stack, nullptr, nullptr);
}

void start_fiber(Block& b, unsigned t) {
  Fiber& f = b.fibers[t];
  f.stack = take_stack();
  f.wait = Wait::kNone;
  const size_t page = page_bytes();
#if EMU_ASM_SWITCH
  unsigned char* top = f.stack + page + kStackBytes;
  // The frame emu_switch_stack pops: six registers, then the return address (fiber_main), with the
  // stack 16-byte aligned + 8 at fiber_main's entry, as after a call.
  auto* sp = reinterpret_cast<uint64_t*>(top) - 1;  // after `ret`: rsp = top - 8, as after a call
  *sp = 0;
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);
  for (int i = 0; i < 6; ++i) *--sp = 0;
  f.sp = sp;
#else
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack + page;
  f.context.uc_stack.ss_size = kStackBytes;
  f.context.uc_link = nullptr;
  makecontext(&f.context, &fiber_main, 0);
#endif
}

void fiber_main() {
  Block& b = *current_block;
  // First entry: complete the switch, learning the scheduler's stack (for the switches back).
  after_switch(nullptr, &b.scheduler_stack_bottom, &b.scheduler_stack_bytes);
  (*b.body)();
  Fiber& self = b.fibers[b.current];
  size_t unwaited = self.open_copies.size();
  for (const auto& group : self.copy_groups) unwaited += group.size();
  if (unwaited > 0)
    device_fault(where(b) + ": exits with " + std::to_string(unwaited) +
                 " cp.async copies it never waited for (cp.async.wait_group)");
  self.wait = Wait::kDone;
  ++b.exited_lanes[b.current / 32];
  switch_to_scheduler(/*finished=*/true);
  __builtin_unreachable();  // a finished fiber is never resumed
}

// ---- the block scheduler ---------------------------------------------------------------------------------

unsigned warps_of(const Block& b) { return (b.threads + 31) / 32; }

// Lanes of warp w that exist (the last warp of a block may be partial).
unsigned lanes_of(const Block& b, unsigned w) { return std::min(32u, b.threads - w * 32); }

[[noreturn]] void deadlock(Block& b) {
  std::string states;
  for (unsigned t = 0; t < b.threads; ++t) {
    const Wait w = b.fibers[t].wait;
    if (t < 64 || w != b.fibers[t - 1].wait)
      states += " " + std::to_string(t) +
                (w == Wait::kBlock  ? ":__syncthreads"
                 : w == Wait::kWarp ? ":warp"
                                    : ":exited");
  }
  set_coords(b, 0);
  device_fault(std::string(b.kernel) + ": block (" + std::to_string(b.index.x) + ", " + std::to_string(b.index.y) +
               ", " + std::to_string(b.index.z) + ") deadlocks: threads wait at different barriers or for lanes that " +
               "exited (thread:state" + states + ")");
}

// Runs warp w until its lanes wait at the block barrier or have exited. A warp barrier is released
// as soon as the warp's last lane reaches it, and the warp runs on: warps get ahead of each other up
// to the next __syncthreads, as they may on the device. The lane order flips at every warp barrier.
void run_warp(Block& b, unsigned w, bool forward) {
  const unsigned lanes = lanes_of(b, w);
  Fiber* lane = b.fibers.data() + size_t{w} * 32;
  for (;;) {
    for (unsigned i = 0; i < lanes; ++i) {
      const unsigned l = forward ? i : lanes - 1 - i;
      if (lane[l].wait == Wait::kNone) resume(b, w * 32 + l);
    }
    unsigned at_warp = 0, done = 0;
    for (unsigned l = 0; l < lanes; ++l) {
      at_warp += lane[l].wait == Wait::kWarp;
      done += lane[l].wait == Wait::kDone;
    }
    if (at_warp == 0 || at_warp + done < lanes) return;  // at the block barrier (or diverged: the caller faults)
    if (done > 0) {
      set_coords(b, w * 32);
      device_fault(where(b) + ": a warp collective waits for lanes of warp " + std::to_string(w) + " that have exited");
    }
    for (unsigned l = 0; l < lanes; ++l)
      if (lane[l].point != lane[0].point) {
        set_coords(b, w * 32 + l);
        device_fault(where(b) + ": lanes of warp " + std::to_string(w) + " meet at different collectives (" +
                     lane[0].point + " and " + lane[l].point + ")");
      }
    for (unsigned l = 0; l < lanes; ++l) lane[l].wait = Wait::kNone;
    ++b.warp_generation[w];
    forward = !forward;
  }
}

void run_block(Block& b) {
  b.fibers.assign(b.threads, Fiber{});
  if (b.dynamic_bytes > 0) std::memset(b.dynamic.get(), 0xFF, b.dynamic_bytes);
  b.statics.clear();
  b.static_bytes = 0;
  b.warp_slots.assign(size_t{warps_of(b)} * 64 * kWarpExchangeWords, ~uint64_t{0});
  b.warp_generation.assign(warps_of(b), 0);
  b.exited_lanes.assign(warps_of(b), 0);
  b.coords.resize(b.threads);
  for (unsigned t = 0; t < b.threads; ++t)
    b.coords[t] = ThreadCoords{uint3{t % b.block.x, (t / b.block.x) % b.block.y, t / (b.block.x * b.block.y)},
                               uint3{b.index.x, b.index.y, b.index.z}, b.block, b.grid};
  b.block_flags.assign(size_t{2} * b.threads, 0);
  b.block_generation = 0;
  for (unsigned t = 0; t < b.threads; ++t) start_fiber(b, t);
  // The order of warps (and of lanes) flips at every block barrier, and from one block to the next.
  static thread_local uint64_t blocks_run = 0;
  // cp.async landing flips every second block, so the two warp orders meet both landing times.
  b.copies_land_early = (blocks_run / 2 + start_parity()) % 2 == 0;
  bool forward = (blocks_run++ + start_parity()) % 2 == 0;
  const unsigned warps = warps_of(b);
  for (;;) {
    for (unsigned i = 0; i < warps; ++i) run_warp(b, forward ? i : warps - 1 - i, forward);
    forward = !forward;
    // Every thread now waits at the block barrier or has exited, unless threads diverged between
    // barriers (some at a warp barrier that can never complete).
    bool all_done = true;
    for (const Fiber& f : b.fibers) {
      if (f.wait == Wait::kWarp) deadlock(b);
      all_done &= f.wait == Wait::kDone;
    }
    if (all_done) break;
    const char* point = nullptr;
    for (unsigned t = 0; t < b.threads; ++t) {
      Fiber& f = b.fibers[t];
      if (f.wait != Wait::kBlock) continue;
      if (point != nullptr && f.point != point) {
        set_coords(b, t);
        device_fault(where(b) + ": threads meet at different block barriers (" + point + " and " + f.point + ")");
      }
      point = f.point;
      f.wait = Wait::kNone;
    }
    ++b.block_generation;
    // __syncthreads_or's buffer for the next barrier: cleared, so a thread that has exited since it
    // last wrote there counts as false, as on the device.
    std::fill_n(b.block_flags.begin() + static_cast<std::ptrdiff_t>((b.block_generation % 2) * b.threads), b.threads,
                0);
  }
  for (Fiber& f : b.fibers) stack_pool.push_back(f.stack);
}

void wait_here(Wait kind, const char* point) {
  Block& b = *current_block;
  b.fibers[b.current].wait = kind;
  b.fibers[b.current].point = point;
  switch_to_scheduler();
}

}  // namespace

// ---- cuda_emu.h -------------------------------------------------------------------------------------------

void sync_block() { wait_here(Wait::kBlock, "__syncthreads"); }

int sync_block_or(int predicate) {
  Block& b = *current_block;
  int* flags = b.block_flags.data() + size_t{b.block_generation % 2} * b.threads;
  const unsigned me = b.current;
  flags[me] = predicate != 0;
  wait_here(Wait::kBlock, "__syncthreads_or");
  int any = 0;
  for (unsigned t = 0; t < b.threads; ++t) any |= flags[t];
  return any;
}

unsigned lane() { return current_block->current % 32; }

void sync_warp(unsigned mask, const char* point) {
  Block& b = *current_block;
  const unsigned w = b.current / 32, lanes = lanes_of(b, w);
  const unsigned full = lanes == 32 ? 0xFFFFFFFFu : (1u << lanes) - 1;
  if (mask != full)
    device_fault(where(b) + ": a warp collective with mask " +
                 bert::emulated::detail::hex(reinterpret_cast<void*>(static_cast<uintptr_t>(mask))) +
                 ", not the warp's full set of lanes (partial-warp collectives are not emulated)");
  if (b.exited_lanes[w] > 0)
    for (unsigned l = 0; l < lanes; ++l)
      if (b.fibers[w * 32 + l].wait == Wait::kDone)
        device_fault(where(b) + ": a warp collective names lane " + std::to_string(l) + ", which has exited");
  wait_here(Wait::kWarp, point);
}

uint64_t* warp_exchange(unsigned) {
  Block& b = *current_block;
  const unsigned w = b.current / 32;
  return b.warp_slots.data() + (size_t{w} * 2 + b.warp_generation[w] % 2) * 32 * kWarpExchangeWords;
}

void trap() { device_fault(where(*current_block) + ": __trap()"); }

namespace {

// [pointer, pointer + bytes) lies in the block's dynamic shared memory or in one static object.
bool inside_shared(const Block& b, const void* pointer, size_t bytes) {
  const auto p = reinterpret_cast<uintptr_t>(pointer);
  const auto inside = [&](const unsigned char* base, size_t size) {
    const auto start = reinterpret_cast<uintptr_t>(base);
    return p >= start && bytes <= size && p - start <= size - bytes;
  };
  if (b.dynamic_bytes > 0 && inside(b.dynamic.get(), b.dynamic_bytes)) return true;
  for (const auto& [key, object] : b.statics)
    if (inside(object.bytes.get(), object.size)) return true;
  return false;
}

constexpr unsigned char kInFlight = 0xFF;  // a late copy's destination until it lands (NaN, as the poison)

// Writes the copy's bytes. A late copy's destination must still hold the kInFlight bytes written at its
// issue: anything else is a store (or another copy) that raced with it on the device.
void land(const Block& b, AsyncCopy& copy) {
  if (copy.landed) return;
  for (unsigned i = 0; i < copy.bytes; ++i)
    if (copy.destination[i] != kInFlight)
      device_fault(where(b) + ": shared bytes at " + bert::emulated::detail::hex(copy.destination) +
                   " were written while a cp.async into them was in flight (a store or another copy raced with it)");
  std::memcpy(copy.destination, copy.data, copy.bytes);
  copy.landed = true;
}

}  // namespace

void async_copy(void* shared, const void* global, unsigned copy_bytes, unsigned src_bytes, const char* point) {
  Block& b = *current_block;
  const auto fault = [&](const std::string& what) { device_fault(where(b) + ": " + point + ": " + what); };
  if (copy_bytes != 4 && copy_bytes != 8 && copy_bytes != 16) fault("copy size must be 4, 8 or 16 bytes");
  if (src_bytes > copy_bytes) fault("src-size above the copy size");
  if (reinterpret_cast<uintptr_t>(shared) % copy_bytes != 0 || reinterpret_cast<uintptr_t>(global) % copy_bytes != 0)
    fault("addresses " + bert::emulated::detail::hex(shared) + " (shared) and " + bert::emulated::detail::hex(global) +
          " (global) must be aligned to the copy size " + std::to_string(copy_bytes));
  if (!inside_shared(b, shared, copy_bytes))
    fault("destination " + bert::emulated::detail::hex(shared) + " is not in the block's shared memory");
  // (A zero-fill copy reads nothing, but its address must still be a global one.)
  if (!bert::emulated::detail::inside_device_allocation(global, src_bytes))
    fault("source " + bert::emulated::detail::hex(global) + " + " + std::to_string(src_bytes) +
          " bytes is not inside a cudaMalloc allocation");
  AsyncCopy copy;
  copy.destination = static_cast<unsigned char*>(shared);
  copy.bytes = copy_bytes;
  if (src_bytes > 0) std::memcpy(copy.data, global, src_bytes);
  if (b.copies_land_early) {
    std::memcpy(copy.destination, copy.data, copy.bytes);
    copy.landed = true;
  } else {
    std::memset(copy.destination, kInFlight, copy.bytes);
  }
  b.fibers[b.current].open_copies.push_back(copy);
}

void async_copy_commit() {
  Fiber& f = current_block->fibers[current_block->current];
  f.copy_groups.push_back(std::move(f.open_copies));
  f.open_copies.clear();
}

void async_copy_wait(unsigned newest_in_flight) {
  Fiber& f = current_block->fibers[current_block->current];
  while (f.copy_groups.size() > newest_in_flight) {
    for (AsyncCopy& copy : f.copy_groups.front()) land(*current_block, copy);
    f.copy_groups.erase(f.copy_groups.begin());
  }
}

void launch_bounds_exceeded(unsigned max_threads) {
  const dim3 d = current_block->block;
  device_fault(where(*current_block) + ": launched with " + std::to_string(d.x * d.y * d.z) +
               " threads per block, above its __launch_bounds__(" + std::to_string(max_threads) +
               ") (the device refuses the launch)");
}

bool device_accessible(const void* pointer) {
  return bert::emulated::detail::inside_device_allocation(pointer, 0) ||
         bert::emulated::detail::inside_pinned_allocation(pointer, 0);
}

void host_pointer_argument(const char* kernel, size_t index, const void* pointer) {
  device_fault(std::string(kernel) + ": argument " + std::to_string(index) + " = " +
               bert::emulated::detail::hex(pointer) +
               " is neither device memory nor cudaMallocHost memory (a host pointer the device cannot read)");
}

void* block_shared(const void* key, size_t bytes, size_t alignment) {
  Block& b = *current_block;
  auto it = b.statics.find(key);
  if (it == b.statics.end()) {
    b.static_bytes += bytes;
    if (b.static_bytes > kDefaultDynamicShared)
      device_fault(where(b) + ": " + std::to_string(b.static_bytes) +
                   " bytes of static __shared__ memory, above the 48 KiB a kernel may declare");
    if (b.static_bytes + b.dynamic_bytes > b.shared_limit)
      device_fault(where(b) + ": " + std::to_string(b.static_bytes) + " static + " + std::to_string(b.dynamic_bytes) +
                   " dynamic bytes of shared memory, above the " + std::to_string(b.shared_limit) +
                   " a block of this kernel may have (48 KiB without cudaFuncAttributeMaxDynamicSharedMemorySize)");
    if (alignment > 128) device_fault(where(b) + ": a __shared__ object aligned to more than 128 bytes");
    it = b.statics.emplace(key, Block::StaticObject{shared_bytes(bytes), bytes}).first;
  }
  return it->second.bytes.get();
}

void* dynamic_shared() {
  Block& b = *current_block;
  return b.dynamic.get();
}

bool accept_launch(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes,
                   size_t* shared_limit) {
  cudaError_t error = cudaSuccess;
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > kMaxThreads || block.z > 64 ||
      grid.y > 65535 || grid.z > 65535 || grid.x > 0x7FFFFFFFu)
    error = cudaErrorInvalidConfiguration;
  const auto limit = dynamic_shared_limits().find(kernel);
  const bool opted_in = limit != dynamic_shared_limits().end();
  const size_t allowed = opted_in ? limit->second : kDefaultDynamicShared;
  *shared_limit = opted_in ? kMaxShared : kDefaultDynamicShared;
  if (dynamic_shared_bytes > allowed) error = cudaErrorInvalidValue;
  if (error != cudaSuccess) {
    std::fprintf(stderr,
                 "kernel emulation: launch of %s rejected: grid (%u, %u, %u), block (%u, %u, %u), %zu bytes "
                 "of dynamic shared memory (allowed %zu)\n",
                 name, grid.x, grid.y, grid.z, block.x, block.y, block.z, dynamic_shared_bytes, allowed);
    bert::emulated::detail::set_last_error(error);
    return false;
  }
  return true;
}

namespace {
struct LaunchRecord {
  std::mutex mutex;
  bool recording = false;
  std::vector<std::string> names;
};
LaunchRecord& launch_record() {
  static LaunchRecord record;
  return record;
}
}  // namespace

std::vector<std::string> take_launched_kernels() {
  LaunchRecord& record = launch_record();
  const std::lock_guard<std::mutex> lock(record.mutex);
  record.recording = true;
  return std::exchange(record.names, {});
}

void queue_grid(const char* name, dim3 grid, dim3 block, size_t dynamic_shared_bytes, size_t shared_limit,
                cudaStream_t stream, std::function<void()> body) {
  {
    LaunchRecord& record = launch_record();
    const std::lock_guard<std::mutex> lock(record.mutex);
    if (record.recording) record.names.emplace_back(name);
  }
  bert::emulated::detail::enqueue(stream, name, [=, body = std::move(body)] {
    Block b;
    b.kernel = name;
    b.body = &body;
    b.grid = grid;
    b.block = block;
    b.threads = block.x * block.y * block.z;
    b.dynamic_bytes = dynamic_shared_bytes;
    b.shared_limit = shared_limit;
    if (dynamic_shared_bytes > 0) b.dynamic = shared_bytes(dynamic_shared_bytes);
    Block* const outer = current_block;
    current_block = &b;
    // Blocks in increasing order in one launch and decreasing in the next: a block that reads what
    // another block of the same launch writes sees it stale in one of the two.
    static thread_local uint64_t launches = 0;
    const bool forward = (launches++ + start_parity()) % 2 == 0;
    const uint64_t count = uint64_t{grid.x} * grid.y * grid.z;
    for (uint64_t i = 0; i < count; ++i) {
      const uint64_t linear = forward ? i : count - 1 - i;
      b.index = dim3(static_cast<unsigned>(linear % grid.x), static_cast<unsigned>(linear / grid.x % grid.y),
                     static_cast<unsigned>(linear / (uint64_t{grid.x} * grid.y)));
      run_block(b);
    }
    current_block = outer;
  });
}

}  // namespace emu

// The runtime calls only kernel code makes (emulated_runtime.cpp has the rest).
extern "C" cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || static_cast<size_t>(value) > emu::kMaxShared) return cudaErrorInvalidValue;
  emu::dynamic_shared_limits()[func] = static_cast<size_t>(value);
  return cudaSuccess;
}

// The emulation compiles no device code: no registers, static shared or local bytes to report (0),
// and any block size up to the device's limit.
extern "C" cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void* func) {
  if (attributes == nullptr || func == nullptr) return cudaErrorInvalidValue;
  *attributes = cudaFuncAttributes{};
  attributes->maxThreadsPerBlock = static_cast<int>(emu::kMaxThreads);
  const auto limit = emu::dynamic_shared_limits().find(func);
  attributes->maxDynamicSharedSizeBytes =
      static_cast<int>(limit != emu::dynamic_shared_limits().end() ? limit->second : emu::kDefaultDynamicShared);
  return cudaSuccess;
}

// Blocks an SM by the limits the emulation knows of: threads (2,048 an SM), blocks (32) and shared
// memory (228 KB an SM, 1 KB of it reserved per block; a request above the kernel's dynamic limit is
// refused as cudaFuncSetAttribute left it). Registers are not modelled: a device may say fewer.
extern "C" cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* func, int block_size,
                                                                     size_t dynamic_shared_bytes) {
  if (blocks == nullptr || block_size <= 0 || static_cast<unsigned>(block_size) > emu::kMaxThreads)
    return cudaErrorInvalidValue;
  const auto limit = emu::dynamic_shared_limits().find(func);
  const size_t allowed = limit != emu::dynamic_shared_limits().end() ? limit->second : emu::kDefaultDynamicShared;
  if (dynamic_shared_bytes > allowed) return cudaErrorInvalidValue;
  constexpr size_t kSmShared = size_t{228} << 10, kReservedPerBlock = size_t{1} << 10;
  const size_t by_threads = 2048 / static_cast<size_t>(block_size);
  const size_t by_shared = kSmShared / (dynamic_shared_bytes + kReservedPerBlock);
  *blocks = static_cast<int>(std::min<size_t>({by_threads, by_shared, 32}));
  return cudaSuccess;
}
