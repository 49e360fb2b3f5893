/*
** state.c: a fresh lua_State for one isolate; running a job in it.
**
** Everything that can raise runs inside lua_pcall, opening the libraries
** included, so an isolate's failure (memory too) becomes a failure record
** for its caller and never a panic of the process.  States are made
** ahead of their jobs (pool.c's preparer), so making one is not part of a
** round trip; no state runs two jobs.  The
** state is closed after its results were handed over (state_close):
** to-be-closed variables have closed when the function returned, but
** finalizers run then.
**
** The isolate's own record (struct Isolate) is its allocator's user data:
** Lua code cannot reach it, the debug library included, and finding it
** costs no lookup.
**
** Ending an isolate early (os.exit, isolate.exit) is a state of the
** isolate, not a flag read by chance.  A request records the exit (the
** first one decides; isolate.exit's results are encoded first, into a
** buffer of their own, and moved in only when complete), then raises a
** unique error value to unwind the stack, closing to-be-closed variables on
** the way.  So that Lua code cannot catch it, the isolate's pcall, xpcall
** and coroutine.resume pass it on when they were already running when the
** exit began, or when what they caught is the exit itself; calls made
** later, by cleanup code that runs while the exit unwinds (in a coroutine
** that cleanup resumes, too), behave as usual, and no xpcall message
** handler sees the exit.  An exit that Lua cannot unwind from where it was
** asked (a finalizer, a load reader, a __close run by coroutine.close:
** those callers swallow errors) is raised again as soon as control is back
** in Lua code of the isolate: by the wrappers of load and coroutine.close,
** by coroutine.resume and wrap when a coroutine comes back without it, and
** for a finalizer by a one-shot count hook on the thread that runs it
** (which goes on after the GC: hooks do not run inside finalizers).  A C
** module that catches errors with its own lua_pcall can still stop an exit.
*/
#define _POSIX_C_SOURCE 200809L	/* clock_gettime */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "isolate.h"
#include "codec.h"
#include "message.h"
#include "pool.h"
#include "state.h"


typedef enum Exit {
  EXIT_NONE,
  EXIT_PLAIN,			/* os.exit: ends without results */
  EXIT_RESULTS,			/* isolate.exit: its results are in 'exitbuf' */
  EXIT_CANCEL			/* task:cancel() */
} Exit;

/*
** {======================================================
** The isolate's heap
** =======================================================
*/

/*
** A fresh state makes a few hundred small blocks (the libraries'
** functions, tables and names) and frees them all when it closes, which
** the general allocator does one by one.  Blocks of up to SLAB_MAX bytes
** come from an arena of the state's own instead, in size classes of 16
** bytes, each class with a free list; the arena goes back in one piece
** when the state closes.  Larger blocks come from malloc.  (Built under
** AddressSanitizer, every block comes from malloc, so that it checks
** them; ISOLATE_NO_SLAB does the same.)
*/
#if !defined(ISOLATE_NO_SLAB)
#if defined(__SANITIZE_ADDRESS__)
#define ISOLATE_NO_SLAB
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ISOLATE_NO_SLAB
#endif
#endif
#endif

#define SLAB_MAX	256
#define SLAB_ARENA	(64u << 10)
#define SLAB_CLASS(n)	(((n) + 15) >> 4)

/*
** One arena per state, of SLAB_ARENA bytes: enough for a fresh state and
** a small job.  Its free lists keep what a class freed for that class, so
** the arena is bounded, whatever a job does: past it, small blocks come
** from malloc too, which is told from the arena's by address.
*/
typedef struct Slab {
  void *free[SLAB_CLASS(SLAB_MAX) + 1];	/* a free list per class */
  char *arena, *next;		/* the arena (NULL: none yet), its unused part */
} Slab;

#if !defined(ISOLATE_NO_SLAB)
static int in_arena (Slab *s, void *p) {
  return s->arena != NULL && (char *)p >= s->arena && (char *)p < s->arena + SLAB_ARENA;
}

static void *slab_alloc (Slab *s, size_t n) {
  size_t c = SLAB_CLASS(n), size = c << 4;
  void *p = s->free[c];
  if (p != NULL) {
    s->free[c] = *(void **)p;
    return p;
  }
  /* past the arena, a block of the whole class: a resize within the class
     keeps the block (heap_realloc), whichever it came from */
  if (s->arena == NULL && (s->arena = s->next = (char *)malloc(SLAB_ARENA)) == NULL)
    return malloc(size);
  if ((size_t)(s->arena + SLAB_ARENA - s->next) < size) return malloc(size);
  p = s->next;
  s->next += size;
  return p;
}

static void slab_free (Slab *s, void *p, size_t n) {
  if (in_arena(s, p)) {
    size_t c = SLAB_CLASS(n);
    *(void **)p = s->free[c];
    s->free[c] = p;
  }
  else free(p);
}

#endif

static void slab_close (Slab *s) {
  free(s->arena);
  s->arena = s->next = NULL;
}

/* the block 'p' of 'old' bytes (0: none) resized to 'n' > 0 bytes */
static void *heap_realloc (Slab *s, void *p, size_t old, size_t n) {
  void *q;
#if !defined(ISOLATE_NO_SLAB)
  if (old > SLAB_MAX && n > SLAB_MAX) return realloc(p, n);
  if (old > 0 && old <= SLAB_MAX && n <= SLAB_MAX && SLAB_CLASS(old) == SLAB_CLASS(n))
    return p;
  q = n <= SLAB_MAX ? slab_alloc(s, n) : malloc(n);
  if (q != NULL && old > 0) {
    memcpy(q, p, old < n ? old : n);
    if (old <= SLAB_MAX) slab_free(s, p, old);
    else free(p);
  }
  return q;
#else
  (void)s; (void)old; (void)q;
  return realloc(p, n);
#endif
}

static void heap_free (Slab *s, void *p, size_t old) {
#if !defined(ISOLATE_NO_SLAB)
  if (old <= SLAB_MAX) {
    if (p != NULL) slab_free(s, p, old);
    return;
  }
#endif
  (void)s; (void)old;
  free(p);
}

/* }====================================================== */


typedef struct Isolate {
  Buffer *in, *out;		/* the job's, during state_run */
  const char *name;		/* the pool's, or NULL */
  int depth;			/* 1 for an isolate that a caller started */
  const atomic_int *cancel;	/* the job's cancel request (NULL: none) */
  void *pool, *job;		/* the job's, while it runs (NULL: none) */
  lua_State *volatile running;	/* the thread that runs now (NULL: the main one) */
  lua_Integer index;		/* map: the list index of the item being run */
  size_t limit, used;		/* bytes of heap allowed (0: no limit) and used */
  int limited;			/* an allocation was refused for the limit */
  size_t prefault;		/* map in a fresh block this big (state_prefault) */
  int initfailed;		/* the pool's init failed: 'initrec' tells how */
  int initing;			/* the pool's init runs */
  int closing;			/* lua_close runs its finalizers */
  lua_State *next;		/* in a list of states to close (state_setnext) */
  Buffer initrec;
  Exit exit;			/* the first exit asked for */
  int final;			/* the outcome is decided: exits change nothing */
  lua_Integer calls;		/* pcall, xpcall, resume entered so far */
  lua_Integer mark;		/* 'calls' when the exit began */
  unsigned long requests;	/* exits asked for (to see a swallowed one) */
  Buffer exitbuf;		/* isolate.exit's results */
  int unwinding;		/* an exit is unwinding where nothing swallows it */
  size_t allocs, failat;	/* allocation-failure injection (tests) */
  size_t failsize;
  Slab slab;
} Isolate;

static const char exit_value = 0;	/* the error value that unwinds an exit */
static const char msgh_key = 0;		/* registry: the message handler */

#define EXITING(L)	lua_pushlightuserdata(L, (void *)&exit_value)
#define ISEXIT(L,i)	(lua_touserdata(L, i) == (void *)&exit_value)

/*
** A coroutine resumed while an exit unwinds runs cleanup code: its pcalls
** catch as usual, even those that were running (suspended) when the exit
** began.  A flag in the thread's extra space, which a new thread copies
** from the main thread's, zeroed by state_new.
*/
#define RESUMEDLATE(co)	(*(unsigned char *)lua_getextraspace(co))

/* test hook: the next isolate to run fails its failalloc-th allocation */
static atomic_size_t failalloc;


/*
** The isolate's allocator counts the bytes its state holds, for the pool's
** memory limit: past it, an allocation fails, Lua collects and tries once
** more, then raises its memory error.
*/
static void *allocf (void *ud, void *ptr, size_t osize, size_t nsize) {
  Isolate *iso = (Isolate *)ud;
  size_t old = ptr == NULL ? 0 : osize;	/* else osize tells the type */
  void *block;
  if (nsize == 0) {
    heap_free(&iso->slab, ptr, old);
    iso->used -= old;
    return NULL;
  }
  if (nsize > old) {
    if (iso->limit != 0 && nsize - old > iso->limit - iso->used) {
      iso->limited = 1;
      return NULL;
    }
    if (iso->failat != 0) {
      /* fail the chosen allocation, and Lua's retry of it after a full GC */
      if (++iso->allocs == iso->failat) {
        iso->failsize = nsize;
        return NULL;
      }
      if (iso->allocs == iso->failat + 1 && nsize == iso->failsize) return NULL;
    }
  }
  block = heap_realloc(&iso->slab, ptr, old, nsize);
  if (block != NULL) {
    iso->used += nsize - old;	/* modulo 2^n: shrinking too */
    if (ptr == NULL && iso->prefault != 0 && nsize >= iso->prefault) {
      buffer_mapin(block, nsize);
      iso->prefault = 0;
    }
  }
  return block;
}


static Isolate *current (lua_State *L) {
  void *ud;
  return lua_getallocf(L, &ud) == allocf ? (Isolate *)ud : NULL;
}


int state_ismain (lua_State *L) {
  return current(L) == NULL;
}


int state_prefault (lua_State *L, size_t size) {
  Isolate *iso = current(L);
  if (iso == NULL) return 0;
  iso->prefault = size;
  return 1;
}


int state_job (lua_State *L, void **pool, void **job) {
  Isolate *iso = current(L);
  if (iso == NULL || iso->job == NULL) return 0;
  *pool = iso->pool;
  *job = iso->job;
  return 1;
}


int state_closing (lua_State *L) {
  Isolate *iso = current(L);
  return iso != NULL && iso->closing;
}


int state_depth (lua_State *L) {
  Isolate *iso = current(L);
  return iso == NULL ? 0 : iso->depth;
}


void state_pushname (lua_State *L) {
  Isolate *iso = current(L);
  if (iso != NULL && iso->name != NULL) lua_pushstring(L, iso->name);
  else lua_pushnil(L);
}


void state_failalloc (size_t n) {
  atomic_store(&failalloc, n);
}


/*
** {======================================================
** Exits
** =======================================================
*/

/*
** Is this code run by a finalizer (maybe in a coroutine that the finalizer
** resumed)?  Then the GC will swallow an exit raised here.  Lua 5.4.4 and
** later refuse lua_gc inside finalizers; before, a finalizer's frame is
** named "__gc".
*/
static int infinalizer (lua_State *L) {
#if LUA_VERSION_RELEASE_NUM >= 50404
  return lua_gc(L, LUA_GCISRUNNING) < 0;
#else
  lua_Debug ar;
  int level;
  for (level = 1; level <= 1000 && lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "n", &ar);
    if (ar.namewhat != NULL && strcmp(ar.namewhat, "metamethod") == 0 &&
        ar.name != NULL && strcmp(ar.name, "__gc") == 0)
      return 1;
  }
  return 0;
#endif
}


/* raise the exit here, where (but in a finalizer) it unwinds for good */
static int unwind (lua_State *L);

static void exit_hook (lua_State *L, lua_Debug *ar) {
  (void)ar;
  unwind(L);
}

static int unwind (lua_State *L) {
  if (!infinalizer(L)) {	/* else through() armed the hook: it stays */
    if (lua_gethook(L) == exit_hook) lua_sethook(L, NULL, 0, 0);
    current(L)->unwinding = 1;
  }
  EXITING(L);
  return lua_error(L);
}


/*
** The exit goes through thread L (it was asked for there, or it left a
** coroutine into L).  Inside a finalizer, unless an exit already unwinds
** elsewhere, the GC will swallow it: L gets a one-shot count hook that
** raises it at L's next instruction, after the GC.  The outermost thread
** that it goes through, the one that ran the finalizer, is the one that
** goes on.
*/
static void through (lua_State *L, Isolate *iso) {
  if (!iso->unwinding && infinalizer(L))
    lua_sethook(L, exit_hook, LUA_MASKCOUNT, 1);
}


/*
** Ask for an exit ('how') with the 'n' values on top as its results.
** Encoding them can fail (a value that cannot travel, memory): that is a
** plain error and no exit.  A finalizer may ask for an exit while they are
** being encoded: the first request to be complete decides.
*/
static const char exitpin_key = 0;	/* registry: an exit's results, if they borrow */

static int request (lua_State *L, Isolate *iso, Exit how, int n) {
  if (iso->final) return unwind(L);	/* the outcome is decided already */
  if (iso->exit == EXIT_NONE && how == EXIT_RESULTS) {
    int first = lua_gettop(L) - n + 1;
    Buffer *b = buffer_push(L);
    codec_encode(L, b, first, n, ROLE_RESULT);
    if (b->borrowed > 0) {	/* objects: they stay, as body's results do */
      int i;
      lua_createtable(L, n, 0);
      for (i = 0; i < n; i++) {
        lua_pushvalue(L, first + i);
        lua_rawseti(L, -2, i + 1);
      }
      lua_rawsetp(L, LUA_REGISTRYINDEX, &exitpin_key);
    }
    if (iso->exit == EXIT_NONE) buffer_move(&iso->exitbuf, b);
  }
  iso->requests++;
  if (iso->exit == EXIT_NONE) {
    iso->exit = how;
    iso->mark = iso->calls;
  }
  through(L, iso);
  return unwind(L);
}


int state_exit (lua_State *L, int n) {
  Isolate *iso = current(L);
  if (iso == NULL)
    return luaL_error(L, "isolate.exit called outside an isolate");
  return request(L, iso, EXIT_RESULTS, n);
}


/* os.exit inside an isolate: end the isolate, not the process */
static int os_exit (lua_State *L) {
  return request(L, current(L), EXIT_PLAIN, 0);
}


/*
** {======================================================
** Cancelling
** =======================================================
*/

/*
** A cancel request costs nothing until it is made: no hook runs in a
** healthy isolate.  The canceller sets the job's flag, then signals the
** thread that runs it; the signal handler (state_interrupt) sets a hook on
** the thread of the isolate that runs at that moment, its main thread or
** the coroutine that it resumed, the way the standalone interpreter stops
** a script on Ctrl-C.  The hook turns the request into an exit of its own
** kind (so pcall cannot catch it and to-be-closed variables close).  A
** request that comes while no Lua code of the isolate runs (it is decoding
** its input, waiting for a task, or running a nested isolate) is seen at
** the next check: before the function is called, when a coroutine comes
** back, in every slice of a wait (state_checkcancel).
*/

static int cancelled (Isolate *iso) {
  return iso->cancel != NULL && atomic_load_explicit(iso->cancel, memory_order_relaxed);
}


static void cancel_hook (lua_State *L, lua_Debug *ar) {
  Isolate *iso = current(L);
  (void)ar;
  lua_sethook(L, NULL, 0, 0);	/* one shot: cleanup code runs unhooked */
  if (iso->exit == EXIT_NONE && !iso->final) request(L, iso, EXIT_CANCEL, 0);
}


int state_cancelled (lua_State *L) {
  Isolate *iso = current(L);
  return iso != NULL && cancelled(iso) && iso->exit == EXIT_NONE && !iso->final;
}


void state_checkcancel (lua_State *L) {
  if (state_cancelled(L)) request(L, current(L), EXIT_CANCEL, 0);
}


/*
** In a signal handler, on the thread that runs 'L' (state_run shows it):
** lua_sethook may be called there (ldebug.c says under which
** assumptions); nothing else here but loads.
*/
/*
** see isolate.h: a build under ThreadSanitizer polls with a count hook;
** so does any build when the process had no real-time signal left for
** the cancel (pool.c), or a cancel would never stop a Lua loop
*/
static void poll_hook (lua_State *L, lua_Debug *ar) {
  if (cancelled(current(L))) cancel_hook(L, ar);
}
#if defined(ISOLATE_CANCEL_POLL)
#define pollcancel(L)	lua_sethook(L, poll_hook, LUA_MASKCOUNT, 1000)
#else
#define pollcancel(L)	\
  (pool_cansignal() ? (void)0 : lua_sethook(L, poll_hook, LUA_MASKCOUNT, 1000))
#endif


void state_interrupt (lua_State *L) {
  Isolate *iso = current(L);
  if (iso != NULL && cancelled(iso) && iso->exit == EXIT_NONE && !iso->final) {
    lua_State *co = iso->running;
    lua_sethook(co != NULL ? co : L, cancel_hook,
                LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
  }
}

/* }====================================================== */


/*
** Does the error on top (caught by the protected call numbered 'id') go
** on unwinding?  It does while an exit unwinds, if the call was running
** when the exit began, or if what it caught is the exit itself.
*/
static int passes (lua_State *L, lua_Integer id) {
  Isolate *iso = current(L);
  return iso->exit != EXIT_NONE &&
         ((id <= iso->mark && !RESUMEDLATE(L)) || ISEXIT(L, -1));
}


/*
** pcall, xpcall and coroutine.resume of an isolate: those of the base
** library (lbaselib.c, lcorolib.c), except that they let an exit go on
** unwinding.  The continuation context holds the call's number and the
** count of extra slots below the results (0 for pcall, 2 for xpcall).
*/
static int finishpcall (lua_State *L, int status, lua_KContext ctx) {
  if (status != LUA_OK && status != LUA_YIELD) {
    if (passes(L, (lua_Integer)(ctx >> 2))) return lua_error(L);
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - (int)(ctx & 3);
}

static int isolate_pcall (lua_State *L) {
  lua_KContext ctx = (lua_KContext)(++current(L)->calls) << 2;
  int status;
  luaL_checkany(L, 1);
  lua_pushboolean(L, 1);
  lua_insert(L, 1);
  status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, ctx, finishpcall);
  return finishpcall(L, status, ctx);
}

/* the user's message handler (upvalue), which an exit passes by */
static int xpcall_handler (lua_State *L) {
  if (ISEXIT(L, 1)) return 1;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

static int isolate_xpcall (lua_State *L) {
  lua_KContext ctx = ((lua_KContext)(++current(L)->calls) << 2) | 2;
  int status, n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 2);
  lua_pushcclosure(L, xpcall_handler, 1);
  lua_replace(L, 2);
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);
  status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, ctx, finishpcall);
  return finishpcall(L, status, ctx);
}


/*
** Coroutines.  An exit that leaves a coroutine through coroutine.resume
** or wrap first closes what the dead coroutine left open, and notes the
** thread it goes on in (through); an exit asked for inside a coroutine
** that came back without it (swallowed there) is raised in its resumer.
*/

/* the error on top killed 'co': close its to-be-closed variables */
static _Thread_local int closing;	/* closethread calls under way here */

static int closethread (lua_State *L, lua_State *co) {
  Isolate *iso = current(L);
  lua_State *outer = iso->running;
  int status;
  /* Lua 5.4.4 counts no C calls for a __close that closes a coroutine
     whose __close closes another...: the thread's stack would overflow */
  if (pool_stackleft() < ISOLATE_CLOSE_STACK ||
      (ISOLATE_CLOSE_NEST > 0 && closing >= ISOLATE_CLOSE_NEST))
    luaL_error(L, "C stack overflow (coroutines closing each other)");
  iso->running = co;		/* its __close functions run there */
  closing++;			/* (lua_closethread catches every error) */
#if LUA_VERSION_RELEASE_NUM >= 50406
  status = lua_closethread(co, L);
#else
  status = lua_resetthread(co);
#endif
  closing--;
  iso->running = outer;
  return status;
}

static void close_dead (lua_State *L, lua_State *co) {
  int status = lua_status(co);
  if (status != LUA_OK && status != LUA_YIELD) closethread(L, co);
}


/*
** A coroutine came back to its resumer (L) although an exit was asked for
** inside it ('requests' then): swallowed there, or still unwinding in it
** when a __close yielded.  What it left open is closed, then the exit is
** raised in L.
*/
static void exit_after (lua_State *L, lua_State *co, unsigned long requests) {
  Isolate *iso = current(L);
  if (iso->requests != requests && !iso->final) {
    if (lua_status(co) == LUA_YIELD) closethread(L, co);
    unwind(L);
  }
  state_checkcancel(L);		/* the hook was set in the coroutine */
}


/* resume 'co' with 'narg' arguments: their count, or -1 with the error */
static int auxresume (lua_State *L, lua_State *co, int narg) {
  int status, nres;
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_State *outer;
  Isolate *iso = current(L);
  lua_xmove(L, co, narg);
  outer = iso->running;
  iso->running = co;		/* where a cancel request stops it */
  status = lua_resume(co, L, narg, &nres);
  iso->running = outer;
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);
  return -1;
}


static int isolate_resume (lua_State *L) {
  Isolate *iso = current(L);
  lua_Integer id = ++iso->calls;
  unsigned long requests = iso->requests;
  lua_State *co = lua_tothread(L, 1);
  int n;
  luaL_argexpected(L, co != NULL, 1, "coroutine");
  if (iso->exit != EXIT_NONE) RESUMEDLATE(co) = 1;
  n = auxresume(L, co, lua_gettop(L) - 1);	/* the coroutine stays at 1 */
  if (n < 0) {
    if (passes(L, id)) {
      close_dead(L, co);
      through(L, iso);
      return lua_error(L);
    }
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  exit_after(L, co, requests);
  lua_pushboolean(L, 1);
  lua_insert(L, -(n + 1));
  return n + 1;
}


static int isolate_auxwrap (lua_State *L) {
  Isolate *iso = current(L);
  unsigned long requests = iso->requests;
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int n;
  if (iso->exit != EXIT_NONE) RESUMEDLATE(co) = 1;
  n = auxresume(L, co, lua_gettop(L));
  if (n < 0) {			/* as lcorolib.c's auxwrap */
    int status = lua_status(co);
    if (status != LUA_OK && status != LUA_YIELD) {
      close_dead(L, co);
      lua_xmove(co, L, 1);	/* the error, or one raised while closing */
    }
    if (iso->exit != EXIT_NONE && ISEXIT(L, -1)) through(L, iso);
    else if (status != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  exit_after(L, co, requests);
  return n;
}


static int isolate_wrap (lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, isolate_auxwrap, 1);
  return 1;
}


/*
** coroutine.close, as lcorolib.c's: a __close it runs may ask for an exit,
** which it swallows (it returns false and the error): raised again here.
*/
static int isolate_close (lua_State *L) {
  Isolate *iso = current(L);
  unsigned long requests = iso->requests;
  lua_State *co = lua_tothread(L, 1);
  lua_Debug ar;
  int status;
  luaL_argexpected(L, co != NULL, 1, "coroutine");
  status = lua_status(co);
  if (co == L || (status == LUA_OK && lua_getstack(co, 0, &ar)))
    return luaL_error(L, "cannot close a %s coroutine", co == L ? "running" : "normal");
  status = closethread(L, co);
  if (iso->requests != requests && !iso->final) return unwind(L);
  if (status == LUA_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_xmove(co, L, 1);		/* the error */
  return 2;
}


/*
** load runs a reader, whose errors it catches (it returns nil and the
** error): an exit asked for in there is raised again on its return.  The
** library's load (upvalue) is called with the arguments checked as it
** checks them, so that, called from C and so without a name, it raises no
** "bad argument #1 to '?'".
*/
static int isolate_load (lua_State *L) {
  Isolate *iso = current(L);
  unsigned long requests = iso->requests;
  int n = lua_gettop(L);
  if (!lua_isstring(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_optstring(L, 2, NULL);
  luaL_optstring(L, 3, NULL);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  if (iso->requests != requests && !iso->final) return unwind(L);
  return lua_gettop(L);
}

/* }====================================================== */


/*
** {======================================================
** Making a state
** =======================================================
*/

/*
** Message handler: keep the remote traceback in its upvalue, pass the
** error value on.  Its last frame is always body(), the core's C entry
** ("[C]: in ?"), which tells the reader nothing: it is cut.  An exit
** needs no traceback.
*/
static int msgh (lua_State *L) {
  static const char entry[] = "\n\t[C]: in ?";
  size_t len;
  const char *tb;
  if (ISEXIT(L, 1)) return 1;
  luaL_traceback(L, L, NULL, 1);
  tb = lua_tolstring(L, -1, &len);
  if (len >= sizeof(entry) - 1 &&
      strcmp(tb + len - (sizeof(entry) - 1), entry) == 0) {
    lua_pushlstring(L, tb, len - (sizeof(entry) - 1));
    lua_replace(L, -2);
  }
  lua_replace(L, lua_upvalueindex(1));
  return 1;
}


/*
** Every isolate draws its own random numbers: Lua seeds from the time and
** a state's address, and a worker gets the same address back for the next
** state.  A nanosecond clock and a process-wide count are unique.
*/
static void seed (lua_State *L) {
  static atomic_ulong count;
  struct timespec ts;
  lua_Unsigned n = (lua_Unsigned)atomic_fetch_add(&count, 1) + 1;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_getfield(L, -1, "randomseed");	/* math at -1 */
  lua_pushinteger(L, (lua_Integer)((lua_Unsigned)ts.tv_sec * 1000000000u + (lua_Unsigned)ts.tv_nsec));
  lua_pushinteger(L, (lua_Integer)(n * 0x9e3779b97f4a7c15u ^ (lua_Unsigned)(uintptr_t)L));
  lua_call(L, 2, 0);
}


/*
** The libraries, and the functions that differ inside an isolate.  The
** globals and package.loaded are made at their final sizes first: growing
** them one rehash at a time was a sixth of a fresh state's cost.
*/
static int prepare (lua_State *L) {
  lua_createtable(L, 0, 64);		/* 35 globals once the libraries are in */
  lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  lua_createtable(L, 0, 16);
  lua_setfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  luaL_openlibs(L);
  lua_pushglobaltable(L);
  lua_pushcfunction(L, isolate_pcall);
  lua_setfield(L, -2, "pcall");
  lua_pushcfunction(L, isolate_xpcall);
  lua_setfield(L, -2, "xpcall");
  lua_getfield(L, -1, "load");
  lua_pushcclosure(L, isolate_load, 1);
  lua_setfield(L, -2, "load");
  lua_getfield(L, -1, "os");
  lua_pushcfunction(L, os_exit);
  lua_setfield(L, -2, "exit");
  lua_getfield(L, -2, "coroutine");
  lua_pushcfunction(L, isolate_resume);
  lua_setfield(L, -2, "resume");
  lua_pushcfunction(L, isolate_wrap);
  lua_setfield(L, -2, "wrap");
  lua_pushcfunction(L, isolate_close);
  lua_setfield(L, -2, "close");
  lua_getfield(L, -3, "math");
  seed(L);
  lua_pushnil(L);
  lua_pushcclosure(L, msgh, 1);		/* made here: state_run must not allocate */
  lua_rawsetp(L, LUA_REGISTRYINDEX, &msgh_key);
  return 0;
}


lua_State *state_new (size_t limit) {
  Isolate *iso = (Isolate *)calloc(1, sizeof(Isolate));
  lua_State *L;
  if (iso == NULL) return NULL;
  iso->limit = limit;
  L = lua_newstate(allocf, iso);
  if (L == NULL) {
    slab_close(&iso->slab);
    free(iso);
    return NULL;
  }
  memset(lua_getextraspace(L), 0, LUA_EXTRASPACE);	/* threads copy it */
  lua_pushcfunction(L, prepare);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    state_close(L);
    return NULL;
  }
  return L;
}

void state_setnext (lua_State *L, lua_State *next) {
  current(L)->next = next;
}

lua_State *state_next (lua_State *L) {
  return current(L)->next;
}


void state_close (lua_State *L) {
  if (L != NULL) {
    Isolate *iso = current(L);
    iso->closing = 1;		/* finalizers start no isolates now */
    lua_close(L);
    buffer_free(&iso->exitbuf);
    buffer_free(&iso->initrec);
    slab_close(&iso->slab);
    free(iso);
  }
}

/* }====================================================== */


/*
** {======================================================
** Running a job
** =======================================================
*/

/*
** The isolate's life: decode the function and its arguments, call it,
** encode all its results straight from the stack.  A chunk of a map
** calls the function on each item in turn, each result (the first)
** taking its item's place on the stack.
*/
static int body (lua_State *L) {
  Isolate *iso = (Isolate *)lua_touserdata(L, 1);
  lua_Integer index;
  Reader r;
  int n, i;
  reader_init(&r, iso->in);
  lua_gc(L, LUA_GCSTOP);	/* all it decodes is alive: a collection is wasted work */
  n = message_getinput(L, &r, &index, &iso->index);
  lua_gc(L, LUA_GCRESTART);
  buffer_free(iso->in);
  if (iso->job != NULL) job_inputread((Job *)iso->job);	/* its caller may go on */
  state_checkcancel(L);		/* asked for before the hook could be set */
  if (index == 0) lua_call(L, n - 1, LUA_MULTRET);
  else {
    for (i = 1; i < n; i++) {
      iso->index = index + i - 1;
      lua_pushvalue(L, 2);
      lua_pushvalue(L, 2 + i);
      lua_call(L, 1, 1);
      lua_replace(L, 2 + i);
    }
    iso->index = 0;
    lua_remove(L, 2);
  }
  if (iso->exit != EXIT_NONE) return 0;
  lua_gc(L, LUA_GCSTOP);	/* the state ends after this: so does its garbage */
  if (index == 0)
    codec_encodeborrowing(L, iso->out, 2, lua_gettop(L) - 1, ROLE_RESULT);
  else
    codec_encodelist(L, iso->out, 2, lua_gettop(L) - 1, ROLE_ITEMRESULT, index - 1,
                     &iso->index);	/* the failing item's */
  return lua_gettop(L) - 1;	/* they stay on the stack: the output may borrow */
}


/*
** The pool's init, run in a fresh state before it has a job: decode the
** function and call it.  Its results are dropped.
*/
static int initbody (lua_State *L) {
  Isolate *iso = (Isolate *)lua_touserdata(L, 1);
  lua_Integer index;
  Reader r;
  int n;
  reader_init(&r, iso->in);
  n = message_getinput(L, &r, &index, NULL);
  state_checkcancel(L);		/* stopped before the hook could be set */
  lua_call(L, n - 1, 0);
  return 0;
}


/*
** Encode the failure record; arguments: the Isolate, the kind (a C
** string), the message (a C string or NULL), the error value, the
** traceback.  Everything that allocates is in here, under lua_pcall:
** after a memory error, an allocation outside it would be a panic.
*/
static int record (lua_State *L) {
  Isolate *iso = (Isolate *)lua_touserdata(L, 1);
  buffer_free(iso->out);
  message_putfailure(L, iso->out, (const char *)lua_touserdata(L, 2),
                     (const char *)lua_touserdata(L, 3), 4, 5, iso->index);
  return 0;
}

/* the message of an exit of kind 'how' */
static const char *exitmessage (Isolate *iso) {
  return iso->exit == EXIT_CANCEL ? (iso->initing ? "isolate: the pool's init was stopped"
                                                  : ISOLATE_CANCELLED)
       : iso->exit == EXIT_RESULTS ? (iso->initing ? "isolate.exit ended the pool's init"
                                                   : "isolate.exit ended a chunk of a map")
       : "Computation ended without result";
}

/* the error value is on top of the stack, msgh at 1; the record goes to 'out' */
static void failure (lua_State *L, Isolate *iso, int status) {
  /* an error after the memory limit refused an allocation is a memory
     error, whatever code caught it and raised (require's loaders do) */
  const char *kind = iso->exit == EXIT_CANCEL ? "cancelled"
                   : iso->exit != EXIT_NONE ? "exit"
                   : status == LUA_ERRMEM || iso->limited ? "memory" : "error";
  const char *message = iso->exit != EXIT_NONE ? exitmessage(iso) : NULL;
  int value = lua_gettop(L);
  lua_pushcfunction(L, record);
  lua_pushlightuserdata(L, iso);
  lua_pushlightuserdata(L, (void *)kind);
  lua_pushlightuserdata(L, (void *)message);
  lua_pushvalue(L, value);
  lua_getupvalue(L, 1, 1);	/* msgh's traceback */
  if (lua_pcall(L, 5, 0, 0) != LUA_OK) {
    buffer_free(iso->out);
    message_putplain(iso->out, kind, message != NULL ? message
                                     : status == LUA_ERRMEM ? "not enough memory"
                                     : "error while reporting an error");
  }
}


/*
** Run the pool's init in 'L' before it gets a job.  A failure is kept in
** the state, for the job that it will run: that job fails with it.  An
** exit there is a failure too.
*/
void state_init (lua_State *L, Buffer *init, const StateRun *run) {
  Isolate *iso;
  int status;
  if (L == NULL) return;
  iso = current(L);
  iso->in = init;		/* read only: every worker reads it */
  iso->out = &iso->initrec;
  iso->name = run->name;
  iso->depth = run->depth;
  iso->cancel = run->cancel;
  iso->initing = 1;
  atomic_store_explicit(run->shown, L, memory_order_relaxed);	/* for cancel */
  atomic_signal_fence(memory_order_seq_cst);
  pollcancel(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &msgh_key);
  lua_pushcfunction(L, initbody);
  lua_pushlightuserdata(L, iso);
  status = lua_pcall(L, 1, 0, 1);
  atomic_store_explicit(run->shown, NULL, memory_order_relaxed);
  atomic_signal_fence(memory_order_seq_cst);
  lua_sethook(L, NULL, 0, 0);
  iso->cancel = NULL;
  if (status != LUA_OK || iso->exit != EXIT_NONE) {
    iso->final = 1;
    iso->initfailed = 1;
    if (status == LUA_OK) lua_pushnil(L);
    failure(L, iso, status);
  }
  lua_settop(L, 0);
  iso->in = iso->out = NULL;
  iso->initing = 0;
}


int state_run (lua_State *L, Buffer *in, Buffer *out, const StateRun *run) {
  Isolate *iso;
  int status, ok;
  buffer_free(out);
  if (L == NULL) {
    buffer_free(in);
    message_putplain(out, "memory", "not enough memory for a new Lua state");
    return 0;
  }
  iso = current(L);
  if (iso->initfailed) {
    buffer_move(out, &iso->initrec);
    ok = 0;
    goto done;
  }
  iso->in = in;
  iso->out = out;
  iso->name = run->name;
  iso->depth = run->depth;
  iso->cancel = run->cancel;
  iso->pool = run->pool;
  iso->job = run->job;
  iso->failat = atomic_exchange(&failalloc, 0);
  atomic_store_explicit(run->shown, L, memory_order_relaxed);	/* for cancel */
  atomic_signal_fence(memory_order_seq_cst);
  pollcancel(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &msgh_key);	/* nothing allocates here */
  lua_pushcfunction(L, body);
  lua_pushlightuserdata(L, iso);
  status = lua_pcall(L, 1, LUA_MULTRET, 1);	/* the results stay, for 'out' */
  iso->final = 1;		/* from here on, exits change nothing */
  ok = (iso->exit == EXIT_RESULTS && iso->index == 0) ||
       (status == LUA_OK && iso->exit == EXIT_NONE);
  if (ok && iso->exit == EXIT_RESULTS)
    buffer_move(out, &iso->exitbuf);
  else if (!ok) {
    if (status == LUA_OK) lua_pushnil(L);	/* exited, yet returned */
    failure(L, iso, status);
  }
  atomic_store_explicit(run->shown, NULL, memory_order_relaxed);
  atomic_signal_fence(memory_order_seq_cst);
  iso->cancel = NULL;		/* the job goes: its finalizers run without it */
  iso->pool = iso->job = NULL;
 done:
  buffer_free(in);		/* if body did not get that far */
  return ok;
}

/* }====================================================== */
