/*
** host.c: a minimal Lua interpreter for the ThreadSanitizer run.
**
** TSan's shared runtime, preloaded into Debian's lua5.4, crashes before
** main on this kernel; linked statically into an executable of our own it
** works.  So `make tsan` builds this host with -fsanitize=thread and runs
** busted with it: host SCRIPT ARGS... is `lua5.4 SCRIPT ARGS...`.
*/
#include <stdio.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"


static int msgh (lua_State *L) {
  luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
  return 1;
}


int main (int argc, char **argv) {
  lua_State *L;
  int i, status;
  if (argc < 2) {
    fprintf(stderr, "usage: %s script [args]\n", argv[0]);
    return 2;
  }
  L = luaL_newstate();
  if (L == NULL) return 1;
  luaL_openlibs(L);
  lua_createtable(L, argc, 1);		/* arg, as lua.c makes it */
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  lua_pushcfunction(L, msgh);
  status = luaL_loadfile(L, argv[1]);
  if (status == LUA_OK) {
    for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
    status = lua_pcall(L, argc - 2, 0, 1);
  }
  if (status != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
