/* Golden header: callback typedefs, function-pointer fields and parameters, variadics. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cb_thing;

// Called with progress in [0, 1]; return false to abort.
typedef bool (*cb_progress)(float progress, void * user_data);

// Unnamed parameters and a struct pointer result.
typedef struct cb_thing * (*cb_factory)(int, const char *);

// A callback that takes another callback.
typedef void (*cb_chain)(cb_progress next, void * user_data);

struct cb_vtable {
    const char * (*name)(const struct cb_thing * thing);   // can be NULL
    void         (*apply)(struct cb_thing * thing, int32_t * values, size_t n);
    cb_progress  progress;
    int          (*const fixed)(void);
};

/// Register a progress callback (doc comment with three slashes).
void cb_set_progress(cb_progress progress, void * user_data);

int cb_log(int level, const char * fmt, ...);

void cb_visit(struct cb_thing * thing, void (*visitor)(struct cb_thing *, void *), void * user_data);

struct cb_thing * cb_make(cb_factory factory);

const char * const * cb_names(size_t * n_out);
