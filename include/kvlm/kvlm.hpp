#pragma once
// kvlm: header-only Llama inference on the CPU with a preallocated per-layer KV cache.
// This umbrella header includes the whole public API.

#include "kvlm/attention.hpp"
#include "kvlm/config.hpp"
#include "kvlm/decoder_block.hpp"
#include "kvlm/error.hpp"
#include "kvlm/kv_cache.hpp"
#include "kvlm/loaders/llama2c.hpp"
#include "kvlm/loaders/model_file.hpp"
#include "kvlm/model.hpp"
#include "kvlm/ops.hpp"
#include "kvlm/perplexity.hpp"
#include "kvlm/sampler.hpp"
#include "kvlm/session.hpp"
#include "kvlm/span.hpp"
#include "kvlm/tensor.hpp"
#include "kvlm/tokenizer.hpp"
#include "kvlm/version.hpp"
