/*
** decode_fuzz.c: libFuzzer target for the decoder (`make fuzz`).
**
** Any input must decode or raise a Lua error; never crash, hang or leak.
** Functions stay refused, as isolate.decode does without {functions =
** true}: bytecode is trusted input only.  Modules decode only when already
** loaded, so string and table are made loadable here.
*/
#include <stddef.h>
#include <stdint.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "buffer.h"
#include "codec.h"


static int decode (lua_State *L) {
  Reader r;
  reader_initflat(&r, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
  codec_decode(L, &r, 0);
  return 0;
}


int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size) {
  static lua_State *L = NULL;
  if (L == NULL) {
    L = luaL_newstate();
    luaL_openlibs(L);
  }
  lua_settop(L, 0);
  lua_pushcfunction(L, decode);
  lua_pushlightuserdata(L, (void *)data);
  lua_pushinteger(L, (lua_Integer)size);
  lua_pcall(L, 2, 0, 0);
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
