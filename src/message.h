/*
** message.h: what travels with a job besides its results, written and
** read here alone.
**
** The input of a job: the caller's package.path and package.cpath (raw
** strings), then one message: the function and its arguments.
**
** The failure record of an isolate that failed: a data-only message of
** kind, message and traceback (nil when there is none), then, when the
** error value could be encoded, a message of its own holding it.  The
** value is decoded apart, so a value that cannot be rebuilt on the other
** side (it names a module that only the isolate has) loses the value, not
** the error.
*/
#ifndef message_h
#define message_h

#include "lua.h"
#include "buffer.h"

/* caller: the input for the function at 'first' and the 'n' - 1 above it */
void message_putinput (lua_State *L, Buffer *b, int first, int n);

/* isolate: set the package paths, push the function and its arguments */
int message_getinput (lua_State *L, Reader *r);

/*
** isolate, under lua_pcall (it allocates): a failure record in 'b' for
** the error value at 'value' with the traceback at 'traceback' (a string,
** or nil); 'message' replaces the value's text if not NULL.
*/
void message_putfailure (lua_State *L, Buffer *b, const char *kind,
                         const char *message, int value, int traceback);

/* without Lua: a record of a kind and a message; 0 when memory runs out */
int message_putplain (Buffer *b, const char *kind, const char *message);

/* caller: push the RemoteError of the failure record at 'r' */
void message_pushfailure (lua_State *L, Reader *r);

#endif
