/* Golden header: enums whose values are expressions, and #define constants of every kind. */
#pragma once
#include <stdint.h>

#define ED_BASE 0x10u
#define ED_NEGATIVE -7
#define ED_SHIFTED (1 << 12)
#define ED_DERIVED (ED_BASE * 2 + 1)
#define ED_ALIAS ED_DERIVED
#define ED_BIG 0xFFFFFFFFFFull
#define ED_CHAR 'x'
#define ED_VERSION "1.2.3"
#define ED_SCALE 0.25f
#define ED_API __attribute__((visibility("default")))
#define ED_EMPTY
#define ED_MAX(a, b) ((a) > (b) ? (a) : (b))

enum ed_flags {
    ED_FLAG_NONE = 0,
    ED_FLAG_A = 1 << 0,
    ED_FLAG_B = 1 << 1,
    ED_FLAG_AB = ED_FLAG_A | ED_FLAG_B,
    ED_FLAG_FROM_DEFINE = ED_BASE,
};

enum ed_signed {
    ED_S_MINUS = -2,
    ED_S_NEXT,       // -1
    ED_S_ZERO,
    ED_S_LAST = ED_S_ZERO + 40,
};

enum ed_wide {
    ED_W_SMALL = 1,
    ED_W_LARGE = 0xFFFFFFFFu,
};

enum {
    ED_ANON_ONE = 1,
    ED_ANON_TWO = 2,
};

ED_API enum ed_flags ed_combine(enum ed_flags a, enum ed_flags b);
ED_API enum ed_wide ed_wide_of(int32_t i);
