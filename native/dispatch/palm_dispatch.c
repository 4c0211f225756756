/* libpalm.so: picks the build of the library for this CPU and forwards every palm.h call to it.
 *
 * Why: NativeAOT compiles for one instruction-set level, fixed at build time. Built for the
 * portable baseline, every `Avx2.IsSupported` / `Vector256.IsHardwareAccelerated` check in the
 * library folds to false, so the decoder's 256- and 512-bit kernels never run: measured on the development
 * VM (AVX-512), the built-in model decoded 98-102 us a token through the C ABI built for
 * x86-64-v2, 23.5 for x86-64-v3 and 14-16.5 for x86-64-v4. A build for a higher level refuses to start on an older
 * CPU. So scripts/build-native.sh publishes three builds beside this file, libpalm-x86-64-v4.so,
 * libpalm-x86-64-v3.so and libpalm-x86-64-v2.so, and the first call loads the best one this CPU
 * (and OS) runs, falling back to lower levels if a file is missing. PALM_CPU_LEVEL (x86-64-v2,
 * x86-64-v3 or x86-64-v4) forces a level not above the CPU's: for tests, and for measuring.
 *
 * If no build loads, every call fails with PALM_ERR_INTERNAL and palm_last_error() says why. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "palm.h"

#define PALM_FUNCTIONS(X) \
    X(uint32_t, palm_abi_version, (void), ()) \
    X(const char *, palm_version, (void), ()) \
    X(const char *, palm_status_string, (int status), (status)) \
    X(const char *, palm_last_error, (void), ()) \
    X(palm_model_params, palm_model_default_params, (void), ()) \
    X(palm_session_params, palm_session_default_params, (void), ()) \
    X(palm_generate_params, palm_generate_default_params, (void), ()) \
    X(palm_status, palm_model_load, (const char *path, const palm_model_params *params, palm_model **out_model), (path, params, out_model)) \
    X(void, palm_model_free, (palm_model *model), (model)) \
    X(palm_status, palm_model_memory, (const palm_model *model, palm_memory_info *out_info), (model, out_info)) \
    X(palm_status, palm_model_backend, (const palm_model *model, int32_t *out_backend, char *description, size_t capacity, size_t *out_len), (model, out_backend, description, capacity, out_len)) \
    X(palm_status, palm_model_id, (const palm_model *model, char *buffer, size_t capacity), (model, buffer, capacity)) \
    X(palm_status, palm_session_create, (palm_model *model, const palm_session_params *params, palm_session **out_session), (model, params, out_session)) \
    X(void, palm_session_free, (palm_session *session), (session)) \
    X(palm_status, palm_session_generate, (palm_session *session, const char *prompt, const palm_generate_params *params, palm_token_callback callback, void *user, palm_stop_reason *out_reason), (session, prompt, params, callback, user, out_reason)) \
    X(palm_status, palm_session_cancel, (palm_session *session), (session)) \
    X(palm_status, palm_session_reset, (palm_session *session), (session)) \
    X(palm_status, palm_session_state_size, (palm_session *session, size_t *out_size), (session, out_size)) \
    X(palm_status, palm_session_save_state, (palm_session *session, void *buffer, size_t capacity, size_t *out_written), (session, buffer, capacity, out_written)) \
    X(palm_status, palm_session_restore_state, (palm_session *session, const void *buffer, size_t length), (session, buffer, length))

#define POINTER(ret, name, params, args) static ret (*p_##name) params;
PALM_FUNCTIONS(POINTER)

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int loaded;                 /* every function resolved from one build */
static char failure[4096];         /* why not, for palm_last_error() */
static char level_loaded[16];

static const char *const levels[] = { "x86-64-v4", "x86-64-v3", "x86-64-v2" };

/* Index into levels of the best level this CPU and OS run (GCC's psABI checks, which include the
 * OS saving the AVX/AVX-512 registers), or -1 when even x86-64-v2 is missing. */
static int cpu_level(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return 0;
    if (__builtin_cpu_supports("x86-64-v3")) return 1;
    if (__builtin_cpu_supports("x86-64-v2")) return 2;
    return -1;
}

static int try_load(const char *dir, int level) {
    char path[2048];
    snprintf(path, sizeof path, "%s/libpalm-%s.so", dir, levels[level]);
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        size_t used = strlen(failure);
        snprintf(failure + used, sizeof failure - used, "%s%s", used ? "; " : "", dlerror());
        return 0;
    }
#define RESOLVE(ret, name, params, args) \
    *(void **)(&p_##name) = dlsym(lib, #name); \
    if (!p_##name) { snprintf(failure, sizeof failure, "libpalm: %s has no %s", path, #name); dlclose(lib); return 0; }
    PALM_FUNCTIONS(RESOLVE)
    snprintf(level_loaded, sizeof level_loaded, "%s", levels[level]);
    return 1;
}

static void load(void) {
    Dl_info self;
    char dir[1536] = ".";
    if (dladdr((void *)&load, &self) && self.dli_fname) {
        snprintf(dir, sizeof dir, "%s", self.dli_fname);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    }
    int best = cpu_level();
    if (best < 0) {
        snprintf(failure, sizeof failure, "libpalm: this CPU lacks x86-64-v2 (SSE4.2, POPCNT), the lowest level libpalm is built for");
        return;
    }
    const char *force = getenv("PALM_CPU_LEVEL");
    if (force && *force) {
        int f = -1;
        for (int i = 0; i < 3; i++) if (!strcmp(force, levels[i])) f = i;
        if (f < 0) { snprintf(failure, sizeof failure, "libpalm: PALM_CPU_LEVEL=%s is not x86-64-v2, x86-64-v3 or x86-64-v4", force); return; }
        if (f < best) { snprintf(failure, sizeof failure, "libpalm: PALM_CPU_LEVEL=%s is above what this CPU runs (%s)", force, levels[best]); return; }
        best = f;
    }
    for (int level = best; level < 3 && !loaded; level++) loaded = try_load(dir, level);
}

static int ready(void) {
    pthread_once(&once, load);
    return loaded;
}

/* The level of the build in use ("x86-64-v3"...), or NULL when none loaded. Not in palm.h: for
 * the ABI test and diagnostics, found with dlsym. */
__attribute__((visibility("default"))) const char *palm_dispatch_level(void) {
    return ready() ? level_loaded : NULL;
}

/* Forwarders. Without a build, statuses are PALM_ERR_INTERNAL, strings say why, params are zero. */
#define FORWARD(ret, name, params, args) \
    __attribute__((visibility("default"))) ret name params { \
        if (ready()) return p_##name args; \
        return fallback_##name args; \
    }

static uint32_t fallback_palm_abi_version(void) { return PALM_ABI_VERSION; }
static const char *fallback_palm_version(void) { return "unloaded"; }
static const char *fallback_palm_status_string(int status) { (void)status; return "libpalm: no build loaded (see palm_last_error)"; }
static const char *fallback_palm_last_error(void) { return failure; }
static palm_model_params fallback_palm_model_default_params(void) { palm_model_params p; memset(&p, 0, sizeof p); return p; }
static palm_session_params fallback_palm_session_default_params(void) { palm_session_params p; memset(&p, 0, sizeof p); return p; }
static palm_generate_params fallback_palm_generate_default_params(void) { palm_generate_params p; memset(&p, 0, sizeof p); return p; }
static palm_status fallback_palm_model_load(const char *a, const palm_model_params *b, palm_model **out) { (void)a; (void)b; if (out) *out = NULL; return PALM_ERR_INTERNAL; }
static void fallback_palm_model_free(palm_model *m) { (void)m; }
static palm_status fallback_palm_model_memory(const palm_model *m, palm_memory_info *i) { (void)m; (void)i; return PALM_ERR_INTERNAL; }
static palm_status fallback_palm_model_backend(const palm_model *m, int32_t *b, char *d, size_t c, size_t *l) { (void)m; (void)b; (void)d; (void)c; (void)l; return PALM_ERR_INTERNAL; }
static palm_status fallback_palm_model_id(const palm_model *m, char *b, size_t c) { (void)m; (void)b; (void)c; return PALM_ERR_INTERNAL; }
static palm_status fallback_palm_session_create(palm_model *m, const palm_session_params *p, palm_session **out) { (void)m; (void)p; if (out) *out = NULL; return PALM_ERR_INTERNAL; }
static void fallback_palm_session_free(palm_session *s) { (void)s; }
static palm_status fallback_palm_session_generate(palm_session *s, const char *p, const palm_generate_params *g, palm_token_callback c, void *u, palm_stop_reason *r) { (void)s; (void)p; (void)g; (void)c; (void)u; (void)r; return PALM_ERR_INTERNAL; }
static palm_status fallback_palm_session_cancel(palm_session *s) { (void)s; return PALM_ERR_INTERNAL; }
static palm_status fallback_palm_session_reset(palm_session *s) { (void)s; return PALM_ERR_INTERNAL; }
static palm_status fallback_palm_session_state_size(palm_session *s, size_t *o) { (void)s; (void)o; return PALM_ERR_INTERNAL; }
static palm_status fallback_palm_session_save_state(palm_session *s, void *b, size_t c, size_t *o) { (void)s; (void)b; (void)c; (void)o; return PALM_ERR_INTERNAL; }
static palm_status fallback_palm_session_restore_state(palm_session *s, const void *b, size_t l) { (void)s; (void)b; (void)l; return PALM_ERR_INTERNAL; }

PALM_FUNCTIONS(FORWARD)
