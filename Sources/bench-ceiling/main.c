// The reference ceiling for scripts/bench: what the PKCS#11 module does when called from C in a
// tight loop — C_SignInit + C_Sign for N seconds on T threads, one session each — with no Swift
// anywhere near the hot loop. p11jwt's figures are reported as ratios to this.
//
//   bench-ceiling --module SO --token LABEL --pin-file F --key LABEL
//                 --mechanism rsa-pkcs|rsa-pss|ecdsa --threads T --seconds S
//
// Prints one JSON object: {"mechanism","threads","seconds","signatures","perSecond"}.
#include <p11-kit/pkcs11.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static CK_FUNCTION_LIST_PTR f;
static CK_SLOT_ID slot;
static CK_MECHANISM mechanism;
static CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
static unsigned char input[64];
static CK_ULONG input_length;
static const char *key_label;
static double seconds;

static void die(const char *what, CK_RV rv) {
    fprintf(stderr, "bench-ceiling: %s failed: 0x%lx\n", what, (unsigned long)rv);
    exit(1);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE session) {
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE template[] = {
        {CKA_CLASS, &cls, sizeof cls},
        {CKA_LABEL, (void *)key_label, strlen(key_label)},
    };
    CK_RV rv = f->C_FindObjectsInit(session, template, 2);
    if (rv != CKR_OK) die("C_FindObjectsInit", rv);
    CK_OBJECT_HANDLE key;
    CK_ULONG count = 0;
    rv = f->C_FindObjects(session, &key, 1, &count);
    if (rv != CKR_OK) die("C_FindObjects", rv);
    f->C_FindObjectsFinal(session);
    if (count != 1) {
        fprintf(stderr, "bench-ceiling: no private key labelled '%s'\n", key_label);
        exit(1);
    }
    return key;
}

struct worker {
    pthread_t thread;
    CK_SESSION_HANDLE session;
    unsigned long signatures;
};

static void *work(void *arg) {
    struct worker *w = arg;
    CK_OBJECT_HANDLE key = find_key(w->session);
    unsigned char signature[1024];
    double deadline = now() + seconds;
    while (now() < deadline) {
        CK_RV rv = f->C_SignInit(w->session, &mechanism, key);
        if (rv != CKR_OK) die("C_SignInit", rv);
        CK_ULONG length = sizeof signature;
        rv = f->C_Sign(w->session, input, input_length, signature, &length);
        if (rv != CKR_OK) die("C_Sign", rv);
        w->signatures++;
    }
    return NULL;
}

int main(int argc, char **argv) {
    const char *module = NULL, *token = NULL, *pin_file = NULL, *mech = NULL;
    int threads = 1;
    seconds = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--module")) module = argv[i + 1];
        else if (!strcmp(argv[i], "--token")) token = argv[i + 1];
        else if (!strcmp(argv[i], "--pin-file")) pin_file = argv[i + 1];
        else if (!strcmp(argv[i], "--key")) key_label = argv[i + 1];
        else if (!strcmp(argv[i], "--mechanism")) mech = argv[i + 1];
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
    }
    if (!module || !token || !pin_file || !key_label || !mech || threads < 1) {
        fprintf(stderr, "usage: bench-ceiling --module SO --token LABEL --pin-file F --key LABEL "
                        "--mechanism rsa-pkcs|rsa-pss|ecdsa [--threads T] [--seconds S]\n");
        return 2;
    }
    // The SHA-256 DigestInfo prefix, then a digest (any 32 bytes do for timing).
    static const unsigned char prefix[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65,
                                           0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    unsigned char digest[32];
    for (int i = 0; i < 32; i++) digest[i] = (unsigned char)(i * 7 + 1);
    if (!strcmp(mech, "rsa-pkcs")) {
        mechanism = (CK_MECHANISM){CKM_RSA_PKCS, NULL, 0};
        memcpy(input, prefix, sizeof prefix);
        memcpy(input + sizeof prefix, digest, 32);
        input_length = sizeof prefix + 32;
    } else if (!strcmp(mech, "rsa-pss")) {
        mechanism = (CK_MECHANISM){CKM_RSA_PKCS_PSS, &pss, sizeof pss};
        memcpy(input, digest, 32);
        input_length = 32;
    } else if (!strcmp(mech, "ecdsa")) {
        mechanism = (CK_MECHANISM){CKM_ECDSA, NULL, 0};
        memcpy(input, digest, 32);
        input_length = 32;
    } else {
        fprintf(stderr, "bench-ceiling: unknown mechanism %s\n", mech);
        return 2;
    }

    void *handle = dlopen(module, RTLD_NOW);
    if (!handle) {
        fprintf(stderr, "bench-ceiling: %s\n", dlerror());
        return 1;
    }
    CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR) = (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(handle, "C_GetFunctionList");
    if (!get) die("dlsym C_GetFunctionList", 0);
    CK_RV rv = get(&f);
    if (rv != CKR_OK) die("C_GetFunctionList", rv);
    CK_C_INITIALIZE_ARGS init = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
    rv = f->C_Initialize(&init);
    if (rv != CKR_OK) die("C_Initialize", rv);

    CK_ULONG count = 0;
    f->C_GetSlotList(CK_TRUE, NULL, &count);
    CK_SLOT_ID *slots = calloc(count ? count : 1, sizeof *slots);
    f->C_GetSlotList(CK_TRUE, slots, &count);
    int found = 0;
    for (CK_ULONG i = 0; i < count && !found; i++) {
        CK_TOKEN_INFO info;
        if (f->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
        size_t n = strlen(token);
        if (n <= sizeof info.label && !memcmp(info.label, token, n)) {
            int blank = 1;
            for (size_t j = n; j < sizeof info.label; j++) blank &= info.label[j] == ' ';
            if (blank) {
                slot = slots[i];
                found = 1;
            }
        }
    }
    if (!found) {
        fprintf(stderr, "bench-ceiling: no token labelled '%s'\n", token);
        return 1;
    }

    char pin[256] = {0};
    FILE *pf = fopen(pin_file, "r");
    if (!pf || !fgets(pin, sizeof pin, pf)) {
        fprintf(stderr, "bench-ceiling: cannot read %s\n", pin_file);
        return 1;
    }
    fclose(pf);
    pin[strcspn(pin, "\r\n")] = 0;

    struct worker *workers = calloc(threads, sizeof *workers);
    for (int i = 0; i < threads; i++) {
        rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &workers[i].session);
        if (rv != CKR_OK) die("C_OpenSession", rv);
    }
    rv = f->C_Login(workers[0].session, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) die("C_Login", rv);
    memset(pin, 0, sizeof pin);

    double started = now();
    for (int i = 0; i < threads; i++) pthread_create(&workers[i].thread, NULL, work, &workers[i]);
    unsigned long total = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(workers[i].thread, NULL);
        total += workers[i].signatures;
    }
    double elapsed = now() - started;
    printf("{\"mechanism\":\"%s\",\"threads\":%d,\"seconds\":%.3f,\"signatures\":%lu,\"perSecond\":%.1f}\n", mech, threads, elapsed,
           total, total / elapsed);
    f->C_Logout(workers[0].session);
    f->C_Finalize(NULL);
    return 0;
}
