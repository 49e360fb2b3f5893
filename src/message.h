/*
** message.h: what travels with a job besides its results, written and
** read here alone.
**
** The input of a job: the caller's package.path and package.cpath (raw
** strings), a raw string of 8 bytes, the list index of a map chunk's first
** item (0: a plain job), then one message: the function and its
** arguments; for a map chunk, two: the function, and the items.
**
** The failure record of an isolate that failed: a data-only message of
** kind, message and traceback (nil when there is none), and for a map the
** index of the item that failed, then, when the
** error value could be encoded, a message of its own holding it.  The
** value is decoded apart, so a value that cannot be rebuilt on the other
** side (it names a module that only the isolate has) loses the value, not
** the error.
*/
#ifndef message_h
#define message_h

#include "lua.h"
#include "buffer.h"

/*
** caller: the input for the function at 'first' and the 'n' - 1 above it;
** with 'borrow', long strings and objects are borrowed (codec.h): what
** it borrows is pushed (a table, or nil), for its caller to keep alive
** until the job has read its input
*/
void message_putinput (lua_State *L, Buffer *b, int first, int n, int borrow);

/*
** caller: the input of a chunk of a map: the function, encoded once in
** 'fn' (a message of one value), and the 'n' items at 'first', whose
** index in the list is 'index' (> 0) for the first
*/
void message_putchunk (lua_State *L, Buffer *b, const Buffer *fn,
                       int first, int n, lua_Integer index);

/*
** isolate: set the package paths, push the function and its arguments
** (or items), return their count; '*index' is the list index of a map
** chunk's first item, 0 for a plain job.  While an item is decoded, its
** list index is in '*at' (if not NULL), for the record of an error there.
*/
int message_getinput (lua_State *L, Reader *r, lua_Integer *index, lua_Integer *at);

/*
** isolate, under lua_pcall (it allocates): a failure record in 'b' for
** the error value at 'value' with the traceback at 'traceback' (a string,
** or nil); 'message' replaces the value's text if not NULL; 'index' is
** the failing item's list index in a map (0: not a map).
*/
void message_putfailure (lua_State *L, Buffer *b, const char *kind,
                         const char *message, int value, int traceback,
                         lua_Integer index);

/* without Lua: a record of a kind and a message; 0 when memory runs out */
int message_putplain (Buffer *b, const char *kind, const char *message);

/* caller: push the RemoteError of the failure record at 'r' */
void message_pushfailure (lua_State *L, Reader *r);

#endif
