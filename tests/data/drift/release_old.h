/* A llama.h in the shape of llama.cpp b8672 (before b10566): use_mmap/use_mlock flags, 4-argument penalties. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LLAMA_DEFAULT_SEED 0xFFFFFFFF

typedef int32_t llama_token;
typedef int32_t llama_pos;
typedef int32_t llama_seq_id;

struct llama_model;
struct llama_vocab;
struct llama_sampler;

enum llama_split_mode {
    LLAMA_SPLIT_MODE_NONE = 0,
    LLAMA_SPLIT_MODE_LAYER = 1,
};

typedef struct llama_token_data {
    llama_token id;
    float logit;
    float p;
} llama_token_data;

typedef struct llama_token_data_array {
    llama_token_data * data;
    size_t size;
    int64_t selected;
    bool sorted;
} llama_token_data_array;

typedef struct llama_batch {
    int32_t n_tokens;
    llama_token * token;
    float * embd;
    llama_pos * pos;
    int32_t * n_seq_id;
    llama_seq_id ** seq_id;
    int8_t * logits;
} llama_batch;

struct llama_model_params {
    int32_t n_gpu_layers;
    enum llama_split_mode split_mode;
    bool vocab_only;
    bool use_mmap;
    bool use_direct_io;
    bool use_mlock;
};

struct llama_context_params {
    uint32_t n_ctx;
    uint32_t n_batch;
    bool embeddings;
};

struct llama_model_params llama_model_default_params(void);
struct llama_context_params llama_context_default_params(void);
struct llama_model * llama_model_load_from_file(const char * path_model, struct llama_model_params params);
llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max);
void llama_batch_free(llama_batch batch);
struct llama_sampler * llama_sampler_init_penalties(
    int32_t penalty_last_n, float penalty_repeat, float penalty_freq, float penalty_present);
struct llama_sampler * llama_sampler_init_dry(
    const struct llama_vocab * vocab, int32_t n_ctx_train, float dry_multiplier, float dry_base);
int32_t llama_format_log(char * buf, const char * fmt, ...);
