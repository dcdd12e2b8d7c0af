/* SignalR hub protocol codecs (internal to src/signalr): the JSON protocol (records separated
 * by 0x1E) and the MessagePack protocol (VarInt length-prefixed), behind one function table;
 * the handshake (always JSON). Bytes in, structures out; never a socket. */
#ifndef BH_SIGNALR_PROTOCOL_H
#define BH_SIGNALR_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

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
    uint64_t sequence_id; /* Ack (8) and Sequence (9) */
} bh_sr_msg_t;

/* A hub protocol. Messages are parsed into bh_sr_msg_t with the arguments as a bh_json_t tree
 * (MessagePack is transcoded), so hub methods never see which protocol carried them. */
typedef struct {
    const char *name; /* "json", "messagepack" (the handshake's protocol name) */
    int version;      /* highest version supported (2: adds Ack/Sequence; 1 also valid) */
    int binary;       /* needs the Binary transfer format */
    /* Find the next complete message in data[0..len): returns the bytes it occupies including
     * framing (> 0) with *msg and *msg_len set to the payload, 0 when incomplete, BH_ETOOBIG when
     * its payload is (or will be) larger than max, BH_EINVAL for malformed framing. */
    int (*frame)(const char *data, size_t len, size_t max, const char **msg, size_t *msg_len);
    /* Parse one payload; as bh_sr_parse_message. */
    int (*parse)(const char *msg, size_t len, bh_json_doc_t **doc, bh_sr_msg_t *out,
                 const char **err);
    /* Append one complete framed message. arg_json: the single argument, as JSON text. */
    int (*write_completion)(bh_buf_t *b, const char *invocation_id, const char *error);
    int (*write_invocation)(bh_buf_t *b, const char *target, const char *arg_json, size_t len);
    /* The same Invocation with its single argument already encoded in this protocol (JSON text,
     * or one MessagePack value), copied as it is. */
    int (*write_invocation_encoded)(bh_buf_t *b, const char *target, const char *arg, size_t len);
    int (*write_ping)(bh_buf_t *b);
    int (*write_close)(bh_buf_t *b, const char *error, int allow_reconnect);
    int (*write_ack)(bh_buf_t *b, uint64_t sequence_id);
    int (*write_sequence)(bh_buf_t *b, uint64_t sequence_id);
} bh_sr_protocol_t;

extern const bh_sr_protocol_t bh_sr_json_protocol;
extern const bh_sr_protocol_t bh_sr_msgpack_protocol;
/* The protocol called name, or NULL. */
const bh_sr_protocol_t *bh_sr_protocol_find(const char *name);

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
