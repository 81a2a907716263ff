// A multi-turn chat loop whose conversation survives restarts. Usage:
//   chat <models folder> <session file>     (one turn per line on standard input)
#include <kvlm/kvlm.hpp>

#include <fstream>
#include <iostream>
#include <string>
#include <string_view>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: chat <models folder> <session file>\n";
    return 2;
  }
  const std::string models = argv[1], saved = argv[2];
  try {
    auto model = kvlm::Model::load(models + "/stories260K/stories260K-F32.gguf");
    kvlm::SessionOptions session_options;
    session_options.max_seq_len = 512;
    session_options.on_full = kvlm::OnFull::kShift;  // drop old turns rather than stop
    kvlm::Session session(model, session_options);
    if (std::ifstream(saved)) {  // resume: the cache comes back, no token is recomputed
      session.load_file(saved);
      std::cout << "[resumed with " << session.position() << " tokens]\n";
    }

    kvlm::GenerateOptions options;
    options.max_new_tokens = 48;
    options.sampler.seed = 42;  // seeds the session's random stream, which runs across turns
    options.stop = {"\n"};      // a reply ends with its line; the cache then ends there too
    std::string line;
    while (std::cout << "> " << std::flush, std::getline(std::cin, line)) {
      // Each turn prefills only its own text: the cache already holds the conversation.
      const kvlm::GenerateResult r = session.generate(line, options, [](std::string_view piece) {
        std::cout << piece << std::flush;
        return true;
      });
      std::cout << "\n[" << r.prompt_tokens << " prompt tokens, "
                << r.generated_tokens - r.dropped_tokens << " generated, " << session.position()
                << " in the cache]\n";
      session.save_file(saved);  // after every turn, so a crash loses nothing
    }
  } catch (const kvlm::Error& e) {
    std::cerr << "kvlm error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
