/* Corpus replay without libFuzzer: runs LLVMFuzzerTestOneInput over every file named on the
 * command line or found in a named directory, so `make test` re-checks every input that ever
 * crashed a harness, with gcc and the sanitizers. Each input gets an exact-size heap copy so
 * AddressSanitizer sees any read past its end, as under libFuzzer. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

/* Present only in sanitizer builds: lets a sanitizer report name the input it died on. */
extern void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static const char *current; /* the input being run, for the death messages */

static void say_current(void) {
    static const char pre[] = "driver: failing input: ";
    if (current == NULL)
        return;
    /* async-signal-safe: this also runs from the SIGABRT handler */
    if (write(2, pre, sizeof pre - 1) < 0 || write(2, current, strlen(current)) < 0 ||
        write(2, "\n", 1) < 0)
        return;
}

static void on_abort(int sig) {
    say_current();
    signal(sig, SIG_DFL);
    raise(sig);
}

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    long size;

    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0)
        goto fail;
    /* malloc(0) may return NULL: keep one byte allocated but pass the true size */
    data = malloc(size > 0 ? (size_t)size : 1);
    if (data == NULL || fread(data, 1, (size_t)size, f) != (size_t)size)
        goto fail;
    fclose(f);
    current = path;
    LLVMFuzzerTestOneInput(data, (size_t)size);
    current = NULL;
    free(data);
    return 0;
fail:
    fprintf(stderr, "driver: %s: %s\n", path, strerror(errno ? errno : EIO));
    if (f != NULL)
        fclose(f);
    free(data);
    return -1;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* Every regular file directly inside dir, in name order; returns files run or -1. */
static long run_dir(const char *dir) {
    struct dirent **names = NULL;
    long ran = 0;
    int n = scandir(dir, &names, NULL, by_name), i;

    if (n < 0) {
        fprintf(stderr, "driver: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    for (i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        if (ran >= 0 && names[i]->d_name[0] != '.' &&
            snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name) < (int)sizeof path &&
            stat(path, &st) == 0 && S_ISREG(st.st_mode))
            ran = run_file(path) == 0 ? ran + 1 : -1;
        free(names[i]);
    }
    free(names);
    return ran;
}

int main(int argc, char **argv) {
    long total = 0;
    int i;

    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR-or-FILE...\n", argv[0]);
        return 2;
    }
    signal(SIGABRT, on_abort);
    if (__sanitizer_set_death_callback != NULL)
        __sanitizer_set_death_callback(say_current);
    for (i = 1; i < argc; i++) {
        struct stat st;
        long n;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "driver: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        n = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_file(argv[i]) == 0 ? 1 : -1;
        if (n < 0)
            return 1;
        total += n;
    }
    if (total == 0) {
        fprintf(stderr, "driver: no inputs\n");
        return 1;
    }
    printf("%s: %ld inputs ok\n", argv[0], total);
    return 0;
}
