/*
** state.h: the fresh lua_State of one isolate, and what runs in it.
*/
#ifndef state_h
#define state_h

#include <stdatomic.h>
#include <stddef.h>

#include "lua.h"
#include "buffer.h"

/*
** A fresh state with the libraries open, or NULL when memory runs out.
** 'limit' caps the bytes its heap may hold (0: no limit).
*/
lua_State *state_new (size_t limit);
/* close a state from state_new (NULL: nothing to do) */
void state_close (lua_State *L);
/* a list of states to close, linked through them (no memory needed) */
void state_setnext (lua_State *L, lua_State *next);
lua_State *state_next (lua_State *L);

/* what state_run needs to know of the job besides its input and output */
typedef struct StateRun {
  const char *name;		/* the pool's name (NULL: none), for isolate.name() */
  int depth;			/* nesting: 1 for an isolate a caller started */
  const atomic_int *cancel;	/* becomes true when the job is cancelled */
  lua_State *_Atomic *shown;	/* where the state is shown while its job runs */
  void *pool, *job;		/* the job's (pool.h), for its messages; NULL in an init */
} StateRun;

/*
** Run a pool's init ('init' is a job input without arguments, message.h,
** only read) in 'L', a state from state_new (NULL: nothing happens),
** before it gets a job; if it fails, the job that 'L' runs fails so.  A
** cancel stops it as it stops a job.
*/
void state_init (lua_State *L, Buffer *init, const StateRun *run);

/*
** Run the job whose input is 'in' (message.h) in 'L', a state from
** state_new (NULL: none could be made); 'in' is freed.  The caller closes
** 'L' (state_close) once it has handed the results over; if 'out' borrows
** strings (out->borrowed), they are L's: L is closed after 'out' is read.
** While the job's code may run, 'L' is in run->shown, for a handler of
** the cancel signal on this thread (state_interrupt).  Returns 1 with the
** results in 'out', or 0 with a failure record there (message.h).  Never
** raises.
*/
int state_run (lua_State *L, Buffer *in, Buffer *out, const StateRun *run);

/* in a signal handler on the thread that runs 'L': act on a cancel request */
void state_interrupt (lua_State *L);

/* is 'L' an isolate whose job was cancelled (and does not end yet)? */
int state_cancelled (lua_State *L);

/* inside an isolate whose job was cancelled: raise the cancel (else nothing) */
void state_checkcancel (lua_State *L);

/* inside an isolate: end it now with the 'n' values on top as results */
int state_exit (lua_State *L, int n);

/* inside an isolate's job: its pool and job (pool.h), for isolate.emit; else 0 */
int state_job (lua_State *L, void **pool, void **job);

/* is 'L' an isolate's state that closes (its finalizers run)? */
int state_closing (lua_State *L);

/* is 'L' a caller's state, not an isolate's? */
int state_ismain (lua_State *L);
/*
** Have the next fresh block of 'size' bytes or more that the isolate of
** 'L' allocates mapped in at once (buffer_mapin), and 0 if 'L' is not an
** isolate's state.  Size 0: no longer.  (A request that an error leaves
** maps in one later big block: Lua writes its big blocks whole anyway.)
*/
int state_prefault (lua_State *L, size_t size);

/* how deep the isolate of 'L' is nested (0: not an isolate) */
int state_depth (lua_State *L);

/*
** For tests: the next isolate to run a job fails the n-th allocation it
** makes after the job starts (and Lua's retry of it); 0 disarms.
*/
void state_failalloc (size_t n);

/* push the name of the pool running 'L' (nil: none, or not an isolate) */
void state_pushname (lua_State *L);

#endif
