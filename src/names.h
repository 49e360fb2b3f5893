/*
** names.h: the names under which a value travels instead of being copied.
**
** A module table (package.loaded[name]) travels as its name, and so does
** a C function that a loaded module holds ("module" and "field"), and a
** table pinned by the core (the RemoteError metatable: "isolate.core" and
** "RemoteError").  A value with several names travels under the best one:
** a standard library first, then a name the other side can load
** (package.preload, or a file that package.searchpath finds), then the
** shortest, then the first in byte order.  The choice depends on nothing
** else, so it is the same in every run.
*/
#ifndef names_h
#define names_h

#include "lua.h"

/* what an encoder keeps of names for the length of one encode */
typedef struct Names {
  int tables;			/* stack index: table -> name (made on first use) */
  int cfuncs;			/* stack index: the registry's C function cache */
  int scanned;			/* the cache was rebuilt during this encode */
} Names;

/* reserve the two stack slots of 'n' (nils) on top of the stack */
void names_open (lua_State *L, Names *n);

/*
** The name of the table or C function at 'idx', pushed as a string
** "module" or "module\0field" and returned (with its length), or NULL
** with nothing pushed when it has none.
*/
const char *names_find (lua_State *L, Names *n, int idx, size_t *len);

/* Lua code ran during the encode (it may have loaded modules): look again */
void names_reset (lua_State *L, Names *n);

/* from now on the table at 'idx' travels as module[field] */
void names_pin (lua_State *L, int idx, const char *module, const char *field);

#endif
