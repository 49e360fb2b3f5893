/*
** state.c: a fresh lua_State for one isolate; running a job in it.
**
** Everything that can raise runs inside lua_pcall, opening the libraries
** included, so an isolate's failure (memory too) becomes a failure record
** for its caller and never a panic of the process.  A worker makes its
** next state as soon as it has published a job (state_new), so making it
** is not part of the next job's round trip; no state runs two jobs.
**
** Ending an isolate early (os.exit, isolate.exit) raises an error to unwind
** its stack, closing to-be-closed variables on the way.  So that Lua code
** cannot catch it, the isolate's pcall, xpcall and coroutine.resume pass
** it on.  (A count hook that raised again at every instruction would also
** interrupt the __close handlers that must run.)
*/
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "isolate.h"
#include "codec.h"
#include "state.h"


typedef enum Exit {
  EXIT_NONE,
  EXIT_PLAIN,			/* os.exit: ends without results */
  EXIT_RESULTS,			/* isolate.exit: its results are in 'out' */
  EXIT_CLOSING			/* lua_close runs finalizers: 'out' is final */
} Exit;

typedef struct Isolate {
  Buffer *in, *out;
  const char *name;		/* the pool's, or NULL */
  Exit exiting;
} Isolate;

static const char isolate_key = 0;	/* registry: light userdata Isolate* */
#define TRACEBACK_KEY	"isolate.traceback"


static Isolate *current (lua_State *L) {
  Isolate *iso;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &isolate_key);
  iso = (Isolate *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  return iso;
}


int state_ismain (lua_State *L) {
  return current(L) == NULL;
}


void state_pushname (lua_State *L) {
  Isolate *iso = current(L);
  if (iso != NULL && iso->name != NULL) lua_pushstring(L, iso->name);
  else lua_pushnil(L);
}


static void *allocf (void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud; (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}


static int unwind (lua_State *L, Isolate *iso, Exit how) {
  if (iso->exiting == EXIT_NONE) iso->exiting = how;
  lua_pushliteral(L, "isolate: exiting");
  return lua_error(L);
}


static int exiting (lua_State *L) {
  Isolate *iso = current(L);
  return iso != NULL && (iso->exiting == EXIT_PLAIN || iso->exiting == EXIT_RESULTS);
}


/*
** pcall, xpcall and coroutine.resume of an isolate: those of the base
** library (lbaselib.c), except that they let an exit go on unwinding.
** Only the error path looks at the isolate, so they cost nothing more.
*/
static int finishpcall (lua_State *L, int status, lua_KContext extra) {
  if (status != LUA_OK && status != LUA_YIELD) {
    if (exiting(L)) return lua_error(L);
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)extra;
}

static int isolate_pcall (lua_State *L) {
  int status;
  luaL_checkany(L, 1);
  lua_pushboolean(L, 1);
  lua_insert(L, 1);
  status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, finishpcall);
  return finishpcall(L, status, 0);
}

static int isolate_xpcall (lua_State *L) {
  int status, n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);
  status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, finishpcall);
  return finishpcall(L, status, 2);
}

static int isolate_resume (lua_State *L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  if (!lua_toboolean(L, 1) && exiting(L)) {
    lua_settop(L, 2);
    return lua_error(L);
  }
  return lua_gettop(L);
}


int state_exit (lua_State *L, int n) {
  Isolate *iso = current(L);
  if (iso == NULL)
    return luaL_error(L, "isolate.exit called outside an isolate");
  if (iso->exiting == EXIT_NONE) {
    buffer_free(iso->out);
    codec_encode(L, iso->out, lua_gettop(L) - n + 1, n, ROLE_RESULT);
  }
  return unwind(L, iso, EXIT_RESULTS);
}


/* os.exit inside an isolate: end the isolate, not the process */
static int os_exit (lua_State *L) {
  return unwind(L, current(L), EXIT_PLAIN);
}


/*
** Message handler: keep the remote traceback, pass the error value on.
** Its last frame is always body(), the core's C entry ("[C]: in ?"),
** which tells the reader nothing: it is cut.
*/
static int msgh (lua_State *L) {
  static const char entry[] = "\n\t[C]: in ?";
  size_t len;
  const char *tb;
  luaL_traceback(L, L, NULL, 1);
  tb = lua_tolstring(L, -1, &len);
  if (len >= sizeof(entry) - 1 &&
      strcmp(tb + len - (sizeof(entry) - 1), entry) == 0) {
    lua_pushlstring(L, tb, len - (sizeof(entry) - 1));
    lua_replace(L, -2);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, TRACEBACK_KEY);
  return 1;
}


/* set package[field] from the next raw string of the job's input */
static void setpath (lua_State *L, Reader *r, const char *field) {
  size_t len;
  const char *s = codec_getstring(r, &len);
  if (s == NULL) luaL_error(L, "isolate: corrupt job input");
  lua_pushlstring(L, s, len);
  lua_setfield(L, -2, field);
}


/* the libraries, and the functions that differ inside an isolate */
static int prepare (lua_State *L) {
  luaL_openlibs(L);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, os_exit);
  lua_setfield(L, -2, "exit");
  lua_pushcfunction(L, isolate_pcall);
  lua_setglobal(L, "pcall");
  lua_pushcfunction(L, isolate_xpcall);
  lua_setglobal(L, "xpcall");
  lua_getglobal(L, "coroutine");
  lua_getfield(L, -1, "resume");
  lua_pushcclosure(L, isolate_resume, 1);
  lua_setfield(L, -2, "resume");
  return 0;
}


lua_State *state_new (void) {
  lua_State *L = lua_newstate(allocf, NULL);
  if (L == NULL) return NULL;
  lua_pushcfunction(L, prepare);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    lua_close(L);
    return NULL;
  }
  return L;
}


/*
** The isolate's life: decode the function and its arguments, call it,
** encode all its results straight from the stack.
*/
static int body (lua_State *L) {
  Isolate *iso = (Isolate *)lua_touserdata(L, 1);
  Reader r;
  int n, base;
  lua_pushlightuserdata(L, iso);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &isolate_key);
  lua_getglobal(L, "package");
  reader_init(&r, iso->in);
  setpath(L, &r, "path");
  setpath(L, &r, "cpath");
  lua_settop(L, 1);
  base = 2;
  n = codec_decode(L, &r, CODEC_FUNCTIONS);
  buffer_free(iso->in);
  if (n < 1 || !lua_isfunction(L, base)) luaL_error(L, "isolate: corrupt job input");
  lua_call(L, n - 1, LUA_MULTRET);
  if (iso->exiting == EXIT_NONE)
    codec_encode(L, iso->out, base, lua_gettop(L) - base + 1, ROLE_RESULT);
  return 0;
}


/*
** Encode a failure record: kind, message, traceback, value.  Arguments:
** the Isolate, the kind (a C string), the error value, and whether to send
** the value (it may be something that cannot travel: the second try goes
** without).  Everything that allocates is in here, under lua_pcall: after
** a memory error, an allocation outside it would be a panic.
*/
static int record (lua_State *L) {
  Isolate *iso = (Isolate *)lua_touserdata(L, 1);
  int t;
  lua_settop(L, 4);
  lua_pushstring(L, (const char *)lua_touserdata(L, 2));
  if (iso->exiting != EXIT_NONE)
    lua_pushliteral(L, "Computation ended without result");
  else if ((t = lua_type(L, 3)) == LUA_TSTRING || t == LUA_TNUMBER) {
    lua_pushvalue(L, 3);
    lua_tostring(L, -1);
  }
  else if (luaL_getmetafield(L, 3, "__tostring") != LUA_TNIL) {
    lua_pop(L, 1);
    luaL_tolstring(L, 3, NULL);
  }
  else
    lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 3));
  lua_getfield(L, LUA_REGISTRYINDEX, TRACEBACK_KEY);
  if (lua_toboolean(L, 4) && iso->exiting == EXIT_NONE) lua_pushvalue(L, 3);
  else lua_pushnil(L);
  buffer_free(iso->out);
  codec_encode(L, iso->out, 5, 4, ROLE_RESULT);
  return 0;
}


/* the error value is on top of the stack */
static void failure (lua_State *L, Isolate *iso, int status) {
  const char *kind = iso->exiting != EXIT_NONE ? "exit"
                   : status == LUA_ERRMEM ? "memory" : "error";
  int value = lua_gettop(L), withvalue;
  for (withvalue = 1; withvalue >= 0; withvalue--) {
    lua_pushcfunction(L, record);
    lua_pushlightuserdata(L, iso);
    lua_pushlightuserdata(L, (void *)kind);
    lua_pushvalue(L, value);
    lua_pushboolean(L, withvalue);
    if (lua_pcall(L, 4, 0, 0) == LUA_OK) return;
    lua_settop(L, value);
  }
  buffer_free(iso->out);
  codec_failure(iso->out, kind, status == LUA_ERRMEM ? "not enough memory"
                                : "error while reporting an error");
}


int state_run (lua_State *L, Buffer *in, Buffer *out, const char *name) {
  Isolate iso;
  int status, ok;
  if (L == NULL) {
    buffer_free(in);
    codec_failure(out, "memory", "not enough memory for a new Lua state");
    return 0;
  }
  iso.in = in;
  iso.out = out;
  iso.name = name;
  iso.exiting = EXIT_NONE;
  lua_pushcfunction(L, msgh);
  lua_pushcfunction(L, body);
  lua_pushlightuserdata(L, &iso);
  status = lua_pcall(L, 1, 0, 1);
  ok = (iso.exiting == EXIT_RESULTS || (status == LUA_OK && iso.exiting == EXIT_NONE));
  if (!ok) {
    if (status == LUA_OK) lua_pushnil(L);	/* exited, yet returned */
    failure(L, &iso, status);
  }
  iso.exiting = EXIT_CLOSING;	/* a finalizer's exit must not touch 'out' */
  lua_close(L);			/* before the caller sees the results: __gc done */
  buffer_free(in);		/* if body did not get that far */
  return ok;
}
