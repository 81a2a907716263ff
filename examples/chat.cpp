// chat: a conversation with a model, one user turn per line of standard input (a terminal or a
// pipe alike; end of input ends the chat), each reply streamed to stdout on a line of its own.
// stdout carries the replies only. stderr carries the "> " prompt (when standard input is a
// terminal), what commands did, one-line errors, and with -v the model's description and a line
// per turn:
//   turn N: prompt_tokens=P cached_tokens=C generated=G position=X
//
// One Session carries the conversation. Each turn renders the whole conversation with the chat
// template and generates with PromptMode::kReplace. Replies are kept as the tokens the model
// generated, so the rendering of the conversation so far is exactly what the cache holds: C is
// the position after the previous turn, and only the P tokens of the new turn are prefilled.
//
// Commands (a line that starts with '/'): /save FILE, /load FILE (the saved conversation replaces
// this one, system message and all), /reset (forget the conversation but for the --system
// message), /quit. A command or turn that fails prints one line and the chat goes on, with the
// conversation and session as they were.
//
// /save FILE writes the conversation and the session in one file, beside FILE first and then
// renamed over it, so a failed save leaves an earlier FILE whole:
//   kvlm-chat 1\n
//   TEMPLATE\n               the chat template (llama2, llama3, gemma, chatml)
//   N\n                      how many messages follow, each as:
//   ROLE BYTES COUNT\n       system, user or assistant; the size of its text; its token count
//   TEXT\n                   BYTES bytes of text, newlines and all
//   ID ID ...\n              COUNT token ids: a reply as the model generated it (empty if none)
// followed by the session as Session::save() writes it (binary, versioned, checksummed). The
// messages are the conversation and the session only its cache: were the two to disagree, the
// next turn would recompute what differs (kReplace keeps just the common prefix), not misanswer.

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common.hpp"
#include "kvlm/detail/regular_file.hpp"
#include "kvlm/detail/write_file.hpp"
#include "kvlm/kvlm.hpp"

namespace {

const std::string kUsage =
    std::string(
        "usage: chat -m MODEL [-z TOKENIZER] [--chat-template NAME] [--system TEXT] [-n MAX_NEW]\n"
        "            [--temp T] [--top-k K] [--top-p P] [--min-p P] [--repeat-penalty R]\n"
        "            [--seed S] [-t THREADS] [-c CONTEXT] [--kv-type TYPE] [-v]\n"
        "Reads a user turn per line of standard input and streams each reply (at most MAX_NEW\n"
        "tokens) to stdout. Commands: /save FILE, /load FILE, /reset, /quit.\n") +
    examples::kModelUsage +
    "  --chat-template NAME  llama2, llama3, gemma or chatml; default: the model file's, else\n"
    "                    chatml if the vocabulary has its tokens, else llama2\n"
    "  --system TEXT     a system message to begin the conversation\n" +
    examples::kSamplingUsage + examples::kSessionUsage +
    "  -v, --verbose     describe the model, and each turn's token counts, on stderr\n";

constexpr const char* kChatMagic = "kvlm-chat 1";

// Reads the text part of a chat file; every problem is an Error naming the file.
class ChatFileReader {
 public:
  ChatFileReader(std::istream& in, const std::string& path, std::size_t file_size)
      : in_(in), path_(path), file_size_(file_size) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw kvlm::Error(kvlm::ErrorCode::kFormat, path_ + ": " + what);
  }
  std::string line(const char* what) {
    std::string s;
    if (!std::getline(in_, s)) fail(std::string("ends before ") + what);
    return s;
  }
  // A count no larger than the file, as every counted thing takes at least a byte of it.
  std::size_t count(const std::string& text, const char* what) const {
    std::size_t v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size() || text.empty() || v > file_size_) {
      fail(std::string("bad ") + what + " '" + text + "'");
    }
    return v;
  }
  std::string bytes(std::size_t n, const char* what) {
    std::string s(n, '\0');
    if (!in_.read(s.data(), static_cast<std::streamsize>(n)) || in_.get() != '\n') {
      fail(std::string("ends within ") + what);
    }
    return s;
  }

 private:
  std::istream& in_;
  const std::string& path_;
  std::size_t file_size_;
};

// The messages of the chat file `path` (see the top of this file), whose session `session` takes.
// @throws kvlm::Error naming the file if it is not a chat file, is damaged, was written with
//         another chat template or (Session::load) another model; the session is then unchanged.
std::vector<kvlm::ChatMessage> load_chat(const std::string& path, kvlm::ChatFormat format,
                                         kvlm::Session& session) {
  const kvlm::detail::RegularFile file(path);  // a directory or a FIFO is an error, at once
  std::ifstream in(path, std::ios::binary);
  if (!in) throw kvlm::Error(kvlm::ErrorCode::kIo, path + ": cannot open");
  ChatFileReader r(in, path, file.size());
  std::string magic(std::strlen(kChatMagic) + 1, '\0');
  in.read(magic.data(), static_cast<std::streamsize>(magic.size()));
  if (magic != std::string(kChatMagic) + "\n") {
    r.fail(std::string("not a kvlm chat file (it does not begin with '") + kChatMagic + "')");
  }
  const std::string saved_format = r.line("the chat template");
  if (saved_format != kvlm::to_string(format)) {
    throw kvlm::Error(kvlm::ErrorCode::kInvalidArgument,
                      path + ": the conversation is in chat template " + saved_format +
                          ", this chat's is " + kvlm::to_string(format) + " (--chat-template)");
  }
  // Containers grow as the file delivers, so a damaged count allocates no more than the file has.
  std::vector<kvlm::ChatMessage> messages;
  const std::size_t n_messages = r.count(r.line("the message count"), "message count");
  while (messages.size() < n_messages) {
    kvlm::ChatMessage& m = messages.emplace_back();
    std::istringstream fields(r.line("a message"));
    std::string bytes, count, extra;
    if (!(fields >> m.role >> bytes >> count) || fields >> extra) r.fail("bad message line");
    m.content = r.bytes(r.count(bytes, "text size"), "a message's text");
    std::istringstream ids(r.line("a message's tokens"));
    const std::size_t n_tokens = r.count(count, "token count");
    kvlm::Token id = 0;
    while (m.tokens.size() < n_tokens && ids >> id) m.tokens.push_back(id);
    if (m.tokens.size() < n_tokens || ids >> extra) r.fail("a token count does not match its ids");
  }
  // As this program writes them: an optional system message, then user and assistant turns.
  const std::size_t first = !messages.empty() && messages[0].role == "system" ? 1 : 0;
  for (std::size_t i = first; i < messages.size(); ++i) {
    if (messages[i].role != ((i - first) % 2 == 0 ? "user" : "assistant")) {
      r.fail("message " + std::to_string(i) + " (" + messages[i].role + ") breaks the turns");
    }
  }
  if ((messages.size() - first) % 2 != 0) r.fail("the last turn has no reply");
  kvlm::render_chat(format, session.model().tokenizer(), messages, false);  // checks every id
  try {
    session.load(in);
  } catch (const kvlm::Error& e) {
    throw kvlm::Error(e.code(), path + ": " + e.what());
  }
  return messages;
}

// Writes `messages` and `session` to the chat file `path`: beside it, then renamed over it.
// @throws kvlm::Error(kIo) naming the file if it cannot be written.
void save_chat(const std::string& path, kvlm::ChatFormat format,
               const std::vector<kvlm::ChatMessage>& messages, const kvlm::Session& session) {
  kvlm::detail::write_file_atomically(path, [&](std::ostream& out) {
    out << kChatMagic << "\n" << kvlm::to_string(format) << "\n" << messages.size() << "\n";
    for (const kvlm::ChatMessage& m : messages) {
      out << m.role << " " << m.content.size() << " " << m.tokens.size() << "\n" << m.content << "\n";
      for (std::size_t i = 0; i < m.tokens.size(); ++i) out << (i > 0 ? " " : "") << m.tokens[i];
      out << "\n";
    }
    session.save(out);
  });
}

// The conversation, its session and how a turn generates.
class Chat {
 public:
  Chat(kvlm::Session session, kvlm::ChatFormat format, const kvlm::GenerateOptions& options,
       const std::string& system, bool verbose)
      : session_(std::move(session)), format_(format), options_(options), verbose_(verbose) {
    if (!system.empty()) system_.push_back({"system", system, {}});
    messages_ = system_;
    options_.prompt_mode = kvlm::PromptMode::kReplace;
    options_.stop_tokens = kvlm::chat_stop_tokens(format_, tokenizer());
    kvlm::render_chat(format_, tokenizer(), messages_, true);  // the vocabulary has what it needs
  }

  // Runs the command `line`; false for /quit.
  // @throws kvlm::Error for an unknown command or one that fails; nothing has changed then.
  bool command(const std::string& line) {
    const std::size_t space = line.find(' ');
    const std::string name = line.substr(0, space);
    const std::string arg(space == std::string::npos
                              ? std::string_view()
                              : kvlm::detail::strip(std::string_view(line).substr(space)));
    const bool takes_file = name == "/save" || name == "/load";
    if (name == "/quit" && arg.empty()) return false;
    if (name == "/reset" && arg.empty()) {
      messages_ = system_;
      session_.reset();
      std::cerr << "chat: reset: position=0\n";
    } else if (takes_file && !arg.empty()) {
      if (name == "/save") {
        save_chat(arg, format_, messages_, session_);
      } else {
        messages_ = load_chat(arg, format_, session_);
      }
      std::cerr << "chat: " << (name == "/save" ? "saved " : "loaded ") << arg << ": "
                << messages_.size() << " messages, position=" << session_.position() << "\n";
    } else {
      throw kvlm::Error(kvlm::ErrorCode::kInvalidArgument,
                        "'" + line + "' is not a command; they are /save FILE, /load FILE, " +
                            "/reset and /quit");
    }
    return true;
  }

  // The user's turn `text`: streams the reply to stdout and adds both to the conversation.
  // @throws kvlm::Error (kContextFull when the conversation no longer fits, say); the
  //         conversation is then as before.
  void turn(const std::string& text) {
    messages_.push_back({"user", text, {}});
    std::string reply;
    try {
      const std::vector<kvlm::Token> prompt =
          kvlm::render_chat(format_, tokenizer(), messages_, true);
      const kvlm::GenerateResult r =
          session_.generate(prompt, options_, [&reply](std::string_view piece) {
            // The reply's first token usually carries the space before it ("▁Once").
            if (reply.empty()) {
              const std::size_t start = piece.find_first_not_of(" \t\n\v\f\r");
              piece.remove_prefix(start == std::string_view::npos ? piece.size() : start);
            }
            reply += piece;
            std::cout << piece << std::flush;
            return true;
          });
      std::cout << "\n" << std::flush;
      // The reply as the cache holds it: what follows the prompt (a stop token is not stepped).
      const kvlm::Span<const kvlm::Token> held = session_.tokens();
      messages_.push_back({"assistant", reply,
                           std::vector<kvlm::Token>(held.data() + prompt.size(),
                                                    held.data() + held.size())});
      if (verbose_) {
        std::cerr << "turn " << std::count_if(messages_.begin(), messages_.end(),
                                              [](const auto& m) { return m.role == "user"; })
                  << ": prompt_tokens=" << r.prompt_tokens << " cached_tokens=" << r.cached_tokens
                  << " generated=" << r.generated_tokens - r.dropped_tokens
                  << " position=" << session_.position() << "\n";
      }
      if (r.stop_reason == kvlm::StopReason::kContextFull) {
        std::cerr << "chat: the context of " << session_.max_seq_len()
                  << " tokens is full and cut the reply short; /reset starts a new conversation\n";
      }
    } catch (const kvlm::Error&) {
      if (!reply.empty()) std::cout << "\n" << std::flush;
      messages_.pop_back();
      throw;
    }
  }

 private:
  const kvlm::Tokenizer& tokenizer() const { return session_.model().tokenizer(); }

  kvlm::Session session_;
  kvlm::ChatFormat format_;
  kvlm::GenerateOptions options_;
  std::vector<kvlm::ChatMessage> system_;    // the --system message, if any
  std::vector<kvlm::ChatMessage> messages_;  // the conversation, system_ first
  bool verbose_;
};

int run(int argc, char** argv) {
  examples::Args args(argc, argv);
  examples::GenerationFlags flags;
  std::string system;
  std::optional<kvlm::ChatFormat> requested;
  while (!args.done()) {
    const std::string flag = args.next();
    if (flags.parse(flag, args)) continue;
    if (flag == "--chat-template") requested = examples::parse_chat_template(flag, args.value(flag));
    else if (flag == "--system") system = args.value(flag);
    else if (flag == "-h" || flag == "--help") { std::cout << kUsage; return 0; }
    else throw examples::UsageError("unknown argument '" + flag + "'");
  }
  const auto model = examples::load_model(flags);
  const kvlm::ChatFormatChoice choice = kvlm::choose_chat_format(model->tokenizer(), requested);
  if (!choice.note.empty()) std::cerr << "chat: " << choice.note << "\n";
  if (flags.verbose) std::cerr << "chat template: " << to_string(choice.format) << "\n";
  Chat chat(kvlm::Session(model, flags.session), choice.format, flags.generate, system,
            flags.verbose);

  const bool terminal = isatty(STDIN_FILENO) == 1;
  std::string line;
  while (true) {
    if (terminal) std::cerr << "> " << std::flush;
    if (!std::getline(std::cin, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();  // a line that ends in CR LF
    if (kvlm::detail::strip(line).empty()) continue;
    try {
      if (line[0] != '/') {
        chat.turn(line);
      } else if (!chat.command(line)) {
        return 0;
      }
    } catch (const kvlm::Error& e) {
      std::cerr << "chat: error: " << e.what()
                << (e.code() == kvlm::ErrorCode::kContextFull
                        ? "; /reset starts a new conversation"
                        : "")
                << "\n";
    }
  }
  if (terminal) std::cerr << "\n";  // after ^D, the shell's prompt starts on a line of its own
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return examples::run_main("chat", kUsage.c_str(), [&] { return run(argc, argv); });
}
