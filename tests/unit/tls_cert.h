/* Shared by unit tests that need a TLS listener: a throwaway self-signed P-256 certificate for
 * 127.0.0.1 / localhost, made in-process and written as PEM files into a directory. */
#ifndef BH_TESTS_TLS_CERT_H
#define BH_TESTS_TLS_CERT_H

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>

/* Writes dir/cert.pem and dir/key.pem and puts their paths in cert and key (cap bytes each).
 * 0, or -1 on any failure. */
static inline int bh_test_cert_files(const char *dir, char *cert, char *key, size_t cap) {
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_EXTENSION *san = NULL;
    FILE *fc = NULL, *fk = NULL;
    int ok = 0;
    snprintf(cert, cap, "%s/cert.pem", dir);
    snprintf(key, cap, "%s/key.pem", dir);
    if (!pk || !x)
        goto done;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pk);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    san = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "IP:127.0.0.1,DNS:localhost");
    if (!san || !X509_add_ext(x, san, -1) || X509_sign(x, pk, EVP_sha256()) <= 0)
        goto done;
    fc = fopen(cert, "w");
    fk = fopen(key, "w");
    ok = fc && fk && PEM_write_X509(fc, x) == 1 &&
         PEM_write_PrivateKey(fk, pk, NULL, NULL, 0, NULL, NULL) == 1;
done:
    if (fc)
        fclose(fc);
    if (fk)
        fclose(fk);
    X509_EXTENSION_free(san);
    X509_free(x);
    EVP_PKEY_free(pk);
    return ok ? 0 : -1;
}

#endif
