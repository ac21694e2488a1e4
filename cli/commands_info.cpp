// `flashplus info`: what this build can do.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <memory>

#include "commands.h"
#include "cpu/isa.h"
#include "flashplus/registry.h"
#include "flashplus/tuning.h"
#include "common.h"
#include "paths.h"

namespace flashplus::cli {

namespace {

// `info --kernels`: the registry of this binary (kernels/registry/spec.json), one kernel a line
// after a header line starting with '#': its stable name, then the fields it is keyed by.
int print_kernels() {
  const KernelTable table = kernel_registry();
  fmt::print("# {:<40} {:<13} {:<6} {:<7} {:<9} {:<5} {:>4} {:<14} {}\n", "name", "family",
             "vendor", "arch", "mma", "dtype", "d", "tile", "variant");
  for (const KernelEntry& e : table)
    fmt::print("{:<42} {:<13} {:<6} {:<7} {:<9} {:<5} {:>4} {:<14} {}\n", e.name, e.family,
               e.vendor, e.arch, e.mma, e.dtype, e.head_dim, e.tile, e.variant);
  return static_cast<int>(kExitOk);
}

}  // namespace

void register_info(CLI::App& app, Action& action) {
  CLI::App* sub = app.add_subcommand(
      "info", "Show the version, the backends compiled in and the devices found");
  sub->footer(
      "Examples:\n"
      "  flashplus info\n"
      "  flashplus info --kernels          # every kernel instance compiled into this binary\n"
      "\n"
      "`auto` (the default --backend of run and verify) means the first GPU backend with a\n"
      "device, else cpu; the line `auto ->` shows which one that is on this machine.\n"
      "--kernels prints one header line (starting with '#') and then one line per registry\n"
      "entry: name, family, vendor, arch, mma, dtype, head-dim bucket (0 = any), tile, variant.\n");
  auto kernels = std::make_shared<bool>(false);
  sub->add_flag("--kernels", *kernels,
                "List the kernel registry of this binary (name, family, arch, dtype, d, tile)");
  sub->callback([&action, kernels]() {
    if (*kernels) {
      action = []() { return print_kernels(); };
      return;
    }
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
