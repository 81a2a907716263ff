// Usage: app <models folder>
#include <kvlm/config.hpp>
#include <kvlm/error.hpp>
#include <kvlm/version.hpp>

#include <iostream>
#include <string>

int main(int argc, char** argv) {
  const std::string models = argc > 1 ? argv[1] : "../shared/models";

  kvlm::ModelConfig config;  // stories260K's shape
  config.dim = 64;
  config.hidden_dim = 172;
  config.n_layers = 5;
  config.n_heads = 8;
  config.n_kv_heads = 4;
  config.head_dim = 8;
  config.vocab_size = 512;
  config.max_seq_len = 512;
  try {
    config.validate();  // throws kvlm::Error naming the first field that does not fit
  } catch (const kvlm::Error& e) {
    std::cerr << "kvlm error (" << kvlm::to_string(e.code()) << "): " << e.what() << "\n";
    return 1;
  }
  std::cout << "kvlm " << KVLM_VERSION_MAJOR << "." << KVLM_VERSION_MINOR << "."
            << KVLM_VERSION_PATCH << ": " << config.n_heads << " query heads share "
            << config.n_kv_heads << " KV heads (group " << config.group() << "); models in "
            << models << "\n";
  return 0;
}
