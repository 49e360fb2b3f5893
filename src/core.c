/*
** core.c: luaopen_isolate_core, the functions Lua calls, the Task type.
*/
#define _GNU_SOURCE		/* dladdr */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"

#include "isolate.h"
#include "buffer.h"
#include "codec.h"
#include "mailbox.h"
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
** ...} of the results, or the RemoteError.  A task holds a reference to
** its pool while it holds its job.  The messages of a spawned task that
** were not received when it let go of its job move to the task, with
** the descriptor that its caller polls.
*/
typedef struct Task {
  Job *job;			/* NULL once its output is taken, or after __gc */
  Pool *pool;
  unsigned long id;
  JobStatus status;		/* final once taken */
  unsigned long endseq;		/* the job's, once taken */
  int quiet;			/* a chunk of a map: its failure is map's to tell */
  int closed;			/* __gc ran */
  int borrows;			/* its input borrows from the caller's stack (run) */
  int args;			/* else a registry reference to what it borrows, or LUA_NOREF */
  Mailbox mail;			/* once the job is let go */
} Task;

typedef struct Output {
  Buffer b;
  Pool *pool;			/* held while 'b' borrows from a state of it */
  unsigned long epoch;		/* the process's then (pool_epoch) */
  int readers;			/* decodes of it under way */
  int decoded;			/* one decode went through: no need to keep it */
  int failed, seen;		/* a failure record; its error was raised */
  unsigned long id;		/* the task's */
} Output;

#define checktask(L,i)	((Task *)luaL_checkudata(L, i, ISOLATE_TASK))

#define OUTCOME		1	/* user values of a Task */
#define OUTPUT		2

#define ISOLATE_OUTPUT	"isolate.Output"
#define ISOLATE_MAIL	"isolate.Mail"
#define ISOLATE_POOL	"isolate.Pool"


/*
** A decoder marks its Output to-be-closed: when it returns or fails, it is
** one reader less, and the last reader frees the buffer once a decode went
** through.  (Out of memory, a __close may not run: then __gc frees it, as
** the collector finds it unreachable; the metatable is hidden, so that only
** the debug library can call __gc by hand.)
*/
static void output_free (Output *o) {
  void *owner = o->b.owner;	/* the state it borrows from */
  buffer_free(&o->b);
  if (owner != NULL) {		/* (a parent's, in a forked child: not here) */
    if (o->epoch == pool_epoch()) pool_closelater(o->pool, (lua_State *)owner);
    pool_release(o->pool);
    o->pool = NULL;
  }
}

static int output_close (lua_State *L) {
  Output *o = (Output *)luaL_checkudata(L, 1, ISOLATE_OUTPUT);
  if (--o->readers == 0 && o->decoded) output_free(o);
  return 0;
}

static void warnlost (lua_State *L, unsigned long id, Buffer *record);

/* a failure that nobody saw is a warning (it goes with its task) */
static int output_gc (lua_State *L) {
  Output *o = (Output *)luaL_checkudata(L, 1, ISOLATE_OUTPUT);
  if (o->failed && !o->seen && o->b.total > 0) {
    o->seen = 1;
    warnlost(L, o->id, &o->b);
  }
  output_free(o);
  return 0;
}


/* push the task's Output and return it, or NULL (nothing pushed) */
static Output *getoutput (lua_State *L, int ti) {
  Output *o;
  lua_getiuservalue(L, ti, OUTPUT);
  if ((o = (Output *)luaL_testudata(L, -1, ISOLATE_OUTPUT)) == NULL) lua_pop(L, 1);
  return o;
}


/* the task let go of its job (it keeps its pool until __gc) and has its mail */
static void letgo (Task *t) {
  job_take_mail(t->pool, t->job, &t->mail);
  job_release(t->pool, t->job);
  t->job = NULL;
}


/*
** {------------------------------------------------------
** The life of a caller's tasks
** -------------------------------------------------------
*/

/*
** When the caller's state closes (the end of a script, lua_close from a
** host), its tasks are cancelled: those it still has a handle on, and
** those whose handles were collected while they ran (which go on, for
** nobody, until then).  lua_close runs every finalizer, reachable objects
** included, without clearing weak tables first, while a collection clears
** an unreachable task from weak values before its finalizer runs: so a
** task that finds itself in the registry's weak table LIVE is being
** finalized by lua_close.  The jobs of collected handles are kept in the
** Orphans userdata of the registry, whose finalizer runs at lua_close
** only.  A failed task collected with its error unseen says so in a
** warning.
*/
static const char live_key = 0;		/* registry: weak table, task -> task (pools too) */
static const char orphans_key = 0;	/* registry: the Orphans */

typedef struct Orphan {
  Job *job;
  Pool *pool;
  unsigned long id;
  int quiet;
  int args;			/* the task's (a registry reference, or LUA_NOREF) */
} Orphan;

typedef struct Orphans {
  Orphan *list;			/* from the state's allocator */
  int n, size;
} Orphans;


static int closing (lua_State *L, int ti) {
  int is;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &live_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  lua_rawgetp(L, -1, lua_touserdata(L, ti));
  is = lua_rawequal(L, -1, ti);
  lua_pop(L, 2);
  return is;
}


/* the message of a failure record, for a warning (under lua_pcall) */
static int pushlost (lua_State *L) {
  Reader r;
  reader_init(&r, (Buffer *)lua_touserdata(L, 1));
  message_pushfailure(L, &r);
  lua_getfield(L, -1, "message");
  return 1;
}

static void warnlost (lua_State *L, unsigned long id, Buffer *record) {
  lua_pushcfunction(L, pushlost);
  lua_pushlightuserdata(L, record);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
    lua_pop(L, 1);
    lua_pushliteral(L, "?");
  }
  lua_pushfstring(L, "isolate: task %I failed and nobody saw its error: %s",
                  (LUAI_UACINT)id, lua_tostring(L, -1));
  lua_warning(L, lua_tostring(L, -1), 0);
  lua_pop(L, 2);
}


/* an orphan that has ended is let go of (with a warning if it failed) */
static int bury (lua_State *L, Orphan *o) {
  Buffer record = BUFFER_INIT;
  JobStatus s = job_status(o->pool, o->job);
  if (s != JOB_DONE && s != JOB_FAILED && s != JOB_CANCELLED) return 0;
  if (s == JOB_FAILED && !o->quiet) {
    job_take_output(o->job, &record);
    warnlost(L, o->id, &record);
    buffer_free(&record);
  }
  job_release(o->pool, o->job);
  pool_release(o->pool);
  luaL_unref(L, LUA_REGISTRYINDEX, o->args);
  return 1;
}


static int orphans_gc (lua_State *L) {
  Orphans *os = (Orphans *)lua_touserdata(L, 1);
  void *ud;
  lua_Alloc alloc = lua_getallocf(L, &ud);
  int i;
  for (i = 0; i < os->n; i++) {
    if (!bury(L, &os->list[i])) {
      job_cancel(os->list[i].pool, os->list[i].job);
      job_release(os->list[i].pool, os->list[i].job);
      pool_release(os->list[i].pool);
    }
  }
  alloc(ud, os->list, sizeof(Orphan) * (size_t)os->size, 0);
  os->list = NULL;
  os->n = os->size = 0;
  /* the last finalizer of a caller's end (made first): the states whose
     results it had not decoded close now, before the process may end */
  if (state_ismain(L)) pool_closeall(pool_default());
  return 0;
}


/* the task's handle is collected while its job goes on: keep the job */
static void adopt (lua_State *L, Task *t) {
  Orphans *os;
  int i, n;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &orphans_key) != LUA_TUSERDATA) {
    lua_pop(L, 1);
    letgo(t);			/* no Orphans: cannot happen, but never leak */
    return;
  }
  os = (Orphans *)lua_touserdata(L, -1);
  for (i = n = 0; i < os->n; i++)	/* bury the ended ones first */
    if (!bury(L, &os->list[i])) os->list[n++] = os->list[i];
  os->n = n;
  if (os->n == os->size) {
    void *ud;
    lua_Alloc alloc = lua_getallocf(L, &ud);
    int size = os->size == 0 ? 16 : 2 * os->size;
    Orphan *list = (Orphan *)alloc(ud, os->list, sizeof(Orphan) * (size_t)os->size,
                                   sizeof(Orphan) * (size_t)size);
    if (list == NULL) {		/* in a finalizer: no error, the job goes on alone */
      lua_pop(L, 1);
      letgo(t);
      return;
    }
    os->list = list;
    os->size = size;
  }
  os->list[os->n].job = t->job;
  os->list[os->n].pool = t->pool;
  pool_retain(t->pool);
  os->list[os->n].id = t->id;
  os->list[os->n].quiet = t->quiet;
  os->list[os->n].args = t->args;
  t->args = LUA_NOREF;
  os->n++;
  job_orphan(t->pool, t->job);	/* its results go nowhere: its state need not wait */
  t->job = NULL;		/* the Orphans hold its references now */
  lua_pop(L, 1);
}


/* the registry's weak table of live tasks and its Orphans, made once */
static void lifecycle (lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &live_key) == LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &live_key);
  memset(lua_newuserdatauv(L, sizeof(Orphans), 0), 0, sizeof(Orphans));
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, orphans_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &orphans_key);
}


/*
** A handle collected: its job goes on (kept as an orphan), unless the
** state is closing, which cancels it.  A failure nobody saw is a warning.
*/
static int task_gc (lua_State *L) {
  Task *t = checktask(L, 1);
  t->closed = 1;
  if (t->job != NULL) {
    JobStatus s = job_status(t->pool, t->job);
    job_unlisten(t->pool, t->job);	/* nobody can receive its messages now */
    if (s == JOB_FAILED && !t->quiet) {
      Buffer record = BUFFER_INIT;
      job_take_output(t->job, &record);
      warnlost(L, t->id, &record);
      buffer_free(&record);
    }
    if (s == JOB_QUEUED || s == JOB_RUNNING) {
      if (closing(L, 1)) {	/* what it borrows goes with this state: */
        job_cancel(t->pool, t->job);	/* wait till its input is read */
        while (t->args != LUA_NOREF && !job_hasread(t->job) &&
               !pool_wait(t->pool, t->job, 1, 0)) ;
      }
      else adopt(L, t);
    }
    if (t->job != NULL) letgo(t);
  }
  luaL_unref(L, LUA_REGISTRYINDEX, t->args);	/* (adopt took it, or the job ended) */
  t->args = LUA_NOREF;
  if (t->pool != NULL) {
    pool_release(t->pool);
    t->pool = NULL;
  }
  mailbox_free(&t->mail);
  return 0;			/* a failure taken: its Output warns */
}

/* }------------------------------------------------------ */


static Pool *defaultpool (lua_State *L) {
  Pool *p = pool_default();
  if (p == NULL) luaL_error(L, "isolate: cannot start worker threads");
  return p;
}


/*
** A new task of pool 'p', queued, with its input written by 'put' from the
** values of the stack above 'base', which it replaces.  The Task userdata owns the job from
** its birth, so an error while encoding (a value that cannot travel) frees
** it through __gc.  With 'here' (run), the caller may run it on its own
** thread; with 'listen' (spawn), its messages are kept for its caller.
*/
typedef int (*PutInput) (lua_State *L, Buffer *b, void *ud);	/* 1: pushed pins */

static Task *submit (lua_State *L, Pool *p, PutInput put, void *ud, int here,
                     int listen, int base) {
  int depth = state_depth(L) + 1;
  const char *why;
  Task *t;
  if (depth > ISOLATE_MAXNESTING)
    luaL_error(L, "isolate: isolates nested more than %d deep", ISOLATE_MAXNESTING);
  if (state_closing(L))		/* Lua would never finalize the task */
    luaL_error(L, "isolate: cannot start an isolate while this isolate's state closes");
  if ((why = pool_unusable(p)) != NULL) luaL_error(L, "%s", why);
  lifecycle(L);
  t = (Task *)lua_newuserdatauv(L, sizeof(Task), 2);
  memset(t, 0, sizeof(Task));
  t->args = LUA_NOREF;
  t->status = JOB_NEW;
  t->mail.bell.rfd = t->mail.bell.wfd = -1;
  luaL_setmetatable(L, ISOLATE_TASK);
  if ((t->job = job_new(depth, listen)) == NULL) {
    lua_pushliteral(L, "not enough memory");
    lua_error(L);
  }
  t->pool = p;
  pool_retain(p);
  lua_insert(L, base + 1);	/* below the values 'put' reads */
  if (put(L, job_input(t->job), ud) && !lua_isnil(L, -1)) {	/* it borrows */
    if (here) {			/* stays on this stack: see output() */
      t->borrows = 1;
      lua_replace(L, base + 2);
      lua_settop(L, base + 2);
    }
    else t->args = luaL_ref(L, LUA_REGISTRYINDEX);	/* till the output is taken */
  }
  lua_settop(L, base + 1 + t->borrows);
  if (here) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    here = pool_runhere(p, t->job, L, lua_tothread(L, -1));
    lua_pop(L, 1);
  }
  if (!here && !pool_submit(p, t->job)) luaL_error(L, "%s", pool_unusable(p));
  t->id = job_id(t->job);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &live_key);
  lua_pushvalue(L, base + 1);
  lua_rawsetp(L, -2, t);
  lua_pop(L, 1);
  return t;
}


/*
** The input of a call: the function at 'first' (*ud) and all above it.
** It borrows long strings and objects (codec.h): submit keeps them alive.
*/
static int putcall (lua_State *L, Buffer *b, void *ud) {
  int first = *(int *)ud + 1;	/* one more: the task is below (base 0) */
  message_putinput(L, b, first, lua_gettop(L) - first + 1, 1);
  return 1;
}


static double now (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}


/* raise an isolate.TimeoutError: its message is on top */
static int timedout (lua_State *L, double timeout) {
  lua_createtable(L, 0, 2);
  lua_insert(L, -2);
  lua_setfield(L, -2, "message");
  lua_pushnumber(L, (lua_Number)timeout);
  lua_setfield(L, -2, "timeout");
  luaL_setmetatable(L, ISOLATE_TIMEOUTERROR);
  return lua_error(L);
}


/* monotonic seconds, for the deadlines of the Lua layer */
static int l_now (lua_State *L) {
  lua_pushnumber(L, (lua_Number)now());
  return 1;
}


/*
** Every slice of a wait: a hook that is set (the standalone interpreter's
** answer to Ctrl-C, maybe posted while the arguments were encoded) gets a
** call to run in, once at the start and again whenever it changes, so an
** interrupt raises its error here at once; inside an isolate, a cancel of
** its own task is raised.  The error of either is returned (nothing
** raised) when 'catch': the caller cancels what it waited for first.
*/
typedef struct Watch {
  lua_Hook hook, mainhook;
  int mask, count, mainmask, maincount;
} Watch;

static int interrupter (lua_State *L) {
  luaL_loadbuffer(L, "return", 6, "=(isolate wait)");
  lua_call(L, 0, 0);		/* call, line and count hooks all see it */
  state_checkcancel(L);
  return 0;
}

/* has the hook of 'L' changed since 'w' saw it?  (then 'w' has it) */
static int newhook (lua_State *L, lua_Hook *hook, int *mask, int *count) {
  if (lua_gethook(L) == *hook && lua_gethookmask(L) == *mask &&
      lua_gethookcount(L) == *count)
    return 0;
  *hook = lua_gethook(L);
  *mask = lua_gethookmask(L);
  *count = lua_gethookcount(L);
  return 1;
}

/*
** The standalone interpreter sets its Ctrl-C hook on the main thread
** only: a wait in a coroutine borrows the main thread's hook for its call
** when that one changes (its own is given back if nothing was raised).
*/
static int watch (lua_State *L, Watch *w, int catch) {
  lua_State *M;
  int own, main = 0, status;
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  M = lua_tothread(L, -1);
  lua_pop(L, 1);
  own = newhook(L, &w->hook, &w->mask, &w->count);
  if (M != NULL && M != L)
    main = newhook(M, &w->mainhook, &w->mainmask, &w->maincount) && w->mainhook != NULL;
  if (!own && !main && !state_cancelled(L)) return 0;
  if (main) lua_sethook(L, w->mainhook, w->mainmask, w->maincount);
  lua_pushcfunction(L, interrupter);
  status = lua_pcall(L, 0, 0, 0);
  if (main && status == LUA_OK) lua_sethook(L, w->hook, w->mask, w->count);
  if (status == LUA_OK) return 0;
  if (!catch) lua_error(L);
  return 1;			/* the error on top */
}

#define WATCH_INIT	{NULL, NULL, 0, 0, 0, 0}


/*
** Push the output buffer of the task at 'ti', waiting for its job to end
** (at most 'timeout' seconds; < 0: no limit; then a TimeoutError, or with
** 'raise' false NULL, nothing pushed).  With 'cancels' (run), an
** interrupt of the wait cancels the task before it is raised.
** Lua code may run there, and finalizers in any allocation: the task may
** have been taken (re-entered await) or closed (__gc) on return of either.
*/
static Output *output (lua_State *L, int ti, double timeout, int raise, int cancels) {
  Task *t = (Task *)lua_touserdata(L, ti);
  Watch w = WATCH_INIT;
  double deadline = timeout >= 0 ? now() + timeout : 0;
  Output *o;
  for (;;) {
    long ms = ISOLATE_WAIT_MS;
    if (watch(L, &w, cancels)) {
      if (t->job != NULL) {
        job_cancel(t->pool, t->job);
        /* a job that borrows from this stack reads it until it has
           decoded its input (or ends, cancelled): it stays till then */
        while (t->borrows && !job_hasread(t->job) && !pool_wait(t->pool, t->job, 1, 0)) ;
      }
      lua_error(L);
    }
    if ((o = getoutput(L, ti)) != NULL) return o;
    if (t->job == NULL) luaL_error(L, "isolate: task is closed");
    if (timeout >= 0) {
      double left = deadline - now();
      if (left < (double)ms / 1000) ms = left > 0 ? (long)(left * 1000) : 0;
    }
    if (pool_wait(t->pool, t->job, ms, timeout < 0)) {
      state_checkcancel(L);	/* an isolate cancelled meanwhile ends first */
      break;
    }
    if (timeout >= 0 && now() >= deadline) {
      if (raise) {
        lua_pushfstring(L, "isolate: task %I did not end within %f seconds",
                        (LUAI_UACINT)t->id, (LUAI_UACNUMBER)timeout);
        timedout(L, timeout);
      }
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
  t->endseq = job_endseq(t->job);
  o->failed = (t->status == JOB_FAILED);
  o->seen = t->quiet;
  o->id = t->id;
  job_take_output(t->job, &o->b);
  if (o->b.owner != NULL) {
    o->pool = t->pool;
    o->epoch = job_epoch(t->job);	/* the state is this process's if equal */
    pool_retain(o->pool);
  }
  letgo(t);
  luaL_unref(L, LUA_REGISTRYINDEX, t->args);	/* the job has read its input */
  t->args = LUA_NOREF;
  return o;
}


/*
** Raise the RemoteError on top, with where it is raised in this state:
** its 'caller' field is the traceback from the function that called
** run, await or map (the error's own 'traceback' is the isolate's).
** Raised again, it tells where it was raised last.
*/
static int raise_remote (lua_State *L) {
  if (lua_istable(L, -1)) {
    lua_pushliteral(L, "caller");
    luaL_traceback(L, L, NULL, 1);
    lua_rawset(L, -3);
  }
  return lua_error(L);
}


/* push the cached outcome of the task at 'ti' (raising an error), or -1 */
static int replay (lua_State *L, int ti) {
  Task *t = (Task *)lua_touserdata(L, ti);
  int n, i;
  if (lua_getiuservalue(L, ti, OUTCOME) == LUA_TNIL) {
    lua_pop(L, 1);
    return -1;
  }
  if (t->status != JOB_DONE) {	/* the RemoteError, again */
    Output *o = getoutput(L, ti);
    if (o != NULL) {
      o->seen = 1;
      lua_pop(L, 1);
    }
    return raise_remote(L);
  }
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
static int collect (lua_State *L, int ti, int keep, double timeout, int cancels) {
  Task *t = (Task *)lua_touserdata(L, ti);
  Output *o;
  Reader r;
  int n, base, i;
  if (keep && (n = replay(L, ti)) >= 0) return n;
  o = output(L, ti, timeout, 1, cancels);
  if (keep && (n = replay(L, ti)) >= 0) return n;	/* a re-entered await did it */
  base = lua_gettop(L);
  o->readers++;
  lua_toclose(L, base);
  reader_init(&r, &o->b);
  if (t->status != JOB_DONE) {
    message_pushfailure(L, &r);
    n = 1;
  }
  else n = codec_decode(L, &r, CODEC_TRUSTED | CODEC_BORROWED);
  if (keep) {			/* made first: a re-entered await may come first */
    if (t->status != JOB_DONE) lua_pushvalue(L, base + 1);
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
    lua_closeslot(L, base);	/* the output (lua_settop cannot be trusted with
				   it: Lua 5.4.4 may keep a stale stack pointer) */
    lua_settop(L, base - 1);
    return replay(L, ti);
  }
  if (t->status != JOB_DONE) {
    o->seen = 1;
    return raise_remote(L);
  }
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
  checktask(L, 1);
  timeout = opttimeout(L, 2);
  lua_settop(L, 1);
  return collect(L, 1, 1, timeout, 0);
}


/* true once the task has ended (in any way), false on timeout */
static int task_wait (lua_State *L) {
  double timeout;
  checktask(L, 1);
  timeout = opttimeout(L, 2);
  lua_settop(L, 1);
  lua_pushboolean(L, lua_getiuservalue(L, 1, OUTCOME) != LUA_TNIL ||
                     output(L, 1, timeout, 0, 0) != NULL);
  return 1;
}


/* like pcall(task.await, task): true and the results, or false and the error */
static int task_result (lua_State *L) {
  checktask(L, 1);
  lua_settop(L, 1);
  lua_pushcfunction(L, task_await);
  lua_insert(L, 1);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) {
    if (lua_istable(L, -1)) {	/* returned, not raised: no 'caller' */
      lua_pushliteral(L, "caller");
      lua_pushnil(L);
      lua_rawset(L, -3);
    }
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, 1);
  return lua_gettop(L);
}


/* true if the request came before the task ended: it ends cancelled */
static int task_cancel (lua_State *L) {
  Task *t = checktask(L, 1);
  lua_pushboolean(L, t->job != NULL && job_cancel(t->pool, t->job));
  return 1;
}


static JobStatus task_state (Task *t) {
  return t->job != NULL ? job_status(t->pool, t->job) : t->status;
}


static const char *task_statusname (Task *t) {
  static const char *const names[] = {"closed", "queued", "running", "done",
                                      "failed", "cancelled"};
  return names[task_state(t)];
}


static int task_status (lua_State *L) {
  lua_pushstring(L, task_statusname(checktask(L, 1)));
  return 1;
}


static int isended (JobStatus s) {
  return s == JOB_DONE || s == JOB_FAILED || s == JOB_CANCELLED;
}


static int task_done (lua_State *L) {
  lua_pushboolean(L, isended(task_state(checktask(L, 1))));
  return 1;
}


/*
** {------------------------------------------------------
** Waiting in an event loop, and messages
** -------------------------------------------------------
*/

static void notclosed (lua_State *L, Task *t) {
  if (t->closed) luaL_error(L, "isolate: task is closed");
}


/* a descriptor that is readable while the task has a message or has ended */
static int task_pollfd (lua_State *L) {
  Task *t = checktask(L, 1);
  int fd;
  notclosed(L, t);
  fd = t->job != NULL ? job_pollfd(t->pool, t->job) : mailbox_fd(&t->mail);
  if (fd < 0)
    luaL_error(L, "isolate: cannot make a descriptor for task %I: %s",
               (LUAI_UACINT)t->id, strerror(errno));
  lua_pushinteger(L, fd);
  return 1;
}


/* the cqueues pollable protocol (tasks, completions): readable, no timeout */
static int pollable_events (lua_State *L) {
  lua_pushliteral(L, "r");
  return 1;
}

static int pollable_timeout (lua_State *L) {
  lua_pushnil(L);
  return 1;
}


/* messages emitted and not received yet */
static int task_pending (lua_State *L) {
  Task *t = checktask(L, 1);
  notclosed(L, t);
  lua_pushinteger(L, (lua_Integer)(t->job != NULL ? job_pending(t->pool, t->job) : t->mail.n));
  return 1;
}


/*
** receive([timeout]): the values of the oldest message not received yet,
** waiting for one; nothing once the task has ended and every message was
** received; a TimeoutError when none came in time.  A nested isolate
** that waits for the messages of a task still queued runs it itself, as
** await would (its messages wait for it to end then).
*/
static int task_receive (lua_State *L) {
  Task *t = checktask(L, 1);
  double timeout = opttimeout(L, 2);
  double deadline = timeout >= 0 ? now() + timeout : 0;
  Watch w = WATCH_INIT;
  Mail **mail;
  Reader r;
  int got;
  lua_settop(L, 1);
  mail = (Mail **)lua_newuserdatauv(L, sizeof(Mail *), 0);	/* its __gc frees it */
  *mail = NULL;
  luaL_setmetatable(L, ISOLATE_MAIL);
  for (;;) {
    long ms = ISOLATE_WAIT_MS;
    watch(L, &w, 0);
    notclosed(L, t);
    if (t->job == NULL) {
      got = (*mail = mailbox_take(&t->mail)) != NULL;
      break;
    }
    if (timeout >= 0) {
      double left = deadline - now();
      if (left < (double)ms / 1000) ms = left > 0 ? (long)(left * 1000) : 0;
    }
    if (!state_ismain(L) && job_status(t->pool, t->job) == JOB_QUEUED)
      pool_wait(t->pool, t->job, 0, 1);
    if ((got = job_receive(t->pool, t->job, mail, ms)) >= 0) break;
    state_checkcancel(L);
    if (timeout >= 0 && now() >= deadline) {
      lua_pushfstring(L, "isolate: no message from task %I within %f seconds",
                      (LUAI_UACINT)t->id, (LUAI_UACNUMBER)timeout);
      return timedout(L, timeout);
    }
  }
  if (!got) return 0;
  mail_read(*mail, &r);
  got = codec_decode(L, &r, CODEC_TRUSTED);
  mail_free(*mail);
  *mail = NULL;
  return got;
}


static int mail_gc (lua_State *L) {
  Mail **mail = (Mail **)lua_touserdata(L, 1);
  mail_free(*mail);
  *mail = NULL;
  return 0;
}

/* }------------------------------------------------------ */


/*
** completions(): one descriptor for many tasks (an end set, pool.h),
** readable while some task added has ended and was not taken yet.  Its
** user value maps each task in it (by address) to the task, which it
** keeps alive meanwhile.
*/
typedef struct Ends {
  Endset *set;			/* NULL once closed */
  lua_Integer n;		/* tasks in it, not taken yet */
  unsigned long epoch;		/* pool_epoch() when it last looked for lost jobs */
} Ends;

#define ISOLATE_COMPLETIONS	"isolate.Completions"

/*
** In a forked child, the parent's jobs in the set are lost (they fail
** there, pool.c) without telling the set: they are put in it again as
** jobs that have ended.
*/
static void findlost (lua_State *L, Ends *e, int i) {
  e->epoch = pool_epoch();
  lua_getiuservalue(L, i, 1);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    Task *t = (Task *)lua_touserdata(L, -1);
    if (t->job != NULL && isended(job_status(t->pool, t->job)) &&
        endset_remove(e->set, t->pool, t->job, t) &&
        !endset_add(e->set, t->pool, t->job, t)) {	/* no memory: it leaves */
      lua_pushvalue(L, -2);
      lua_pushnil(L);
      lua_rawset(L, -5);
      e->n--;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}


static Ends *checkends (lua_State *L, int i) {
  Ends *e = (Ends *)luaL_checkudata(L, i, ISOLATE_COMPLETIONS);
  if (e->set == NULL) luaL_error(L, "isolate: completions are closed");
  if (e->epoch != pool_epoch()) findlost(L, e, i);
  return e;
}


static int l_completions (lua_State *L) {
  Ends *e = (Ends *)lua_newuserdatauv(L, sizeof(Ends), 1);
  e->set = NULL;
  e->n = 0;
  e->epoch = pool_epoch();
  luaL_setmetatable(L, ISOLATE_COMPLETIONS);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  if ((e->set = endset_new()) == NULL) {
    lua_pushliteral(L, "not enough memory");
    lua_error(L);
  }
  return 1;
}


/* add(task, ...): the tasks join the set (again: nothing happens); returns the set */
static int ends_add (lua_State *L) {
  Ends *e = checkends(L, 1);
  int i, top = lua_gettop(L);
  for (i = 2; i <= top; i++) notclosed(L, checktask(L, i));
  lua_getiuservalue(L, 1, 1);
  for (i = 2; i <= top; i++) {
    Task *t = (Task *)lua_touserdata(L, i);
    if (lua_rawgetp(L, top + 1, t) == LUA_TNIL) {
      lua_pushvalue(L, i);
      lua_rawsetp(L, top + 1, t);	/* first: it may raise (memory) */
      if (!endset_add(e->set, t->pool, t->job, t)) {
        lua_pushnil(L);
        lua_rawsetp(L, top + 1, t);
        lua_pushliteral(L, "not enough memory");
        lua_error(L);
      }
      e->n++;
    }
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  return 1;
}


/* remove(task, ...): the tasks leave the set (those not in it: nothing happens) */
static int ends_remove (lua_State *L) {
  Ends *e = checkends(L, 1);
  int i, top = lua_gettop(L);
  for (i = 2; i <= top; i++) checktask(L, i);
  lua_getiuservalue(L, 1, 1);
  for (i = 2; i <= top; i++) {
    Task *t = (Task *)lua_touserdata(L, i);
    if (lua_rawgetp(L, top + 1, t) != LUA_TNIL) {	/* (a task closed by
        hand has no job to look in: its end, if it comes, is skipped) */
      endset_remove(e->set, t->pool, t->job, t);
      lua_pushnil(L);
      lua_rawsetp(L, top + 1, t);
      e->n--;
    }
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  return 1;
}


static int ends_pollfd (lua_State *L) {
  int fd = endset_fd(checkends(L, 1)->set);
  if (fd < 0) luaL_error(L, "isolate: cannot make a descriptor: %s", strerror(errno));
  lua_pushinteger(L, fd);
  return 1;
}


/*
** Push the list of the tasks that ended since the last call, in the order
** they ended (from 'first' on); return how many.
*/
static int ends_taken (lua_State *L, Ends *e, void *first) {
  lua_Integer k = 0;
  void *key;
  lua_settop(L, 1);
  lua_newtable(L);			/* 2: the list */
  lua_getiuservalue(L, 1, 1);		/* 3 */
  for (key = first; key != NULL; key = endset_take(e->set, 0)) {
    if (lua_rawgetp(L, 3, key) == LUA_TNIL) {	/* removed after a __gc by hand */
      lua_pop(L, 1);
      continue;
    }
    lua_rawseti(L, 2, ++k);
    lua_pushnil(L);
    lua_rawsetp(L, 3, key);
    e->n--;
  }
  lua_settop(L, 2);
  return (int)k;
}

static int ends_ended (lua_State *L) {
  Ends *e = checkends(L, 1);
  ends_taken(L, e, endset_take(e->set, 0));
  return 1;
}


/*
** Inside an isolate, a task of the set that is still queued in this
** thread's pool is run here, as await would (nested waits never
** deadlock); true if one was.
*/
static int runqueued (lua_State *L) {
  int ran = 0;
  lua_getiuservalue(L, 1, 1);
  lua_pushnil(L);
  while (!ran && lua_next(L, -2)) {
    Task *t = (Task *)lua_touserdata(L, -1);
    if (t->job != NULL && job_status(t->pool, t->job) == JOB_QUEUED)
      ran = pool_wait(t->pool, t->job, 0, 1);
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  return ran;
}


/* wait([timeout]): as ended(), once some task has ended (an empty list on timeout) */
static int ends_wait (lua_State *L) {
  Ends *e = checkends(L, 1);
  double timeout = opttimeout(L, 2);
  double deadline = timeout >= 0 ? now() + timeout : 0;
  Watch w = WATCH_INIT;
  void *key;
  for (;;) {
    long ms = ISOLATE_WAIT_MS;
    watch(L, &w, 0);
    if (e->set == NULL) luaL_error(L, "isolate: completions are closed");
    if (e->n == 0) {
      ends_taken(L, e, NULL);
      return 1;
    }
    if (timeout >= 0) {
      double left = deadline - now();
      if (left < (double)ms / 1000) ms = left > 0 ? (long)(left * 1000) : 0;
    }
    if (timeout < 0 && !state_ismain(L) && runqueued(L)) continue;
    /* (an end taken may be that of a task removed since: then wait on) */
    if ((key = endset_take(e->set, ms)) != NULL && ends_taken(L, e, key) > 0) return 1;
    state_checkcancel(L);
    if (timeout >= 0 && now() >= deadline) {
      ends_taken(L, e, NULL);
      return 1;
    }
  }
}


static int ends_len (lua_State *L) {
  Ends *e = (Ends *)luaL_checkudata(L, 1, ISOLATE_COMPLETIONS);
  lua_pushinteger(L, e->n);
  return 1;
}


/*
** The tasks still running leave the set first: a set that nobody owns
** waits for no end (pool.h: emit waits for room again).  (No allocation:
** it may be a finalizer.)
*/
static int ends_close (lua_State *L) {
  Ends *e = (Ends *)luaL_checkudata(L, 1, ISOLATE_COMPLETIONS);
  if (e->set != NULL) {
    if (lua_getiuservalue(L, 1, 1) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        Task *t = (Task *)luaL_testudata(L, -1, ISOLATE_TASK);
        if (t != NULL && t->job != NULL) endset_remove(e->set, t->pool, t->job, t);
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
    endset_release(e->set);
    e->set = NULL;
    e->n = 0;
    lua_pushnil(L);		/* (no allocation in a finalizer) */
    lua_setiuservalue(L, 1, 1);
  }
  return 0;
}


static int ends_tostring (lua_State *L) {
  Ends *e = (Ends *)luaL_checkudata(L, 1, ISOLATE_COMPLETIONS);
  if (e->set == NULL) lua_pushliteral(L, "isolate.Completions (closed)");
  else lua_pushfstring(L, "isolate.Completions (%I tasks)", (LUAI_UACINT)e->n);
  return 1;
}

/* }------------------------------------------------------ */


/* "isolate.Task 7 (running)", with its pool's name if it has one */
static int task_tostring (lua_State *L) {
  Task *t = checktask(L, 1);
  const char *name = t->pool != NULL ? pool_name(t->pool) : NULL;
  lua_pushfstring(L, "isolate.Task %I%s%s (%s)", (LUAI_UACINT)t->id,
                  name != NULL ? " " : "", name != NULL ? name : "", task_statusname(t));
  return 1;
}

/* }====================================================== */


/*
** {======================================================
** Many tasks
** =======================================================
*/

/*
** completed(tasks [, timeout]): an iterator over the tasks in the order
** they end, each as its index and itself.  It works on a copy of the list
** (taken at the call), with the tasks' addresses in an array: looking for
** the next to end reads one word per task, and only after some job, of
** any pool, has ended.  A worker waiting for tasks of its own pool that
** are still queued runs one itself (nested waits never deadlock).
** 'timeout' is for the whole loop: past it, a TimeoutError.
*/
typedef struct Completion {
  Task **tasks;			/* from the state's allocator; NULL: none */
  int *index;			/* their indices in the list */
  int size, left;		/* tasks; those not yet yielded, first in the arrays */
  double deadline, timeout;	/* deadline < 0: none */
} Completion;

#define ISOLATE_COMPLETION	"isolate.Completion"

static int completion_gc (lua_State *L) {
  Completion *c = (Completion *)luaL_checkudata(L, 1, ISOLATE_COMPLETION);
  void *ud;
  lua_Alloc alloc = lua_getallocf(L, &ud);
  if (c->tasks != NULL) alloc(ud, c->tasks, sizeof(Task *) * (size_t)c->size, 0);
  if (c->index != NULL) alloc(ud, c->index, sizeof(int) * (size_t)c->size, 0);
  c->tasks = NULL;
  c->index = NULL;
  c->size = c->left = 0;
  return 0;
}


/* the task that ended first among those left, or -1 */
static int firstended (Completion *c, Task **queued) {
  unsigned long first = 0;
  int k, which = -1;
  *queued = NULL;
  for (k = 0; k < c->left; k++) {
    Task *t = c->tasks[k];
    unsigned long seq;
    if (t->job == NULL) seq = t->endseq;
    else if ((seq = job_endseq(t->job)) == 0 && !isended(job_status(t->pool, t->job))) {
      if (*queued == NULL && job_status(t->pool, t->job) == JOB_QUEUED) *queued = t;
      continue;
    }
    if (which < 0 || seq < first) {
      which = k;
      first = seq;
    }
  }
  return which;
}


/* the loop waits for the ends of the jobs left (pool.h: emit does not wait then) */
static void awaited (Completion *c, int delta) {
  int k;
  for (k = 0; k < c->left; k++)
    if (c->tasks[k]->job != NULL) job_awaited(c->tasks[k]->pool, c->tasks[k]->job, delta);
}


static int completion_next (lua_State *L) {
  Completion *c = (Completion *)lua_touserdata(L, lua_upvalueindex(1));
  Watch w = WATCH_INIT;
  for (;;) {
    unsigned long seen = pool_ends();
    long ms = ISOLATE_WAIT_MS;
    Task *queued;
    int k;
    watch(L, &w, 0);
    if (c->left == 0) return 0;
    if ((k = firstended(c, &queued)) >= 0) {
      int i = c->index[k];
      c->left--;		/* swap it out */
      c->tasks[k] = c->tasks[c->left];
      c->index[k] = c->index[c->left];
      lua_pushinteger(L, i);
      lua_getiuservalue(L, lua_upvalueindex(1), 1);
      lua_rawgeti(L, -1, i);
      lua_remove(L, -2);
      return 2;
    }
    if (c->deadline >= 0) {
      double left = c->deadline - now();
      if (left <= 0) {
        lua_pushfstring(L, "isolate: no task ended within %f seconds",
                        (LUAI_UACNUMBER)c->timeout);
        return timedout(L, c->timeout);
      }
      if (left < (double)ms / 1000) ms = (long)(left * 1000) + 1;
    }
    if (queued != NULL && !state_ismain(L) && c->deadline < 0 &&
        pool_wait(queued->pool, queued->job, 0, 1))
      continue;			/* ran it here */
    awaited(c, 1);		/* no Lua code runs until -1: the jobs stay */
    pool_waitends(seen, ms);
    awaited(c, -1);
  }
}


static int l_completed (lua_State *L) {
  Completion *c;
  double timeout;
  lua_Integer n, i;
  void *ud;
  lua_Alloc alloc = lua_getallocf(L, &ud);
  luaL_checktype(L, 1, LUA_TTABLE);
  timeout = opttimeout(L, 2);
  n = luaL_len(L, 1);
  luaL_argcheck(L, n >= 0 && n <= INT_MAX / (lua_Integer)sizeof(Task *), 1, "too many tasks");
  for (i = 1; i <= n; i++) {	/* all of them, before the arrays are made */
    lua_geti(L, 1, i);
    if (luaL_testudata(L, -1, ISOLATE_TASK) == NULL)
      return luaL_argerror(L, 1, lua_pushfstring(L, "tasks[%I] is not a task", (LUAI_UACINT)i));
    lua_pop(L, 1);
  }
  c = (Completion *)lua_newuserdatauv(L, sizeof(Completion), 1);
  memset(c, 0, sizeof(Completion));
  luaL_setmetatable(L, ISOLATE_COMPLETION);
  lua_createtable(L, (int)n, 0);	/* the copy of the list */
  lua_setiuservalue(L, -2, 1);
  if (n > 0) {			/* __gc frees what 'size' says */
    if ((c->tasks = (Task **)alloc(ud, NULL, 0, sizeof(Task *) * (size_t)n)) != NULL) {
      c->size = (int)n;
      c->index = (int *)alloc(ud, NULL, 0, sizeof(int) * (size_t)n);
    }
    if (c->index == NULL) {
      lua_pushliteral(L, "not enough memory");
      return lua_error(L);
    }
  }
  lua_getiuservalue(L, -1, 1);
  for (i = 1; i <= n; i++) {
    Task *t;
    lua_geti(L, 1, i);
    if ((t = (Task *)luaL_testudata(L, -1, ISOLATE_TASK)) == NULL)
      return luaL_argerror(L, 1, lua_pushfstring(L, "tasks[%I] is not a task", (LUAI_UACINT)i));
    lua_rawseti(L, -2, i);
    c->tasks[c->left] = t;
    c->index[c->left++] = (int)i;
  }
  lua_pop(L, 1);
  c->timeout = timeout;
  c->deadline = timeout >= 0 ? now() + timeout : -1;
  lua_pushcclosure(L, completion_next, 1);
  return 1;
}


/*
** chunk(pool, fn, list, i, j): a task that runs fn on list[i..j]; 'fn'
** is the function encoded once (encodefn).  Its await returns the first
** result of each call.
*/
typedef struct MapChunk {
  const Buffer *fn;
  int list;			/* its stack index */
  lua_Integer i, j;
} MapChunk;

static int putchunk (lua_State *L, Buffer *b, void *ud) {
  MapChunk *c = (MapChunk *)ud;
  int top = lua_gettop(L), n = (int)(c->j - c->i + 1);
  lua_Integer k;
  isolate_checkstack(L, n + 8);
  for (k = c->i; k <= c->j; k++) lua_geti(L, c->list, k);
  message_putchunk(L, b, c->fn, top + 1, n, c->i);
  lua_settop(L, top);
  return 0;			/* (map holds its list till its chunks end) */
}

static Pool *checkpool (lua_State *L, int arg);

/*
** The type of encodefn's messages: chunk decodes what it is given on a
** worker, as a message of this process, so it takes no other Buffer (an
** encoder's own, still being written, can be reached with the debug
** library).
*/
#define FUNCTION_MESSAGE	"isolate.FunctionMessage"

static int l_chunk (lua_State *L) {
  Pool *p = lua_isnil(L, 1) ? defaultpool(L) : checkpool(L, 1);
  MapChunk c;
  c.fn = (const Buffer *)luaL_checkudata(L, 2, FUNCTION_MESSAGE);
  luaL_checktype(L, 3, LUA_TTABLE);
  c.i = luaL_checkinteger(L, 4);
  c.j = luaL_checkinteger(L, 5);
  luaL_argcheck(L, c.i >= 1 && c.j >= c.i && c.j - c.i < ISOLATE_MAXCHUNK, 5, "bad chunk");
  luaL_checktype(L, 6, LUA_TTABLE);
  lua_settop(L, 6);
  lua_insert(L, 1);		/* tasks, pool, fn, list */
  lua_settop(L, 4);
  c.list = 5;			/* above the task that submit inserts at 2 */
  submit(L, p, putchunk, &c, 0, 0, 1)->quiet = 1;
  lua_rawseti(L, 1, luaL_len(L, 1) + 1);	/* no Lua code runs in between */
  return 0;
}


/* encodefn(fn): fn encoded once, as a message of one value, for chunk */
static int l_encodefn (lua_State *L) {
  Buffer *b;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  b = buffer_push(L);
  codec_encode(L, b, 1, 1, ROLE_CALL);	/* (an __isolate may see it unfinished) */
  buffer_move(buffer_pushas(L, FUNCTION_MESSAGE), b);	/* whole: of chunk's type */
  return 1;
}


/*
** into(task, list, i): the results of a chunk's task stored in list from
** index i on; the chunk's RemoteError raised (it has 'index').  With
** 'cancels' set (the third argument true), an interrupt of the wait
** cancels the task.
*/
static int l_into (lua_State *L) {
  lua_Integer i = luaL_checkinteger(L, 3);
  int n, k, base;
  checktask(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 3);
  n = collect(L, 1, 0, -1, 1);
  base = lua_gettop(L) - n;
  for (k = 1; k <= n; k++) {
    lua_pushvalue(L, base + k);
    lua_rawseti(L, 2, i + k - 1);
  }
  return 0;
}

/* }====================================================== */


/*
** {======================================================
** Pools
** =======================================================
*/

typedef struct PoolHandle {
  Pool *pool;			/* NULL once closed */
  int closers;			/* close calls waiting for it */
} PoolHandle;

static Pool *checkpool (lua_State *L, int arg) {
  PoolHandle *h = (PoolHandle *)luaL_checkudata(L, arg, ISOLATE_POOL);
  if (h->pool == NULL) luaL_error(L, "isolate: the pool is closed");
  return h->pool;
}


/* an option of the table at 1: nil if absent */
static int option (lua_State *L, const char *name, int type, const char *what) {
  int t = lua_getfield(L, 1, name);
  if (t != LUA_TNIL && t != type)
    luaL_error(L, "bad argument #1 to 'pool' (%s must be %s, got %s)",
               name, what, luaL_typename(L, -1));
  return t != LUA_TNIL;
}


static int l_pool (lua_State *L) {
  int size = pool_cpus();
  if (state_closing(L))		/* Lua would never finalize the pool */
    return luaL_error(L, "isolate: cannot make a pool while this isolate's state closes");
  size_t limit = 0;
  const char *name = NULL;
  PoolHandle *h;
  Buffer *init = NULL;
  if (lua_isnoneornil(L, 1)) lua_newtable(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  if (option(L, "size", LUA_TNUMBER, "an integer >= 1")) {
    int isint;
    lua_Integer n = lua_tointegerx(L, -1, &isint);
    if (!isint || n < 1 || n > ISOLATE_MAXPOOL)
      return luaL_error(L, "bad argument #1 to 'pool' (size must be an integer from 1 to %d)",
                        ISOLATE_MAXPOOL);
    size = (int)n;
  }
  if (option(L, "memory_limit", LUA_TNUMBER, "a number of bytes")) {
    lua_Number m = lua_tonumber(L, -1);
    if (!(m >= 1) || m > 0x1p62)
      return luaL_error(L, "bad argument #1 to 'pool' (memory_limit must be a number of bytes >= 1)");
    limit = (size_t)m;
  }
  if (option(L, "name", LUA_TSTRING, "a string")) {
    size_t len;
    name = lua_tolstring(L, -1, &len);
    if (len == 0 || strlen(name) != len)
      return luaL_error(L, "bad argument #1 to 'pool' (name must be a non-empty string without zeros)");
  }
  if (option(L, "init", LUA_TFUNCTION, "a function")) {
    init = buffer_push(L);
    lua_pushvalue(L, -2);
    message_putinput(L, init, lua_gettop(L), 1, 0);
    lua_pop(L, 1);
  }
  lifecycle(L);
  h = (PoolHandle *)lua_newuserdatauv(L, sizeof(PoolHandle), 0);
  h->pool = NULL;
  h->closers = 0;
  luaL_setmetatable(L, ISOLATE_POOL);
  if ((h->pool = pool_new(size, name, limit, init)) == NULL)
    return luaL_error(L, "isolate: cannot start the pool's threads");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &live_key);	/* see closing() */
  lua_pushvalue(L, -2);
  lua_rawsetp(L, -2, h);
  lua_pop(L, 1);
  return 1;
}


static int pool_run (lua_State *L) {
  static int first = 2;
  Pool *p = checkpool(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  submit(L, p, putcall, &first, 1, 0, 0);
  return collect(L, 1, 0, -1, 1);
}


static int pool_spawn (lua_State *L) {
  static int first = 2;
  Pool *p = checkpool(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  submit(L, p, putcall, &first, 0, 1, 0);
  return 1;
}


static void pushstats (lua_State *L, Pool *p) {
  PoolStats s;
  pool_stats(p, &s);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, s.workers);
  lua_setfield(L, -2, "workers");
  lua_pushinteger(L, s.busy);
  lua_setfield(L, -2, "busy");
  lua_pushinteger(L, s.queued);
  lua_setfield(L, -2, "queued");
  lua_pushinteger(L, (lua_Integer)s.done);
  lua_setfield(L, -2, "done");
  lua_pushinteger(L, (lua_Integer)s.failed);
  lua_setfield(L, -2, "failed");
  lua_pushinteger(L, (lua_Integer)s.cancelled);
  lua_setfield(L, -2, "cancelled");
}


static int pool_statsf (lua_State *L) {
  pushstats(L, checkpool(L, 1));
  return 1;
}


/*
** close(): no more tasks; wait until those it has are done.  When the
** state closes (lua_close), its pools cancel their tasks first and wait a
** bounded time; a pool collected before that lets its threads finish what
** is queued and end on their own.
*/
static int pool_closef (lua_State *L) {
  PoolHandle *h = (PoolHandle *)luaL_checkudata(L, 1, ISOLATE_POOL);
  Pool *p = h->pool;
  Watch w = WATCH_INIT;
  if (p == NULL) return 0;
  h->closers++;			/* a hook may close it too while this waits */
  while (!pool_close(p, ISOLATE_WAIT_MS)) {
    if (watch(L, &w, 1)) {	/* Ctrl-C: the pool stays closing */
      h->closers--;
      return lua_error(L);
    }
  }
  if (--h->closers == 0 && h->pool == p) {
    h->pool = NULL;
    pool_release(p);
  }
  return 0;
}


static int pool_gc (lua_State *L) {
  PoolHandle *h = (PoolHandle *)luaL_checkudata(L, 1, ISOLATE_POOL);
  if (h->pool != NULL && h->closers == 0) {	/* (else a closer lets go) */
    Pool *p = h->pool;
    h->pool = NULL;
    if (closing(L, 1)) {
      pool_cancelall(p);
      pool_close(p, ISOLATE_CLOSE_MS);
    }
    else pool_close(p, 0);
    pool_release(p);
  }
  return 0;
}


static int pool_tostring (lua_State *L) {
  PoolHandle *h = (PoolHandle *)luaL_checkudata(L, 1, ISOLATE_POOL);
  PoolStats s;
  if (h->pool == NULL) {
    lua_pushliteral(L, "isolate.Pool (closed)");
    return 1;
  }
  pool_stats(h->pool, &s);
  lua_pushfstring(L, "isolate.Pool (%d workers)", s.workers);
  return 1;
}


/* unusable(pool): why the pool cannot take tasks, or nil */
static int l_unusable (lua_State *L) {
  PoolHandle *h = (PoolHandle *)luaL_checkudata(L, 1, ISOLATE_POOL);
  const char *why = h->pool == NULL ? "isolate: the pool is closed" : pool_unusable(h->pool);
  if (why == NULL) return 0;
  lua_pushstring(L, why);
  return 1;
}


static int l_stats (lua_State *L) {
  pushstats(L, defaultpool(L));
  return 1;
}

/* }====================================================== */


static int l_run (lua_State *L) {
  static int first = 1;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  submit(L, defaultpool(L), putcall, &first, 1, 0, 0);
  return collect(L, 1, 0, -1, 1);
}


static int l_spawn (lua_State *L) {
  static int first = 1;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  submit(L, defaultpool(L), putcall, &first, 0, 1, 0);
  return 1;
}


/* is stderr a terminal?  (map's progress bar is drawn only there) */
static int l_stderrtty (lua_State *L) {
  lua_pushboolean(L, isatty(2));
  return 1;
}


static int l_exit (lua_State *L) {
  return state_exit(L, lua_gettop(L));
}


/*
** emit(v, ...): inside a task, a message to its caller, encoded as results
** are.  True if it was queued for the caller; false if nobody can receive
** it (the task was started by run or map, or its handle is gone).  It
** waits while the caller has ISOLATE_MAILBOX_* unread (pool.c says when
** not); a cancel ends the wait, and the isolate.
*/
static int l_emit (lua_State *L) {
  int n = lua_gettop(L), r;
  void *pool, *job;
  Buffer *b;
  if (!state_job(L, &pool, &job))
    luaL_error(L, "isolate.emit: not inside a task (a spawned task sends to its caller)");
  luaL_argcheck(L, !lua_isnoneornil(L, 1), 1,
                "a message's first value must not be nil (nil ends a receive loop)");
  b = buffer_push(L);
  codec_encode(L, b, 1, n, ROLE_VALUE);
  r = job_emit((Pool *)pool, (Job *)job, b);
  if (r == -1) state_checkcancel(L);
  if (r == -2) {
    lua_pushliteral(L, "not enough memory");
    lua_error(L);
  }
  lua_pushboolean(L, r == 1);
  return 1;
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


/*
** measure(v): the size of v's message, as isolate.encode(v) would make
** it, except that no __isolate is called (an object counts as nil); or
** the error of what cannot travel.  For isolate.captures.
*/
static int l_measure (lua_State *L) {
  Buffer *b;
  lua_settop(L, 1);
  b = buffer_push(L);
  codec_encode(L, b, 1, 1, ROLE_MEASURE);
  lua_pushinteger(L, (lua_Integer)b->total);
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


/*
** tostring(err): the message, then the remote traceback, then where the
** caller raised it.  The lua5.4 interpreter prints an uncaught error
** object that has __tostring as it is, with no traceback of its own.
*/
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
  if (lua_getfield(L, 1, "caller") == LUA_TSTRING) {
    lua_pushliteral(L, "\ncaller's ");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
  else lua_pop(L, 1);
  return 1;
}


/* is the value at 'idx' a RemoteError or a TimeoutError? */
static int iserror (lua_State *L, int idx) {
  static const char *const types[] = {ISOLATE_REMOTEERROR, ISOLATE_TIMEOUTERROR};
  int i, is = 0;
  if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return 0;
  for (i = 0; i < 2 && !is; i++) {
    luaL_getmetatable(L, types[i]);
    is = lua_rawequal(L, -1, -2);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return is;
}


/*
** a .. b where a or b is an error: its tostring joined, as for a string;
** any other operand that is no string or number raises Lua's own error
*/
static int error_concat (lua_State *L) {
  int i;
  lua_settop(L, 2);
  for (i = 1; i <= 2; i++) {
    if (lua_isstring(L, i)) continue;
    if (!iserror(L, i))
      return luaL_error(L, "attempt to concatenate a %s value", luaL_typename(L, i));
    luaL_tolstring(L, i, NULL);
    lua_replace(L, i);
  }
  lua_concat(L, 2);
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

/* the file this library was loaded from, or NULL */
static const char *libfile (void) {
  Dl_info info;
  return dladdr(&anchor, &info) ? info.dli_fname : NULL;
}

static void pin_library (void) {
  const char *file = libfile();
  if (file != NULL) dlopen(file, RTLD_NOW | RTLD_NODELETE);
}


static const luaL_Reg task_methods[] = {
  {"pollfd", task_pollfd},
  {"events", pollable_events},
  {"timeout", pollable_timeout},
  {"pending", task_pending},
  {"receive", task_receive},
  {"await", task_await},
  {"wait", task_wait},
  {"result", task_result},
  {"cancel", task_cancel},
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

static const luaL_Reg ends_methods[] = {
  {"add", ends_add},
  {"remove", ends_remove},
  {"pollfd", ends_pollfd},
  {"events", pollable_events},
  {"timeout", pollable_timeout},
  {"ended", ends_ended},
  {"wait", ends_wait},
  {"close", ends_close},
  {NULL, NULL}
};

static const luaL_Reg ends_meta[] = {
  {"__gc", ends_close},
  {"__close", ends_close},
  {"__len", ends_len},
  {"__tostring", ends_tostring},
  {"__index", NULL},		/* placeholder */
  {NULL, NULL}
};

static const luaL_Reg pool_methods[] = {
  {"run", pool_run},
  {"spawn", pool_spawn},
  {"stats", pool_statsf},
  {"close", pool_closef},
  {NULL, NULL}
};

static const luaL_Reg pool_meta[] = {
  {"__gc", pool_gc},
  {"__close", pool_closef},
  {"__tostring", pool_tostring},
  {"__index", NULL},		/* placeholder */
  {NULL, NULL}
};

static const luaL_Reg funcs[] = {
  {"run", l_run},
  {"spawn", l_spawn},
  {"pool", l_pool},
  {"stats", l_stats},
  {"unusable", l_unusable},
  {"exit", l_exit},
  {"emit", l_emit},
  {"completions", l_completions},
  {"ismain", l_ismain},
  {"name", l_name},
  {"cpus", l_cpus},
  {"encode", l_encode},
  {"decode", l_decode},
  {"completed", l_completed},
  {"chunk", l_chunk},
  {"encodefn", l_encodefn},
  {"measure", l_measure},
  {"into", l_into},
  {"now", l_now},
  {"stderrtty", l_stderrtty},
  {"_failalloc", l_failalloc},
  {"RemoteError", NULL},	/* placeholders */
  {"TimeoutError", NULL},
  {"Pool", NULL},
  {"Task", NULL},
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
  lua_pushcfunction(L, error_concat);
  lua_setfield(L, -2, "__concat");
  names_pin(L, -1, "isolate.core", field);
  lua_setfield(L, -2, field);
}


/* a type's metatable 'tname' with 'meta', and 'methods' as its __index */
static void newclass (lua_State *L, const char *tname, const luaL_Reg *meta,
                      const luaL_Reg *methods) {
  luaL_newmetatable(L, tname);
  luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}


/* the metatable of an internal type: getmetatable gives false */
static void hiddenclass (lua_State *L, const char *tname, lua_CFunction gc,
                         lua_CFunction close) {
  luaL_newmetatable(L, tname);
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  if (close != NULL) {
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__close");
  }
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}


int luaopen_isolate_core (lua_State *L);

int luaopen_isolate_core (lua_State *L) {
  static pthread_once_t pinned = PTHREAD_ONCE_INIT;
  pthread_once(&pinned, pin_library);
  newclass(L, ISOLATE_TASK, task_meta, task_methods);
  newclass(L, ISOLATE_COMPLETIONS, ends_meta, ends_methods);
  newclass(L, ISOLATE_POOL, pool_meta, pool_methods);
  hiddenclass(L, ISOLATE_COMPLETION, completion_gc, NULL);
  hiddenclass(L, ISOLATE_MAIL, mail_gc, NULL);
  hiddenclass(L, ISOLATE_OUTPUT, output_gc, output_close);
  luaL_newlib(L, funcs);
  lua_pushliteral(L, "isolate " ISOLATE_VERSION);
  lua_setfield(L, -2, "_VERSION");	/* the Lua layer checks it is its own */
  lua_pushstring(L, libfile());	/* (NULL: nil) */
  lua_setfield(L, -2, "_FILE");		/* and names the file if not */
  errortype(L, ISOLATE_REMOTEERROR, "RemoteError", remote_tostring);
  errortype(L, ISOLATE_TIMEOUTERROR, "TimeoutError", timeout_tostring);
  luaL_getmetatable(L, ISOLATE_POOL);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "Pool");		/* the methods, for the Lua layer's map */
  lua_pop(L, 1);
  luaL_getmetatable(L, ISOLATE_TASK);
  lua_setfield(L, -2, "Task");		/* to tell a task */
#if defined(ISOLATE_CANCEL_POLL)
  lua_pushboolean(L, 1);		/* for the specs: a hook in every isolate */
  lua_setfield(L, -2, "_cancelpolls");
#endif
  lua_pushboolean(L, codec_inplace(L));	/* for the specs: they check both ways */
  lua_setfield(L, -2, "_inplace");
  return 1;
}
