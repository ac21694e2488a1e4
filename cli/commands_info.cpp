// `flashplus info`: what this build can do.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "cpu/isa.h"
#include "flashplus/tuning.h"
#include "common.h"
#include "paths.h"

namespace flashplus::cli {

void register_info(CLI::App& app, Action& action) {
  CLI::App* sub = app.add_subcommand(
      "info", "Show the version, the backends compiled in and the devices found");
  sub->footer(
      "Examples:\n"
      "  flashplus info\n"
      "\n"
      "`auto` (the default --backend of run and verify) means the first GPU backend with a\n"
      "device, else cpu; the line `auto ->` shows which one that is on this machine.\n");
  sub->callback([&action]() {
    action = []() {
      fmt::print("flashplus {}\n", FLASHPLUS_VERSION);
      std::string list;
      for (Backend b : compiled_backends())
        list += (list.empty() ? "" : ", ") + std::string(backend_name(b));
      fmt::print("backends compiled: {}\n", list);
      fmt::print("auto -> {}\n", backend_name(best_backend()));
      fmt::print("cpu isa: {} (detected {}; docs/ENV.md \"CPU ISA\")\n",
                 cpu::isa_name(cpu::active_isa()), cpu::isa_name(cpu::detected_isa()));
      const auto devices = list_devices();
      fmt::print("devices: {}\n", devices.size());
      for (const DeviceDesc& d : devices) {
        fmt::print("  [{}:{}] {}  arch={}  units={}", backend_name(d.backend), d.index, d.name,
                   d.arch, d.multiprocessors);
        if (d.memory_bytes)
          fmt::print("  memory={:.1f} GiB", static_cast<double>(d.memory_bytes) / (1 << 30));
        fmt::print("\n");
      }
      // The tuned table each backend's kernels read (docs/TUNING.md), or why none is used.
      for (Backend b : compiled_backends()) {
        const std::string fp = backend_fingerprint(b);
        if (fp.empty()) continue;
        const std::string match = active_table_match(fp);
        fmt::print("tuned table [{}] ({}): {}{}\n", backend_name(b), fp, active_table_source(fp),
                   match.empty() ? "" : " [" + match + "]");
      }
      std::string dirs;
      for (const auto& d : config_dirs()) dirs += (dirs.empty() ? "" : ", ") + d;
      fmt::print("configs searched in: {}\n", dirs);
      return static_cast<int>(kExitOk);
    };
  });
}

}  // namespace flashplus::cli
