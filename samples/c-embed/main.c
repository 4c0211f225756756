/* c-embed: loads a Palm model through libpalm and streams one completion to stdout.
 *   usage: c-embed [--backend auto|cpu|vulkan] [--max-tokens N] [--seed N] MODEL.palm [PROMPT]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "palm.h"

static int on_piece(const char *piece, size_t len, void *user) {
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0; /* continue */
}

static int fail(const char *what, palm_status st) {
    fprintf(stderr, "c-embed: %s failed: %s (%d): %s\n", what, palm_status_string(st), (int)st, palm_last_error());
    return 1;
}

int main(int argc, char **argv) {
    palm_model_params mp = palm_model_default_params();
    palm_generate_params gp = palm_generate_default_params();
    palm_session_params sp = palm_session_default_params();
    const char *path = NULL, *prompt = "And God said";
    gp.max_tokens = 60;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--backend") && i + 1 < argc) {
            const char *b = argv[++i];
            mp.backend = !strcmp(b, "cpu") ? PALM_BACKEND_CPU : !strcmp(b, "vulkan") ? PALM_BACKEND_VULKAN : PALM_BACKEND_AUTO;
        } else if (!strcmp(argv[i], "--max-tokens") && i + 1 < argc) {
            gp.max_tokens = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            sp.seed = strtoull(argv[++i], NULL, 10);
            sp.has_seed = 1;
        } else if (!path) {
            path = argv[i];
        } else {
            prompt = argv[i];
        }
    }
    if (!path) {
        fprintf(stderr, "usage: c-embed [--backend auto|cpu|vulkan] [--max-tokens N] [--seed N] MODEL.palm [PROMPT]\n");
        return 2;
    }
    if (palm_abi_version() != PALM_ABI_VERSION) {
        fprintf(stderr, "c-embed: libpalm ABI %u, header %d\n", palm_abi_version(), PALM_ABI_VERSION);
        return 1;
    }

    palm_model *model = NULL;
    palm_status st = palm_model_load(path, &mp, &model);
    if (st != PALM_OK) return fail("palm_model_load", st);

    char desc[512];
    int32_t backend = 0;
    palm_memory_info mem;
    if ((st = palm_model_backend(model, &backend, desc, sizeof desc, NULL)) != PALM_OK) return fail("palm_model_backend", st);
    if ((st = palm_model_memory(model, &mem)) != PALM_OK) return fail("palm_model_memory", st);
    fprintf(stderr, "libpalm %s: %s; weights %lld bytes, %lld bytes per session\n", palm_version(), desc,
            (long long)mem.weight_bytes, (long long)mem.session_bytes);

    palm_session *session = NULL;
    if ((st = palm_session_create(model, &sp, &session)) != PALM_OK) return fail("palm_session_create", st);
    palm_stop_reason reason;
    fputs(prompt, stdout);
    st = palm_session_generate(session, prompt, &gp, on_piece, NULL, &reason);
    if (st != PALM_OK) return fail("palm_session_generate", st);
    printf("\n");
    fflush(stdout);
    fprintf(stderr, "stop reason %d\n", (int)reason);
    palm_session_free(session);
    palm_model_free(model);
    return 0;
}
