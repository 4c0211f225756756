/*
 * palm.h - the C ABI of Palm.Native (libpalm.so: a dispatcher over NativeAOT builds of native/Palm.Native.Interop).
 *
 * Build the library with scripts/build-native.sh (out/native/libpalm.so); samples/c-embed shows use.
 * libpalm.so loads, on first use, the build beside it for this CPU's x86-64 level
 * (libpalm-x86-64-v4.so, -v3.so or -v2.so: ship all four files); PALM_CPU_LEVEL forces a lower one.
 * If none loads, every call fails with PALM_ERR_INTERNAL and palm_last_error() says why.
 *
 * Conventions
 *  - Functions that can fail return a palm_status: PALM_OK (0) or a positive error code. On failure
 *    palm_last_error() returns a UTF-8 message for the calling thread. No exception, signal or
 *    abort ever crosses this boundary: bad input (NULL handles or pointers, invalid UTF-8, buffers
 *    too small, a corrupt state blob, a missing file) gives an error code and a message.
 *  - Strings are NUL-terminated UTF-8, in and out.
 *  - Handles (palm_model, palm_session) are opaque. Passing NULL is an error (PALM_ERR_INVALID_ARGUMENT);
 *    passing a handle of the other kind is detected too; passing a freed or made-up pointer is
 *    undefined behaviour, as in any C library.
 *  - Out-pointers are set to NULL/0 on failure where the function documents so.
 *
 * Threads
 *  - Every function may be called from any thread, including threads the caller created.
 *  - A palm_model is thread-safe: any number of threads may create sessions from it and generate
 *    with different sessions at the same time (their steps are batched together internally).
 *  - A palm_session runs one call at a time: a second call on the same session while one runs
 *    fails with PALM_ERR_BUSY. The exception is palm_session_cancel, which is meant to be called
 *    from another thread while palm_session_generate runs.
 *  - The token callback runs on the thread that called palm_session_generate. While its session is
 *    the model's only one generating, the decoding runs on that thread too (it is blocked anyway).
 *  - palm_last_error() is per thread (a thread's message is freed at its next failure or at process
 *    exit, not when the thread ends).
 *  - Free a session before, or after, its model: a session outliving its model fails with
 *    PALM_ERR_DISPOSED. Do not free a handle while another thread still uses it.
 */
#ifndef PALM_H
#define PALM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of this header; compare with palm_abi_version(). */
#define PALM_ABI_VERSION 1

typedef struct palm_model palm_model;
typedef struct palm_session palm_session;

typedef enum palm_status {
    PALM_OK = 0,
    PALM_ERR_INVALID_ARGUMENT = 1,   /* NULL/wrong-kind handle, NULL pointer, option out of range */
    PALM_ERR_INVALID_UTF8 = 2,       /* a string argument is not valid UTF-8 */
    PALM_ERR_IO = 3,                 /* a file is missing or cannot be read */
    PALM_ERR_FORMAT = 4,             /* not a valid Palm checkpoint */
    PALM_ERR_BACKEND_UNAVAILABLE = 5,/* PALM_BACKEND_VULKAN asked for and no Vulkan device */
    PALM_ERR_BUFFER_TOO_SMALL = 6,   /* the needed size was written to the size out-parameter */
    PALM_ERR_STATE_CORRUPT = 7,      /* state blob truncated or damaged */
    PALM_ERR_STATE_VERSION = 8,      /* state blob of a format version this library does not read */
    PALM_ERR_STATE_WRONG_MODEL = 9,  /* state blob saved from another model */
    PALM_ERR_BUSY = 10,              /* another call is running on this session */
    PALM_ERR_DISPOSED = 11,          /* the session's model was freed */
    PALM_ERR_OUT_OF_MEMORY = 12,
    PALM_ERR_INTERNAL = 13           /* anything else; the message says what */
} palm_status;

typedef enum palm_backend {
    PALM_BACKEND_AUTO = 0,   /* a hardware Vulkan device if there is one, else the CPU */
    PALM_BACKEND_CPU = 1,
    PALM_BACKEND_VULKAN = 2  /* any Vulkan device, lavapipe included (PALM_VK_DEVICE picks one) */
} palm_backend;

typedef enum palm_stop_reason {
    PALM_STOP_MAX_TOKENS = 0,
    PALM_STOP_STOP_STRING = 1,
    PALM_STOP_END_OF_TEXT = 2,
    PALM_STOP_CANCELLED = 3,  /* palm_session_cancel; cancelled during the prompt, the session is as before the call */
    PALM_STOP_CALLBACK = 4    /* the token callback returned non-zero */
} palm_stop_reason;

typedef struct palm_model_params {
    int32_t backend;  /* a palm_backend; default PALM_BACKEND_AUTO */
} palm_model_params;

typedef struct palm_session_params {
    uint64_t seed;          /* sampling seed, used when has_seed != 0 */
    int32_t has_seed;       /* 0 (default): a random seed */
    int32_t penalty_window; /* recent tokens the penalties look at; default 64, in [0, 65536] */
} palm_session_params;

typedef struct palm_generate_params {
    int32_t max_tokens;          /* default 256; 0 only feeds the prompt */
    float temperature;           /* default 0.8; 0 = greedy */
    int32_t top_k;               /* default 40; 0 = all */
    float top_p;                 /* default 0.95; in (0, 1] */
    float min_p;                 /* default 0; in [0, 1) */
    float repetition_penalty;    /* default 1 = off */
    float presence_penalty;      /* default 0 = off */
    float frequency_penalty;     /* default 0 = off */
    uint64_t seed;               /* reseeds the session's RNG for this call when has_seed != 0 */
    int32_t has_seed;            /* default 0: continue the session's RNG */
    int32_t n_stop_strings;      /* default 0 */
    const char *const *stop_strings; /* n_stop_strings non-empty UTF-8 strings; the stop string is not emitted */
} palm_generate_params;

typedef struct palm_memory_info {
    int64_t weight_bytes;  /* held once per model */
    int64_t session_bytes; /* added by each session (default penalty window); constant over a conversation */
} palm_memory_info;

/* Receives each generated piece: `len` bytes of whole UTF-8 characters at `piece` (also NUL-terminated),
 * valid only during the call. Return 0 to continue, non-zero to stop (PALM_STOP_CALLBACK). It runs on the
 * thread that called palm_session_generate; it may call palm_session_cancel or use other sessions, but
 * must not longjmp or throw (C++) out of the call. Calls on its own session fail with PALM_ERR_BUSY. */
typedef int (*palm_token_callback)(const char *piece, size_t len, void *user);

/* ---- library ---- */

uint32_t palm_abi_version(void);        /* PALM_ABI_VERSION of the library */
const char *palm_version(void);         /* library version, e.g. "0.1.0"; static */
const char *palm_status_string(int status); /* short fixed text of a palm_status; static */
/* Message of the last failed call on this thread ("" if none). Valid until the next failing call
 * on this thread; success does not clear it (like errno). */
const char *palm_last_error(void);

palm_model_params palm_model_default_params(void);
palm_session_params palm_session_default_params(void);
palm_generate_params palm_generate_default_params(void);

/* ---- model ---- */

/* Loads a .palm checkpoint. params may be NULL (defaults). *out_model is NULL on failure. */
palm_status palm_model_load(const char *path, const palm_model_params *params, palm_model **out_model);
/* Frees a model; NULL is ignored. */
void palm_model_free(palm_model *model);
/* The memory budget: weights once, plus session_bytes per session. */
palm_status palm_model_memory(const palm_model *model, palm_memory_info *out_info);
/* The backend in use (never AUTO) and, when description != NULL, a NUL-terminated description of
 * the device and why it was chosen. Either out-pointer may be NULL. *out_len receives the
 * description's length without the NUL; PALM_ERR_BUFFER_TOO_SMALL if capacity < *out_len + 1. */
palm_status palm_model_backend(const palm_model *model, int32_t *out_backend,
                               char *description, size_t capacity, size_t *out_len);

/* The model's id: SHA-256 of its config and weights as 64 lowercase hex digits and a NUL (buffer of at
 * least PALM_MODEL_ID_SIZE bytes); saved session states are bound to it. Equal to PalmModel.Id in .NET. */
#define PALM_MODEL_ID_SIZE 65
palm_status palm_model_id(const palm_model *model, char *buffer, size_t capacity);

/* ---- session ---- */

/* A conversation with a fresh state. params may be NULL (defaults). *out_session is NULL on failure. */
palm_status palm_session_create(palm_model *model, const palm_session_params *params, palm_session **out_session);
/* Frees a session (cancelling its generation, if one runs); NULL is ignored. */
void palm_session_free(palm_session *session);

/* Feeds `prompt` (may be "") and generates, calling `callback` (may be NULL) with each piece on this
 * thread. Blocks until the generation ends; *out_reason (may be NULL) says why. params may be NULL. */
palm_status palm_session_generate(palm_session *session, const char *prompt, const palm_generate_params *params,
                                  palm_token_callback callback, void *user, palm_stop_reason *out_reason);
/* Asks the running generation of `session` to stop (PALM_STOP_CANCELLED); callable from any thread.
 * No effect (and PALM_OK) when no generation runs. */
palm_status palm_session_cancel(palm_session *session);
/* Forgets the conversation. */
palm_status palm_session_reset(palm_session *session);

/* Session state: versioned, checksummed, bound to the model; its size depends only on the model and
 * the penalty window. Query the size, then save into a caller-owned buffer. */
palm_status palm_session_state_size(palm_session *session, size_t *out_size);
/* Writes the state into buffer[0..capacity). *out_written (may be NULL) gets the state's size, also
 * when the result is PALM_ERR_BUFFER_TOO_SMALL. */
palm_status palm_session_save_state(palm_session *session, void *buffer, size_t capacity, size_t *out_written);
/* Replaces the session's state; PALM_ERR_STATE_* if the blob is rejected (the session is unchanged). */
palm_status palm_session_restore_state(palm_session *session, const void *buffer, size_t length);

#ifdef __cplusplus
}
#endif

#endif /* PALM_H */
