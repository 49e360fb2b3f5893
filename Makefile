# isolate: build the C core for use from the working tree, run specs,
# sanitizers and benchmarks.  `luarocks make rockspec/isolate-scm-1.rockspec`
# installs it instead.

LUA ?= lua5.4
LUA_INC ?= $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
CC ?= cc
CFLAGS ?= -O2 -g
WARN = -std=c11 -Wall -Wextra -pedantic -Wshadow -Wmissing-prototypes
BUILD = build
SRC = src/core.c src/codec.c src/buffer.c src/pool.c src/state.c
HDR = $(wildcard src/*.h)
BUSTED = $(LUA) /usr/bin/busted

.PHONY: all test asan tsan valgrind bench demo clean

all: $(BUILD)/isolate/core.so

$(BUILD)/isolate/core.so: $(SRC) $(HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) $(LUA_INC) -fPIC -shared -o $@ $(SRC) -lpthread

test: all
	@$(BUSTED) -o TAP | tee $(BUILD)/test.tap | $(LUA) spec/summary.lua

clean:
	rm -rf $(BUILD)

$(BUILD)/benchlib.so: bench/benchlib.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) $(LUA_INC) -fPIC -shared -o $@ $<

bench: all $(BUILD)/benchlib.so
	@LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/?.so;;" $(LUA) bench/run.lua
