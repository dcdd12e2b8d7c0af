# balancehub build. `make` builds, `make run` starts the demo server, `make test` runs every test
# (unit, interop, and the same again under AddressSanitizer + UndefinedBehaviorSanitizer; the
# threaded ones also under ThreadSanitizer).

BUILD ?= build
SAN ?=
CC ?= cc
PKGS := libuv openssl sqlite3 libcurl
WARN := -Wall -Wextra -Werror -Wmissing-prototypes -Wshadow -Wno-unused-parameter
CFLAGS ?= -O2 -g
ifeq ($(SAN),1)
CFLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=address,undefined
endif
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -Isrc $(WARN) $(CFLAGS) -MMD -MP $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lmsgpackc -lpthread -lm
TEST_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

LIB_SRC := $(sort $(shell find src -name '*.c' ! -path 'src/cli/*'))
CLI_SRC := $(sort $(wildcard src/cli/*.c))
TEST_SRC := $(sort $(wildcard tests/unit/test_*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/web_assets.o
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)

BIN := $(BUILD)/balancehub
LISTEN ?= 127.0.0.1:5000

.PHONY: all run test unit interop deps clean format format-check bench browser
all: $(BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libbh.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The API tester page, embedded at build time: tools/embed turns web/* and the SignalR browser
# bundles into a C table (src/http/static.c serves it), rebuilt whenever one of them changes.
SIGNALR_JS := node_modules/@microsoft/signalr/dist/browser/signalr.min.js
MSGPACK_JS := node_modules/@microsoft/signalr-protocol-msgpack/dist/browser/signalr-protocol-msgpack.min.js
WEB_INPUTS := $(sort $(wildcard web/*)) $(SIGNALR_JS) $(MSGPACK_JS)

$(BUILD)/tools/embed: tools/embed.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE $(WARN) -O2 -o $@ $<

$(BUILD)/gen/web_assets.c: $(BUILD)/tools/embed $(WEB_INPUTS)
	@mkdir -p $(dir $@)
	$(BUILD)/tools/embed $@ $(WEB_INPUTS)

$(BUILD)/gen/web_assets.o: $(BUILD)/gen/web_assets.c
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# The bundles come from npm: a fresh checkout gets them (and the rest) from scripts/deps.
$(SIGNALR_JS) $(MSGPACK_JS) &:
	@scripts/deps

$(BIN): $(CLI_OBJ) $(BUILD)/libbh.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libbh.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libbh.a $(LIBS) $(TEST_LIBS)

deps:
	@scripts/deps

run: deps
	@$(MAKE) --no-print-directory all
	$(BIN) serve --demo --listen $(LISTEN)

unit: $(TEST_BIN)
	@set -e; for t in $(TEST_BIN); do echo "== $$t"; $$t; done

# One test file at a time (each starts its own servers); Node 18 has no --test-concurrency.
NODE_TEST := node --test $(shell node -e 'if (+process.versions.node.split(".")[0] >= 20) console.log("--test-concurrency=1")' 2>/dev/null)

# Secrets never in logs: the harness appends every server's stderr and every secret the tests
# know (API keys, admin tokens) to TEST_LOG_DIR; tests/system/secrets_scan.mjs then fails if one
# of them, or anything shaped like an API key, is in a log (or if there is nothing to scan).
TEST_LOG_DIR := $(BUILD)/test-logs

interop: $(BIN)
	rm -rf $(TEST_LOG_DIR) && mkdir -p $(TEST_LOG_DIR)
	BALANCEHUB_TEST_LOG_DIR=$(abspath $(TEST_LOG_DIR)) BALANCEHUB_BIN=$(abspath $(BIN)) $(NODE_TEST) tests/interop/*.test.mjs tests/system/*.test.mjs tests/browser/*.test.mjs
	node tests/system/secrets_scan.mjs $(TEST_LOG_DIR)

# The tester page in headless Chromium (playwright-core driving Debian's /usr/bin/chromium).
browser: $(BIN)
	BALANCEHUB_BIN=$(abspath $(BIN)) $(NODE_TEST) tests/browser/*.test.mjs

$(BUILD)/bench/ledger_bench: bench/ledger_bench.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< -lpthread

$(BUILD)/bench/floor: bench/floor.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< -lm

# The heap profile's allocation counter, preloaded into balancehub (LD_PRELOAD) by bench/run.
$(BUILD)/bench/malloc_count.so: bench/malloc_count.c
	@mkdir -p $(dir $@)
	$(CC) -shared -fPIC -O2 $(WARN) -o $@ $<

# bench/report.md: GetBalances vs the TCP floor, throughput on 1 and all cores, idle connections,
# the Node peers (npm ws, socket.io), the durable ledger, a heap profile (allocations per request);
# ~5 minutes. bench-smoke: a few seconds, checks only that every part produced numbers (never a
# timed assertion); `make test` runs it.
BENCH_ENV = BALANCEHUB_BIN=$(abspath $(BIN)) FLOOR_BIN=$(abspath $(BUILD)/bench/floor) \
	LEDGER_BENCH=$(abspath $(BUILD)/bench/ledger_bench) BENCH_DATA_PARENT=$(abspath $(BUILD))/bench \
	MALLOC_COUNT_SO=$(abspath $(BUILD)/bench/malloc_count.so)
.PHONY: bench-smoke
bench: $(BIN) $(BUILD)/bench/ledger_bench $(BUILD)/bench/floor $(BUILD)/bench/malloc_count.so
	$(BENCH_ENV) bench/run

bench-smoke: $(BIN) $(BUILD)/bench/floor $(BUILD)/bench/malloc_count.so
	$(BENCH_ENV) bench/run --smoke --out $(abspath $(BUILD))/bench/smoke-report.md >/dev/null

# Fuzzing (tests/fuzz, one harness per codec). `make fuzz` builds the harnesses with clang and
# libFuzzer and runs each for FUZZ_SECONDS; what it finds goes to $(FUZZ_BUILD)/corpus and
# crashes to $(FUZZ_BUILD)/crashes (tests/fuzz/corpus is only read: add minimized crashers there
# by hand). `make fuzz-corpus` replays tests/fuzz/corpus through the same harnesses with $(CC)
# and tests/fuzz/driver.c instead of libFuzzer; `make test` runs it under ASan + UBSan.
FUZZ_TARGETS ?= http ws json json_hub msgpack_hub decimal
FUZZ_SECONDS ?= 30
FUZZ_OPTS ?=
FUZZ_CC ?= clang
FUZZ_BUILD ?= build/libfuzzer
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -Isrc -Itests/fuzz $(WARN) -O1 -g $(FUZZ_SAN) -MMD -MP
FUZZ_SRC := $(sort $(wildcard src/base/*.c src/signalr/protocol.c src/signalr/msgpack.c) \
	src/http/http.c src/ws/ws.c) tests/fuzz/util.c
FUZZ_OBJ := $(FUZZ_SRC:%.c=$(FUZZ_BUILD)/obj/%.o)
FUZZ_ALL := $(patsubst tests/fuzz/%.c,%,$(sort $(wildcard tests/fuzz/fuzz_*.c)))

.PHONY: fuzz fuzz-corpus
.SECONDARY: $(FUZZ_OBJ) $(FUZZ_ALL:%=$(FUZZ_BUILD)/obj/tests/fuzz/%.o)

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer -o $@ $^ $(LIBS)

fuzz:
	@printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' | \
	  $(FUZZ_CC) -fsanitize=fuzzer -x c - -o /dev/null 2>/dev/null || { echo "make fuzz needs \
	clang and libFuzzer: sudo apt-get install clang libclang-rt-14-dev (Debian 12)" >&2; exit 1; }
	@$(MAKE) --no-print-directory $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)
	@failed=; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/crashes/$$t; \
	  dict=; [ -f tests/fuzz/$$t.dict ] && dict=-dict=tests/fuzz/$$t.dict; \
	  printf '== fuzz_%s (%ss): ' $$t $(FUZZ_SECONDS); \
	  if $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	      -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/crashes/$$t/ $$dict $(FUZZ_OPTS) \
	      $(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t >$(FUZZ_BUILD)/fuzz_$$t.log 2>&1; then \
	    grep -E '^stat::number_of_executed_units' $(FUZZ_BUILD)/fuzz_$$t.log | \
	      sed 's/.*: */ok, runs: /'; \
	  else \
	    echo "FAILED, see $(FUZZ_BUILD)/fuzz_$$t.log"; failed="$$failed $$t"; \
	    grep -E -A25 '^==[0-9]+==ERROR|runtime error|invariant failed|^artifact_prefix' \
	      $(FUZZ_BUILD)/fuzz_$$t.log | head -n 40; \
	  fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in:$$failed" >&2; exit 1; fi

$(BUILD)/fuzz-corpus/%: tests/fuzz/%.c tests/fuzz/driver.c tests/fuzz/util.c tests/fuzz/fuzz.h \
		$(BUILD)/libbh.a
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(ALL_CFLAGS)) -Itests/fuzz $(LDFLAGS) -o $@ $< \
	  tests/fuzz/driver.c tests/fuzz/util.c $(BUILD)/libbh.a $(LIBS)

fuzz-corpus: $(FUZZ_ALL:%=$(BUILD)/fuzz-corpus/%)
	@set -e; for t in $(FUZZ_ALL); do \
	  $(BUILD)/fuzz-corpus/$$t tests/fuzz/corpus/$${t#fuzz_}; done

-include $(FUZZ_OBJ:.o=.d) $(FUZZ_ALL:%=$(FUZZ_BUILD)/obj/tests/fuzz/%.d)

# libbalancehub, the C client library (include/balancehub/client.h), static and shared, from its
# own -fPIC objects compiled with hidden visibility so that the .so exports only the public API.
# `make install PREFIX=DIR` installs the header, both libraries and balancehub.pc. `make examples`
# builds examples/*.c the way a user would, against a staged install through pkg-config (which
# proves the installed files work); `make interop` runs them (tests/interop/client.test.mjs).
PREFIX ?= /usr/local
CLIENT_VERSION := 0.1.0
CLIENT_SONAME := libbalancehub.so.0
CLIENT_SRC := $(sort $(wildcard src/client/*.c)) src/base/buf.c src/base/decimal.c \
	src/base/error.c src/base/json.c src/base/spare.c src/ws/ws.c $(sort $(wildcard src/signalr/protocol.c \
	src/signalr/msgpack*.c))
CLIENT_OBJ := $(CLIENT_SRC:%.c=$(BUILD)/pic/%.o)
CLIENT_LIBS := $(shell pkg-config --libs openssl msgpack 2>/dev/null) -lm
CLIENT_A := $(BUILD)/libbalancehub.a
CLIENT_SO := $(BUILD)/libbalancehub.so
STAGE := $(BUILD)/stage
STAGE_PC := PKG_CONFIG_PATH=$(abspath $(STAGE))/lib/pkgconfig pkg-config
EXAMPLE_SRC := $(sort $(wildcard examples/*.c))
EXAMPLES := $(EXAMPLE_SRC:examples/%.c=$(BUILD)/examples/%) \
	$(EXAMPLE_SRC:examples/%.c=$(BUILD)/examples/%-static)

.PHONY: lib install examples
lib: $(CLIENT_A) $(CLIENT_SO)

$(BUILD)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fPIC -fvisibility=hidden -c $< -o $@

$(CLIENT_A): $(CLIENT_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(CLIENT_SO).$(CLIENT_VERSION): $(CLIENT_OBJ)
	$(CC) $(LDFLAGS) -shared -Wl,-soname,$(CLIENT_SONAME) -Wl,--no-undefined -o $@ $^ \
	  $(CLIENT_LIBS)

$(CLIENT_SO): $(CLIENT_SO).$(CLIENT_VERSION)
	ln -sf $(notdir $<) $(BUILD)/$(CLIENT_SONAME)
	ln -sf $(CLIENT_SONAME) $@

# $(call install_client,DIR,PREFIX): the installed tree under DIR for prefix PREFIX.
define install_client
	install -d $(1)/include/balancehub $(1)/lib/pkgconfig
	install -m 644 include/balancehub/client.h $(1)/include/balancehub/
	install -m 644 $(CLIENT_A) $(1)/lib/
	install -m 755 $(CLIENT_SO).$(CLIENT_VERSION) $(1)/lib/
	ln -sf libbalancehub.so.$(CLIENT_VERSION) $(1)/lib/$(CLIENT_SONAME)
	ln -sf $(CLIENT_SONAME) $(1)/lib/libbalancehub.so
	sed -e 's|@PREFIX@|$(2)|' -e 's|@VERSION@|$(CLIENT_VERSION)|' src/client/balancehub.pc.in \
	  > $(1)/lib/pkgconfig/balancehub.pc
endef

# The server too: PREFIX/bin/balancehub, its man page, the systemd unit (ExecStart names
# PREFIX/bin/balancehub) and the example config file (tests/system/install.test.mjs).
install: $(BIN) $(CLIENT_A) $(CLIENT_SO)
	$(call install_client,$(DESTDIR)$(PREFIX),$(PREFIX))
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	  $(DESTDIR)$(PREFIX)/lib/systemd/system $(DESTDIR)$(PREFIX)/share/doc/balancehub
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/balancehub
	install -m 644 man/balancehub.1 $(DESTDIR)$(PREFIX)/share/man/man1/balancehub.1
	sed 's|@PREFIX@|$(PREFIX)|g' dist/balancehub.service \
	  > $(DESTDIR)$(PREFIX)/lib/systemd/system/balancehub.service
	chmod 644 $(DESTDIR)$(PREFIX)/lib/systemd/system/balancehub.service
	install -m 644 dist/balancehub.conf $(DESTDIR)$(PREFIX)/share/doc/balancehub/balancehub.conf

$(STAGE)/.installed: $(CLIENT_A) $(CLIENT_SO) include/balancehub/client.h \
		src/client/balancehub.pc.in
	$(call install_client,$(abspath $(STAGE)),$(abspath $(STAGE)))
	@touch $@

# Plain C11 without _GNU_SOURCE: the public header must stand on its own.
$(BUILD)/examples/%: examples/%.c $(STAGE)/.installed
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(WARN) $(CFLAGS) $$($(STAGE_PC) --cflags balancehub) $(LDFLAGS) -o $@ $< \
	  $$($(STAGE_PC) --libs balancehub) -Wl,-rpath,$(abspath $(STAGE))/lib

$(BUILD)/examples/%-static: examples/%.c $(STAGE)/.installed
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(WARN) $(CFLAGS) $$($(STAGE_PC) --cflags balancehub) $(LDFLAGS) -o $@ $< \
	  $$($(STAGE_PC) --static --libs balancehub | sed 's/-lbalancehub /-l:libbalancehub.a /')

examples: $(EXAMPLES)
interop: examples

-include $(CLIENT_OBJ:.o=.d)

# ThreadSanitizer: the server and the unit tests that run threads, built in build-tsan, then
# those tests and tests/interop/threads.test.mjs (its servers run --threads 2); a race stops the
# process with status 66, which fails the test (or the harness's exit check on the server).
# -fno-builtin: GCC expands a fixed-size memcpy/memset inline without instrumenting it (a race
# on a copied struct field goes unseen); as calls they reach TSan's interceptors. libuv and
# OpenSSL are not instrumented: tests/tsan.supp says what is suppressed and why.
TSAN_BUILD := build-tsan
TSAN_TESTS := test_mailbox test_migrate test_sr_shared test_hub_group test_ledger test_metrics
TSAN_RUN := TSAN_OPTIONS="halt_on_error=1 exitcode=66 suppressions=$(abspath tests/tsan.supp)"

.PHONY: tsan
tsan: deps
	@$(MAKE) --no-print-directory BUILD=$(TSAN_BUILD) SAN= LDFLAGS=-fsanitize=thread \
	  CFLAGS='-O1 -g -fsanitize=thread -fno-omit-frame-pointer -fno-builtin' \
	  all $(TSAN_TESTS:%=$(TSAN_BUILD)/tests/%)
	@set -e; for t in $(TSAN_TESTS); do echo "== tsan $$t"; $(TSAN_RUN) $(TSAN_BUILD)/tests/$$t; done
	$(TSAN_RUN) BALANCEHUB_BIN=$(abspath $(TSAN_BUILD)/balancehub) $(NODE_TEST) \
	  tests/interop/threads.test.mjs

# The whole suite, then the whole suite again under ASan + UBSan, then `make tsan`.
test: deps
	@$(MAKE) --no-print-directory format-check
	@$(MAKE) --no-print-directory unit interop bench-smoke
	@$(MAKE) --no-print-directory BUILD=build-asan SAN=1 unit interop fuzz-corpus
	@$(MAKE) --no-print-directory tsan

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	@clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h') && echo "clang-format: clean"

clean:
	rm -rf build build-asan build-tsan

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
