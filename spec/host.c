/*
** host.c: a minimal Lua interpreter for the specs, with an allocator that
** fails on request.
**
** `host SCRIPT ARGS...` is `lua5.4 SCRIPT ARGS...`, Ctrl-C included.  It
** serves twice:
**
** - TSan's shared runtime, preloaded into Debian's lua5.4, crashes before
**   main on this kernel; linked statically into an executable of our own
**   it works.  So `make tsan` builds this host with -fsanitize=thread and
**   runs busted with it.
**
** - The allocation-failure specs need a caller whose allocations can fail
**   at a chosen point, which lua5.4 cannot do.  The host's state uses an
**   allocator that the script arms with the global host_failalloc(n): the
**   n-th allocation request after the call fails.  `make` builds a plain
**   host for this as build/host.
*/
#define _DEFAULT_SOURCE		/* signal() as lua.c gets it: BSD semantics */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"


/*
** {======================================================
** An allocator that fails on request
** =======================================================
*/

/*
** A request is a call that allocates a block (ptr NULL, where 'osize' is
** the kind of object) or grows one (nsize > osize); frees and shrinks
** cannot fail and are not counted.
**
** Lua answers a failed request with an emergency collection and then asks
** again for the same block; were that retry to succeed, the failure would
** never reach the code under test, only the collector.  So the retry, the
** request right after the failed one when it asks for the same thing,
** fails too.  (A request made by C code through lua_getallocf is not
** retried, and the next one then differs: it goes through.)
*/
typedef struct FailAlloc {
  unsigned long counted;	/* requests since the last host_failalloc */
  unsigned long failat;		/* fail the request with this count; 0: none */
  int fired;			/* a request failed since the last call */
  int retry;			/* the last request failed: fail its retry too */
  void *ptr;			/* the failed request, to know its retry */
  size_t osize, nsize;
} FailAlloc;


static void *failalloc (void *ud, void *ptr, size_t osize, size_t nsize) {
  FailAlloc *fa = (FailAlloc *)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (ptr == NULL || nsize > osize) {
    int retry = fa->retry;
    fa->retry = 0;
    fa->counted++;
    if (retry && ptr == fa->ptr && osize == fa->osize && nsize == fa->nsize)
      return NULL;
    if (fa->counted == fa->failat) {
      fa->failat = 0;		/* once: the next call arms again */
      fa->fired = fa->retry = 1;
      fa->ptr = ptr;
      fa->osize = osize;
      fa->nsize = nsize;
      return NULL;
    }
  }
  return realloc(ptr, nsize);
}


/*
** host_failalloc(n): arm the n-th request from now to fail (0 disarms).
** Returns the requests counted since the previous call and whether one
** failed, so a script first measures how many requests a step makes.
*/
static int host_failalloc (lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  void *ud;
  FailAlloc *fa;
  luaL_argcheck(L, n >= 0, 1, "not a count");
  lua_getallocf(L, &ud);
  fa = (FailAlloc *)ud;
  lua_pushinteger(L, (lua_Integer)fa->counted);
  lua_pushboolean(L, fa->fired);
  fa->counted = 0;
  fa->fired = fa->retry = 0;
  fa->failat = (unsigned long)n;
  return 2;
}

/* }====================================================== */


/*
** Ctrl-C as lua.c (5.4) handles it: the signal handler sets a hook that
** raises "interrupted!" at the next Lua instruction, and a second SIGINT
** ends the process.  A global, as in lua.c: a handler has no other way in.
*/
static lua_State *globalL = NULL;

static void lstop (lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  luaL_error(L, "interrupted!");
}

static void laction (int i) {
  int flag = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;
  signal(i, SIG_DFL);
  lua_sethook(globalL, lstop, flag, 1);
}


static int msgh (lua_State *L) {
  luaL_traceback(L, L, luaL_tolstring(L, 1, NULL), 1);
  return 1;
}


int main (int argc, char **argv) {
  FailAlloc fa = {0};		/* disarmed; outlives L */
  lua_State *L;
  int i, status;
  if (argc < 2) {
    fprintf(stderr, "usage: %s script [args]\n", argv[0]);
    return 2;
  }
  L = luaL_newstate();		/* its panic and warning functions... */
  if (L == NULL) return 1;
  lua_setallocf(L, failalloc, &fa);	/* ...and our allocator: both realloc */
  luaL_openlibs(L);
  lua_register(L, "host_failalloc", host_failalloc);
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
    globalL = L;
    signal(SIGINT, laction);
    status = lua_pcall(L, argc - 2, 0, 1);
    signal(SIGINT, SIG_DFL);
  }
  if (status != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
