/* WebSocket (RFC 6455) server and client sides: handshake keys and framing. Codec only: bytes
 * from the socket go in through bh_ws_feed, complete messages come out through callbacks, frames
 * to send are serialized into a caller's buffer by bh_ws_flush. */
#ifndef BH_WS_WS_H
#define BH_WS_WS_H

#include <stddef.h>
#include <stdint.h>

#include "../base/buf.h"

/* Sec-WebSocket-Accept for a client's Sec-WebSocket-Key: 28 base64 characters + NUL. */
int bh_ws_accept_key(const char *key, size_t key_len, char out[29]);

typedef struct bh_ws bh_ws_t;

typedef struct {
    /* A complete (reassembled) data message. Text messages are valid UTF-8 here; invalid ones
     * never arrive: the session closes with 1007 instead. */
    void (*on_message)(void *ud, int binary, const char *data, size_t len);
} bh_ws_callbacks_t;

/* New server session. Messages larger than max_msg bytes close with 1009. */
bh_ws_t *bh_ws_server_new(const bh_ws_callbacks_t *cb, void *ud, size_t max_msg);
/* New client session: every frame it sends is masked with a fresh key from RAND_bytes, and a
 * masked frame from the server is a protocol error (1002). Otherwise as the server side. */
bh_ws_t *bh_ws_client_new(const bh_ws_callbacks_t *cb, void *ud, size_t max_msg);

/* Client handshake: a fresh Sec-WebSocket-Key (base64 of 16 random bytes: 24 characters + NUL). */
int bh_ws_client_key(char out[25]);
/* BH_OK when accept[0..len) is the Sec-WebSocket-Accept that key calls for, else BH_EPROTO. */
int bh_ws_client_check_accept(const char *key, const char *accept, size_t len);
void bh_ws_free(bh_ws_t *ws);

/* Feed bytes read from the socket. Protocol errors queue a Close with the fitting code
 * (1002 protocol, 1007 bad UTF-8, 1009 too big) and return BH_EPROTO; callbacks may run. */
int bh_ws_feed(bh_ws_t *ws, const char *data, size_t len);
/* Queue one message (a text message must be valid UTF-8). BH_ECLOSED after a Close. */
int bh_ws_send(bh_ws_t *ws, int binary, const char *data, size_t len);
/* Queue a Close frame with code and reason (start of the close handshake). */
int bh_ws_close(bh_ws_t *ws, uint16_t code, const char *reason);
/* Serialize every queued frame into out (masked on the client side only). */
int bh_ws_flush(bh_ws_t *ws, bh_buf_t *out);
/* True once a Close was both sent and received, or a protocol error was answered with a
 * Close: the TCP connection should be closed after the last flush is written. */
int bh_ws_finished(const bh_ws_t *ws);
/* Close code received from the peer (0 when none yet). */
uint16_t bh_ws_peer_close_code(const bh_ws_t *ws);
/* Close code this side answered a protocol error of the peer with (1002, 1007, 1009; 0 when
 * none), e.g. to count oversized messages. */
uint16_t bh_ws_error_code(const bh_ws_t *ws);

#endif
