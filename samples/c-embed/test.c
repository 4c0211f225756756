/* palm-abi-test: the C ABI under bad input, two threads, cancellation and state round trips.
 *   usage: palm-abi-test MODEL.palm [cpu|vulkan|auto]
 * With PALM_EXPECT_MODEL_ID set, the model's id must equal it (the id .NET computes for that model:
 * scripts/build-native.sh passes samples/c-embed/palm-kjv.id, which a Palm.Tests test pins too).
 * Exits 0 when every check passes; prints each failure and exits 1 otherwise. */
#define _GNU_SOURCE   /* RTLD_DEFAULT */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "palm.h"

static int failures = 0, checks = 0;
#define CHECK(cond, ...) do { checks++; if (!(cond)) { failures++; \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)
/* A call that must fail with `code` and leave a non-empty message. */
#define EXPECT_ERR(code, call) do { palm_status st_ = (call); \
    CHECK(st_ == (code), "%s returned %d, expected %d (%s)", #call, (int)st_, (int)(code), palm_last_error()); \
    CHECK(palm_last_error()[0] != '\0', "no message after %s", #call); } while (0)
#define EXPECT_OK(call) do { palm_status st_ = (call); \
    CHECK(st_ == PALM_OK, "%s returned %d: %s", #call, (int)st_, palm_last_error()); } while (0)

static const char *model_path;
static palm_model_params model_params;

typedef struct { char *text; size_t len, cap; int stop_after; int pieces; atomic_int *started; } sink;

static int collect(const char *piece, size_t len, void *user) {
    sink *s = user;
    if (s->len + len + 1 > s->cap) {
        s->cap = (s->len + len + 1) * 2;
        s->text = realloc(s->text, s->cap);
    }
    memcpy(s->text + s->len, piece, len);
    s->len += len;
    s->text[s->len] = 0;
    s->pieces++;
    if (s->started) atomic_store(s->started, 1);
    return s->stop_after > 0 && s->pieces >= s->stop_after;
}

static char *generate(palm_session *session, const char *prompt, int max_tokens, uint64_t seed, palm_stop_reason *reason) {
    palm_generate_params gp = palm_generate_default_params();
    gp.max_tokens = max_tokens;
    gp.seed = seed;
    gp.has_seed = 1;
    sink s = {0};
    palm_status st = palm_session_generate(session, prompt, &gp, collect, &s, reason);
    CHECK(st == PALM_OK, "generate: %d %s", (int)st, palm_last_error());
    if (!s.text) s.text = calloc(1, 1);
    return s.text;
}

static void sleep_ms(int ms) {
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static void test_bad_input(palm_model *model) {
    palm_model *m = (palm_model *)0x1;
    palm_session *s = (palm_session *)0x1;
    palm_memory_info mem;
    size_t size = 0;

    /* NULL handles and pointers */
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_model_load(NULL, NULL, &m));
    CHECK(m == NULL, "out_model not cleared");
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_model_load(model_path, NULL, NULL));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_model_memory(NULL, &mem));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_model_memory(model, NULL));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_model_backend(NULL, NULL, NULL, 0, NULL));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_create(NULL, NULL, &s));
    CHECK(s == NULL, "out_session not cleared");
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_create(model, NULL, NULL));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_generate(NULL, "x", NULL, NULL, NULL, NULL));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_cancel(NULL));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_reset(NULL));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_state_size(NULL, &size));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_save_state(NULL, NULL, 0, &size));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_restore_state(NULL, "", 0));
    palm_model_free(NULL);
    palm_session_free(NULL);

    /* a handle of the other kind */
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_reset((palm_session *)model));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_generate((palm_session *)model, "x", NULL, NULL, NULL, NULL));

    /* missing file, not a model, bad backend */
    EXPECT_ERR(PALM_ERR_IO, palm_model_load("/nonexistent/dir/model.palm", NULL, &m));
    CHECK(strstr(palm_last_error(), "/nonexistent/dir/model.palm") != NULL, "message lacks the path: %s", palm_last_error());
    char junk[] = "/tmp/palm-abi-test-XXXXXX";
    int fd = mkstemp(junk);
    CHECK(fd >= 0, "mkstemp");
    FILE *f = fdopen(fd, "wb");
    fputs("this is not a palm checkpoint", f);
    fclose(f);
    EXPECT_ERR(PALM_ERR_FORMAT, palm_model_load(junk, NULL, &m));
    remove(junk);
    palm_model_params bad = palm_model_default_params();
    bad.backend = 7;
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_model_load(model_path, &bad, &m));

    /* invalid UTF-8 */
    EXPECT_ERR(PALM_ERR_INVALID_UTF8, palm_model_load("/tmp/\xff\xfe.palm", NULL, &m));
    palm_session *session = NULL;
    EXPECT_OK(palm_session_create(model, NULL, &session));
    EXPECT_ERR(PALM_ERR_INVALID_UTF8, palm_session_generate(session, "In the \xc3\x28 beginning", NULL, NULL, NULL, NULL));
    palm_generate_params gp = palm_generate_default_params();
    const char *stops[] = { "ok", "\xed\xa0\x80" /* a UTF-16 surrogate: not UTF-8 */ };
    gp.stop_strings = stops;
    gp.n_stop_strings = 2;
    EXPECT_ERR(PALM_ERR_INVALID_UTF8, palm_session_generate(session, "x", &gp, NULL, NULL, NULL));
    gp.n_stop_strings = -1;
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_generate(session, "x", &gp, NULL, NULL, NULL));

    /* options out of range */
    gp = palm_generate_default_params();
    gp.top_p = 2.0f;
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_generate(session, "x", &gp, NULL, NULL, NULL));
    palm_session_params sp = palm_session_default_params();
    sp.penalty_window = -5;
    palm_session *s2 = NULL;
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_create(model, &sp, &s2));

    /* buffers too small */
    char tiny[4];
    size_t need = 0;
    EXPECT_ERR(PALM_ERR_BUFFER_TOO_SMALL, palm_model_backend(model, NULL, tiny, sizeof tiny, &need));
    CHECK(need > sizeof tiny, "description length %zu", need);
    EXPECT_OK(palm_session_state_size(session, &size));
    CHECK(size > 0, "state size 0");
    unsigned char *buf = malloc(size);
    EXPECT_ERR(PALM_ERR_BUFFER_TOO_SMALL, palm_session_save_state(session, buf, size - 1, &need));
    CHECK(need == size, "needed %zu, state size %zu", need, size);
    EXPECT_ERR(PALM_ERR_BUFFER_TOO_SMALL, palm_session_save_state(session, NULL, 0, &need));

    /* corrupt, truncated and empty state blobs; the session stays usable */
    EXPECT_OK(palm_session_save_state(session, buf, size, &need));
    buf[size / 2] ^= 0x5a;
    EXPECT_ERR(PALM_ERR_STATE_CORRUPT, palm_session_restore_state(session, buf, size));
    buf[size / 2] ^= 0x5a;
    EXPECT_ERR(PALM_ERR_STATE_CORRUPT, palm_session_restore_state(session, buf, size / 3));
    EXPECT_ERR(PALM_ERR_STATE_CORRUPT, palm_session_restore_state(session, NULL, 0));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_session_restore_state(session, NULL, 8));
    memset(buf, 0xab, size);
    EXPECT_ERR(PALM_ERR_STATE_CORRUPT, palm_session_restore_state(session, buf, size));
    free(buf);
    palm_stop_reason r;
    free(generate(session, "In the beginning", 3, 1, &r));

    /* the last error is per thread and survives successful calls */
    EXPECT_ERR(PALM_ERR_IO, palm_model_load("/nonexistent/x.palm", NULL, &m));
    EXPECT_OK(palm_session_reset(session));
    CHECK(strstr(palm_last_error(), "/nonexistent/x.palm") != NULL, "last error changed by a success: %s", palm_last_error());

    /* a session that outlives its model */
    palm_model *m2 = NULL;
    EXPECT_OK(palm_model_load(model_path, &model_params, &m2));
    palm_session *orphan = NULL;
    EXPECT_OK(palm_session_create(m2, NULL, &orphan));
    palm_model_free(m2);
    EXPECT_ERR(PALM_ERR_DISPOSED, palm_session_generate(orphan, "And", NULL, NULL, NULL, NULL));
    palm_session_free(orphan);

    palm_session_free(session);
}

static void test_state_round_trip(palm_model *model) {
    palm_session *a = NULL, *b = NULL;
    EXPECT_OK(palm_session_create(model, NULL, &a));
    EXPECT_OK(palm_session_create(model, NULL, &b));
    palm_stop_reason r;
    free(generate(a, "In the beginning God created", 5, 7, &r));
    size_t size = 0, written = 0;
    EXPECT_OK(palm_session_state_size(a, &size));
    void *buf = malloc(size);
    EXPECT_OK(palm_session_save_state(a, buf, size, &written));
    CHECK(written == size, "wrote %zu of %zu", written, size);
    EXPECT_OK(palm_session_restore_state(b, buf, written));
    char *ta = generate(a, " and", 20, 11, &r);
    char *tb = generate(b, " and", 20, 11, &r);
    CHECK(strcmp(ta, tb) == 0, "restored session differs: '%s' vs '%s'", ta, tb);
    CHECK(strlen(ta) > 0, "nothing generated");
    free(ta); free(tb); free(buf);
    palm_session_free(a);
    palm_session_free(b);
}

static void test_callback_stop(palm_model *model) {
    palm_session *s = NULL;
    EXPECT_OK(palm_session_create(model, NULL, &s));
    palm_generate_params gp = palm_generate_default_params();
    gp.max_tokens = 200;
    sink k = { .stop_after = 2 };
    palm_stop_reason r = PALM_STOP_MAX_TOKENS;
    EXPECT_OK(palm_session_generate(s, "And God said", &gp, collect, &k, &r));
    CHECK(r == PALM_STOP_CALLBACK, "reason %d", (int)r);
    CHECK(k.pieces == 2, "%d pieces after stop", k.pieces);
    free(k.text);
    palm_session_free(s);
}

/* ---- two threads, two sessions ---- */

typedef struct { palm_session *session; const char *prompt; uint64_t seed; char *text; int ok; pthread_barrier_t *go; } job;
static atomic_int running, overlapped;

static void *run_job(void *arg) {
    job *j = arg;
    palm_stop_reason r;
    if (j->go) pthread_barrier_wait(j->go);
    atomic_fetch_add(&running, 1);
    for (int round = 0; round < 4; round++) { /* several calls, so that the two threads overlap */
        if (atomic_load(&running) == 2) atomic_store(&overlapped, 1);
        char *t = generate(j->session, round == 0 ? j->prompt : "", 50, j->seed + round, &r);
        size_t old = j->text ? strlen(j->text) : 0;
        j->text = realloc(j->text, old + strlen(t) + 1);
        strcpy(j->text + old, t);
        free(t);
    }
    if (atomic_load(&running) == 2) atomic_store(&overlapped, 1);
    atomic_fetch_sub(&running, 1);
    /* this thread's last error is its own */
    palm_model *m = NULL;
    palm_status st = palm_model_load(j->prompt /* not a file */, NULL, &m);
    j->ok = st == PALM_ERR_IO && strstr(palm_last_error(), j->prompt) != NULL;
    return NULL;
}

static void test_two_threads(palm_model *model) {
    const char *prompts[2] = { "In the beginning", "And the LORD spake unto Moses" };
    char *sequential[2];
    for (int i = 0; i < 2; i++) {
        palm_session *s = NULL;
        EXPECT_OK(palm_session_create(model, NULL, &s));
        job j = { s, prompts[i], 100 + i, NULL, 0, NULL };
        run_job(&j);
        sequential[i] = j.text;
        palm_session_free(s);
    }
    job jobs[2];
    pthread_t th[2];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, 2);
    atomic_store(&overlapped, 0);
    for (int i = 0; i < 2; i++) {
        palm_session *s = NULL;
        EXPECT_OK(palm_session_create(model, NULL, &s));
        jobs[i] = (job){ s, prompts[i], 100 + i, NULL, 0, &go };
        CHECK(pthread_create(&th[i], NULL, run_job, &jobs[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        CHECK(jobs[i].ok, "thread %d: its last error was not its own", i);
        CHECK(jobs[i].text && strcmp(jobs[i].text, sequential[i]) == 0,
              "thread %d: concurrent text differs from sequential:\n  '%s'\n  '%s'", i, jobs[i].text, sequential[i]);
        free(jobs[i].text);
        free(sequential[i]);
        palm_session_free(jobs[i].session);
    }
    pthread_barrier_destroy(&go);
    CHECK(atomic_load(&overlapped), "the two threads' generations never overlapped");
}

/* ---- cancellation from another thread, and PALM_ERR_BUSY meanwhile ---- */

typedef struct { palm_session *session; atomic_int started; palm_stop_reason reason; palm_status status; int pieces; } long_job;

static void *run_long(void *arg) {
    long_job *j = arg;
    palm_generate_params gp = palm_generate_default_params();
    gp.max_tokens = 1000000;
    sink k = { .started = &j->started };
    j->status = palm_session_generate(j->session, "And God said", &gp, collect, &k, &j->reason);
    j->pieces = k.pieces;
    free(k.text);
    return NULL;
}

static void test_cancel(palm_model *model) {
    long_job j = { .reason = PALM_STOP_MAX_TOKENS };
    atomic_init(&j.started, 0);
    EXPECT_OK(palm_session_create(model, NULL, &j.session));
    EXPECT_OK(palm_session_cancel(j.session)); /* nothing running: no effect */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, run_long, &j) == 0, "pthread_create");
    for (int i = 0; i < 20000 && !atomic_load(&j.started); i++) sleep_ms(1);
    CHECK(atomic_load(&j.started), "generation did not start");
    EXPECT_ERR(PALM_ERR_BUSY, palm_session_generate(j.session, "x", NULL, NULL, NULL, NULL));
    size_t size = 0;
    EXPECT_ERR(PALM_ERR_BUSY, palm_session_state_size(j.session, &size));
    sleep_ms(50);
    EXPECT_OK(palm_session_cancel(j.session));
    pthread_join(t, NULL);
    CHECK(j.status == PALM_OK, "status %d: %s", (int)j.status, palm_last_error());
    CHECK(j.reason == PALM_STOP_CANCELLED, "reason %d", (int)j.reason);
    CHECK(j.pieces > 0 && j.pieces < 1000000, "%d pieces", j.pieces);
    palm_stop_reason r;
    free(generate(j.session, " again", 3, 5, &r)); /* usable after a cancel */
    CHECK(r == PALM_STOP_MAX_TOKENS, "reason %d", (int)r);
    palm_session_free(j.session);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: palm-abi-test MODEL.palm [cpu|vulkan|auto]\n"); return 2; }
    model_path = argv[1];
    model_params = palm_model_default_params();
    model_params.backend = PALM_BACKEND_CPU;
    if (argc > 2) model_params.backend = !strcmp(argv[2], "vulkan") ? PALM_BACKEND_VULKAN : !strcmp(argv[2], "auto") ? PALM_BACKEND_AUTO : PALM_BACKEND_CPU;
    CHECK(palm_abi_version() == PALM_ABI_VERSION, "ABI %u", palm_abi_version());
    CHECK(palm_version()[0] != '\0', "empty version");
    CHECK(strcmp(palm_status_string(PALM_ERR_BUFFER_TOO_SMALL), "buffer too small") == 0, "status string");

    palm_model *model = NULL;
    palm_status st = palm_model_load(model_path, &model_params, &model);
    if (st != PALM_OK) { fprintf(stderr, "cannot load %s: %s\n", model_path, palm_last_error()); return 1; }
    char desc[512];
    EXPECT_OK(palm_model_backend(model, NULL, desc, sizeof desc, NULL));
    palm_memory_info mem;
    EXPECT_OK(palm_model_memory(model, &mem));
    CHECK(mem.weight_bytes > 0 && mem.session_bytes > 0, "memory %lld %lld", (long long)mem.weight_bytes, (long long)mem.session_bytes);
    /* libpalm.so dispatches to the build for this CPU's level (native/dispatch); PALM_CPU_LEVEL forces one. */
    const char *(*dispatch_level)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "palm_dispatch_level");
    const char *level = dispatch_level ? dispatch_level() : "(no dispatcher)";
    const char *forced = getenv("PALM_CPU_LEVEL");
    if (forced && *forced) CHECK(level && strcmp(level, forced) == 0, "dispatched to %s, PALM_CPU_LEVEL=%s", level ? level : "(none)", forced);
    fprintf(stderr, "palm-abi-test: libpalm %s (%s build) on %s\n", palm_version(), level ? level : "(none)", desc);
    char id[PALM_MODEL_ID_SIZE];
    EXPECT_OK(palm_model_id(model, id, sizeof id));
    CHECK(strlen(id) == 64, "id '%s'", id);
    const char *expect = getenv("PALM_EXPECT_MODEL_ID");
    if (expect && *expect) CHECK(strcmp(id, expect) == 0, "model id %s, .NET computes %s", id, expect);
    EXPECT_ERR(PALM_ERR_BUFFER_TOO_SMALL, palm_model_id(model, id, 64));
    EXPECT_ERR(PALM_ERR_INVALID_ARGUMENT, palm_model_id(model, NULL, 65));

    test_bad_input(model);
    test_state_round_trip(model);
    test_callback_stop(model);
    test_two_threads(model);
    test_cancel(model);
    palm_model_free(model);

    fprintf(stderr, "palm-abi-test: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
