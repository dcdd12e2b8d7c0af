/* The seed's JavaScript example, in C with libbalancehub: connect to the execution hub,
 * invoke GetBalances("my-client-123"), print the executionEvents data as JSON, and exit.
 *
 *   BALANCEHUB_API_KEY=bh_... ./get_balances [HUB_URL]
 *
 * HUB_URL defaults to env BALANCEHUB_URL, then http://127.0.0.1:5000/ExecutionLiveServer/v1.
 * Build: cc get_balances.c $(pkg-config --cflags --libs balancehub) */
#include <stdio.h>
#include <stdlib.h>

#include <balancehub/client.h>

typedef struct {
    bh_balances_t *event; /* the snapshot, kept until the invocation completes */
    int done, failed;
} example_t;

/* connection.on('executionEvents', ...) */
static void on_balances(bh_client_t *c, const bh_balances_t *b, void *ud) {
    example_t *ex = ud;
    if (b->kind == BH_BALANCES_SNAPSHOT && ex->event == NULL &&
        bh_balances_dup(b, &ex->event) != BH_CLIENT_OK)
        ex->failed = 1;
}

/* An error event (for example preChecksError for a bad clientId). */
static void on_error(bh_client_t *c, int err, const char *message, void *ud) {
    example_t *ex = ud;
    fprintf(stderr, "Command failed: %s\n", message);
    ex->failed = 1;
}

/* connection.invoke(...).then / .catch */
static void on_completion(bh_client_t *c, uint64_t id, int err, const char *message, void *ud) {
    example_t *ex = ud;
    ex->done = 1;
    if (err != BH_CLIENT_OK) {
        fprintf(stderr, "Command failed: %s\n", message ? message : bh_client_strerror(err));
        ex->failed = 1;
        return;
    }
    printf("Command sent successfully\n");
}

int main(int argc, char **argv) {
    static const bh_client_callbacks_t callbacks = {NULL, on_balances, on_completion, on_error};
    const char *url = argc > 1 ? argv[1] : getenv("BALANCEHUB_URL");
    bh_client_options_t options;
    bh_client_t *client = NULL;
    example_t ex = {NULL, 0, 0};
    int r;

    bh_client_options_init(&options);
    options.url = url ? url : "http://127.0.0.1:5000/ExecutionLiveServer/v1";
    options.api_key = getenv("BALANCEHUB_API_KEY"); /* accessTokenFactory: () => apiKey */
    if (bh_client_new(&options, &callbacks, &ex, &client) != BH_CLIENT_OK) {
        fprintf(stderr, "Connection failed: invalid URL or API key\n");
        return 1;
    }
    r = bh_client_connect(client);
    if (r != BH_CLIENT_OK) {
        fprintf(stderr, "Connection failed: %s\n", bh_client_last_error(client));
        bh_client_free(client);
        return 1;
    }
    printf("Connected to WebSocket\n");

    r = bh_client_get_balances(client, "my-client-123", NULL);
    while (r == BH_CLIENT_OK && !ex.done && bh_client_state(client) == BH_CLIENT_CONNECTED)
        r = bh_client_poll(client, -1);
    if (!ex.done && !ex.failed)
        fprintf(stderr, "Command failed: %s\n", bh_client_last_error(client));

    if (ex.done && ex.event != NULL && !ex.failed) {
        size_t n = bh_balances_to_json(ex.event, NULL, 0);
        char *json = malloc(n + 1);
        if (json != NULL) {
            bh_balances_to_json(ex.event, json, n + 1);
            printf("Received event: %s\n", json);
            free(json);
        } else {
            ex.failed = 1;
        }
    }
    /* a clean close: WebSocket Close, then wait (up to a second) for the server's */
    bh_client_stop(client);
    bh_client_run(client);
    bh_balances_free(ex.event);
    bh_client_free(client);
    return ex.done && ex.event != NULL && !ex.failed ? 0 : 1;
}
