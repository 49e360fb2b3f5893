/*
** decode_fuzz.c: libFuzzer target for the codec (`make fuzz`).
**
** Each input is decoded as untrusted data, as isolate.decode does without
** {trusted = true}: it must decode or raise a Lua error, never crash, hang
** or leak, and the memory it makes the decoder allocate must stay within a
** constant times its size (the one-budget promise).  What decodes is then
** taken round the trusted path, as an isolate's results are: encoded,
** decoded with CODEC_TRUSTED, and compared with the first decode, value by
** value (identity and cycles included).  Raw inputs never go through a
** trusted decode: bytecode can crash a VM, and trusted input is the
** encoder's own.
*/
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "buffer.h"
#include "codec.h"
#include "state.h"

/* the decoder asks whether its state is an isolate's: here it never is */
int state_prefault (lua_State *L, size_t size) {
  (void)L;
  (void)size;
  return 0;
}


/* what the decoder may allocate: AMPLIFY bytes per input byte, plus SLACK */
#define AMPLIFY		96
#define SLACK		(256 * 1024)

static size_t inuse, peak;

static void *allocf (void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (ptr == NULL) osize = 0;
  if (nsize == 0) {
    inuse -= osize;
    free(ptr);
    return NULL;
  }
  ptr = realloc(ptr, nsize);
  if (ptr != NULL) {
    inuse += nsize - osize;
    if (inuse > peak) peak = inuse;
  }
  return ptr;
}


/* deep equality of two value graphs, with a map of what was matched */
static const char same_graph[] =
  "local function same(a, b, seen)\n"
  "  if type(a) ~= type(b) then return false end\n"
  "  if type(a) == 'number' then\n"
  "    if math.type(a) ~= math.type(b) then return false end\n"
  "    if a ~= a then return b ~= b end\n"
  "    return a == b and (a ~= 0 or 1/a == 1/b)\n"
  "  end\n"
  "  if type(a) ~= 'table' then return a == b end\n"
  "  if seen[a] ~= nil then return seen[a] == b end\n"
  "  seen[a] = b\n"
  "  local n = 0\n"
  "  for k, v in next, a do\n"
  "    n = n + 1\n"
  "    local kb = k\n"
  "    if type(k) == 'table' then kb = seen[k] if kb == nil then return true end end\n"
  "    if not same(v, rawget(b, kb), seen) then return false end\n"
  "  end\n"
  "  for _ in next, b do n = n - 1 end\n"
  "  if n ~= 0 then return false end\n"
  "  local ma, mb = getmetatable(a), getmetatable(b)\n"
  "  if (ma == nil) ~= (mb == nil) then return false end\n"
  "  return ma == nil or same(ma, mb, seen)\n"
  "end\n"
  "return function(a, b) return same(a, b, {}) end\n";


static int decode_untrusted (lua_State *L) {
  Reader r;
  reader_initflat(&r, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
  lua_settop(L, 0);
  return codec_decode(L, &r, 0);
}


/*
** The values on the stack (the first decode, in a table at 1 with their
** count at 2) encoded, decoded trusted, and compared with the originals.
*/
static int roundtrip (lua_State *L) {
  int n = (int)lua_tointeger(L, 2), i, m;
  Buffer *b;
  Reader r;
  luaL_checkstack(L, n + 8, NULL);
  b = buffer_push(L);				/* 3 */
  for (i = 1; i <= n; i++) lua_rawgeti(L, 1, i);
  codec_encode(L, b, 4, n, ROLE_VALUE);	/* pure data: cannot fail but for memory */
  lua_settop(L, 3);
  reader_init(&r, b);
  m = codec_decode(L, &r, CODEC_TRUSTED);
  if (m != n || r.left != 0) {
    fprintf(stderr, "round trip: %d values back for %d\n", m, n);
    abort();
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, same_graph);
  for (i = 1; i <= n; i++) {
    lua_pushvalue(L, -1);
    lua_rawgeti(L, 1, i);
    lua_pushvalue(L, 3 + i);
    lua_call(L, 2, 1);
    if (!lua_toboolean(L, -1)) {
      fprintf(stderr, "round trip: value #%d differs\n", i);
      abort();
    }
    lua_pop(L, 1);
  }
  return 0;
}


int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size) {
  static lua_State *L = NULL;
  size_t base;
  int n;
  if (L == NULL) {
    L = lua_newstate(allocf, NULL);
    luaL_openlibs(L);
    if (luaL_loadstring(L, same_graph) != LUA_OK) abort();
    lua_call(L, 0, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, same_graph);
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);
  base = peak = inuse;
  lua_pushcfunction(L, decode_untrusted);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)size);
  if (lua_pcall(L, 2, LUA_MULTRET, 0) != LUA_OK) n = -1;
  else n = lua_gettop(L);
  if (peak - base > AMPLIFY * size + SLACK) {
    fprintf(stderr, "decoding %zu bytes allocated %zu bytes\n", size, peak - base);
    abort();
  }
  if (n >= 0) {			/* pack the values, take them round */
    int i;
    lua_createtable(L, n, 0);
    for (i = n; i >= 1; i--) {
      lua_insert(L, -2);
      lua_rawseti(L, -2, i);
    }
    lua_pushcfunction(L, roundtrip);
    lua_insert(L, 1);
    lua_pushinteger(L, n);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      const char *msg = lua_tostring(L, -1);
      if (msg == NULL || strcmp(msg, "not enough memory") != 0) {
        fprintf(stderr, "round trip failed: %s\n", msg ? msg : "?");
        abort();
      }
    }
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
