// Built like any host, with no -march flag: the kernels carry their own instruction sets, so this
// program must still choose the best path the CPU has. Prints the path; exits 1 if it is not the
// best one (KVLM_SIMD unset).
#include <kvlm/kernels/kernels.hpp>

#include <cstdio>
#include <cstdlib>

int main() {
  const kvlm::kernels::Simd active = kvlm::kernels::active_simd();
  const kvlm::kernels::Simd best = kvlm::kernels::detected_simd();
  std::printf("kernels: %s (best on this CPU: %s)\n", kvlm::kernels::to_string(active),
              kvlm::kernels::to_string(best));
  const char* forced = std::getenv("KVLM_SIMD");
  return (forced == nullptr || *forced == '\0') && active != best ? 1 : 0;
}
