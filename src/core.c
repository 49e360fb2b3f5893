/*
** core.c: luaopen_isolate_core, the functions Lua calls, the Task type.
*/
#define _GNU_SOURCE		/* dladdr */
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "lua.h"
#include "lauxlib.h"

#include "isolate.h"
#include "buffer.h"
#include "codec.h"
#include "message.h"
#include "names.h"
#include "pool.h"
#include "state.h"


/*
** {======================================================
** Tasks
** =======================================================
*/

/*
** A Task owns its job until the job has ended; then its output moves to an
** Output userdata, the task's user value 2, and the job is let go.  Whoever
** decodes the output holds that userdata on its stack and counts as one of
** its readers, so nothing frees it under a decoder: not a re-entered await
** (a finalizer can run during any allocation of the decoder), not an
** explicit __gc.  The decoded outcome is user value 1: a table {n = n,
** ...} of the results, or the RemoteError.
*/
typedef struct Task {
  Job *job;			/* NULL once its output is taken, or after __gc */
  Pool *pool;
  unsigned long id;
  JobStatus status;		/* JOB_DONE or JOB_FAILED once taken */
} Task;

typedef struct Output {
  Buffer b;
  int readers;			/* decodes of it under way */
  int decoded;			/* one decode went through: no need to keep it */
} Output;

#define checktask(L)	((Task *)luaL_checkudata(L, 1, ISOLATE_TASK))

#define OUTCOME		1	/* user values of a Task */
#define OUTPUT		2

#define ISOLATE_OUTPUT	"isolate.Output"


/*
** A decoder marks its Output to-be-closed: when it returns or fails, it is
** one reader less, and the last reader frees the buffer once a decode went
** through.  (Out of memory, a __close may not run: then __gc frees it, as
** the collector finds it unreachable; the metatable is hidden, so that only
** the debug library can call __gc by hand.)
*/
static int output_close (lua_State *L) {
  Output *o = (Output *)luaL_checkudata(L, 1, ISOLATE_OUTPUT);
  if (--o->readers == 0 && o->decoded) buffer_free(&o->b);
  return 0;
}

static int output_gc (lua_State *L) {
  buffer_free(&((Output *)luaL_checkudata(L, 1, ISOLATE_OUTPUT))->b);
  return 0;
}


/* push the task's Output and return it, or NULL (nothing pushed) */
static Output *getoutput (lua_State *L, int ti) {
  Output *o;
  lua_getiuservalue(L, ti, OUTPUT);
  if ((o = (Output *)luaL_testudata(L, -1, ISOLATE_OUTPUT)) == NULL) lua_pop(L, 1);
  return o;
}


static Pool *getpool (lua_State *L) {
  Pool *p = pool_default();
  if (p == NULL) luaL_error(L, "isolate: cannot start worker threads");
  return p;
}


/*
** Encode the function at 1 and the arguments above it into a new job and
** queue it.  The Task userdata owns the job from its birth, so an error
** while encoding (a value that cannot travel) frees it through __gc.
*/
static Task *submit (lua_State *L) {
  int n = lua_gettop(L);
  int depth = state_depth(L) + 1;
  Pool *p;
  Task *t;
  if (depth > ISOLATE_MAXNESTING)
    luaL_error(L, "isolate: isolates nested more than %d deep", ISOLATE_MAXNESTING);
  p = getpool(L);
  t = (Task *)lua_newuserdatauv(L, sizeof(Task), 2);
  memset(t, 0, sizeof(Task));
  t->pool = p;
  t->status = JOB_NEW;
  luaL_setmetatable(L, ISOLATE_TASK);
  if ((t->job = job_new(depth)) == NULL) {
    lua_pushliteral(L, "not enough memory");
    lua_error(L);
  }
  message_putinput(L, job_input(t->job), 1, n);
  pool_submit(p, t->job);
  t->id = job_id(t->job);
  return t;
}


static double now (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}


/* raise an isolate.TimeoutError: task t did not end within timeout seconds */
static int timedout (lua_State *L, Task *t, double timeout) {
  lua_createtable(L, 0, 2);
  lua_pushfstring(L, "isolate: task %I did not end within %f seconds",
                  (LUAI_UACINT)t->id, (LUAI_UACNUMBER)timeout);
  lua_setfield(L, -2, "message");
  lua_pushnumber(L, (lua_Number)timeout);
  lua_setfield(L, -2, "timeout");
  luaL_setmetatable(L, ISOLATE_TIMEOUTERROR);
  return lua_error(L);
}


/*
** Push the output buffer of the task at 'ti', waiting for its job to end
** (at most 'timeout' seconds; < 0: no limit; then a TimeoutError, or with
** 'raise' false NULL, nothing pushed).  The wait goes in slices,
** and a hook that is set (the standalone interpreter's answer to Ctrl-C,
** maybe posted while the arguments were encoded) gets a call to run in,
** once at the start and again whenever it changes, so an interrupt raises
** its error here at once.
** Lua code may run there, and finalizers in any allocation: the task may
** have been taken (re-entered await) or closed (__gc) on return of either.
*/
static Output *output (lua_State *L, int ti, double timeout, int raise) {
  Task *t = (Task *)lua_touserdata(L, ti);
  lua_Hook hook = NULL;		/* a hook set before the wait runs first */
  int mask = 0, count = 0;
  double deadline = timeout >= 0 ? now() + timeout : 0;
  Output *o;
  for (;;) {
    long ms = ISOLATE_WAIT_MS;
    if (lua_gethook(L) != hook || lua_gethookmask(L) != mask ||
        lua_gethookcount(L) != count) {
      hook = lua_gethook(L);
      mask = lua_gethookmask(L);
      count = lua_gethookcount(L);
      luaL_loadbuffer(L, "return", 6, "=(isolate wait)");
      lua_call(L, 0, 0);	/* call, line and count hooks all see it */
    }
    if ((o = getoutput(L, ti)) != NULL) return o;
    if (t->job == NULL) luaL_error(L, "isolate: task is closed");
    if (timeout >= 0) {
      double left = deadline - now();
      if (left < (double)ms / 1000) ms = left > 0 ? (long)(left * 1000) : 0;
    }
    if (pool_wait(t->pool, t->job, ms, timeout < 0)) break;
    if (timeout >= 0 && now() >= deadline) {
      if (raise) timedout(L, t, timeout);
      return NULL;
    }
  }
  o = (Output *)lua_newuserdatauv(L, sizeof(Output), 0);
  memset(o, 0, sizeof(Output));
  luaL_setmetatable(L, ISOLATE_OUTPUT);
  if (getoutput(L, ti) != NULL) {	/* taken meanwhile */
    lua_remove(L, -2);
    return (Output *)lua_touserdata(L, -1);
  }
  if (t->job == NULL) luaL_error(L, "isolate: task is closed");
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, ti, OUTPUT);
  t->status = job_status(t->pool, t->job);
  job_take_output(t->job, &o->b);
  job_release(t->pool, t->job);
  t->job = NULL;
  return o;
}


/* push the cached outcome of the task at 'ti' (raising an error), or -1 */
static int replay (lua_State *L, int ti) {
  Task *t = (Task *)lua_touserdata(L, ti);
  int n, i;
  if (lua_getiuservalue(L, ti, OUTCOME) == LUA_TNIL) {
    lua_pop(L, 1);
    return -1;
  }
  if (t->status == JOB_FAILED) return lua_error(L);	/* the RemoteError, again */
  if (!lua_istable(L, -1)) luaL_error(L, "isolate: the task's results were replaced");
  lua_getfield(L, -1, "n");
  n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  isolate_checkstack(L, n);
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  return n;
}


/*
** Push the results of the task at 'ti' and return their count, or raise
** its RemoteError.  With 'keep', the outcome is cached in the task for
** later awaits, and an outcome cached meanwhile by a re-entered await is
** the one returned.  The output is freed when no decode of it is left.
*/
static int collect (lua_State *L, int ti, int keep, double timeout) {
  Task *t = (Task *)lua_touserdata(L, ti);
  Output *o;
  Reader r;
  int n, base, i;
  if (keep && (n = replay(L, ti)) >= 0) return n;
  o = output(L, ti, timeout, 1);
  if (keep && (n = replay(L, ti)) >= 0) return n;	/* a re-entered await did it */
  base = lua_gettop(L);
  o->readers++;
  lua_toclose(L, base);
  reader_init(&r, &o->b);
  if (t->status == JOB_FAILED) {
    message_pushfailure(L, &r);
    n = 1;
  }
  else n = codec_decode(L, &r, CODEC_TRUSTED);
  if (keep) {			/* made first: a re-entered await may come first */
    if (t->status == JOB_FAILED) lua_pushvalue(L, base + 1);
    else {
      lua_createtable(L, n, 1);
      for (i = 1; i <= n; i++) {
        lua_pushvalue(L, base + i);
        lua_rawseti(L, -2, i);
      }
      lua_pushinteger(L, n);
      lua_setfield(L, -2, "n");
    }
    if (lua_getiuservalue(L, ti, OUTCOME) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_setiuservalue(L, ti, OUTCOME);
    }
    else lua_pop(L, 2);
  }
  o->decoded = 1;
  if (keep) {
    lua_settop(L, base - 1);	/* closes the output */
    return replay(L, ti);
  }
  if (t->status == JOB_FAILED) return lua_error(L);
  return n;			/* the output closes on return */
}


static double opttimeout (lua_State *L, int arg) {
  lua_Number timeout;
  if (lua_isnoneornil(L, arg)) return -1;
  timeout = luaL_checknumber(L, arg);
  luaL_argcheck(L, timeout >= 0, arg, "timeout must be a number >= 0");
  return timeout >= HUGE_VAL ? -1 : (double)timeout;	/* math.huge: no limit */
}


static int task_await (lua_State *L) {
  double timeout;
  checktask(L);
  timeout = opttimeout(L, 2);
  lua_settop(L, 1);
  return collect(L, 1, 1, timeout);
}


/* true once the task has ended (in any way), false on timeout */
static int task_wait (lua_State *L) {
  double timeout;
  checktask(L);
  timeout = opttimeout(L, 2);
  lua_settop(L, 1);
  lua_pushboolean(L, lua_getiuservalue(L, 1, OUTCOME) != LUA_TNIL ||
                     output(L, 1, timeout, 0) != NULL);
  return 1;
}


/* like pcall(task.await, task): true and the results, or false and the error */
static int task_result (lua_State *L) {
  checktask(L);
  lua_settop(L, 1);
  lua_pushcfunction(L, task_await);
  lua_insert(L, 1);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, 1);
  return lua_gettop(L);
}


static const char *task_statusname (Task *t) {
  static const char *const names[] = {"queued", "queued", "running", "done", "failed"};
  if (t->job != NULL) return names[job_status(t->pool, t->job)];
  return t->status == JOB_NEW ? "closed" : names[t->status];
}


static int task_status (lua_State *L) {
  lua_pushstring(L, task_statusname(checktask(L)));
  return 1;
}


static int task_done (lua_State *L) {
  Task *t = checktask(L);
  JobStatus s = t->job == NULL ? t->status : job_status(t->pool, t->job);
  lua_pushboolean(L, s == JOB_DONE || s == JOB_FAILED);
  return 1;
}


static int task_tostring (lua_State *L) {
  Task *t = checktask(L);
  lua_pushfstring(L, "isolate.Task %I (%s)", (LUAI_UACINT)t->id, task_statusname(t));
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
  luaL_checktype(L, 1, LUA_TFUNCTION);
  submit(L);
  return collect(L, lua_gettop(L), 0, -1);
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


static int l_encode (lua_State *L) {
  int n = lua_gettop(L);
  Buffer *b = buffer_push(L);
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
    if (lua_getfield(L, 2, "trusted") != LUA_TNIL && lua_toboolean(L, -1))
      flags |= CODEC_TRUSTED;
  }
  lua_settop(L, 2);
  reader_initflat(&r, s, len);
  n = codec_decode(L, &r, flags);
  if (r.left != 0)
    return luaL_error(L, "isolate: cannot decode: %I bytes after the values",
                      (LUAI_UACINT)r.left);
  return n;
}


/* for tests: the next isolate fails its n-th allocation (0: none) */
static int l_failalloc (lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0, 1, "must be >= 0");
  state_failalloc((size_t)n);
  return 0;
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


/* tostring(timeout): its message */
static int timeout_tostring (lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "message");
  luaL_tolstring(L, -1, NULL);
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
  {"wait", task_wait},
  {"result", task_result},
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
  {"_failalloc", l_failalloc},
  {"RemoteError", NULL},	/* placeholders */
  {"TimeoutError", NULL},
  {NULL, NULL}
};


/*
** The error metatables: fields of the module, registered under their
** names; the RemoteError travels by name (a nested isolate's error keeps
** its type), as isolate.core's field.
*/
static void errortype (lua_State *L, const char *tname, const char *field,
                       lua_CFunction tostring) {
  luaL_newmetatable(L, tname);
  lua_pushcfunction(L, tostring);
  lua_setfield(L, -2, "__tostring");
  names_pin(L, -1, "isolate.core", field);
  lua_setfield(L, -2, field);
}


int luaopen_isolate_core (lua_State *L);

int luaopen_isolate_core (lua_State *L) {
  static pthread_once_t pinned = PTHREAD_ONCE_INIT;
  pthread_once(&pinned, pin_library);
  luaL_newmetatable(L, ISOLATE_TASK);
  luaL_setfuncs(L, task_meta, 0);
  luaL_newlib(L, task_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  luaL_newmetatable(L, ISOLATE_OUTPUT);
  lua_pushcfunction(L, output_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, output_close);
  lua_setfield(L, -2, "__close");
  lua_pushboolean(L, 0);	/* getmetatable(output) is false */
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  errortype(L, ISOLATE_REMOTEERROR, "RemoteError", remote_tostring);
  errortype(L, ISOLATE_TIMEOUTERROR, "TimeoutError", timeout_tostring);
  return 1;
}
