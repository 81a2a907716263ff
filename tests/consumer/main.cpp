// Continues a prompt with the stories260K model. Usage: app <models folder>
#include <kvlm/kvlm.hpp>

#include <iostream>
#include <string>
#include <string_view>

int main(int argc, char** argv) {
  const std::string models = argc > 1 ? argv[1] : "../shared/models";
  try {
    // A GGUF file brings its own tokenizer; a llama2.c checkpoint takes the SentencePiece
    // .model as a second argument. Weights are immutable once loaded and shared by sessions.
    auto model = kvlm::Model::load(models + "/stories260K/stories260K-F32.gguf");
    kvlm::SessionOptions session_options;
    session_options.n_threads = 2;
    kvlm::Session session(model, session_options);  // owns its KV cache

    kvlm::GenerateOptions options;
    options.max_new_tokens = 64;
    options.sampler.temperature = 0.0f;  // greedy: the same text on every run
    std::cout << "Once upon a time";
    session.generate("Once upon a time", options, [](std::string_view piece) {
      std::cout << piece << std::flush;
      return true;  // false stops generation
    });
    std::cout << "\n[" << session.position() << " tokens in the cache]\n";
  } catch (const kvlm::Error& e) {  // a missing file, a bad format, a full context, ...
    std::cerr << "kvlm error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
