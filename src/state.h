/*
** state.h: the fresh lua_State of one isolate, and what runs in it.
*/
#ifndef state_h
#define state_h

#include <stddef.h>

#include "lua.h"
#include "buffer.h"

/* a fresh state with the libraries open, or NULL when memory runs out */
lua_State *state_new (void);

/*
** Run the job whose input is 'in' (message.h) in 'L', a state from
** state_new (NULL: none could be made), then close it; 'in' is freed.
** 'name' is the pool's name (NULL: none), for isolate.name(); 'depth' is
** how deep the isolate is nested (1: started by a caller that is not an
** isolate).  Returns 1 with the results in 'out', or 0 with a failure
** record there (message.h).  Never raises.
*/
int state_run (lua_State *L, Buffer *in, Buffer *out, const char *name, int depth);

/* inside an isolate: end it now with the 'n' values on top as results */
int state_exit (lua_State *L, int n);

/* is 'L' a caller's state, not an isolate's? */
int state_ismain (lua_State *L);

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
