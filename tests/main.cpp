// Catch2's main, compiled once (the single header is slow to build).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
