#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <functional>
#include <stdexcept>

#include "common/error.h"
#include "common/file.h"
#include "common/json.h"
#include "common/signal_cleanup.h"
#include "engine/checkpoint_dir.h"
#include "engine/metrics.h"
#include "engine/schedule.h"
#include "tests/test_dirs.h"

using namespace bert;
namespace fs = std::filesystem;

TEST_CASE("LR schedules follow HF get_scheduler") {
  // linear, warmup 10 of 110: step 0 -> 0, step 5 -> 0.5, step 10 -> 1, step 60 -> 0.5, end -> 0
  CHECK(lr_factor(LrSchedule::kLinear, 0, 10, 110) == 0.0);
  CHECK(lr_factor(LrSchedule::kLinear, 5, 10, 110) == Approx(0.5));
  CHECK(lr_factor(LrSchedule::kLinear, 10, 10, 110) == Approx(1.0));
  CHECK(lr_factor(LrSchedule::kLinear, 60, 10, 110) == Approx(0.5));
  CHECK(lr_factor(LrSchedule::kLinear, 110, 10, 110) == 0.0);
  CHECK(lr_factor(LrSchedule::kLinear, 0, 0, 100) == 1.0);
  CHECK(lr_factor(LrSchedule::kCosine, 60, 10, 110) == Approx(0.5));
  CHECK(lr_factor(LrSchedule::kCosine, 35, 10, 110) == Approx(0.5 * (1 + std::cos(M_PI * 0.25))));
  CHECK(lr_factor(LrSchedule::kConstant, 0, 10, 110) == 1.0);
  CHECK(lr_factor(LrSchedule::kConstantWithWarmup, 3, 10, 110) == Approx(0.3));
  CHECK(lr_factor(LrSchedule::kConstantWithWarmup, 50, 10, 110) == 1.0);
  CHECK_THROWS_WITH(parse_lr_schedule("polynomial"), Catch::Contains("polynomial"));
}

TEST_CASE("checkpoints: atomic, rotated, newest never deleted, failed writes leave the previous intact") {
  const std::string out = "test_ckpt_tmp";
  fs::remove_all(out);
  auto writer = [](const std::string& content) {
    return [content](const std::string& dir) {
      write_file_atomic(dir + "/model.bin", content);
      write_file_atomic(dir + "/trainer_state.json", "{}");  // what makes a directory a checkpoint
    };
  };
  // A directory named like one without trainer_state.json (the user's): never listed, never rotated away.
  make_directories(out + "/checkpoint-5");
  write_file_atomic(out + "/checkpoint-5/model.bin", "mine");
  for (int step : {10, 20, 30}) save_checkpoint_dir(out, step, 2, writer("step" + std::to_string(step)));
  auto all = list_checkpoints(out);
  REQUIRE(all.size() == 2);
  CHECK(all[0].step == 20);
  CHECK(all[1].step == 30);
  CHECK(read_file(out + "/checkpoint-5/model.bin") == "mine");
  CHECK(foreign_checkpoint_dirs(out) == std::vector<std::string>{out + "/checkpoint-5"});
  // A save of its step refuses to replace it.
  CHECK_THROWS_WITH(save_checkpoint_dir(out, 5, 2, writer("step5")),
                    out +
                        "/checkpoint-5: exists and is not a bert_train checkpoint (no trainer_state.json); not "
                        "replaced: move it out of the output_dir");
  CHECK(read_file(out + "/checkpoint-5/model.bin") == "mine");
  fs::remove_all(out + "/checkpoint-5");
  // A save that dies half-way (exception from the writer, as a kill would) leaves no checkpoint-40.
  CHECK_THROWS(save_checkpoint_dir(out, 40, 2, [](const std::string& dir) {
    write_file_atomic(dir + "/model.bin", "partial");
    throw std::runtime_error("killed");
  }));
  all = list_checkpoints(out);
  REQUIRE(all.size() == 2);
  CHECK(latest_checkpoint(out)->step == 30);
  CHECK(read_file(latest_checkpoint(out)->path + "/model.bin") == "step30");
  // The next save cleans the leftover temp dir.
  save_checkpoint_dir(out, 50, 1, writer("step50"));
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(out)) entries += e.is_directory();
  CHECK(entries == 1);
  CHECK(latest_checkpoint(out)->step == 50);
  // Re-saving the same step replaces it.
  save_checkpoint_dir(out, 50, 1, writer("again"));
  CHECK(read_file(out + "/checkpoint-50/model.bin") == "again");
  // A crash between a re-save's two renames leaves only checkpoint-50.old-PID: it is put back. One after
  // both renames leaves both: the old copy goes. (999999999: above any pid_max, a process that is gone.)
  fs::rename(out + "/checkpoint-50", out + "/checkpoint-50.old-999999999");
  REQUIRE(list_checkpoints(out).empty());
  recover_interrupted_saves(out);
  REQUIRE(latest_checkpoint(out).has_value());
  CHECK(read_file(latest_checkpoint(out)->path + "/model.bin") == "again");
  fs::copy(out + "/checkpoint-50", out + "/checkpoint-50.old-999999998");
  make_directories(out + "/.checkpoint-60.tmp-999999997");
  // Not this code's names, or a live writer's (pid 1): left alone.
  const std::vector<std::string> not_ours = {"checkpoint-50.old-backup", "checkpoint-5x.old-999999999",
                                             "checkpoint-50.old-1", ".checkpoint-60.tmp-1"};
  for (const std::string& kept : not_ours) make_directories(out + "/" + kept);
  recover_interrupted_saves(out);
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(out)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  CHECK(left == std::vector<std::string>{".checkpoint-60.tmp-1", "checkpoint-50", "checkpoint-50.old-1",
                                         "checkpoint-50.old-backup", "checkpoint-5x.old-999999999"});
  for (const std::string& kept : not_ours) fs::remove_all(out + "/" + kept);
  CHECK(read_file(out + "/checkpoint-50/model.bin") == "again");
  // Resuming step 20 of a run that went on to 50: the later checkpoint is renamed, not deleted.
  save_checkpoint_dir(out, 20, 0, writer("step20"));
  CHECK(set_aside_checkpoints_after(out, 20) == std::vector<std::string>{out + "/checkpoint-50.superseded"});
  CHECK(latest_checkpoint(out)->step == 20);
  save_checkpoint_dir(out, 50, 0, writer("branch"));
  CHECK(set_aside_checkpoints_after(out, 20) == std::vector<std::string>{out + "/checkpoint-50.superseded-2"});
  CHECK(read_file(out + "/checkpoint-50.superseded/model.bin") == "again");
  CHECK(read_file(out + "/checkpoint-50.superseded-2/model.bin") == "branch");
  CHECK(is_superseded_checkpoint_name("checkpoint-50.superseded"));
  CHECK(is_superseded_checkpoint_name("checkpoint-50.superseded-2"));
  CHECK_FALSE(is_superseded_checkpoint_name("checkpoint-50.superseded-notes"));
  CHECK_FALSE(is_superseded_checkpoint_name("checkpoint-x.superseded"));
  CHECK_FALSE(is_superseded_checkpoint_name("checkpoint-50"));
}

TEST_CASE("directories lose their trailing slashes, the root keeps its own") {
  CHECK(without_trailing_slashes("runs/demo/") == "runs/demo");
  CHECK(without_trailing_slashes("runs/demo//") == "runs/demo");
  CHECK(without_trailing_slashes("runs/demo") == "runs/demo");
  CHECK(without_trailing_slashes("/") == "/");
  CHECK(without_trailing_slashes("//") == "/");
  CHECK(without_trailing_slashes("") == "");
}

TEST_CASE("a directory lock admits one holder, names it to the next, and removes its file when let go") {
  const std::string dir = test_dir() + "/locked";
  const std::string file = dir + "/.tool.lock";
  {
    const DirectoryLock first(dir, ".tool.lock", "tool", "place");  // makes the directory
    CHECK(first.unsupported().empty());
    CHECK(read_file(file) == std::to_string(::getpid()) + "\n");
    // flock locks are per open file: a second open in this process is a second holder, refused.
    std::string message;
    try {
      const DirectoryLock second(dir, ".tool.lock", "tool", "place");
    } catch (const Error& e) {
      message = e.what();
    }
    CHECK(message == dir + ": another tool is writing to this place (pid " + std::to_string(::getpid()) + ", holding " +
                         file + "); wait for it to end, or choose another place");
    CHECK(file_exists(file));  // the refused one leaves the holder's file alone
  }
  CHECK_FALSE(file_exists(file));
  // A holder that was killed leaves its file, unlocked: the next takes it.
  write_file_atomic(file, "999999999\n");
  {
    const DirectoryLock next(dir, ".tool.lock", "tool", "place");
    CHECK(read_file(file) == std::to_string(::getpid()) + "\n");
  }
  CHECK_FALSE(file_exists(file));
}

TEST_CASE("with the signal cleanup installed, Ctrl-C removes temporary files and staging, then ends the process") {
  const std::string dir = test_dir() + "/interrupted";
  make_directories(dir);
  // In a child, which the signal ends: the suite may run with SIGINT ignored (a background job of a
  // script), so it restores the default first, as an interactive shell would have left it.
  const auto run_child = [&](const std::function<void()>& body) {
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      for (const int s : {SIGINT, SIGTERM, SIGHUP}) std::signal(s, SIG_DFL);
      body();
      ::_exit(7);  // the signal did not end it
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    return std::pair{status, child};
  };
  const auto [status, child] = run_child([&] {
    install_signal_cleanup();
    write_file_atomic(dir + "/kept.txt", "committed");  // released when committed: stays
    AtomicOutputFile open(dir + "/out.txt");
    open.write("half of it");
    // A build's: the directory it made (removed only when empty), its lock and its staging.
    const SignalCleanup made(dir + "/made", SignalCleanup::kEmptyDirectory);
    const DirectoryLock lock(dir + "/made", ".lock", "tool", "place");
    make_directories(dir + "/made/.building");
    for (const char* name : {"a.bin", "b.bin", "c.bin"}) write_file_atomic(dir + "/made/.building/" + name, name);
    const SignalCleanup staging(dir + "/made/.building");
    const SignalCleanup not_empty(dir, SignalCleanup::kEmptyDirectory);
    ::raise(SIGINT);
  });
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGINT);
  CHECK(read_file(dir + "/kept.txt") == "committed");
  CHECK_FALSE(file_exists(dir + "/out.txt"));
  CHECK_FALSE(file_exists(dir + "/out.txt.tmp." + std::to_string(child)));
  CHECK_FALSE(file_exists(dir + "/made"));
  // A signal ignored when the command starts (nohup's SIGHUP) stays ignored.
  const auto [ignored, ignored_child] = run_child([&] {
    std::signal(SIGHUP, SIG_IGN);
    install_signal_cleanup();
    AtomicOutputFile open(dir + "/nohup.txt");
    ::raise(SIGHUP);
    open.commit();
  });
  CHECK(WIFEXITED(ignored));
  CHECK(WEXITSTATUS(ignored) == 7);
  CHECK(file_exists(dir + "/nohup.txt"));
  CHECK_FALSE(file_exists(dir + "/nohup.txt.tmp." + std::to_string(ignored_child)));
}

TEST_CASE("write_file_atomic follows a symlink, writes a FIFO in place and refuses a directory") {
  const std::string dir = test_dir();
  write_file_atomic(dir + "/target.txt", "old");
  fs::create_symlink("target.txt", dir + "/link.txt");
  write_file_atomic(dir + "/link.txt", "new");
  CHECK(fs::is_symlink(dir + "/link.txt"));  // the link stays a link; its file has the new content
  CHECK(read_file(dir + "/target.txt") == "new");

  // A FIFO (as /dev/stdout or /dev/null would be): written through, not replaced by a regular file.
  // Opened read-write and non-blocking here first, so neither side waits for the other.
  const std::string fifo = dir + "/fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const int fd = ::open(fifo.c_str(), O_RDWR | O_NONBLOCK);
  REQUIRE(fd >= 0);
  write_file_atomic(fifo, "through the pipe");
  char buffer[64] = {};
  const ssize_t got = ::read(fd, buffer, sizeof buffer);
  ::close(fd);
  CHECK(std::string(buffer, got > 0 ? static_cast<size_t>(got) : 0) == "through the pipe");
  CHECK(fs::is_fifo(fifo));

  // Written piece by piece and abandoned (an error on the way): the file is untouched and the temporary
  // one gone (the listing below).
  {
    AtomicOutputFile abandoned(dir + "/target.txt");
    abandoned.write("partial");
    abandoned.write(std::string(2 << 20, 'x'));  // past the buffer: really written to the temporary file
  }
  CHECK(read_file(dir + "/target.txt") == "new");

  fs::create_directories(dir + "/sub");
  try {
    write_file_atomic(dir + "/sub", "x");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == dir + "/sub: is a directory, expected a file to write");
  }
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"fifo", "link.txt", "sub", "target.txt"});  // no temporary left behind

  // /dev/fd/N (as /dev/stdout behind a shell's `>> log`): written through the descriptor, at its end in
  // append mode, not by opening the file anew at offset 0 or renaming over it.
  const std::string log = dir + "/log.txt";
  write_file_atomic(log, "PREVIOUS\n");
  const int append = ::open(log.c_str(), O_WRONLY | O_APPEND);
  REQUIRE(append >= 0);
  struct stat before {};
  REQUIRE(::stat(log.c_str(), &before) == 0);
  write_file_atomic("/dev/fd/" + std::to_string(append), "one\n");
  {
    AtomicOutputFile piecewise("/proc/self/fd/" + std::to_string(append));
    piecewise.write("two\n");
    piecewise.commit();
  }
  CHECK(::write(append, "three\n", 6) == 6);  // the descriptor itself stays open and usable
  ::close(append);
  struct stat after {};
  REQUIRE(::stat(log.c_str(), &after) == 0);
  CHECK(after.st_ino == before.st_ino);
  CHECK(read_file(log) == "PREVIOUS\none\ntwo\nthree\n");
  CHECK_THROWS_WITH(write_file_atomic("/dev/fd/999", "x"), Catch::StartsWith("/dev/fd/999: cannot write: "));
}

TEST_CASE("metrics log truncates to the resume step and plots an SVG") {
  const std::string dir = "test_metrics_tmp";
  fs::remove_all(dir);
  make_directories(dir);
  {
    MetricsLog log(dir + "/metrics.jsonl");
    for (int s = 1; s <= 5; ++s) {
      Json j = Json::object();
      j.set("step", s);
      j.set("loss", 10.0 / s);
      j.set("mlm_loss", 9.0 / s);
      log.write(j);
    }
  }
  {
    MetricsLog log(dir + "/metrics.jsonl", 3);  // resumed from step 3: steps 4, 5 are dropped
  }
  const std::string text = read_file(dir + "/metrics.jsonl");
  CHECK(std::count(text.begin(), text.end(), '\n') == 3);
  plot_metrics_svg(dir + "/metrics.jsonl", dir + "/loss.svg");
  const std::string svg = read_file(dir + "/loss.svg");
  CHECK(svg.find("<svg") == 0);
  CHECK(svg.find("polyline") != std::string::npos);
  CHECK(svg.find("mlm_loss") != std::string::npos);
  // On resume an unreadable line is dropped: listed when it is whole, not when a crash tore the last one.
  write_file_atomic(dir + "/torn.jsonl", "{\"step\": 1}\n{oops\n{\"step\": 2}\n\n{\"step\": 9}\n{\"st");
  {
    MetricsLog log(dir + "/torn.jsonl", 5);
    CHECK(log.dropped_lines() == std::vector<size_t>{2});
  }
  CHECK(read_file(dir + "/torn.jsonl") == "{\"step\": 1}\n{\"step\": 2}\n");
  {
    MetricsLog log(dir + "/torn.jsonl", 5);
    CHECK(log.dropped_lines().empty());
  }
  write_file_atomic(dir + "/bad.jsonl", "{\"step\": 1, \"loss\": 2}\n{oops\n");
  CHECK_THROWS_WITH(plot_metrics_svg(dir + "/bad.jsonl", dir + "/x.svg"), Catch::Contains("bad.jsonl:2"));
  // The plot, too, leaves out a torn last line (a crash, or a run writing it now); a whole last line
  // without its newline is plotted.
  write_file_atomic(dir + "/live.jsonl",
                    "{\"step\": 1, \"loss\": 2}\n{\"step\": 2, \"loss\": 1.5}\n{\"step\": 3, \"lo");
  plot_metrics_svg(dir + "/live.jsonl", dir + "/live.svg");
  const std::string live = read_file(dir + "/live.svg");
  const auto labels = [](const std::string& svg) {  // the step axis's labels, in order
    std::vector<std::string> found;
    const std::string anchor = "text-anchor=\"middle\">";
    for (size_t at = svg.find(anchor); at != std::string::npos; at = svg.find(anchor, at + 1)) {
      const size_t from = at + anchor.size();
      found.push_back(svg.substr(from, svg.find('<', from) - from));
    }
    return found;
  };
  CHECK(labels(live) == std::vector<std::string>{"1", "2", "step"});  // whole steps, none twice
  write_file_atomic(dir + "/live.jsonl", "{\"step\": 1, \"loss\": 2}\n{\"step\": 3, \"loss\": 1}");
  plot_metrics_svg(dir + "/live.jsonl", dir + "/live.svg");
  CHECK(labels(read_file(dir + "/live.svg")) == std::vector<std::string>{"1", "2", "3", "step"});
  write_file_atomic(dir + "/long.jsonl", "{\"step\": 10, \"loss\": 2}\n{\"step\": 1010, \"loss\": 1}\n");
  plot_metrics_svg(dir + "/long.jsonl", dir + "/long.svg");
  CHECK(labels(read_file(dir + "/long.svg")) ==
        std::vector<std::string>{"10", "210", "410", "610", "810", "1010", "step"});
  // A diverged loss near the largest double: finite coordinates and labels, not inf and nan.
  write_file_atomic(dir + "/huge.jsonl",
                    "{\"step\": 1, \"loss\": 1.0}\n{\"step\": 2, \"loss\": 1e308}\n"
                    "{\"step\": 3, \"loss\": -1.5e308}\n");
  plot_metrics_svg(dir + "/huge.jsonl", dir + "/huge.svg");
  const std::string huge = read_file(dir + "/huge.svg");
  CHECK(huge.find("inf") == std::string::npos);
  CHECK(huge.find("nan") == std::string::npos);
  CHECK(huge.find(">1e+308<") != std::string::npos);
  CHECK(huge.find(">-1.5e+308<") != std::string::npos);
  // Equal values far below zero: a span that does not vanish.
  write_file_atomic(dir + "/flat.jsonl", "{\"step\": 1, \"loss\": -1e300}\n{\"step\": 2, \"loss\": -1e300}\n");
  plot_metrics_svg(dir + "/flat.jsonl", dir + "/flat.svg");
  const std::string flat = read_file(dir + "/flat.svg");
  CHECK(flat.find("nan") == std::string::npos);
  CHECK(flat.find("inf") == std::string::npos);
  // One record: a dot per series, as a one-point polyline draws nothing.
  write_file_atomic(dir + "/one.jsonl", "{\"step\": 50, \"loss\": 2, \"mlm_loss\": 1.5}\n");
  plot_metrics_svg(dir + "/one.jsonl", dir + "/one.svg");
  const std::string one = read_file(dir + "/one.svg");
  size_t dots = 0;
  for (size_t at = one.find("<circle"); at != std::string::npos; at = one.find("<circle", at + 1)) ++dots;
  CHECK(dots == 2);
  CHECK(svg.find("<circle") == std::string::npos);  // several points: lines only
  // An error names the file asked for, not the temporary one written first.
  CHECK_THROWS_WITH(plot_metrics_svg(dir + "/long.jsonl", dir + "/no_such_dir/x.svg"),
                    Catch::StartsWith(dir + "/no_such_dir/x.svg: cannot write: ") && Catch::Contains("(via "));
}
