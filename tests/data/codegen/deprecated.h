/* Golden header: deprecation the way llama.h spells it, bare attributes, doc comments. */
#pragma once
#include <stdint.h>

#ifdef __GNUC__
#    define DEPRECATED(func, hint) func __attribute__((deprecated(hint)))
#else
#    define DEPRECATED(func, hint) func
#endif
#define DP_API __attribute__((visibility("default")))

struct dp_ctx;

// Create a context.
// Multi-line comments become the doc.
DP_API struct dp_ctx * dp_new(void);

/* C-style block comment doc. */
DP_API void dp_free(struct dp_ctx * ctx);

DEPRECATED(DP_API void dp_old_free(struct dp_ctx * ctx), "use dp_free instead");

DP_API DEPRECATED(int32_t dp_old_count(const struct dp_ctx * ctx),
    "use dp_count instead "
    "(split message)");

void dp_bare(void) __attribute__((deprecated));

int32_t dp_count(const struct dp_ctx * ctx);
