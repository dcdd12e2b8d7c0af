# balancehub build. `make` builds, `make run` starts the demo server, `make test` runs every test
# (unit, interop, and the same again under AddressSanitizer + UndefinedBehaviorSanitizer).

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
LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lwslay -lpthread -lm
TEST_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)

LIB_SRC := $(sort $(shell find src -name '*.c' ! -path 'src/cli/*'))
CLI_SRC := $(sort $(wildcard src/cli/*.c))
TEST_SRC := $(sort $(wildcard tests/unit/test_*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)

BIN := $(BUILD)/balancehub
LISTEN ?= 127.0.0.1:5000

.PHONY: all run test unit interop deps clean format format-check bench
all: $(BIN)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libbh.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

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

interop: $(BIN)
	BALANCEHUB_BIN=$(abspath $(BIN)) $(NODE_TEST) tests/interop/*.test.mjs tests/system/*.test.mjs

$(BUILD)/bench/ledger_bench: bench/ledger_bench.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< -lpthread

# Durable ledger ops/s and update fan-out latency against a release server: bench/report.md.
bench: $(BIN) $(BUILD)/bench/ledger_bench
	BALANCEHUB_BIN=$(abspath $(BIN)) LEDGER_BENCH=$(abspath $(BUILD)/bench/ledger_bench) bench/run

# The whole suite, then the whole suite again under ASan + UBSan.
test: deps
	@$(MAKE) --no-print-directory format-check
	@$(MAKE) --no-print-directory unit interop
	@$(MAKE) --no-print-directory BUILD=build-asan SAN=1 unit interop

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	@clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h') && echo "clang-format: clean"

clean:
	rm -rf build build-asan

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
