# isolate: build the C core for use from the working tree, run specs,
# sanitizers and benchmarks.  `luarocks make rockspec/isolate-scm-1.rockspec`
# installs it instead.

LUA ?= lua5.4
LUA_INC ?= $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
CC ?= cc
CFLAGS ?= -O2 -g
WARN = -std=c11 -Wall -Wextra -pedantic -Wshadow -Wmissing-prototypes
BUILD = build
# a module's link: on macOS it leaves Lua's symbols to the interpreter
SHARED := $(if $(filter Darwin,$(shell uname -s)),-bundle -undefined dynamic_lookup,-shared)
SRC = src/core.c src/codec.c src/names.c src/message.c src/buffer.c src/mailbox.c src/pool.c src/state.c
HDR = $(wildcard src/*.h)

.PHONY: all specdeps test asan tsan valgrind fuzz bench stress demo clean

# The sanitizers instrument the C core only, not Lua: ASan's runtime is
# preloaded into lua5.4, TSan's is linked into a host interpreter of ours.
SAN_CC = clang
SAN_FLAGS = -O1 -g -fno-omit-frame-pointer
ASAN_RT = $(shell $(SAN_CC) -print-file-name=libclang_rt.asan-$(shell uname -m).so)
LUA_LIB ?= -llua5.4

all: $(BUILD)/isolate/core.so

# What the specs need besides the core, plain in every run: a small C
# module for the process specs (fork, waitpid, kill), a C-backed object
# that travels through __isolate (spec/cobject.c) for the objects
# specs, and a host
# interpreter whose allocations fail on request (spec/host.c) for the
# allocation specs.  The TSan run uses its own host instead.
SPEC_POSIX = $(BUILD)/spec/posix.so
SPEC_COBJECT = $(BUILD)/spec/cobject.so
SPEC_RTSIG = $(BUILD)/spec/rtsig.so
SPEC_HOST = $(BUILD)/host

$(SPEC_POSIX): spec/posix.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) $(LUA_INC) -fPIC $(SHARED) -o $@ $<

$(SPEC_RTSIG): spec/rtsig.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) -fPIC -shared -o $@ $<

$(SPEC_COBJECT): spec/cobject.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) $(LUA_INC) -fPIC $(SHARED) -o $@ $< -lpthread

$(SPEC_HOST): spec/host.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) $(LUA_INC) -o $@ $< $(LUA_LIB)

$(BUILD)/isolate/core.so: $(SRC) $(HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) $(LUA_INC) -fPIC $(SHARED) -o $@ $(SRC) -lpthread

# What a plain `busted` in the checkout needs: .busted's helper
# (spec/make.lua) makes it first.
specdeps: all $(SPEC_POSIX) $(SPEC_COBJECT) $(SPEC_RTSIG) $(SPEC_HOST)

# Run the specs with TAP output, then the summary, which prints the line
# "N passed, N failed" and counts a non-zero exit of the run with no failed
# spec (a crash, a sanitizer's report) as a failure.  The targets build
# what their run needs themselves: ISOLATE_SPEC_BUILT=1 tells the helper.
# SPECS: more arguments for busted, e.g. SPECS=spec/codec_spec.lua to run
# one file (`luarocks test -- FILES` passes its own so).
# $(call specs,INTERPRETER (with its environment),BUSTED ARGUMENTS)
specs = @{ ISOLATE_SPEC_BUILT=1 $(1) /usr/bin/busted $(2) $(SPECS) -o TAP; echo "\# exit status $$?"; } | $(LUA) spec/summary.lua

# The same, one process per spec file (SPECS: those files), each under a
# ceiling of ten minutes; the summary adds the runs up.
SPEC_FILES = $(or $(SPECS),$(wildcard spec/*_spec.lua))
specs_each = @{ for f in $(SPEC_FILES); do timeout -k 10 600 env ISOLATE_SPEC_BUILT=1 $(1) /usr/bin/busted $(2) -o TAP $$f; \
	echo "\# exit status $$?"; done; } | $(LUA) spec/summary.lua

test: specdeps
	$(call specs,$(LUA),)

$(BUILD)/asan/isolate/core.so: $(SRC) $(HDR)
	@mkdir -p $(dir $@)
	$(SAN_CC) $(SAN_FLAGS) -shared-libsan -fsanitize=address,undefined -fno-sanitize-recover=undefined \
		$(WARN) $(LUA_INC) -fPIC -shared -o $@ $(SRC) -lpthread

$(BUILD)/tsan/isolate/core.so: $(SRC) $(HDR)
	@mkdir -p $(dir $@)
	$(SAN_CC) $(SAN_FLAGS) -fsanitize=thread $(WARN) $(LUA_INC) -fPIC -shared -o $@ $(SRC) -lpthread

# ISOLATE_SPEC_UNDER_TOOL: the spec that runs 300 isolates skips its check
# of resident memory, which under ASan or valgrind measures the tool (its
# quarantine, its allocator); their leak checks at exit stand in for it.
# Specs that time work at scale, or repeat a race many times, do less (the
# tools run code 5 to 50 times slower).
asan: $(BUILD)/asan/isolate/core.so $(SPEC_POSIX) $(SPEC_COBJECT) $(SPEC_RTSIG) $(SPEC_HOST)
	$(call specs,ISOLATE_SPEC_UNDER_TOOL=1 LD_PRELOAD=$(ASAN_RT) ASAN_OPTIONS=detect_leaks=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 $(LUA),--cpath="$(BUILD)/asan/?.so")

# TSan's runtime cannot be preloaded into lua5.4 here (it crashes before
# main): an instrumented host interpreter (spec/host.c) runs busted instead.
$(BUILD)/tsan/host: spec/host.c
	@mkdir -p $(dir $@)
	$(SAN_CC) -O1 -g -fsanitize=thread $(WARN) $(LUA_INC) -o $@ $< $(LUA_LIB)

# TSan keeps the C stack of every allocation in a depot: the codec's
# recursion through random value graphs makes millions of distinct stacks,
# and past that every allocation crawls (the property spec alone took over
# ten minutes).  So a tenth of the property cases, as under valgrind: they
# are the codec on one thread, which the plain run and ASan cover whole.
# A process per spec file, each with a ceiling: a crash or a hang fails
# that file only, and no file inherits another's damage (a nest deeper
# than TSan's shadow stack once crashed its runtime two files later, and
# the report then hung; see ISOLATE_CLOSE_NEST in src/isolate.h).
tsan: $(BUILD)/tsan/isolate/core.so $(BUILD)/tsan/host $(SPEC_POSIX) $(SPEC_COBJECT) $(SPEC_RTSIG)
	$(call specs_each,ISOLATE_SPEC_UNDER_TOOL=1 ISOLATE_PROPERTY_SCALE=0.1 TSAN_OPTIONS=halt_on_error=1 \
		$(BUILD)/tsan/host,--cpath="$(BUILD)/tsan/?.so")

# The property spec runs a tenth of its random cases: under valgrind all of
# them take minutes.  A process per spec file, as for TSan.  valgrind runs
# one thread at a time, and by default a thread in a tight loop can keep
# the others off the CPU for seconds (a worker's loop starved the thread
# that waited on it with a timeout): --fair-sched=yes hands them turns.
valgrind: all $(SPEC_POSIX) $(SPEC_COBJECT) $(SPEC_RTSIG) $(SPEC_HOST)
	$(call specs_each,ISOLATE_SPEC_UNDER_TOOL=1 ISOLATE_PROPERTY_SCALE=0.1 valgrind -q --fair-sched=yes --error-exitcode=99 --leak-check=full \
		--show-leak-kinds=definite --errors-for-leak-kinds=definite $(LUA),)

# libFuzzer on the codec: FUZZ_SECONDS of inputs up to 1 MB, guided by a
# dictionary of the format's tags, seeded by fuzz/seeds.lua (messages of
# the current format, small and large); inputs that reach new code are
# kept in $(BUILD)/corpus.
FUZZ_SECONDS ?= 60
$(BUILD)/fuzz/decode: fuzz/decode_fuzz.c src/codec.c src/names.c src/buffer.c $(HDR)
	@mkdir -p $(dir $@)
	$(SAN_CC) $(SAN_FLAGS) -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
		$(WARN) $(LUA_INC) -Isrc -o $@ fuzz/decode_fuzz.c src/codec.c src/names.c src/buffer.c $(LUA_LIB)

fuzz: $(BUILD)/fuzz/decode all
	@mkdir -p $(BUILD)/corpus $(BUILD)/seeds
	@LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/?.so;;" $(LUA) fuzz/seeds.lua $(BUILD)/seeds
	$(BUILD)/fuzz/decode -max_total_time=$(FUZZ_SECONDS) -max_len=1048576 -timeout=10 \
		-dict=fuzz/codec.dict -print_final_stats=1 $(BUILD)/corpus $(BUILD)/seeds

$(BUILD)/benchlib.so: bench/benchlib.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) $(LUA_INC) -fPIC $(SHARED) -o $@ $<

bench: all $(BUILD)/benchlib.so
	@LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/?.so;;" $(LUA) bench/run.lua

# STRESS_TASKS tasks of every kind (or fewer, if STRESS_SECONDS pass
# first), every answer checked; then threads, open files and resident
# memory must be back at their level after a warm-up.  glibc's mmap
# threshold is fixed, so freed large blocks leave the process and resident
# memory measures what the core holds, not the allocator's high-water mark.
STRESS_TASKS ?= 20000
STRESS_SECONDS ?= 120
stress: all
	@LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/?.so;;" \
		GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072 \
		STRESS_TASKS=$(STRESS_TASKS) STRESS_SECONDS=$(STRESS_SECONDS) $(LUA) spec/stress.lua

demo: all
	@LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/?.so;;" $(LUA) examples/demo.lua

# (and what `luarocks make` leaves in the checkout: objects, isolate/core.so)
clean:
	rm -rf $(BUILD)
	rm -f src/*.o isolate/core.so isolate-*.rock
	rmdir isolate 2>/dev/null || true
