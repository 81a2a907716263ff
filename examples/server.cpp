// server: an OpenAI-style HTTP server. POST /v1/completions and /v1/chat/completions (with
// "stream": true as server-sent events ending in [DONE]), GET /v1/models and /health. Requests run
// on a pool of sessions that decode together through one kvlm::Batcher (continuous batching); a
// request takes the free session whose cache shares the longest prefix with its prompt, so a
// conversation's next turn prefills only what is new. Requests beyond the pool wait in a bounded
// queue; past it the answer is 503. Listens on 127.0.0.1 unless told otherwise.

// kvlm (Eigen) first: httplib.h brings in <resolv.h>, whose `_res` macro breaks Eigen's products.
#include "kvlm/kvlm.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common.hpp"

namespace {

using nlohmann::json;

// max_tokens of a chat request that gives none (if the context holds that many).
constexpr int kDefaultChatTokens = 512;

const std::string kUsage = std::string(
    "usage: server -m MODEL [-z TOKENIZER] [--host HOST] [--port PORT] [--sessions N]\n"
    "              [--queue N] [-c CONTEXT] [-t THREADS] [--kv-type TYPE] [--max-rows N]\n"
    "              [--chat-template NAME] [-v]\n") + examples::kModelUsage + examples::kSessionUsage +
    "  --host HOST       address to listen on (default 127.0.0.1)\n"
    "  --port PORT       port (default 8080; 0 = any free port, printed on stderr)\n"
    "  --sessions N      sessions in the pool: requests served at once (default 4)\n"
    "  --queue N         requests that may wait for a session; more get 503 (default 16)\n"
    "  --max-rows N      most rows of one batched pass (default 64)\n"
    "  --chat-template NAME  llama2, llama3, gemma or chatml (default: the model's, or a fallback)\n"
    "  -v, --verbose     describe the model on stderr before serving\n";

// JSON text; invalid UTF-8 (a vocabulary's raw piece, a file name) becomes U+FFFD, never an
// exception on a thread that could not catch it.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// A request the server refuses: 400 with this message.
struct BadRequest : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The sessions requests run on. acquire() hands out the free session whose cache shares the
// longest prefix with the prompt, waiting while at most max_waiting requests wait.
class SessionPool {
 public:
  SessionPool(const std::shared_ptr<const kvlm::Model>& model, const kvlm::SessionOptions& options,
              int n_sessions, int max_waiting)
      : max_waiting_(max_waiting) {
    for (int i = 0; i < n_sessions; ++i) {
      slots_.push_back(std::make_unique<Slot>(model, options));
    }
  }

  // Gives its session back when destroyed.
  class Lease {
   public:
    Lease(SessionPool& pool, std::size_t slot) : pool_(pool), slot_(slot) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { pool_.release(slot_); }
    kvlm::Session& session() { return pool_.slots_[slot_]->session; }

   private:
    SessionPool& pool_;
    std::size_t slot_;
  };

  /// A session for `prompt`, or null when every session is busy and the queue is full. Requests
  /// that wait are served in arrival order.
  std::unique_ptr<Lease> acquire(const std::vector<kvlm::Token>& prompt) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (waiting_ > 0 || !any_free()) {
      if (waiting_ >= max_waiting_) return nullptr;
      const std::uint64_t ticket = next_ticket_++;
      ++waiting_;
      freed_.wait(lock, [&] { return ticket == serving_ && any_free(); });
      --waiting_;
      ++serving_;
      freed_.notify_all();  // the next in line, if another session is free too
    }
    std::size_t best = slots_.size();
    int best_prefix = 0;
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i]->busy) continue;
      const int prefix = slots_[i]->session.reusable_prefix(prompt);
      if (best == slots_.size() || prefix > best_prefix) {
        best = i;
        best_prefix = prefix;
      }
    }
    slots_[best]->busy = true;
    return std::make_unique<Lease>(*this, best);
  }

  /// The sessions' context length.
  int context() const { return slots_[0]->session.max_seq_len(); }

  std::size_t memory_bytes() const {
    std::size_t bytes = 0;
    for (const auto& slot : slots_) bytes += slot->session.memory_bytes();
    return bytes;
  }

 private:
  struct Slot {
    Slot(const std::shared_ptr<const kvlm::Model>& model, const kvlm::SessionOptions& options)
        : session(model, options) {}
    kvlm::Session session;
    bool busy = false;
  };

  bool any_free() const {
    return std::any_of(slots_.begin(), slots_.end(), [](const auto& s) { return !s->busy; });
  }
  void release(std::size_t slot) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      slots_[slot]->busy = false;
    }
    freed_.notify_all();  // the waiter whose turn it is may be any of them
  }

  std::vector<std::unique_ptr<Slot>> slots_;
  int max_waiting_;
  int waiting_ = 0;
  std::uint64_t next_ticket_ = 0;  // the number the next request to wait is given
  std::uint64_t serving_ = 0;      // the number whose turn it is
  std::mutex mutex_;
  std::condition_variable freed_;
};

// One parsed request: its prompt in tokens and how to generate.
struct Request {
  bool chat = false;
  bool stream = false;
  bool stream_usage = false;  // stream_options.include_usage: a last chunk with the usage
  std::string id;
  long long created = 0;
  std::vector<kvlm::Token> prompt;
  kvlm::GenerateOptions options;
};

// A field of `body` if present and not null, checked against `type`.
const json* field(const json& body, const char* name, json::value_t type, const char* type_name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  const bool ok = it->type() == type ||
                  (type == json::value_t::number_float && it->is_number()) ||
                  (type == json::value_t::number_integer && it->is_number_integer());
  if (!ok) throw BadRequest(std::string("'") + name + "' must be " + type_name);
  return &*it;
}

double number(const json& body, const char* name, double fallback, double min, double max) {
  const json* v = field(body, name, json::value_t::number_float, "a number");
  if (!v) return fallback;
  const double x = v->get<double>();
  if (!(x >= min && x <= max)) {
    throw BadRequest(std::string("'") + name + "' must be in [" + std::to_string(min) + ", " +
                     std::to_string(max) + "]");
  }
  return x;
}

class Server {
 public:
  /// context: the sessions' length, which bounds prompt and max_tokens.
  Server(std::shared_ptr<const kvlm::Model> model, std::string model_name, kvlm::ChatFormat format,
         SessionPool& pool, int context)
      : model_(std::move(model)),
        name_(std::move(model_name)),
        format_(format),
        pool_(pool),
        context_(context) {}

  void install(httplib::Server& http) {
    http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(dump(json{{"status", "ok"}}), "application/json");
    });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      const json models = {{"object", "list"},
                           {"data", {{{"id", name_}, {"object", "model"}, {"owned_by", "kvlm"}}}}};
      res.set_content(dump(models), "application/json");
    });
    http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      handle(req, res, false);
    });
    http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      handle(req, res, true);
    });
  }

 private:
  static void error(httplib::Response& res, int status, const std::string& message,
                    const char* type) {
    res.status = status;
    res.set_content(dump(json{{"error", {{"message", message}, {"type", type}}}}),
                    "application/json");
  }

  Request parse(const std::string& text, bool chat) const {
    json body;
    try {
      body = json::parse(text);
    } catch (const json::exception& e) {
      throw BadRequest(std::string("the body is not JSON: ") + e.what());
    }
    if (!body.is_object()) throw BadRequest("the body must be a JSON object");
    Request r;
    r.chat = chat;
    if (const json* s = field(body, "stream", json::value_t::boolean, "true or false")) {
      r.stream = s->get<bool>();
    }
    if (const json* so = field(body, "stream_options", json::value_t::object, "an object")) {
      if (const json* u = field(*so, "include_usage", json::value_t::boolean, "true or false")) {
        r.stream_usage = u->get<bool>();
      }
    }
    if (const json* n = field(body, "n", json::value_t::number_integer, "an integer")) {
      if (n->get<long long>() != 1) throw BadRequest("only 'n': 1 is supported");
    }
    kvlm::GenerateOptions& o = r.options;
    o.prompt_mode = kvlm::PromptMode::kReplace;
    o.sampler.temperature = static_cast<float>(number(body, "temperature", 1.0, 0.0, 2.0));
    o.sampler.top_p = static_cast<float>(number(body, "top_p", 1.0, 1e-6, 1.0));
    o.sampler.top_k = 0;
    o.sampler.min_p = 0.0f;
    if (const json* seed = field(body, "seed", json::value_t::number_integer, "an integer")) {
      o.sampler.seed = static_cast<std::uint64_t>(seed->get<long long>());
    } else {
      o.sampler.seed = std::random_device{}();
    }
    const kvlm::Tokenizer& tokenizer = model_->tokenizer();
    const int context = context_;
    // Without max_tokens a chat answer may run to kDefaultChatTokens: a client that goes away
    // without streaming is only noticed when the answer is done.
    o.max_new_tokens = static_cast<int>(
        number(body, "max_tokens", chat ? std::min(context, kDefaultChatTokens) : 16, 1, context));
    const auto it = body.find("stop");
    if (it != body.end() && !it->is_null()) {
      if (it->is_string()) {
        o.stop.push_back(it->get<std::string>());
      } else if (it->is_array() && it->size() <= 4 &&
                 std::all_of(it->begin(), it->end(), [](const json& s) { return s.is_string(); })) {
        for (const json& s : *it) o.stop.push_back(s.get<std::string>());
      } else {
        throw BadRequest("'stop' must be a string or an array of at most 4 strings");
      }
      for (const std::string& s : o.stop) {
        if (s.empty()) throw BadRequest("'stop' strings must not be empty");
      }
    }
    try {
      if (chat) {
        const json* messages = field(body, "messages", json::value_t::array, "an array");
        if (!messages || messages->empty()) throw BadRequest("'messages' must be a non-empty array");
        std::vector<kvlm::ChatMessage> chat_messages;
        for (const json& m : *messages) {
          if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
              !m.contains("content") || !m["content"].is_string()) {
            throw BadRequest("each message needs a string 'role' and a string 'content'");
          }
          chat_messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>(), {}});
        }
        r.prompt = kvlm::render_chat(format_, tokenizer, chat_messages, true);
        o.stop_tokens = kvlm::chat_stop_tokens(format_, tokenizer);
      } else {
        const json* prompt = field(body, "prompt", json::value_t::string, "a string");
        if (!prompt) throw BadRequest("'prompt' is required");
        r.prompt = tokenizer.encode(prompt->get<std::string>(), tokenizer.add_bos());
        if (r.prompt.empty()) r.prompt.push_back(tokenizer.bos());
      }
    } catch (const kvlm::Error& e) {
      throw BadRequest(e.what());  // a chat the template refuses (roles out of order, say)
    }
    if (r.prompt.size() + 1 > static_cast<std::size_t>(context)) {
      throw BadRequest("the prompt is " + std::to_string(r.prompt.size()) +
                       " tokens; the context holds " + std::to_string(context));
    }
    return r;
  }

  static const char* finish_reason(kvlm::StopReason reason) {
    return reason == kvlm::StopReason::kMaxNewTokens || reason == kvlm::StopReason::kContextFull
               ? "length"
               : "stop";
  }

  json usage(const Request& r, const kvlm::GenerateResult& result) const {
    const int completion = result.generated_tokens - result.dropped_tokens;
    const int prompt = static_cast<int>(r.prompt.size());
    return {{"prompt_tokens", prompt},
            {"completion_tokens", completion},
            {"total_tokens", prompt + completion}};
  }

  // The response, or one chunk of a stream, with `choice` as its only choice (none for a
  // stream's usage chunk).
  json response(const Request& r, bool chunk, json choice) const {
    const char* object = r.chat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                : "text_completion";
    return {{"id", r.id},
            {"object", object},
            {"created", r.created},
            {"model", name_},
            {"choices", choice.is_null() ? json::array() : json::array({std::move(choice)})}};
  }

  // A choice with `text`: a completion's text, a chat's message, or a chat chunk's delta.
  static json choice(const Request& r, const std::string& text, const char* finish, bool chunk) {
    json c = {{"index", 0}, {"logprobs", nullptr},
              {"finish_reason", finish ? json(finish) : json(nullptr)}};
    if (!r.chat) {
      c["text"] = text;
    } else if (!chunk) {
      c["message"] = {{"role", "assistant"}, {"content", text}};
    } else {
      c["delta"] = text.empty() ? json::object() : json{{"content", text}};
    }
    return c;
  }

  static kvlm::GenerateResult run(SessionPool::Lease& lease, const Request& r,
                                  const kvlm::PieceCallback& on_piece) {
    kvlm::Session& session = lease.session();
    session.reseed(r.options.sampler.seed);  // the answer does not depend on the session's past
    return session.generate(r.prompt, r.options, on_piece);
  }

  void handle(const httplib::Request& req, httplib::Response& res, bool chat) {
    auto request = std::make_shared<Request>();
    try {
      *request = parse(req.body, chat);
    } catch (const BadRequest& e) {
      return error(res, 400, e.what(), "invalid_request_error");
    }
    // Both lambdas below hold the box; whichever runs first frees the session.
    auto lease = std::make_shared<std::unique_ptr<SessionPool::Lease>>(pool_.acquire(request->prompt));
    if (!*lease) return error(res, 503, "the server is busy; try again later", "server_busy");
    request->id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(++next_id_);
    request->created = std::chrono::duration_cast<std::chrono::seconds>(
                           std::chrono::system_clock::now().time_since_epoch()).count();

    if (!request->stream) {
      std::string text;
      try {
        const kvlm::GenerateResult result = run(**lease, *request, [&text](std::string_view piece) {
          text += piece;
          return true;
        });
        json body = response(*request, false,
                             choice(*request, text, finish_reason(result.stop_reason), false));
        body["usage"] = usage(*request, result);
        res.set_content(dump(body), "application/json");
      } catch (const std::exception& e) {
        error(res, 500, e.what(), "server_error");
      }
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, request, lease](std::size_t, httplib::DataSink& sink) {
          bool connected = true;
          const auto send = [&](const json& event) {
            const std::string data = "data: " + dump(event) + "\n\n";
            connected = connected && sink.write(data.data(), data.size());
            return connected;
          };
          try {
            if (*lease) stream(**lease, *request, send);
          } catch (const std::exception& e) {  // nothing may leave httplib's worker thread
            try {
              send(json{{"error", {{"message", e.what()}, {"type", "server_error"}}}});
            } catch (...) {
            }
          } catch (...) {
          }
          lease->reset();  // the session is free again at once, connected or not
          if (connected) sink.write("data: [DONE]\n\n", 14);
          sink.done();
          return true;
        },
        [lease](bool) { lease->reset(); });
  }

  // A streamed answer as OpenAI sends it: a chat's first chunk carries the role, each piece of
  // text a chunk, the last chunk the finish reason, then, if asked for, a chunk with the usage.
  template <typename Send>
  void stream(SessionPool::Lease& lease, const Request& r, Send& send) const {
    if (r.chat) {
      json first = choice(r, "", nullptr, true);
      first["delta"] = {{"role", "assistant"}, {"content", ""}};
      if (!send(response(r, true, first))) return;
    }
    const kvlm::GenerateResult result = run(lease, r, [&](std::string_view piece) {
      return send(response(r, true, choice(r, std::string(piece), nullptr, true)));
    });  // a client that went away (a failed write) stops the generation
    send(response(r, true, choice(r, "", finish_reason(result.stop_reason), true)));
    if (r.stream_usage) {
      json last = response(r, true, nullptr);
      last["usage"] = usage(r, result);
      send(last);
    }
  }

 private:
  std::shared_ptr<const kvlm::Model> model_;
  std::string name_;
  kvlm::ChatFormat format_;
  SessionPool& pool_;
  int context_;
  std::atomic<long long> next_id_{0};
};

int run(int argc, char** argv) {
  examples::Args args(argc, argv);
  examples::ModelFlags model_flags;
  std::string host = "127.0.0.1";
  int port = 8080, n_sessions = 4, queue = 16, max_rows = 64;
  std::optional<kvlm::ChatFormat> requested;
  kvlm::SessionOptions so;
  while (!args.done()) {
    const std::string flag = args.next();
    if (model_flags.parse(flag, args) || examples::parse_session_flag(flag, args, so)) continue;
    if (flag == "--host") host = args.value(flag);
    else if (flag == "--port") port = static_cast<int>(examples::parse_int(flag, args.value(flag), 0, 65535));
    else if (flag == "--sessions") n_sessions = static_cast<int>(examples::parse_int(flag, args.value(flag), 1, 256));
    else if (flag == "--queue") queue = static_cast<int>(examples::parse_int(flag, args.value(flag), 0, 4096));
    else if (flag == "--max-rows") max_rows = static_cast<int>(examples::parse_int(flag, args.value(flag), 1, 4096));
    else if (flag == "--chat-template") requested = examples::parse_chat_template(flag, args.value(flag));
    else if (flag == "-h" || flag == "--help") { std::cout << kUsage; return 0; }
    else throw examples::UsageError("unknown argument '" + flag + "'");
  }
  const std::shared_ptr<const kvlm::Model> model = examples::load_model(model_flags);
  const kvlm::ChatFormatChoice choice = kvlm::choose_chat_format(model->tokenizer(), requested);
  if (!choice.note.empty()) std::cerr << "server: " << choice.note << "\n";

  kvlm::BatcherOptions bo;
  bo.n_threads = so.n_threads;
  bo.max_rows = max_rows;
  so.batcher = std::make_shared<kvlm::Batcher>(model, bo);
  SessionPool pool(model, so, n_sessions, queue);
  const std::string& path = model_flags.model_path;
  const std::string name = path.substr(path.find_last_of('/') + 1);
  const int context = pool.context();
  Server server(model, name, choice.format, pool, context);

  httplib::Server http;
  // A worker per session and per waiting request, and a few for /health and refusals.
  const int workers = n_sessions + queue + 4;
  http.new_task_queue = [workers] { return new httplib::ThreadPool(static_cast<std::size_t>(workers)); };
  http.set_payload_max_length(std::size_t{1} << 24);  // 16 MiB: far beyond any context's text
  http.set_keep_alive_timeout(1);  // an idle connection holds a worker for at most a second
  server.install(http);
  const int bound = port == 0 ? http.bind_to_any_port(host) : (http.bind_to_port(host, port) ? port : -1);
  if (bound < 0) {
    throw kvlm::Error(kvlm::ErrorCode::kIo, "cannot listen on " + host + ":" + std::to_string(port));
  }
  std::cerr << "server: " << name << " (" << to_string(choice.format) << " chat template), "
            << n_sessions << " sessions of " << context << " tokens, "
            << (pool.memory_bytes() + so.batcher->memory_bytes()) / (1 << 20) << " MiB\n"
            << "server: listening on http://" << host << ":" << bound << std::endl;
  if (!http.listen_after_bind()) {
    throw kvlm::Error(kvlm::ErrorCode::kIo, "the server on " + host + ":" + std::to_string(bound) + " failed");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);  // a client that goes away is a failed write, not a signal
  return examples::run_main("server", kUsage.c_str(), [&] { return run(argc, argv); });
}
