#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "commands.h"
#include "common.h"

namespace flashplus::cli {

int main_entry(int argc, char** argv) {
  CLI::App app{"flashplus: FlashAttention-Plus command line tool (version " FLASHPLUS_VERSION ")",
               "flashplus"};
  app.require_subcommand(1);
  app.footer(
      "Examples:\n"
      "  flashplus info\n"
      "  flashplus verify --backend cpu\n"
      "  flashplus run --config configs/models/llama7b.json --max-seqlen 1024 --batch 1\n"
      "  flashplus bench --config configs/models/llama7b.json --max-seqlen 1024 --json b.json\n"
      "  flashplus autotune --config configs/models/gpt2.json --out configs/tuned/FP.json\n"
      "Run `flashplus <subcommand> --help` for more examples.\n"
      "\n"
      "Exit codes: 0 ok, 1 verify found a failing case, 2 usage or input error (bad flag, missing\n"
      "or invalid file, arguments the API rejects), 3 runtime or backend error.\n"
      "Errors are printed as one line: `flashplus: error: <message>`.\n");
  app.set_version_flag("--version", std::string("flashplus ") + FLASHPLUS_VERSION);
  Action action;
  register_run(app, action);
  register_verify(app, action);
  register_info(app, action);
  register_bench(app, action);
  register_autotune(app, action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, like every other error; the hint names the subcommand's help.
    std::fprintf(stderr, "flashplus: error: %s (see --help)\n", e.what());
    return kExitUsage;
  } catch (const Error& e) {  // thrown by option checks in callbacks
    std::fprintf(stderr, "flashplus: error: %s\n", e.what());
    return e.exit_code();
  }
  if (!action) return kExitUsage;
  // What a command printed must have reached stdout: a closed or full stdout (`>&-`,
  // `>/dev/full`) is a failure, not exit 0 with the results lost.
  auto stdout_ok = [](int rc) {
    if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return rc;
    const int e = errno;
    std::fprintf(stderr, "flashplus: error: cannot write to stdout: %s\n", std::strerror(e));
    return rc == kExitOk ? static_cast<int>(kExitRuntime) : rc;
  };
  try {
    return stdout_ok(action());
  } catch (const Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "flashplus: error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr, "flashplus: error: out of host memory\n");
    return kExitRuntime;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "flashplus: error: %s\n", e.what());
    return kExitRuntime;
  }
}

}  // namespace flashplus::cli
