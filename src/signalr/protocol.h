/* SignalR JSON hub protocol codec (internal to src/signalr): records separated by 0x1E,
 * handshake request/response, hub messages in and out. Bytes in, structures out. */
#ifndef BH_SIGNALR_PROTOCOL_H
#define BH_SIGNALR_PROTOCOL_H

#include <stddef.h>

#include "../base/buf.h"
#include "../base/json.h"

#define BH_SR_RS 0x1e

enum {
    BH_SR_INVOCATION = 1,
    BH_SR_STREAM_ITEM = 2,
    BH_SR_COMPLETION = 3,
    BH_SR_STREAM_INVOCATION = 4,
    BH_SR_CANCEL_INVOCATION = 5,
    BH_SR_PING = 6,
    BH_SR_CLOSE = 7,
    BH_SR_ACK = 8,
    BH_SR_SEQUENCE = 9,
};

typedef struct {
    int type;
    const char *invocation_id; /* NULL when absent */
    const char *target;
    const bh_json_t *arguments; /* an array */
    int has_stream_ids;
} bh_sr_msg_t;

/* Parse a handshake request. BH_OK with *protocol pointing into *doc and *version set, or
 * BH_EINVAL with *err describing the problem (static text). */
int bh_sr_parse_handshake(const char *text, size_t len, bh_json_doc_t **doc, const char **protocol,
                          int64_t *version, const char **err);

/* Parse one hub message. BH_OK fills msg (pointers into *doc, which the caller frees);
 * BH_EINVAL with *err (static text) for anything malformed. Unknown types parse fine. */
int bh_sr_parse_message(const char *text, size_t len, bh_json_doc_t **doc, bh_sr_msg_t *msg,
                        const char **err);

int bh_sr_write_completion(bh_buf_t *b, const char *invocation_id, const char *error);
int bh_sr_write_invocation(bh_buf_t *b, const char *target, const char *arg_json, size_t len);
int bh_sr_write_ping(bh_buf_t *b);
int bh_sr_write_close(bh_buf_t *b, const char *error, int allow_reconnect);
int bh_sr_write_handshake_response(bh_buf_t *b, const char *error);

#endif
