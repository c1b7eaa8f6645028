// libp11jwt-faults.so: a PKCS#11 module that wraps a real module and, as told by the environment,
// answers chosen calls with chosen CKR_* values or with odd-but-legal values, so tests can run the
// CLI, the library and the agent through every failure a third-party module or a pulled card can
// produce. It is a wrapper around a real token, never a mock: every call it does not fault goes to
// the real module.
//
//   P11JWT_FAULTS_MODULE  the real module (default: SoftHSM's /usr/lib/softhsm/libsofthsm2.so)
//   P11JWT_FAULTS         rules separated by ';':
//                           C_Sign=CKR_DEVICE_REMOVED       every call of C_Sign
//                           C_Sign@2=CKR_DEVICE_REMOVED     its 2nd call only (counted per process)
//                           C_Sign@2+=CKR_DEVICE_REMOVED    its 2nd call and every later one
//                           quirk=NAME                      an odd-but-legal answer (below)
//                         CKR values by name (the common ones) or as 0x… hex.
//   P11JWT_FAULTS_LOG     a file to which every wrapped call appends "C_Name rv\n"
//   P11JWT_FAULTS_SIGN_GATE  a path: while it exists, C_Sign (the call that returns the
//                         signature) waits, like a PIN pad or a busy network HSM, then goes on
//
// Quirks:
//   token-effectively-infinite  C_GetTokenInfo: session and PIN counts CK_EFFECTIVELY_INFINITE (0)
//   token-unavailable           C_GetTokenInfo: counts and memory CK_UNAVAILABLE_INFORMATION (~0)
//   token-huge                  C_GetTokenInfo: counts 2^63 + 5 (legal, larger than any Int)
//   token-pin-locked            C_GetTokenInfo: CKF_USER_PIN_LOCKED set
//   nul-padded                  C_GetTokenInfo / C_GetSlotInfo: strings padded with NUL, not spaces
//   mechanism-huge              C_GetMechanismInfo: ulMaxKeySize ~0, ulMinKeySize 0
//   slot-count-huge             C_GetSlotList: a count of 2^62 when asked for the size
//   mechanism-count-huge        C_GetMechanismList: a count of 2^62 when asked for the size
//   find-count-overflow         C_FindObjects: a count larger than the room given
//   attribute-length-huge       C_GetAttributeValue (size query): lengths of 2^40
//   sign-length-huge            C_Sign: CKR_BUFFER_TOO_SMALL with a length of 2^40
//   keygen-killed-midway        C_GenerateKeyPair: the process is killed (SIGKILL) as if inside the
//                               token's key generation: the private key is gone and the public key
//                               has neither label nor CKA_ID (what SoftHSM leaves after such a kill)
//   sign-buffer-dance           C_Sign: the first call of each signature says CKR_BUFFER_TOO_SMALL
//                               with the real length + 64 (legal: a caller must try again)
#include "pkcs11_faults.h"

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static CK_FUNCTION_LIST real_list_copy;
static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST wrapper;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

#define MAX_RULES 32
struct rule {
    char function[48];
    unsigned long from, to;  // calls counted from 1; to == 0: no upper bound
    CK_RV rv;
};
static struct rule rules[MAX_RULES];
static int rule_count;
static char quirks[512];
static int configured;

#define MAX_FUNCTIONS 64
static struct { char name[48]; unsigned long calls; } counters[MAX_FUNCTIONS];
static int counter_count;

static const struct { const char *name; CK_RV rv; } names[] = {
    {"CKR_OK", CKR_OK}, {"CKR_HOST_MEMORY", CKR_HOST_MEMORY}, {"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
    {"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED}, {"CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD},
    {"CKR_ATTRIBUTE_VALUE_INVALID", CKR_ATTRIBUTE_VALUE_INVALID}, {"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
    {"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY}, {"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
    {"CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID}, {"CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID},
    {"CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID}, {"CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE},
    {"CKR_OPERATION_NOT_INITIALIZED", CKR_OPERATION_NOT_INITIALIZED}, {"CKR_PIN_INCORRECT", CKR_PIN_INCORRECT},
    {"CKR_PIN_LOCKED", CKR_PIN_LOCKED}, {"CKR_PIN_EXPIRED", CKR_PIN_EXPIRED}, {"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
    {"CKR_SESSION_COUNT", CKR_SESSION_COUNT}, {"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
    {"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT}, {"CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED},
    {"CKR_TOKEN_WRITE_PROTECTED", CKR_TOKEN_WRITE_PROTECTED}, {"CKR_USER_ALREADY_LOGGED_IN", CKR_USER_ALREADY_LOGGED_IN},
    {"CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN}, {"CKR_BUFFER_TOO_SMALL", CKR_BUFFER_TOO_SMALL},
    {"CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED}, {"CKR_SLOT_ID_INVALID", CKR_SLOT_ID_INVALID},
    {"CKR_DATA_LEN_RANGE", CKR_DATA_LEN_RANGE}, {"CKR_KEY_SIZE_RANGE", CKR_KEY_SIZE_RANGE},
    {"CKR_TEMPLATE_INCONSISTENT", CKR_TEMPLATE_INCONSISTENT},
};

static int parse_rv(const char *text, CK_RV *rv) {
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(text, names[i].name) == 0) { *rv = names[i].rv; return 1; }
    }
    if (strncmp(text, "0x", 2) == 0) {
        char *end;
        unsigned long long value = strtoull(text + 2, &end, 16);
        if (*end == 0) { *rv = (CK_RV)value; return 1; }
    }
    return 0;
}

static void configure(void) {
    if (configured) return;
    configured = 1;
    const char *spec = getenv("P11JWT_FAULTS");
    if (spec == NULL) return;
    char *copy = strdup(spec), *save = NULL;
    for (char *item = strtok_r(copy, ";", &save); item != NULL; item = strtok_r(NULL, ";", &save)) {
        while (*item == ' ') item++;
        char *eq = strchr(item, '=');
        if (eq == NULL) continue;
        *eq = 0;
        if (strcmp(item, "quirk") == 0) {
            strncat(quirks, ",", sizeof quirks - strlen(quirks) - 1);
            strncat(quirks, eq + 1, sizeof quirks - strlen(quirks) - 1);
            strncat(quirks, ",", sizeof quirks - strlen(quirks) - 1);
            continue;
        }
        if (rule_count == MAX_RULES) break;
        struct rule *r = &rules[rule_count];
        char *at = strchr(item, '@');
        r->from = 1;
        r->to = 0;
        if (at != NULL) {
            *at = 0;
            char *end;
            r->from = strtoul(at + 1, &end, 10);
            r->to = *end == '+' ? 0 : r->from;
        }
        snprintf(r->function, sizeof r->function, "%s", item);
        if (!parse_rv(eq + 1, &r->rv)) {
            fprintf(stderr, "p11jwt-faults: unknown CKR value '%s' (rule ignored)\n", eq + 1);
            continue;
        }
        rule_count++;
    }
    free(copy);
}

static int quirk(const char *name) {
    char needle[80];
    snprintf(needle, sizeof needle, ",%s,", name);
    return strstr(quirks, needle) != NULL;
}

static void log_call(const char *function, CK_RV rv) {
    const char *path = getenv("P11JWT_FAULTS_LOG");
    if (path == NULL) return;
    FILE *file = fopen(path, "a");
    if (file == NULL) return;
    fprintf(file, "%s 0x%lx\n", function, (unsigned long)rv);
    fclose(file);
}

/// Counts the call; 1 and the rule's value when a rule answers it instead of the real module.
static int injected(const char *function, CK_RV *rv) {
    pthread_mutex_lock(&lock);
    configure();
    unsigned long call = 0;
    int i;
    for (i = 0; i < counter_count; i++) if (strcmp(counters[i].name, function) == 0) break;
    if (i == counter_count && counter_count < MAX_FUNCTIONS) {
        snprintf(counters[i].name, sizeof counters[i].name, "%s", function);
        counter_count++;
    }
    if (i < MAX_FUNCTIONS) call = ++counters[i].calls;
    int hit = 0;
    for (int r = 0; r < rule_count; r++) {
        if (strcmp(rules[r].function, function) == 0 && call >= rules[r].from && (rules[r].to == 0 || call <= rules[r].to)) {
            *rv = rules[r].rv;
            hit = 1;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return hit;
}

#define WRAP(name, params, args)                                     \
    static CK_RV w_##name params {                                   \
        CK_RV rv;                                                    \
        if (!injected(#name, &rv)) rv = real->name args;             \
        log_call(#name, rv);                                         \
        return rv;                                                   \
    }

static void nul_pad(unsigned char *field, size_t size) {
    size_t end = size;
    while (end > 0 && field[end - 1] == ' ') end--;
    memset(field + end, 0, size - end);
}

WRAP(C_Initialize, (CK_VOID_PTR args), (args))
WRAP(C_Finalize, (CK_VOID_PTR reserved), (reserved))
WRAP(C_GetInfo, (CK_INFO_PTR info), (info))
WRAP(C_OpenSession, (CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR session),
     (slot, flags, app, notify, session))
WRAP(C_CloseSession, (CK_SESSION_HANDLE session), (session))
WRAP(C_GetSessionInfo, (CK_SESSION_HANDLE session, CK_SESSION_INFO_PTR info), (session, info))
WRAP(C_Login, (CK_SESSION_HANDLE session, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG length), (session, user, pin, length))
WRAP(C_Logout, (CK_SESSION_HANDLE session), (session))
WRAP(C_FindObjectsInit, (CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR template, CK_ULONG count), (session, template, count))
WRAP(C_FindObjectsFinal, (CK_SESSION_HANDLE session), (session))
WRAP(C_SignInit, (CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism, CK_OBJECT_HANDLE key), (session, mechanism, key))

static CK_RV w_C_GenerateKeyPair(CK_SESSION_HANDLE session, CK_MECHANISM_PTR mechanism, CK_ATTRIBUTE_PTR pub, CK_ULONG pub_count,
                                 CK_ATTRIBUTE_PTR priv, CK_ULONG priv_count, CK_OBJECT_HANDLE_PTR pub_key, CK_OBJECT_HANDLE_PTR priv_key) {
    CK_RV rv;
    if (!injected("C_GenerateKeyPair", &rv)) {
        rv = real->C_GenerateKeyPair(session, mechanism, pub, pub_count, priv, priv_count, pub_key, priv_key);
        if (rv == CKR_OK && quirk("keygen-killed-midway")) {
            CK_ATTRIBUTE blank[] = {{CKA_LABEL, (CK_VOID_PTR) "", 0}, {CKA_ID, (CK_VOID_PTR) "", 0}};
            real->C_DestroyObject(session, *priv_key);
            real->C_SetAttributeValue(session, *pub_key, blank, 2);
            log_call("C_GenerateKeyPair", rv);
            raise(SIGKILL);
        }
    }
    log_call("C_GenerateKeyPair", rv);
    return rv;
}
WRAP(C_CreateObject, (CK_SESSION_HANDLE session, CK_ATTRIBUTE_PTR template, CK_ULONG count, CK_OBJECT_HANDLE_PTR object),
     (session, template, count, object))
WRAP(C_DestroyObject, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object), (session, object))
WRAP(C_SetAttributeValue, (CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR template, CK_ULONG count),
     (session, object, template, count))

static CK_RV w_C_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
    CK_RV rv;
    if (!injected("C_GetSlotList", &rv)) {
        rv = real->C_GetSlotList(present, list, count);
        if (rv == CKR_OK && list == NULL && quirk("slot-count-huge")) *count = (CK_ULONG)1 << 62;
    }
    log_call("C_GetSlotList", rv);
    return rv;
}

static CK_RV w_C_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info) {
    CK_RV rv;
    if (!injected("C_GetSlotInfo", &rv)) {
        rv = real->C_GetSlotInfo(slot, info);
        if (rv == CKR_OK && quirk("nul-padded")) {
            nul_pad(info->slotDescription, sizeof info->slotDescription);
            nul_pad(info->manufacturerID, sizeof info->manufacturerID);
        }
    }
    log_call("C_GetSlotInfo", rv);
    return rv;
}

static CK_RV w_C_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
    CK_RV rv;
    if (!injected("C_GetTokenInfo", &rv)) {
        rv = real->C_GetTokenInfo(slot, info);
        if (rv == CKR_OK) {
            CK_ULONG value = quirk("token-effectively-infinite") ? CK_EFFECTIVELY_INFINITE
                : quirk("token-unavailable") ? CK_UNAVAILABLE_INFORMATION
                : quirk("token-huge") ? ((CK_ULONG)1 << 63) + 5 : 1;
            if (value != 1) {
                info->ulMaxSessionCount = info->ulSessionCount = info->ulMaxRwSessionCount = info->ulRwSessionCount = value;
                info->ulMaxPinLen = info->ulMinPinLen = value;
                info->ulTotalPublicMemory = info->ulFreePublicMemory = info->ulTotalPrivateMemory = info->ulFreePrivateMemory = value;
            }
            if (quirk("token-pin-locked")) info->flags |= CKF_USER_PIN_LOCKED;
            if (quirk("nul-padded")) {
                nul_pad(info->label, sizeof info->label);
                nul_pad(info->manufacturerID, sizeof info->manufacturerID);
                nul_pad(info->model, sizeof info->model);
                nul_pad(info->serialNumber, sizeof info->serialNumber);
            }
        }
    }
    log_call("C_GetTokenInfo", rv);
    return rv;
}

static CK_RV w_C_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count) {
    CK_RV rv;
    if (!injected("C_GetMechanismList", &rv)) {
        rv = real->C_GetMechanismList(slot, list, count);
        if (rv == CKR_OK && list == NULL && quirk("mechanism-count-huge")) *count = (CK_ULONG)1 << 62;
    }
    log_call("C_GetMechanismList", rv);
    return rv;
}

static CK_RV w_C_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info) {
    CK_RV rv;
    if (!injected("C_GetMechanismInfo", &rv)) {
        rv = real->C_GetMechanismInfo(slot, type, info);
        if (rv == CKR_OK && quirk("mechanism-huge")) {
            info->ulMinKeySize = 0;
            info->ulMaxKeySize = ~(CK_ULONG)0;
        }
    }
    log_call("C_GetMechanismInfo", rv);
    return rv;
}

static CK_RV w_C_FindObjects(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE_PTR objects, CK_ULONG max, CK_ULONG_PTR count) {
    CK_RV rv;
    if (!injected("C_FindObjects", &rv)) {
        rv = real->C_FindObjects(session, objects, max, count);
        if (rv == CKR_OK && *count > 0 && quirk("find-count-overflow")) *count = max + 1000;
    }
    log_call("C_FindObjects", rv);
    return rv;
}

static CK_RV w_C_GetAttributeValue(CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object, CK_ATTRIBUTE_PTR template, CK_ULONG count) {
    CK_RV rv;
    if (!injected("C_GetAttributeValue", &rv)) {
        rv = real->C_GetAttributeValue(session, object, template, count);
        if (quirk("attribute-length-huge")) {
            for (CK_ULONG i = 0; i < count; i++) {
                if (template[i].pValue == NULL && template[i].ulValueLen != CK_UNAVAILABLE_INFORMATION) {
                    template[i].ulValueLen = (CK_ULONG)1 << 40;
                }
            }
        }
    }
    log_call("C_GetAttributeValue", rv);
    return rv;
}

static int dance_pending = 1;

static void wait_at_sign_gate(void) {
    const char *gate = getenv("P11JWT_FAULTS_SIGN_GATE");
    if (gate == NULL || *gate == '\0') return;
    struct timespec pause = { 0, 10 * 1000 * 1000 };
    while (access(gate, F_OK) == 0) nanosleep(&pause, NULL);
}

static CK_RV w_C_Sign(CK_SESSION_HANDLE session, CK_BYTE_PTR data, CK_ULONG length, CK_BYTE_PTR signature, CK_ULONG_PTR signature_length) {
    CK_RV rv;
    if (signature != NULL) wait_at_sign_gate();
    if (!injected("C_Sign", &rv)) {
        if (quirk("sign-length-huge") && signature != NULL) {
            *signature_length = (CK_ULONG)1 << 40;
            rv = CKR_BUFFER_TOO_SMALL;
        } else if (quirk("sign-buffer-dance") && signature != NULL && __atomic_exchange_n(&dance_pending, 0, __ATOMIC_SEQ_CST)) {
            // Ask the real module for the length (a size query keeps the operation active).
            CK_ULONG needed = 0;
            rv = real->C_Sign(session, data, length, NULL, &needed);
            if (rv == CKR_OK) {
                *signature_length = needed + 64;
                rv = CKR_BUFFER_TOO_SMALL;
            }
        } else {
            rv = real->C_Sign(session, data, length, signature, signature_length);
            if (rv == CKR_OK && signature != NULL) __atomic_store_n(&dance_pending, 1, __ATOMIC_SEQ_CST);
        }
    }
    log_call("C_Sign", rv);
    return rv;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    if (list == NULL) return CKR_ARGUMENTS_BAD;
    if (real == NULL) {
        const char *path = getenv("P11JWT_FAULTS_MODULE");
        if (path == NULL || *path == 0) path = "/usr/lib/softhsm/libsofthsm2.so";
        void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (handle == NULL) {
            fprintf(stderr, "p11jwt-faults: cannot load %s: %s\n", path, dlerror());
            return CKR_GENERAL_ERROR;
        }
        CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
        CK_FUNCTION_LIST_PTR found = NULL;
        if (get == NULL || get(&found) != CKR_OK || found == NULL) return CKR_GENERAL_ERROR;
        real_list_copy = *found;
        real = &real_list_copy;
        wrapper = *found;
        wrapper.C_Initialize = w_C_Initialize;
        wrapper.C_Finalize = w_C_Finalize;
        wrapper.C_GetInfo = w_C_GetInfo;
        wrapper.C_GetFunctionList = C_GetFunctionList;
        wrapper.C_GetSlotList = w_C_GetSlotList;
        wrapper.C_GetSlotInfo = w_C_GetSlotInfo;
        wrapper.C_GetTokenInfo = w_C_GetTokenInfo;
        wrapper.C_GetMechanismList = w_C_GetMechanismList;
        wrapper.C_GetMechanismInfo = w_C_GetMechanismInfo;
        wrapper.C_OpenSession = w_C_OpenSession;
        wrapper.C_CloseSession = w_C_CloseSession;
        wrapper.C_GetSessionInfo = w_C_GetSessionInfo;
        wrapper.C_Login = w_C_Login;
        wrapper.C_Logout = w_C_Logout;
        wrapper.C_CreateObject = w_C_CreateObject;
        wrapper.C_DestroyObject = w_C_DestroyObject;
        wrapper.C_GetAttributeValue = w_C_GetAttributeValue;
        wrapper.C_SetAttributeValue = w_C_SetAttributeValue;
        wrapper.C_FindObjectsInit = w_C_FindObjectsInit;
        wrapper.C_FindObjects = w_C_FindObjects;
        wrapper.C_FindObjectsFinal = w_C_FindObjectsFinal;
        wrapper.C_SignInit = w_C_SignInit;
        wrapper.C_Sign = w_C_Sign;
        wrapper.C_GenerateKeyPair = w_C_GenerateKeyPair;
    }
    *list = &wrapper;
    return CKR_OK;
}
