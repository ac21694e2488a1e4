// `flashplus`: everything lives in flashplus_cli_core (app.cpp) so tests can link it.
#include "commands.h"

int main(int argc, char** argv) { return flashplus::cli::main_entry(argc, argv); }
