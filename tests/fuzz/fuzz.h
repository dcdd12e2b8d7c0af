/* Shared by the fuzz harnesses: the libFuzzer entry point, the helpers in util.c, and an
 * invariant check that aborts, so a broken invariant is a crash to libFuzzer and a failure to
 * the corpus replay driver. */
#ifndef BH_TESTS_FUZZ_H
#define BH_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/buf.h"
#include "base/json.h"
#include "signalr/protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* util.c: JSON trees for the harnesses that re-encode what they parsed. */

/* Same shape, types, keys and strings. Numbers compare by text, or with loose_numbers (a
 * protocol that carries them as binary numbers) by the value strtod gives both texts. */
int fuzz_json_equal(const bh_json_t *a, const bh_json_t *b, int loose_numbers);
/* Container nesting: 0 for a scalar, 1 for [] or [1], 2 for [[]]. */
size_t fuzz_json_depth(const bh_json_t *v);
/* Checks the tree's own invariants (counts, keys only in objects, NUL-terminated valid UTF-8
 * strings, numbers that are JSON numbers) and aborts when one fails. */
void fuzz_json_check_tree(const bh_json_t *v);

/* util.c: the hub protocol checks both hub harnesses share. */

/* Checks one frame() answer r (with *msg, *msg_len) for data[0..len) and limit max against
 * the protocol's framing rules; aborts when it is wrong. */
typedef void (*fuzz_frame_check_fn)(const char *data, size_t len, size_t max, int r,
                                    const char *msg, size_t msg_len);

/* Splits data into frames with p->frame (checked by check and for prefix/limit consistency),
 * parses each payload, checks the message, and re-encodes it with p's writers: what they write
 * must frame and parse back to the same message. loose_numbers: numbers may change text (a
 * binary protocol), only their value must survive. Returns the number of messages parsed. */
size_t fuzz_hub(const bh_sr_protocol_t *p, fuzz_frame_check_fn check, int loose_numbers,
                const char *data, size_t size);
/* Writes the JSON text json with p->write_invocation and checks it comes back as an
 * Invocation of target whose single argument equals the parsed json (json must be valid). */
void fuzz_hub_invocation(const bh_sr_protocol_t *p, int loose_numbers, const char *target,
                         const char *json, size_t len);

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
