/*
** core.c: luaopen_isolate_core, the functions Lua calls, the Task type.
*/
#define _GNU_SOURCE		/* dladdr */
#include <dlfcn.h>
#include <pthread.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "isolate.h"
#include "buffer.h"
#include "codec.h"
#include "pool.h"
#include "state.h"


/*
** {======================================================
** Tasks
** =======================================================
*/

/*
** A Task's user values cache its outcome once collected from the job:
** 1 is a table {n = n, ...} of the results, 2 the RemoteError to raise.
*/
typedef struct Task {
  Job *job;			/* NULL once let go (collected, or run's own) */
  Pool *pool;
} Task;

#define checktask(L)	((Task *)luaL_checkudata(L, 1, ISOLATE_TASK))


static Pool *getpool (lua_State *L) {
  Pool *p = pool_default();
  if (p == NULL) luaL_error(L, "isolate: cannot start worker threads");
  return p;
}


/* package[field] of the calling state, as a raw string into the job */
static void putpath (lua_State *L, Buffer *b, const char *field) {
  int top = lua_gettop(L);
  size_t len = 0;
  const char *s;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "package");
  s = lua_istable(L, -1) && lua_getfield(L, -1, field) == LUA_TSTRING
    ? lua_tolstring(L, -1, &len) : "";
  if (!codec_putstring(b, s, len)) luaL_error(L, "isolate: not enough memory");
  lua_settop(L, top);
}


/*
** Encode the function at 1 and the arguments above it into a new job and
** queue it.  The Task userdata owns the job from its birth, so an error
** while encoding (a value that cannot travel) frees it through __gc.
*/
static Task *submit (lua_State *L) {
  int n = lua_gettop(L);
  Pool *p = getpool(L);
  Task *t = (Task *)lua_newuserdatauv(L, sizeof(Task), 2);
  t->job = NULL;
  t->pool = p;
  luaL_setmetatable(L, ISOLATE_TASK);
  if ((t->job = job_new()) == NULL) luaL_error(L, "isolate: not enough memory");
  putpath(L, &t->job->in, "path");
  putpath(L, &t->job->in, "cpath");
  codec_encode(L, &t->job->in, 1, n, ROLE_CALL);
  pool_submit(p, t->job);
  return t;
}


/* a RemoteError from a failure record; the record is consumed */
static void push_remote (lua_State *L, Job *j) {
  static const char *const fields[] = {"kind", "message", "traceback", "value"};
  Reader r;
  int i;
  if (j->out.total == 0) {	/* not even the record fitted in memory */
    codec_failure(&j->out, "memory", "not enough memory");
    if (j->out.total == 0) luaL_error(L, "isolate: not enough memory");
  }
  reader_init(&r, &j->out);
  if (codec_decode(L, &r, CODEC_FUNCTIONS) != 4)
    luaL_error(L, "isolate: corrupt failure record");
  lua_createtable(L, 0, 4);
  for (i = 3; i >= 0; i--) {
    lua_insert(L, -2);
    lua_setfield(L, -2, fields[i]);
  }
  luaL_setmetatable(L, ISOLATE_REMOTEERROR);
}


/*
** Wait for the task's job and push its results, returning their count,
** or raise its RemoteError.  With 'keep', the outcome is cached in the
** task for later awaits; without, the job is let go at once.
*/
static int collect (lua_State *L, Task *t, int keep) {
  Job *j = t->job;
  Reader r;
  int n;
  pool_await(t->pool, j);
  if (pool_status(j) == JOB_FAILED) {
    push_remote(L, j);
    if (keep) {
      lua_pushvalue(L, -1);
      lua_setiuservalue(L, 1, 2);
    }
    buffer_free(&j->out);
    return lua_error(L);
  }
  reader_init(&r, &j->out);
  n = codec_decode(L, &r, CODEC_FUNCTIONS);
  if (keep) {
    int i, first = lua_gettop(L) - n + 1;
    lua_createtable(L, n, 1);
    for (i = 0; i < n; i++) {
      lua_pushvalue(L, first + i);
      lua_rawseti(L, -2, i + 1);
    }
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    lua_setiuservalue(L, 1, 1);
  }
  buffer_free(&j->out);
  return n;
}


static int task_await (lua_State *L) {
  Task *t = checktask(L);
  lua_settop(L, 1);
  if (lua_getiuservalue(L, 1, 2) != LUA_TNIL)
    return lua_error(L);		/* the RemoteError, again */
  if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) {	/* results, again */
    int n = (lua_getfield(L, 3, "n"), (int)lua_tointeger(L, -1)), i;
    luaL_checkstack(L, n, "isolate: too many results");
    for (i = 1; i <= n; i++) lua_rawgeti(L, 3, i);
    return n;
  }
  lua_settop(L, 1);
  if (t->job == NULL) return luaL_error(L, "isolate: task is closed");
  return collect(L, t, 1);
}


static const char *task_statusname (Task *t) {
  static const char *const names[] = {"queued", "queued", "running", "done", "failed"};
  return t->job == NULL ? "closed" : names[pool_status(t->job)];
}


static int task_status (lua_State *L) {
  lua_pushstring(L, task_statusname(checktask(L)));
  return 1;
}


static int task_done (lua_State *L) {
  Task *t = checktask(L);
  JobStatus s = t->job == NULL ? JOB_DONE : pool_status(t->job);
  lua_pushboolean(L, s == JOB_DONE || s == JOB_FAILED);
  return 1;
}


static int task_tostring (lua_State *L) {
  Task *t = checktask(L);
  lua_pushfstring(L, "isolate.Task %d (%s)",
                  t->job == NULL ? 0 : (int)t->job->id, task_statusname(t));
  return 1;
}


/* the work goes on; the pool's reference keeps the job until it ends */
static int task_gc (lua_State *L) {
  Task *t = checktask(L);
  if (t->job != NULL) {
    job_release(t->pool, t->job);
    t->job = NULL;
  }
  return 0;
}

/* }====================================================== */


static int l_run (lua_State *L) {
  Task *t;
  int n;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  t = submit(L);
  n = collect(L, t, 0);
  job_release(t->pool, t->job);
  t->job = NULL;
  return n;
}


static int l_spawn (lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  submit(L);
  return 1;
}


static int l_exit (lua_State *L) {
  return state_exit(L, lua_gettop(L));
}


static int l_ismain (lua_State *L) {
  lua_pushboolean(L, state_ismain(L));
  return 1;
}


static int l_name (lua_State *L) {
  state_pushname(L);
  return 1;
}


static int l_cpus (lua_State *L) {
  lua_pushinteger(L, pool_cpus());
  return 1;
}


/* a Buffer owned by a userdata, so that an error cannot leak it */
static Buffer *newbuffer (lua_State *L) {
  Buffer *b = (Buffer *)lua_newuserdatauv(L, sizeof(Buffer), 0);
  memset(b, 0, sizeof(Buffer));
  luaL_setmetatable(L, "isolate.Buffer");
  return b;
}

static int buffer_gc (lua_State *L) {
  buffer_free((Buffer *)luaL_checkudata(L, 1, "isolate.Buffer"));
  return 0;
}


static int l_encode (lua_State *L) {
  int n = lua_gettop(L);
  Buffer *b = newbuffer(L);
  luaL_Buffer out;
  Chunk *c;
  codec_encode(L, b, 1, n, ROLE_VALUE);
  luaL_buffinitsize(L, &out, b->total);
  for (c = b->head; c != NULL; c = c->next)
    luaL_addlstring(&out, (const char *)c->data, c->used);
  luaL_pushresult(&out);
  buffer_free(b);
  return 1;
}


static int l_decode (lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  int flags = 0, n;
  Reader r;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "functions") != LUA_TNIL && lua_toboolean(L, -1))
      flags |= CODEC_FUNCTIONS;
  }
  lua_settop(L, 2);
  reader_initflat(&r, s, len);
  n = codec_decode(L, &r, flags);
  if (r.left != 0)
    return luaL_error(L, "isolate: cannot decode: %I bytes after the values",
                      (LUAI_UACINT)r.left);
  return n;
}


/* tostring(err): the message, then the remote traceback */
static int remote_tostring (lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "message");
  luaL_tolstring(L, -1, NULL);
  if (lua_getfield(L, 1, "traceback") == LUA_TSTRING) {
    lua_pushliteral(L, "\nremote ");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
  else lua_pop(L, 1);
  return 1;
}


/*
** Worker threads run code of this library for as long as the process
** lives, even after the state that loaded it is closed and its package
** library has dlclose'd it.  So the first load pins it: a second dlopen
** with RTLD_NODELETE keeps it mapped to the end.
*/
static const char anchor = 0;	/* any address inside this library */

static void pin_library (void) {
  Dl_info info;
  if (dladdr(&anchor, &info) && info.dli_fname != NULL)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE);
}


static const luaL_Reg task_methods[] = {
  {"await", task_await},
  {"status", task_status},
  {"done", task_done},
  {NULL, NULL}
};

static const luaL_Reg task_meta[] = {
  {"__gc", task_gc},
  {"__tostring", task_tostring},
  {"__index", NULL},		/* placeholder */
  {NULL, NULL}
};

static const luaL_Reg funcs[] = {
  {"run", l_run},
  {"spawn", l_spawn},
  {"exit", l_exit},
  {"ismain", l_ismain},
  {"name", l_name},
  {"cpus", l_cpus},
  {"encode", l_encode},
  {"decode", l_decode},
  {"RemoteError", NULL},	/* placeholder */
  {NULL, NULL}
};


static void createmeta (lua_State *L) {
  luaL_newmetatable(L, ISOLATE_TASK);
  luaL_setfuncs(L, task_meta, 0);
  luaL_newlib(L, task_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newmetatable(L, "isolate.Buffer");
  lua_pushcfunction(L, buffer_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}


int luaopen_isolate_core (lua_State *L);

int luaopen_isolate_core (lua_State *L) {
  static pthread_once_t pinned = PTHREAD_ONCE_INIT;
  pthread_once(&pinned, pin_library);
  createmeta(L);
  luaL_newlib(L, funcs);
  luaL_newmetatable(L, ISOLATE_REMOTEERROR);
  lua_pushcfunction(L, remote_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_setfield(L, -2, "RemoteError");
  return 1;
}
