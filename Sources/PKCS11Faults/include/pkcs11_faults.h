// A PKCS#11 module that wraps a real one (SoftHSM by default) and injects faults: see faults.c.
#ifndef P11JWT_PKCS11_FAULTS_H
#define P11JWT_PKCS11_FAULTS_H
#include <p11-kit/pkcs11.h>
#endif
