// The subcommands. Each register_* adds one subcommand to the app; when it is chosen on the
// command line, its callback stores the work to do in `action` (run after parsing by app.cpp).
#pragma once
#include <functional>

namespace CLI {
class App;
}

namespace flashplus::cli {

using Action = std::function<int()>;

void register_run(CLI::App& app, Action& action);
void register_verify(CLI::App& app, Action& action);
void register_info(CLI::App& app, Action& action);
void register_bench(CLI::App& app, Action& action);
void register_autotune(CLI::App& app, Action& action);
// The CSV header `bench --csv` writes.
const char* bench_csv_header();

// The whole program: parses argv, runs the subcommand, maps errors to exit codes (common.h).
int main_entry(int argc, char** argv);

}  // namespace flashplus::cli
