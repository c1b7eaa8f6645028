// The PKCS#11 definitions p11jwt uses are p11-kit's (Debian: libp11-kit-dev).
// This header only adds what the 2.40 header lacks: the PKCS#11 3.0 interface
// structure used by C_GetInterface, so 3.x modules can be loaded the 3.x way.
#ifndef P11JWT_CP11KIT_SHIM_H
#define P11JWT_CP11KIT_SHIM_H

#include <p11-kit/pkcs11.h>
#include <p11-kit/p11-kit.h>
#include <p11-kit/uri.h>
#include <dlfcn.h>

/* PKCS #11 v3.0, section 5.2: CK_INTERFACE. */
typedef struct P11JWT_CK_INTERFACE {
    CK_CHAR *pInterfaceName;
    CK_VOID_PTR pFunctionList;
    CK_FLAGS flags;
} P11JWT_CK_INTERFACE;

typedef CK_RV (*P11JWT_C_GetInterface)(CK_UTF8CHAR *pInterfaceName, CK_VERSION *pVersion,
                                       P11JWT_CK_INTERFACE **ppInterface, CK_FLAGS flags);

#endif
