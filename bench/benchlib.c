/*
** benchlib.c: the C baselines that `make bench` measures against.
*/
#define _POSIX_C_SOURCE 199309L
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"


static double now (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}


static int l_now (lua_State *L) {
  lua_pushnumber(L, now());
  return 1;
}


/* seconds for n times luaL_newstate + luaL_openlibs + lua_close */
static int l_newstate (lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1), i;
  double t0 = now();
  for (i = 0; i < n; i++) {
    lua_State *S = luaL_newstate();
    if (S == NULL) return luaL_error(L, "cannot create state");
    luaL_openlibs(S);
    lua_close(S);
  }
  lua_pushnumber(L, now() - t0);
  return 1;
}


/* seconds for n copies of 'bytes' bytes with memcpy (one copy each) */
static int l_memcpy (lua_State *L) {
  size_t bytes = (size_t)luaL_checkinteger(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2), i;
  unsigned char *src = malloc(bytes), *dst = malloc(bytes);
  double t;
  if (src == NULL || dst == NULL) {
    free(src); free(dst);
    return luaL_error(L, "not enough memory");
  }
  memset(src, 1, bytes);
  memset(dst, 0, bytes);		/* fault the pages in before timing */
  t = now();
  for (i = 0; i < n; i++) {
    memcpy(dst, src, bytes);
    src[i % bytes] ^= dst[(i * 7) % bytes];	/* keep the copies live */
  }
  t = now() - t;
  free(src);
  free(dst);
  lua_pushnumber(L, t);
  return 1;
}


/*
** seconds to copy string 's' into freshly allocated memory (malloc, then
** memcpy: the pages are faulted in by the copy), as a transfer must
*/
static int l_copyfresh (lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  double t = now();
  unsigned char *dst = malloc(len);
  if (dst == NULL) return luaL_error(L, "not enough memory");
  memcpy(dst, s, len);
  t = now() - t;
  if (dst[len / 2] != (unsigned char)s[len / 2]) t = -1;	/* keep it live */
  free(dst);
  lua_pushnumber(L, t);
  return 1;
}


/* sleep 's' seconds */
static int l_sleep (lua_State *L) {
  double s = luaL_checknumber(L, 1);
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0) ;
  return 0;
}


static const luaL_Reg funcs[] = {
  {"now", l_now},
  {"sleep", l_sleep},
  {"newstate", l_newstate},
  {"memcpy", l_memcpy},
  {"copyfresh", l_copyfresh},
  {NULL, NULL}
};

int luaopen_benchlib (lua_State *L);

int luaopen_benchlib (lua_State *L) {
  luaL_newlib(L, funcs);
  return 1;
}
