/* API keys: generation, hashing, and the in-memory keyring the transports consult.
 * A key is "bh_" + 16 hex characters of key id + "_" + 43 base64url characters of secret
 * (256 random bits). Only the SHA-256 of the whole key is stored; lookups compare hashes in
 * constant time. Keys are never logged. */
#ifndef BH_AUTH_AUTH_H
#define BH_AUTH_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "../store/store.h"

#define BH_KEY_ID_LEN 16
#define BH_API_KEY_LEN (3 + BH_KEY_ID_LEN + 1 + 43)

typedef struct bh_keyring bh_keyring_t;

/* A new random key: out gets BH_API_KEY_LEN characters + NUL, key_id the 16-hex id + NUL. */
int bh_auth_key_generate(char out[BH_API_KEY_LEN + 1], char key_id[BH_KEY_ID_LEN + 1]);
void bh_auth_key_hash(const char *key, size_t len, uint8_t out[32]);
/* Constant-time equality of two n-byte regions (time independent of where they differ). */
int bh_auth_ct_equal(const void *a, const void *b, size_t n);

bh_keyring_t *bh_keyring_new(void);
void bh_keyring_free(bh_keyring_t *kr);
/* Add or replace (by key id) a key record, e.g. from bh_store_load. */
int bh_keyring_put(bh_keyring_t *kr, const bh_store_key_t *k);
/* Resolve a presented key to its user. BH_OK with user_id (and key_id when non-NULL) filled,
 * or BH_ENOTFOUND for malformed, unknown or revoked keys. */
int bh_keyring_lookup(const bh_keyring_t *kr, const char *key, size_t len,
                      char user_id[BH_ID_MAX + 1], char key_id[BH_KEY_ID_LEN + 1]);

/* True when key_id names a key of the keyring that is not revoked. */
bool bh_keyring_active(const bh_keyring_t *kr, const char *key_id);

/* Create a key for user_id: generates it, stores its hash durably, adds it to the keyring.
 * out receives the key (shown once). */
int bh_auth_create_key(bh_store_t *store, bh_keyring_t *kr, const char *user_id,
                       char out[BH_API_KEY_LEN + 1], char key_id[BH_KEY_ID_LEN + 1]);

#endif
