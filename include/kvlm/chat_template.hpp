#pragma once
// Chat templates: a conversation as the exact token sequence an instruction-tuned model was
// fine-tuned on, in the four formats kvlm knows, each as its reference Jinja template renders it:
//   llama2  <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
//   llama3  <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>...
//   gemma   <bos><start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n...
//   chatml  <|im_start|>{role}\n{content}<|im_end|>\n...
// In llama2, "[INST]", "[/INST]", "<<SYS>>" are plain text and only <s>, </s> are tokens (BOS,
// EOS). Special tokens are inserted by id, found by their piece; text goes through
// Tokenizer::encode_plain, which never yields a control or user-defined token, so a user who
// writes "<end_of_turn>" or "<|im_end|>" gets those characters as text and the turn goes on.
//
// Tokenization. Each run of text between two tokens is one encode_plain call, so where the
// vocabulary adds a dummy prefix (add_space_prefix, as Llama 2's does) every run starts with '▁':
// [<s>] "▁[INST] Hi [/INST]", and ChatML over a Llama vocabulary gives [<|im_start|>] "▁user\nHi"
// [<|im_end|>] "▁\n". That is what the references produce. llama.cpp tokenizes a rendered
// template by splitting it at special tokens and prefixing a space to every text fragment that
// follows one ("prefix with space if previous is special" in llama-vocab.cpp); Meta's Llama 2
// chat_completion encodes each "[INST] ... [/INST] ... " turn with its own sp.encode call between
// BOS and EOS. Text within a run is encoded as one string, so the user's words merge with the
// template text around them as in the rendered string. The one difference from llama.cpp is on
// purpose: where user text spells a special token, llama.cpp (parsing the whole rendered string)
// makes it that token; kvlm keeps it text.

#include <cctype>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvlm/config.hpp"
#include "kvlm/error.hpp"
#include "kvlm/tokenizer.hpp"

namespace kvlm {

enum class ChatFormat { kLlama2, kLlama3, kGemma, kChatML };

/// "llama2", "llama3", "gemma" or "chatml": the names parse_chat_format() reads.
inline const char* to_string(ChatFormat format) {
  switch (format) {
    case ChatFormat::kLlama2: return "llama2";
    case ChatFormat::kLlama3: return "llama3";
    case ChatFormat::kGemma: return "gemma";
    case ChatFormat::kChatML: return "chatml";
  }
  return "unknown";
}

/// The format named `name`, in any case ("llama2", "Llama3", "GEMMA", "chatml").
/// @throws Error (kInvalidArgument) naming `name` and the known formats.
inline ChatFormat parse_chat_format(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (ChatFormat f :
       {ChatFormat::kLlama2, ChatFormat::kLlama3, ChatFormat::kGemma, ChatFormat::kChatML}) {
    if (lower == to_string(f)) return f;
  }
  throw Error(ErrorCode::kInvalidArgument, "unknown chat template '" + std::string(name) +
                                               "'; kvlm knows llama2, llama3, gemma, chatml");
}

/// One turn of a conversation.
struct ChatMessage {
  std::string role;     // "system", "user" or "assistant"
  std::string content;  // the text of the turn
  // For an assistant message, when not empty: the tokens the model generated after the
  // generation prompt, up to and without its stop token, used instead of encoding `content`. A
  // chat that keeps them renders exactly what its session's cache holds, so the rendering of the
  // conversation so far is a prefix of the next one and the cache is reused whole.
  std::vector<Token> tokens;
};

namespace detail {

// The text without leading and trailing ASCII whitespace, as the templates' Jinja `trim` and
// Python's str.strip() (which also strip Unicode spaces, rare at the ends of a chat message).
inline std::string_view strip(std::string_view s) {
  const char* const space = " \t\n\v\f\r";
  const std::size_t begin = s.find_first_not_of(space);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(space) - begin + 1);
}

// The id of the token spelled `piece`, which `format` needs.
// @throws Error (kTokenizer) naming the token and the format if the vocabulary has none.
inline Token chat_special(ChatFormat format, const Tokenizer& tokenizer, std::string_view piece) {
  const Token id = tokenizer.id(piece);
  if (id < 0) {
    throw Error(ErrorCode::kTokenizer, std::string("chat template ") + to_string(format) +
                                           ": the vocabulary has no token '" + std::string(piece) +
                                           "'");
  }
  return id;
}

// `id`, the model's BOS or EOS (`which`), which `format` needs.
// @throws Error (kTokenizer) naming it and the format if the model has none (-1).
inline Token chat_required(ChatFormat format, Token id, const char* which) {
  if (id < 0) {
    throw Error(ErrorCode::kTokenizer, std::string("chat template ") + to_string(format) +
                                           ": the vocabulary has no " + which + " token");
  }
  return id;
}

// Collects a rendering: text joins the current run, and a token ends the run, which is then
// encoded in one encode_plain call (see the top of this header).
class ChatRenderer {
 public:
  explicit ChatRenderer(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

  void text(std::string_view s) { run_ += s; }
  void token(Token id) {
    end_run();
    out_.push_back(id);
  }
  void tokens(const std::vector<Token>& ids) {
    end_run();
    out_.insert(out_.end(), ids.begin(), ids.end());
  }
  std::vector<Token> finish() {
    end_run();
    return std::move(out_);
  }

 private:
  void end_run() {
    if (run_.empty()) return;
    const std::vector<Token> ids = tokenizer_.encode_plain(run_);
    out_.insert(out_.end(), ids.begin(), ids.end());
    run_.clear();
  }

  const Tokenizer& tokenizer_;
  std::string run_;  // text since the last token
  std::vector<Token> out_;
};

// Roles are system, user or assistant; only assistant messages carry tokens, each in the
// vocabulary. Llama 2's and Gemma's templates also require, as theirs raise otherwise, that after
// an optional first system message the roles alternate user, assistant, user, ...
// @throws Error (kInvalidArgument) naming the message.
inline void check_chat_messages(ChatFormat format, const Tokenizer& tokenizer,
                                const std::vector<ChatMessage>& messages) {
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const std::string where = "chat message " + std::to_string(i) + " (" + m.role + "): ";
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      throw Error(ErrorCode::kInvalidArgument,
                  where + "the role is not system, user or assistant");
    }
    if (!m.tokens.empty() && m.role != "assistant") {
      throw Error(ErrorCode::kInvalidArgument,
                  where + "only assistant messages carry tokens; pass the text as content");
    }
    for (std::size_t t = 0; t < m.tokens.size(); ++t) {
      if (m.tokens[t] < 0 || m.tokens[t] >= tokenizer.vocab_size()) {
        throw Error(ErrorCode::kInvalidArgument,
                    where + "token id " + std::to_string(m.tokens[t]) + " at index " +
                        std::to_string(t) + " is outside [0, " +
                        std::to_string(tokenizer.vocab_size()) + ")");
      }
    }
  }
  if (format != ChatFormat::kLlama2 && format != ChatFormat::kGemma) return;
  const std::size_t first = !messages.empty() && messages[0].role == "system" ? 1 : 0;
  for (std::size_t i = first; i < messages.size(); ++i) {
    const char* expected = (i - first) % 2 == 0 ? "user" : "assistant";
    if (messages[i].role != expected) {
      throw Error(ErrorCode::kInvalidArgument,
                  std::string("chat template ") + to_string(format) + ": message " +
                      std::to_string(i) + " is " + messages[i].role + " where " + expected +
                      " was due; after an optional first system message, roles must "
                      "alternate user, assistant, user, ...");
    }
  }
}

}  // namespace detail

/// The token sequence of `messages` in `format` (see the top of this header), BOS included
/// where the format has one: Llama 2 before each user turn, Llama 3 and Gemma at the start,
/// ChatML (whose template has none) at the start when tokenizer.add_bos(), as llama.cpp adds it
/// when it tokenizes a rendered prompt. With `add_generation_prompt`, the assistant's turn is
/// opened at the end (Llama 2 has nothing to add: the model answers right after "[/INST]").
/// Following the reference templates: contents are trimmed, except in ChatML; Llama 2 puts the
/// system message inside the first [INST] between <<SYS>> and <</SYS>>; Gemma writes it, followed
/// by "\n\n", at the start of the first user turn (as Gemma 3's template; Gemma 2's refuses a
/// system message) and calls the assistant "model". The rendering of messages[0..k] with the
/// generation prompt is a prefix of that of messages[0..k+1] when message k is the assistant's
/// reply given as tokens, which is what lets a chat reuse its cache.
/// @throws Error (kInvalidArgument) for a role other than system, user, assistant, tokens on a
///         message that is not the assistant's or outside the vocabulary, or roles that do not
///         alternate in llama2 or gemma; (kTokenizer) naming the token and the format when the
///         vocabulary lacks one the format needs, or if encoding fails.
inline std::vector<Token> render_chat(ChatFormat format, const Tokenizer& tokenizer,
                                      const std::vector<ChatMessage>& messages,
                                      bool add_generation_prompt) {
  detail::check_chat_messages(format, tokenizer, messages);
  detail::ChatRenderer r(tokenizer);
  auto content = [&r](const ChatMessage& m, std::string_view text) {
    if (m.tokens.empty()) {
      r.text(text);
    } else {
      r.tokens(m.tokens);
    }
  };
  const bool has_system = !messages.empty() && messages[0].role == "system";
  switch (format) {
    case ChatFormat::kLlama2: {
      const Token bos = detail::chat_required(format, tokenizer.bos(), "BOS");
      const Token eos = detail::chat_required(format, tokenizer.eos(), "EOS");
      for (std::size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "user") {
          const bool first = i == 1 && has_system;
          const std::string text = first ? "<<SYS>>\n" + messages[0].content + "\n<</SYS>>\n\n" +
                                               m.content
                                         : m.content;
          r.token(bos);
          r.text("[INST] ");
          r.text(detail::strip(text));
          r.text(" [/INST]");
        } else {
          // As tokens, the reply stands for " {content} ": the model's first token carries the
          // space ("▁Hello").
          content(m, " " + std::string(detail::strip(m.content)) + " ");
          r.token(eos);
        }
      }
      break;
    }
    case ChatFormat::kLlama3: {
      const Token start = detail::chat_special(format, tokenizer, "<|start_header_id|>");
      const Token end = detail::chat_special(format, tokenizer, "<|end_header_id|>");
      const Token eot = detail::chat_special(format, tokenizer, "<|eot_id|>");
      r.token(detail::chat_required(format, tokenizer.bos(), "BOS"));
      for (const ChatMessage& m : messages) {
        r.token(start);
        r.text(m.role);
        r.token(end);
        r.text("\n\n");
        content(m, detail::strip(m.content));
        r.token(eot);
      }
      if (add_generation_prompt) {
        r.token(start);
        r.text("assistant");
        r.token(end);
        r.text("\n\n");
      }
      break;
    }
    case ChatFormat::kGemma: {
      const Token start = detail::chat_special(format, tokenizer, "<start_of_turn>");
      const Token end = detail::chat_special(format, tokenizer, "<end_of_turn>");
      r.token(detail::chat_required(format, tokenizer.bos(), "BOS"));
      for (std::size_t i = has_system ? 1 : 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        r.token(start);
        r.text(m.role == "assistant" ? "model\n" : "user\n");
        if (i == 1 && has_system) r.text(messages[0].content + "\n\n");
        content(m, detail::strip(m.content));
        r.token(end);
        r.text("\n");
      }
      if (add_generation_prompt) {
        r.token(start);
        r.text("model\n");
      }
      break;
    }
    case ChatFormat::kChatML: {
      const Token start = detail::chat_special(format, tokenizer, "<|im_start|>");
      const Token end = detail::chat_special(format, tokenizer, "<|im_end|>");
      if (tokenizer.add_bos()) r.token(detail::chat_required(format, tokenizer.bos(), "BOS"));
      for (const ChatMessage& m : messages) {
        r.token(start);
        r.text(m.role + "\n");
        content(m, m.content);
        r.token(end);
        r.text("\n");
      }
      if (add_generation_prompt) {
        r.token(start);
        r.text("assistant\n");
      }
      break;
    }
  }
  return r.finish();
}

/// The tokens that end an assistant turn in `format`: Llama 2's EOS; Llama 3's <|eot_id|>,
/// Gemma's <end_of_turn> and ChatML's <|im_end|>, each followed by EOS when the vocabulary has
/// one that differs (a model may end a reply with either).
/// @throws Error (kTokenizer) naming the token and the format when the vocabulary lacks it.
inline std::vector<Token> chat_stop_tokens(ChatFormat format, const Tokenizer& tokenizer) {
  const char* const marker = format == ChatFormat::kLlama3  ? "<|eot_id|>"
                             : format == ChatFormat::kGemma ? "<end_of_turn>"
                             : format == ChatFormat::kChatML ? "<|im_end|>"
                                                             : nullptr;
  if (marker == nullptr) return {detail::chat_required(format, tokenizer.eos(), "EOS")};
  std::vector<Token> stops = {detail::chat_special(format, tokenizer, marker)};
  if (tokenizer.eos() >= 0 && tokenizer.eos() != stops[0]) stops.push_back(tokenizer.eos());
  return stops;
}

/// The format of a GGUF file's tokenizer.chat_template, from the markers each known template
/// writes: <|start_header_id|> and <|end_header_id|> (llama3; Llama 3.1's template also writes
/// a dated system preamble, which kvlm does not), <|im_start|> and <|im_end|> without Phi-4's
/// <|im_sep|> (chatml), <start_of_turn> and <end_of_turn> (gemma), [INST] with <<SYS>> (llama2;
/// Mistral's [INST] templates have no <<SYS>> and other spacing). Nothing for any other template.
inline std::optional<ChatFormat> recognize_chat_template(std::string_view jinja) {
  auto has = [jinja](std::string_view marker) {
    return jinja.find(marker) != std::string_view::npos;
  };
  if (has("<|start_header_id|>") && has("<|end_header_id|>")) return ChatFormat::kLlama3;
  if (has("<|im_start|>") && has("<|im_end|>") && !has("<|im_sep|>")) return ChatFormat::kChatML;
  if (has("<start_of_turn>") && has("<end_of_turn>")) return ChatFormat::kGemma;
  if (has("[INST]") && has("<<SYS>>")) return ChatFormat::kLlama2;
  return std::nullopt;
}

/// A chat format chosen for a model, and what the host should tell the user about the choice
/// (empty when there is nothing to say). The library never prints; the host does.
struct ChatFormatChoice {
  ChatFormat format = ChatFormat::kLlama2;
  std::string note;
};

/// The format to chat with `tokenizer`'s model: `requested` when given (the note says so if the
/// file's tokenizer.chat_template is another known format); else the format recognised from
/// tokenizer.chat_template(); else the fallback, chatml when the vocabulary has <|im_start|> and
/// <|im_end|> (a model fine-tuned on ChatML) and llama2 otherwise (it needs only BOS and EOS,
/// which every SentencePiece vocabulary kvlm runs has). The fallback is silent when the file has
/// no template and explained in the note when it has one kvlm does not recognise.
inline ChatFormatChoice choose_chat_format(const Tokenizer& tokenizer,
                                           std::optional<ChatFormat> requested) {
  const std::string& jinja = tokenizer.chat_template();
  const std::optional<ChatFormat> recognized =
      jinja.empty() ? std::nullopt : recognize_chat_template(jinja);
  if (requested) {
    ChatFormatChoice choice{*requested, ""};
    if (recognized && *recognized != *requested) {
      choice.note = std::string("using chat template ") + to_string(*requested) +
                    " as asked, although the file's tokenizer.chat_template is " +
                    to_string(*recognized);
    }
    return choice;
  }
  if (recognized) return {*recognized, ""};
  const bool has_chatml = tokenizer.id("<|im_start|>") >= 0 && tokenizer.id("<|im_end|>") >= 0;
  ChatFormatChoice choice{has_chatml ? ChatFormat::kChatML : ChatFormat::kLlama2, ""};
  if (!jinja.empty()) {
    choice.note = std::string("tokenizer.chat_template is not one kvlm knows (llama2, llama3, "
                              "gemma, chatml); using ") +
                  to_string(choice.format) +
                  (has_chatml ? ", as the vocabulary has ChatML's <|im_start|> and <|im_end|>"
                              : ", as the vocabulary lacks ChatML's <|im_start|>, <|im_end|>");
  }
  return choice;
}

}  // namespace kvlm
