/*
** isolate.h: limits and types shared by every part of the C core.
** Each limit can be overridden from the compiler command line.
*/
#ifndef isolate_h
#define isolate_h

#include "lua.h"

/* the release: the core's _VERSION is "isolate " ISOLATE_VERSION, and the
   Lua layer (lua/isolate/init.lua) refuses a core of another release */
#define ISOLATE_VERSION		"0.1.0"

/* deepest nesting of tables, functions and upvalues that one transfer takes */
#if !defined(ISOLATE_MAXDEPTH)
#define ISOLATE_MAXDEPTH	200
#endif

/* first chunk of a transfer buffer; later chunks double up to the cap */
#if !defined(ISOLATE_CHUNK_MIN)
#define ISOLATE_CHUNK_MIN	512
#endif
#if !defined(ISOLATE_CHUNK_MAX)
#define ISOLATE_CHUNK_MAX	(1u << 20)
#endif

/*
** Strings this long or longer are not copied into the message of a run's
** arguments or of a task's results: the message borrows them from their
** state, which stays alive until the message is decoded (buffer.h).  An
** isolate's state that stays costs its whole heap: only a string that
** outweighs that is worth it.
*/
#if !defined(ISOLATE_BORROW)
#define ISOLATE_BORROW		(1u << 20)
#endif

/*
** A task's result that is a table whose array part holds this many
** numbers and booleans or more (1 MiB of Lua's slots) is lent the same
** way: the caller copies the slots from the isolate's table, in one pass
** (src/luatable.h).  Results only: a caller's argument could change while
** its isolate reads it.
*/
#if !defined(ISOLATE_LEND)
#define ISOLATE_LEND		(1u << 16)
#endif

/*
** A decoded string or table array of this many bytes or more is made in
** memory that the kernel maps in one call (Linux's MADV_POPULATE_WRITE)
** instead of one page fault per page as Lua first writes it: a fault
** costs microseconds on a virtual machine, a page of a bulk map a fraction
** of that.  Lua writes every byte it allocates for them at once anyway.
*/
#if !defined(ISOLATE_PREFAULT)
#define ISOLATE_PREFAULT	(256u << 10)
#endif

/*
** How long a caller about to sleep until its job ends spins first
** (microseconds).  Waking a sleeping thread costs tens of microseconds on
** some machines, more than a small isolate's whole run.
*/
#if !defined(ISOLATE_SPIN_US)
#define ISOLATE_SPIN_US		50
#endif

/*
** Worker threads' C stacks, and how much of it a worker must have left to
** run a nested isolate itself rather than lend it to a thread of its own.
** One isolate can take a few hundred KB: LUAI_MAXCCALLS (200) levels of
** C calls, and the codec's recursion (ISOLATE_MAXDEPTH levels).
*/
#if !defined(ISOLATE_STACK_SIZE)
#define ISOLATE_STACK_SIZE	(16u << 20)
#endif
#if !defined(ISOLATE_INLINE_STACK)
#define ISOLATE_INLINE_STACK	(2u << 20)
#endif

/*
** How deep calls of __isolate and of constructors may nest on a thread:
** each may encode or decode again, another codec's levels on its C stack
*/
#if !defined(ISOLATE_CODEC_NEST)
#define ISOLATE_CODEC_NEST	8
#endif

/* C stack that an isolate's coroutine.close needs left to go on */
#if !defined(ISOLATE_CLOSE_STACK)
#define ISOLATE_CLOSE_STACK	(256u << 10)
#endif

/*
** How deep coroutines that close each other may nest on a thread, as well
** (0: as deep as the C stack allows).  ThreadSanitizer keeps a shadow
** stack of 64K frames per thread, which it does not check: past it, a
** deep nest overwrote TSan's own memory, and its runtime crashed later,
** elsewhere (a SEGV in __tsan::TraceSwitchPartImpl).  A build under it
** stops at 1000.
*/
#if !defined(ISOLATE_CLOSE_NEST)
#if defined(__SANITIZE_THREAD__)
#define ISOLATE_CLOSE_NEST	1000
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ISOLATE_CLOSE_NEST	1000
#endif
#endif
#endif
#if !defined(ISOLATE_CLOSE_NEST)
#define ISOLATE_CLOSE_NEST	0
#endif

/* deepest nesting of isolates: one started from inside another, and so on */
#if !defined(ISOLATE_MAXNESTING)
#define ISOLATE_MAXNESTING	200
#endif

/*
** A caller waits for its task in slices of this many milliseconds, to
** notice a hook set meanwhile (the standalone interpreter's Ctrl-C).
*/
#if !defined(ISOLATE_WAIT_MS)
#define ISOLATE_WAIT_MS		10
#endif

/*
** ThreadSanitizer holds a signal back until the thread calls a function
** it intercepts, which a Lua loop may never do: a build under it polls
** for a cancel with a count hook instead of signalling the thread (so it
** cannot have a caller run its own isolate, either; see pool.c).  Only
** that build pays for it.  (A process that finds no real-time signal to
** take, as on macOS, polls the same way, decided when the pool starts:
** pool_cansignal.)
*/
#if !defined(ISOLATE_CANCEL_POLL)
#if defined(__SANITIZE_THREAD__)
#define ISOLATE_CANCEL_POLL	1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ISOLATE_CANCEL_POLL	1
#endif
#endif
#endif

/*
** Fresh states that a pool keeps prepared beyond one for each of its
** workers, for callers that run their own isolate, and how often a
** watchdog looks at the callers that do (milliseconds), for a hook set on
** their state (Ctrl-C).
*/
#if !defined(ISOLATE_STASH)
#define ISOLATE_STASH		2
#endif
#if !defined(ISOLATE_WATCH_MS)
#define ISOLATE_WATCH_MS	5
#endif

/* most items in one chunk of a map (each is a value on a stack) */
#if !defined(ISOLATE_MAXCHUNK)
#define ISOLATE_MAXCHUNK	65536
#endif

/*
** A task's messages that its caller has not received yet: past either
** count, isolate.emit waits for the caller to read (unless nobody can, or
** somebody waits for the task's end instead).
*/
#if !defined(ISOLATE_MAILBOX_MESSAGES)
#define ISOLATE_MAILBOX_MESSAGES	1000
#endif
#if !defined(ISOLATE_MAILBOX_BYTES)
#define ISOLATE_MAILBOX_BYTES	(8u << 20)
#endif

/* most threads in one pool */
#if !defined(ISOLATE_MAXPOOL)
#define ISOLATE_MAXPOOL		1024
#endif

/*
** When the state that owns a pool closes, how long it waits for the
** pool's cancelled isolates to end (milliseconds); then it leaves them.
*/
#if !defined(ISOLATE_CLOSE_MS)
#define ISOLATE_CLOSE_MS	2000
#endif

/*
** Room for 'n' more values on the stack, or Lua's memory error.  The depth
** limits keep stacks far below their maximum, so a failure to grow one is
** a failure to allocate.  (lua_error raises LUA_ERRMEM for the very string
** "not enough memory", which Lua keeps preallocated.)
*/
static inline void isolate_checkstack (lua_State *L, int n) {
  if (!lua_checkstack(L, n)) {
    lua_pushliteral(L, "not enough memory");
    lua_error(L);
  }
}

/* the message of a cancelled task's RemoteError */
#define ISOLATE_CANCELLED	"isolate: the task was cancelled"

/* names of the metatables that the core registers */
#define ISOLATE_TASK		"isolate.Task"
#define ISOLATE_REMOTEERROR	"isolate.RemoteError"
#define ISOLATE_TIMEOUTERROR	"isolate.TimeoutError"

#endif
