// The tuned-table parser (TunedTable::parse, what the library runs on $FLASHPLUS_TUNED_TABLE and
// configs/tuned/*.json at first use): never throws, never crashes, and a table it accepts dumps
// to text it reads back as the same table. Also TuneKey::parse on the input's first line.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "flashplus/tuning.h"

using namespace flashplus;

namespace {

bool same(const TunedTable& a, const TunedTable& b) {
  if (a.entries().size() != b.entries().size() || a.device != b.device ||
      a.fingerprint != b.fingerprint || a.git_revision != b.git_revision || a.created != b.created)
    return false;
  for (const auto& [k, e] : a.entries()) {
    auto it = b.entries().find(k);
    if (it == b.entries().end()) return false;
    const TunedEntry& f = it->second;
    if (e.config != f.config || e.kernel != f.kernel || e.time_ms != f.time_ms ||
        e.runner_up != f.runner_up || e.runner_up_ms != f.runner_up_ms || e.workload != f.workload)
      return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  TunedTable t;
  const Status st = TunedTable::parse(text, "fuzz.json", &t);
  if (st.ok()) {
    TunedTable back;
    const Status st2 = TunedTable::parse(t.dump(), "dump", &back);
    if (!st2.ok() || !same(t, back)) std::abort();
    for (const auto& [k, e] : t.entries()) {
      TuneKey key;
      if (!TuneKey::parse(k, &key) || key.to_string() != k || t.find(key) != &e) std::abort();
    }
  } else if (st.code() != StatusCode::invalid_args || st.message().rfind("fuzz.json: ", 0) != 0) {
    std::abort();
  }
  TuneKey key;
  const std::string line = text.substr(0, text.find('\n'));
  if (TuneKey::parse(line, &key)) {
    TuneKey again;
    if (!TuneKey::parse(key.to_string(), &again) || again.to_string() != key.to_string()) std::abort();
  }
  return 0;
}
