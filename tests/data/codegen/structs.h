/* Golden header: nested structs, arrays, anonymous and named-unnamed members, bit-fields, opaque types. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#define ST_NAME_MAX 16

struct st_opaque;
typedef struct st_opaque * st_handle;

typedef int32_t st_id;

struct st_point {
    float x;
    float y;
};

typedef struct st_rect {
    struct st_point min;
    struct st_point max;
} st_rect;

struct st_record {
    st_id id;
    char name[ST_NAME_MAX];
    float matrix[2][3];
    bool flag;
    uint8_t small : 3;
    uint8_t more : 5;
    union {
        int64_t as_int;
        double as_float;
        char as_text[ST_NAME_MAX];
    };
    struct {
        int16_t lo;
        int16_t hi;
    } range;
    st_rect box;
    struct st_record * next;
    st_handle handle;
};

union st_value {
    uint32_t u;
    float f;
    uint8_t bytes[4];
};

st_rect st_union_of(st_rect a, st_rect b);
st_handle st_open(const char * path, const struct st_record * records, int32_t n_records);
void st_close(st_handle handle);
union st_value st_value_of(uint32_t bits);

// Untagged types known only by their typedef names.
typedef struct { uint16_t bits; } st_bf16;
typedef enum { ST_MODE_A = 1, ST_MODE_B = 4 } st_mode;

struct st_holder {
    st_bf16 value;
    st_mode mode;
};

st_bf16 st_to_bf16(float f, st_mode mode);

// Returned by value through a caller buffer (> 16 bytes, no arguments): a row of the guard's probe table.
struct st_params {
    int32_t n;
    st_mode mode;
    void * user_data;
    bool enabled;
    bool verbose;
};
struct st_params st_default_params(void);
